"""The shadow's cluster form, run as KServe makes its pods.

The chart with ``shadow.enabled`` (the kind values) gives a second InferenceService,
``ctr-shadow``, whose predictor KServe's storage initializer fills from the object store with
the serving identity, as it does the live one's (:mod:`tests.cluster.kserve_pods`). The
transformer mirrors to it by the settings' URL, ``ctr-shadow-predictor.mlref.svc.cluster.local``,
through the hops the rendered NetworkPolicies must allow, while the state ConfigMap
``ctr-shadow`` (as ``mlref shadow start`` applies it) says a shadow runs: the kubelet puts its
``shadow.yaml`` in the transformer's mounted volume. First, with the chart's ``shadow-egress``
policy broken in the rendered objects, the shadow predictor's storage initializer is refused
the object store (its egress is its pod's) and the pod never starts. Then two transformer
pods, the same single-row requests to each. The first starts before ``mlref shadow start``
(no ConfigMap: the optional volume is empty, nothing is mirrored); ``start`` and then ``stop``
reach it, running, as kubelet's atomic ``..data`` swaps of the mounted ConfigMap: it mirrors
while the shadow runs and stops after, without a restart. The second starts with the shadow
running and the chart's ``shadow`` policy broken (the mirror's connections refused). Every
answer is the first pod's first; the shadow's rows are on the object store as
``variant=shadow`` with the live request ids of the running phase alone, and the
transformer's /metrics counts each mirrored row, scored or dropped.
"""

from __future__ import annotations

import contextlib
import copy
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from mlref.experiment.assign import Watched
from mlref.k8s.render import chart_value_sets, render_chart, repo_root
from mlref.monitoring.inference import read_inference_log
from mlref.serving.predictor import resolve
from mlref.serving.requests import VARIANT_HEADER
from mlref.shadow import control
from mlref.training.publish import served_uri
from tests.canary.fake_kube import RecordedCustomObjectsApi
from tests.cluster import kubelet_volume
from tests.cluster.kserve_pods import (
    laptop_with_two_models,
    pod_labels,
    predictor_pod,
    transformer_pod,
)
from tests.cluster.network import Endpoint, service_map
from tests.cluster.pods import PodFailed, installed
from tests.conftest import S3Server
from tests.k8s.test_shadow import RecordedConfigMaps
from tests.servers import wait_until
from tests.serving.test_servers import business_rows
from tests.shadow.test_serving import shadow_counts

pytestmark = pytest.mark.slow
BUCKET = "mlref"  # values.yaml objectStore.bucket
ROWS = 12


def shadow_chart(shadow_model: str) -> list[dict]:
    """``helm install -f values-kind.yaml --set shadow.enabled=true,shadow.modelUri=...``."""
    values = copy.deepcopy(chart_value_sets(repo_root())["kind"])
    values["shadow"] = {**values.get("shadow", {}), "enabled": True, "modelUri": shadow_model}
    return render_chart(repo_root(), values, "kind").objects


def without_rules(objects: list[dict], policy: str, rules: str) -> list[dict]:
    """The objects with NetworkPolicy ``policy`` admitting nothing: no ``rules`` (``ingress``
    or ``egress``) left, its pods still isolated (a rule with no peers would admit all)."""
    broken = copy.deepcopy(objects)
    for obj in broken:
        if obj["kind"] == "NetworkPolicy" and obj["metadata"]["name"] == policy:
            obj["spec"][rules] = []
    return broken


def refreshed(volume: Path, data: dict[str, str]) -> None:
    """kubelet's sync of a mounted ConfigMap: a new ``..data``, the path never written; then
    long enough for the transformer's next request to re-read it (:class:`Watched` checks
    the file at most once an ``interval``, at a request)."""
    kubelet_volume.refresh(volume, data)
    time.sleep(2 * Watched.interval)


