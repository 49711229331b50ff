"""The rendered InferenceService's pods: predictor and transformer, as KServe starts them.

KServe's controller turns the InferenceService into one pod per component; what each
container runs is :func:`mlref.k8s.kserve.launch` (the ServingRuntime merged with
``spec.predictor.model``, the flags KServe appends to the transformer, ``INFERENCE_SERVICE_NAME``
and Knative's ``PORT``/``K_*``). Each becomes a Pod here (:func:`component_pod`):

* labels as KServe gives the component's pods (the InferenceService's labels,
  ``serving.kserve.io/inferenceservice`` and ``component``: what the chart's NetworkPolicies
  select on);
* the component's ``serviceAccountName`` and pod ``securityContext``, the container's own
  ``securityContext``, ``volumeMounts`` and the component's volumes (the runtime's for the
  predictor);
* for a ``storageUri``, what KServe's pod mutator adds (``pkg/webhook/admission/pod/
  storage_initializer_injector.go``): the emptyDir ``kserve-provision-location``, mounted
  read-only at ``/mnt/models`` in ``kserve-container``, filled first by the storage
  initializer (:func:`tests.cluster.kserve_credentials.run_storage_initializer`), an init
  container of the pod: its connections (the object store's) are the pod's, allowed or
  refused by the NetworkPolicies that select the pod's labels, egress ones included.

They run as every other pod does (:func:`tests.cluster.pods.pod_command`), only their listening
address moved to a free 127.0.0.1 port. The transformer reaches the predictor by the host
KServe gives it (``--predictor_host <isvc>-predictor.<namespace>``, port 80): in Knative mode
through Kourier's gateway (``kourier-system``, which kind-up installs) to the revision's pod,
in Standard mode straight to the predictor's pods; each hop must be allowed by the rendered
NetworkPolicies (:class:`tests.cluster.network.Route`).

Not emulated: Knative's queue-proxy and activator (the gateway and the revision's pod are the
hops checked, the predictor answers directly), probes other than waiting for the readiness
path once, autoscaling, the logger and batcher KServe may inject.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mlref.k8s.kserve import CONTAINER, KNATIVE, Launch, launch, predictor_service_name
from mlref.settings import Settings
from mlref.training.publish import publish, publish_champion
from tests.cluster.conftest import listen_locally
from tests.cluster.kserve_credentials import run_storage_initializer
from tests.cluster.network import Endpoint, Route
from tests.cluster.pods import Cluster, PodCommand, PodFailed, pod_command, stop_in_sandbox
from tests.conftest import S3Server
from tests.servers import free_port
from tests.serving.conftest import KNOWN_ADS, KNOWN_USERS, build_features
from tests.serving.model import build_model

PROVISION_VOLUME = "kserve-provision-location"  # constants.StorageInitializerVolumeName
MODEL_DIR = "/mnt/models"  # constants.DefaultModelLocalMountPath
# Kourier's gateway pods (net-kourier config/300-gateway.yaml), behind ``kourier-internal``.
GATEWAY = Endpoint("kourier-system", {"app": "3scale-kourier-gateway"})
GATEWAY_PORT = 8081  # kourier-internal's targetPort
QUEUE_PORT = 8012  # the revision pod's queue-proxy, where the gateway sends requests


def pod_labels(isvc: dict[str, Any], component: str) -> dict[str, str]:
    """The labels KServe puts on a component's pods."""
    metadata = isvc.get("metadata") or {}
    return {
        **(metadata.get("labels") or {}),
        "serving.kserve.io/inferenceservice": metadata["name"],
        "component": component,
    }


