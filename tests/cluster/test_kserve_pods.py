"""The InferenceService's pods as KServe makes them, their network path, and the nodes' clock.

The loop (test_cluster_loop.py) runs these pods with live traffic; here the parts it relies on
are checked one by one, fast: the Pod each component becomes, the route from the transformer
to the predictor that the chart's NetworkPolicies must allow (and a chart that does not is
refused), and the clock a pod sees when the test moves the cluster's time.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlref.k8s.kserve import DEPLOYMENT_MODE, STANDARD, launch
from tests.cluster.kserve_pods import MODEL_DIR, component_pod, predictor_route
from tests.cluster.network import Endpoint, PodNetwork
from tests.cluster.pods import IMAGE_VENV, installed, pod_command, start_in_sandbox

PREDICTOR = "127.0.0.1:18080"  # where the predictor pod listens; nothing connects here


def isvc_of(objects: list[dict]) -> dict:
    (isvc,) = [o for o in objects if o["kind"] == "InferenceService"]
    return isvc


def runtimes_of(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] == "ServingRuntime"]


def test_each_component_runs_what_kserve_gives_it(kind_chart: list[dict], tmp_path: Path) -> None:
    isvc, runtimes = isvc_of(kind_chart), runtimes_of(kind_chart)
    cluster = installed(kind_chart)
    for component in ("predictor", "transformer"):
        pod, _ = component_pod(isvc, component, runtimes)
        command = pod_command(pod, cluster, tmp_path)
        command.network.close()
        assert command.argv == launch(isvc, component, runtimes).argv
        assert command.env["INFERENCE_SERVICE_NAME"] == "ctr"
        assert command.env["K_SERVICE"] == f"ctr-{component}"  # Knative on kind
        assert command.user == (10001, 10001)
        assert pod["metadata"]["labels"]["component"] == component
    predictor, _ = component_pod(isvc, "predictor", runtimes)
    command = pod_command(predictor, cluster, tmp_path)
    command.network.close()
    # The storage initializer's volume, read-only for the model server, and the runtime's /tmp.
    assert command.read_only == [MODEL_DIR] and {"/tmp", MODEL_DIR} <= set(command.volumes)
    assert "--model_dir" in command.argv and MODEL_DIR in command.argv
    transformer, _ = component_pod(isvc, "transformer", runtimes)
    command = pod_command(transformer, cluster, tmp_path)
    command.network.close()
    # The serving identity, from the install's Secret, and nothing else of the store's.
    serving = cluster.lookup("Secret", "mlref-store-serving", "mlref")
    assert command.env["AWS_ACCESS_KEY_ID"] == serving["AWS_ACCESS_KEY_ID"]
    assert command.argv[command.argv.index("--predictor_host") + 1] == "ctr-predictor.mlref"


def transformer_network(objects: list[dict], isvc: dict, mode: str) -> PodNetwork:
    routes = predictor_route(isvc, runtimes_of(objects), mode, PREDICTOR)
    source = Endpoint(
        "mlref", component_pod(isvc, "transformer", runtimes_of(objects))[0]["metadata"]["labels"]
    )
    return PodNetwork({}, objects, source, "mlref", routes)


def without_peer(objects: list[dict], policy: str, keep) -> list[dict]:
    """The objects with ``policy``'s ingress peers filtered by ``keep``."""
    objects = copy.deepcopy(objects)
    for obj in objects:
        if obj["kind"] == "NetworkPolicy" and obj["metadata"]["name"] == policy:
            for rule in obj["spec"]["ingress"]:
                rule["from"] = [peer for peer in rule["from"] if keep(peer)]
    return objects


@pytest.mark.parametrize("mode", ["Knative", STANDARD])
def test_the_transformer_reaches_the_predictor_only_where_the_policies_allow(
    kind_chart: list[dict], mode: str
) -> None:
    isvc = copy.deepcopy(isvc_of(kind_chart))
    isvc["metadata"]["annotations"][DEPLOYMENT_MODE] = mode
    network = transformer_network(kind_chart, isvc, mode)
    assert network.resolve("http://ctr-predictor.mlref") == f"http://{PREDICTOR}"
    assert network.resolve("ctr-predictor.mlref.svc.cluster.local:80") == PREDICTOR
    assert network.close() == []
    # Knative: the gateway's namespace; Standard: the InferenceService's own pods.
    if mode == STANDARD:
        broken = without_peer(kind_chart, "serving", lambda peer: "podSelector" not in peer)
    else:
        broken = without_peer(kind_chart, "serving", lambda peer: "namespaceSelector" not in peer)
    network = transformer_network(broken, isvc, mode)
    refused = network.resolve("http://ctr-predictor.mlref")
    assert refused != f"http://{PREDICTOR}"
    network.close()
    route = predictor_route(isvc, runtimes_of(kind_chart), mode, PREDICTOR)["ctr-predictor.mlref"]
    source = transformer_network(kind_chart, isvc, mode).source
    gap = route.gap(broken, source, "mlref")
    assert gap is not None and "no ingress rule admits" in gap
    assert "(isolated by NetworkPolicy default-deny, serving)" in gap


def test_a_pod_sees_the_time_the_cluster_was_moved_to(
    kind_chart: list[dict], tmp_path: Path
) -> None:
    cluster = installed(kind_chart)
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=7, minutes=30)
    cluster.set_clock(at)
    argv = [f"{IMAGE_VENV}/bin/python", "-c", "import time; print(time.time())"]
    (tmp_path / "tmp").mkdir()
    process = start_in_sandbox(
        argv,
        {"PATH": "/usr/bin:/bin"},
        tmp_path,
        {"/tmp": tmp_path / "tmp"},
        "/",
        clock=cluster.clock,
    )
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    seen = datetime.fromtimestamp(float(output.strip().splitlines()[-1]), UTC)
    assert at <= seen < at + timedelta(minutes=5)