def test_the_transformer_pod_mirrors_to_the_shadow_pod_only_as_the_policies_allow(
    s3_env: S3Server, redis_server: str, tmp_path: Path
) -> None:
    s3 = s3_env
    laptop, shadow_uri = laptop_with_two_models(
        s3, BUCKET, redis_server, tmp_path, ("live", "shadow"), canary={"poll_seconds": 0.01}
    )
    assert shadow_uri == served_uri(laptop, "2")
    objects = shadow_chart(shadow_uri)
    services = service_map(objects, {"seaweedfs": s3.endpoint, "redis": redis_server})
    cluster = installed(objects, services, store=s3)
    isvcs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "InferenceService"}
    runtimes = [o for o in objects if o["kind"] == "ServingRuntime"]
    assert isvcs["ctr-shadow"]["spec"]["predictor"]["model"]["storageUri"] == shadow_uri
    # `mlref shadow start|stop` against the recorded API server: the ConfigMaps they apply.
    custom, core = RecordedCustomObjectsApi(None), RecordedConfigMaps()
    custom.update(copy.deepcopy(isvcs["ctr-shadow"]), "helm")
    rows = business_rows(ROWS, seed=5)
    since = datetime.now(UTC) - timedelta(minutes=5)
    client = httpx.Client(timeout=60)

    def answers(transformer: str, tag: str) -> list[float]:
        """Each row alone, its request id tagged with the phase."""
        url = f"{transformer}/v1/models/ctr:predict"
        found = []
        for i, row in enumerate(rows):
            answer = client.post(url, json={"instances": [{**row, "request_id": f"{tag}-{i}"}]})
            assert answer.status_code == 200, answer.text[-2000:]
            assert answer.headers[VARIANT_HEADER] == "stable"
            found.append(answer.json()["predictions"][0]["probability"])
        return found

    def counted(transformer: str) -> dict[str, float]:
        """The phase's mirrored rows by outcome, once all ROWS are counted."""
        wait_until(
            lambda: sum(shadow_counts(f"{transformer}/metrics").values()) >= ROWS,
            60.0,
            f"{ROWS} shadow rows counted",
        )
        return shadow_counts(f"{transformer}/metrics")

    base = tmp_path / "serving"
    installed_objects = cluster.objects
    # 0. NetworkPolicy shadow-egress admitting nothing: the shadow predictor's storage
    # initializer (its pod's labels, so its egress policies) is refused the object store.
    cluster.objects = without_rules(installed_objects, "shadow-egress", "egress")
    try:
        with (
            pytest.raises(PodFailed, match="storage initializer failed") as failed,
            predictor_pod(cluster, isvcs["ctr-shadow"], runtimes, base / "no-egress"),
        ):
            pass
    finally:
        cluster.objects = installed_objects
    shadow_pod = Endpoint("mlref", pod_labels(isvcs["ctr-shadow"], "predictor"))
    (gap,) = cluster.refused
    assert gap.startswith("seaweedfs.mlref.svc:8333: no egress rule admits pod ("), gap
    assert f"on port 8333 for {shadow_pod} (isolated by NetworkPolicy " in gap
    assert gap.endswith("allow-dns, default-deny, shadow-egress)"), gap
    assert gap in str(failed.value)
    cluster.refused.clear()

    with contextlib.ExitStack() as pods:
        _, live_models, _ = pods.enter_context(predictor_pod(cluster, isvcs["ctr"], runtimes, base))
        _, shadow_models, _ = pods.enter_context(
            predictor_pod(cluster, isvcs["ctr-shadow"], runtimes, base)
        )
        # Each storage initializer fetched its own InferenceService's model.
        assert resolve(laptop, str(live_models)).version == "1"
        assert resolve(laptop, str(shadow_models)).version == "2"

        # 1. Before `mlref shadow start`: no ConfigMap ctr-shadow, the optional volume empty.
        with transformer_pod(cluster, isvcs["ctr"], runtimes, base / "running") as (url, _):
            (volume,) = (base / "running").glob("*/volumes/shadow")
            baseline = answers(url, "none")
            assert shadow_counts(f"{url}/metrics") == {}

            # 2. `mlref shadow start` applies ConfigMap ctr-shadow; kubelet refreshes the
            # running pod's volume: every row is mirrored from then on.
            control.start(laptop, shadow_uri, served_uri(laptop, "champion"), (custom, core))
            started = copy.deepcopy(core.maps[("mlref", "ctr-shadow")])
            refreshed(volume, started["data"])
            assert answers(url, "shadow") == baseline
            assert counted(url) == {"scored": ROWS}

            # 3. `mlref shadow stop`: the ConfigMap says stopped; the same pod stops mirroring.
            control.stop(laptop, (custom, core))
            refreshed(volume, core.maps[("mlref", "ctr-shadow")]["data"])
            assert answers(url, "stopped") == baseline
            assert shadow_counts(f"{url}/metrics") == {"scored": ROWS}

        # 4. A pod started with the shadow running, the shadow policy admitting no one (the
        # rendered object edited): the mirror's connections are refused and dropped; the
        # answers are the same.
        cluster.objects = without_rules([*installed_objects, started], "shadow", "ingress")
        try:
            with transformer_pod(cluster, isvcs["ctr"], runtimes, base / "refused") as (url, _):
                assert answers(url, "refused") == baseline
                assert counted(url) == {"error": ROWS}
        finally:
            cluster.objects = installed_objects

    # Refused: only the mirror's calls to the shadow, by the shadow policy.
    assert cluster.refused, "the broken policy refused nothing"
    assert all("ctr-shadow-predictor" in gap for gap in cluster.refused), cluster.refused
    assert all("isolated by NetworkPolicy default-deny, shadow)" in gap for gap in cluster.refused)
    # The transformers flushed their logs on stop: the shadow's rows, with the live ids.
    until = datetime.now(UTC) + timedelta(minutes=5)
    logged = read_inference_log(laptop, since, until)
    shadowed = read_inference_log(laptop, since, until, shadow=True)
    shadowed = shadowed[shadowed["variant"] == "shadow"]
    live_ids = sorted(logged.loc[logged["request_id"].str.startswith("shadow-"), "request_id"])
    assert live_ids == sorted(f"shadow-{i}" for i in range(ROWS))
    stopped = logged.loc[logged["request_id"].str.startswith("stopped-"), "request_id"]
    assert sorted(stopped) == sorted(f"stopped-{i}" for i in range(ROWS))  # live, not mirrored
    assert sorted(shadowed["request_id"]) == live_ids
    assert set(shadowed["model_version"]) == {"2"}