def component_pod(
    isvc: dict[str, Any], component: str, runtimes: list[dict[str, Any]]
) -> tuple[dict[str, Any], Launch]:
    """The Pod KServe makes for ``component`` (transformer or predictor), and its launch."""
    started = launch(isvc, component, runtimes)
    spec = isvc["spec"][component]
    volumes = list(spec.get("volumes") or [])
    source = (spec.get("containers") or [{}])[0]  # where the probes come from
    if component == "predictor":
        runtime_name = (spec.get("model") or {}).get("runtime", "")
        runtime = next((r for r in runtimes if r["metadata"]["name"] == runtime_name), {})
        volumes = [*(runtime.get("spec", {}).get("volumes") or []), *volumes]
        source = next(
            (c for c in runtime.get("spec", {}).get("containers", []) if c["name"] == CONTAINER),
            {},
        )
    mounts = list(started.volume_mounts)
    if started.storage_uri:
        if started.container != CONTAINER:
            raise PodFailed(
                f"no container named {CONTAINER} for the storage initializer to serve "
                f"(container {started.container!r}): the pod mutator refuses the pod"
            )
        volumes.append({"name": PROVISION_VOLUME, "emptyDir": {}})
        mounts.append({"name": PROVISION_VOLUME, "mountPath": MODEL_DIR, "readOnly": True})
    container = {
        "name": started.container,
        "command": started.command,
        "args": started.args,
        "env": started.env,
        "envFrom": started.env_from,
        "ports": started.ports,
        "volumeMounts": mounts,
        "securityContext": started.security_context,
        "readinessProbe": source.get("readinessProbe") or {},
    }
    name = f"{isvc['metadata']['name']}-{component}"
    pod = {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": isvc["metadata"].get("namespace", "mlref"),
            "labels": pod_labels(isvc, component),
        },
        "spec": {
            "serviceAccountName": spec.get("serviceAccountName", "default"),
            "securityContext": spec.get("securityContext") or {},
            "containers": [container],
            "volumes": volumes,
        },
    }
    return pod, started


def predictor_route(
    isvc: dict[str, Any], runtimes: list[dict[str, Any]], mode: str, server: str
) -> dict[str, Route]:
    """The predictor host's in-cluster names (with and without port 80), routed to
    ``server`` through the hops a request takes in ``mode``."""
    metadata = isvc["metadata"]
    namespace = metadata.get("namespace", "mlref")
    predictor = Endpoint(namespace, pod_labels(isvc, "predictor"))
    port = int((launch(isvc, "predictor", runtimes).ports or [{}])[0].get("containerPort", 8080))
    hops = (
        ((GATEWAY, GATEWAY_PORT), (predictor, QUEUE_PORT))
        if mode == KNATIVE
        else ((predictor, port),)
    )
    base = f"{predictor_service_name(metadata['name'], isvc['spec']['predictor'].get('name', ''))}"
    names = [
        f"{base}.{namespace}.svc.cluster.local",
        f"{base}.{namespace}.svc",
        f"{base}.{namespace}",
    ]
    route = Route(server, hops)
    return {address: route for name in names for address in (f"{name}:80", name)}


@dataclass
class Serving:
    """The running predictor and transformer pods (and the shadow's predictor, if any)."""

    transformer_url: str  # http://127.0.0.1:PORT, the transformer's container port
    predictor_url: str
    models: Path  # the predictor pod's /mnt/models, as the storage initializer filled it
    logs: dict[str, Path] = field(default_factory=dict)
    shadow_url: str = ""
    shadow_models: Path | None = None


def _ready(url: str, process: subprocess.Popen, log: Path, what: str, timeout: float) -> None:
    """Wait for ``url`` to answer 200 while the pod runs."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise PodFailed(f"{what} did not become ready at {url}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _start(
    command: PodCommand, container: dict[str, Any], name: str, base: Path
) -> tuple[subprocess.Popen, str, Path]:
    """The container on a free 127.0.0.1 port; waits on its readiness probe's path."""
    port = free_port()
    container_port = container["ports"][0]["containerPort"]
    command.argv = listen_locally(command.argv, container_port, port)
    log = base / f"{name}.log"
    with log.open("w") as out:
        process = command.start(out)
    return process, f"http://127.0.0.1:{port}", log


def _probe(container: dict[str, Any]) -> str:
    """The path of the container's HTTP readiness probe (``/`` without one)."""
    return (container.get("readinessProbe") or {}).get("httpGet", {}).get("path", "/")


