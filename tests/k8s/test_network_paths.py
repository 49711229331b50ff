"""The rendered NetworkPolicies let each workload reach what its job needs."""

from __future__ import annotations

from mlref.k8s.render import Rendered
from tests.cluster.network import Endpoint, connection_gap
from tests.cluster.pods import pod_labels_of

OBJECT_STORE = Endpoint("object-store")  # in the cluster or outside it: HTTPS or S3's 9000


def test_every_cronjob_reaches_the_object_store_in_every_form(forms: list[Rendered]) -> None:
    checked = 0
    for rendered in forms:
        for job in (o for o in rendered.objects if o["kind"] == "CronJob"):
            source = Endpoint(job["metadata"].get("namespace", "mlref"), pod_labels_of(job))
            for port in (443, 9000):
                gap = connection_gap(rendered.objects, source, OBJECT_STORE, port)
                assert gap is None, f"{rendered.source} {job['metadata']['name']}: {gap}"
            checked += 1
    assert checked