@contextlib.contextmanager
def predictor_pod(
    cluster: Cluster, isvc: dict[str, Any], runtimes: list[dict[str, Any]], base: Path
) -> Iterator[tuple[str, Path, Path]]:
    """The InferenceService's predictor (its storage initializer first), reachable by its
    in-cluster names from pods made from now on; yields (url, /mnt/models, log) and stops it
    as the kubelet does."""
    base.mkdir(parents=True, exist_ok=True)
    pod, started = component_pod(isvc, "predictor", runtimes)
    container = pod["spec"]["containers"][0]
    predictor = pod_command(pod, cluster, base)
    models = predictor.volumes[MODEL_DIR]
    fetched = run_storage_initializer(cluster, isvc, models, base, predictor.network)
    if fetched.returncode != 0:
        refused = cluster.record_refusals(predictor.network)
        gaps = "".join(f"\nNetworkPolicy refused {r}" for r in refused)
        raise PodFailed(f"storage initializer failed:\n{fetched.stdout[-3000:]}{gaps}")
    process, url, log = _start(predictor, container, pod["metadata"]["name"], base)
    try:
        _ready(url + _probe(container), process, log, f"{pod['metadata']['name']} pod", 180)
        routes = predictor_route(isvc, runtimes, started.mode, url.removeprefix("http://"))
        cluster.routes.update(routes)
        yield url, models, log
    finally:
        stop_in_sandbox(process)
        cluster.record_refusals(predictor.network)


@contextlib.contextmanager
def transformer_pod(
    cluster: Cluster, isvc: dict[str, Any], runtimes: list[dict[str, Any]], base: Path
) -> Iterator[tuple[str, Path]]:
    """The InferenceService's transformer; yields (url, log), then stops it as the kubelet
    does (it flushes its log). What a NetworkPolicy refused it is in ``cluster.refused``."""
    base.mkdir(parents=True, exist_ok=True)
    pod, _ = component_pod(isvc, "transformer", runtimes)
    container = pod["spec"]["containers"][0]
    transformer = pod_command(pod, cluster, base)
    process, url, log = _start(transformer, container, "transformer", base)
    try:
        try:
            _ready(url + _probe(container), process, log, "transformer pod", 180)
        except PodFailed as exc:
            refused = transformer.network.close()
            gaps = "".join(f"\nNetworkPolicy refused {r}" for r in refused)
            raise PodFailed(f"{exc}{gaps}") from None
        yield url, log
    finally:
        stop_in_sandbox(process)
        cluster.record_refusals(transformer.network)


@contextlib.contextmanager
def serving_pods(
    cluster: Cluster,
    isvc: dict[str, Any],
    runtimes: list[dict[str, Any]],
    base: Path,
    shadow: dict[str, Any] | None = None,
) -> Iterator[Serving]:
    """Predictor, the ``shadow`` InferenceService's predictor if given, then transformer,
    running until the block ends; then stopped in reverse (the transformer drains first).
    What a NetworkPolicy refused them is in ``cluster.refused``."""
    with contextlib.ExitStack() as pods:
        url, models, log = pods.enter_context(predictor_pod(cluster, isvc, runtimes, base))
        serving = Serving("", url, models, {"predictor": log})
        if shadow is not None:
            serving.shadow_url, serving.shadow_models, serving.logs["shadow"] = pods.enter_context(
                predictor_pod(cluster, shadow, runtimes, base)
            )
        serving.transformer_url, serving.logs["transformer"] = pods.enter_context(
            transformer_pod(cluster, isvc, runtimes, base)
        )
        yield serving


def laptop_with_two_models(
    s3: S3Server,
    bucket: str,
    redis_server: str,
    tmp_path: Path,
    run_ids: tuple[str, str],
    **sections: Any,
) -> tuple[Settings, str]:
    """The laptop: cluster settings as the ConfigMap gives them, with ``bucket`` (emptied)
    as the storage root. It computes the online features and publishes two models, as the
    pipeline's pods would: version 1 the champion, version 2 (``run_ids``, one each) the
    other; returns the settings and version 2's served URI."""
    s3.create_bucket(bucket)
    laptop = Settings(
        mode="cluster",
        work_dir=tmp_path / "laptop",
        storage={"root": f"s3://{bucket}"},
        features={"redis_connection": redis_server},
        **sections,
    )
    build_features(laptop, KNOWN_USERS, KNOWN_ADS)
    first, second = run_ids
    publish(laptop, "1", build_model(tmp_path / "v1" / "model.onnx", laptop, seed=0), first)
    publish_champion(laptop, "1")
    model = build_model(tmp_path / "v2" / "model.onnx", laptop, seed=1)
    return laptop, publish(laptop, "2", model, second)
