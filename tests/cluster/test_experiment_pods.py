"""A user-level experiment's cluster form, run as KServe makes its pods, in both modes.

The chart with the kind values, a canary at 50 % and ``experiment.enabled``; two predictor
pods, the champion's and the candidate's, each filled by KServe's storage initializer from
the object store (:mod:`tests.cluster.kserve_pods`), and the route over them as a real nginx:

* Knative: the rolled-out revision (tagged ``prev``) and the latest (``latest``);
  :class:`KnativeRoute` is configured from the rendered InferenceService and the Knative
  config kind-up applies: untagged calls split by percent, a ``Knative-Serving-Tag`` naming a
  revision's tag goes to that revision only, but only where KServe tags the revisions (the
  chart's ``serving.kserve.io/enable-tag-routing``) and ``tag-header-based-routing`` is on.
* Standard: ``spec.predictor`` and ``spec.canary`` behind their Services; :class:`GatewayRoute`
  is the Gateway, configured from KServe's predictor HTTPRoute (computed as its controller
  does) and the chart's experiment HTTPRoute alone, with the Gateway API's precedence; the
  transformer calls the Gateway's Service with the route's host, as the chart sets it.

``mlref experiment start`` applies the ConfigMap ``ctr-experiment`` in cluster mode;
the transformer pod mounts it as the chart mounts it, filled by kubelet's atomic writer
(:mod:`tests.cluster.kubelet_volume`). Then, with the same pod running, the ConfigMap is
stopped, replaced by another experiment, and deleted, each time as kubelet refreshes a
mounted ConfigMap (a new ``..data``): the transformer follows every change without a
restart. Every row of a B user is scored by the candidate's pod, of an A user by the
champion's, and the log on the object store names the experiment and the variant.
"""

from __future__ import annotations

import contextlib
import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlref import storage
from mlref.canary.state import TAG_ROUTING_ANNOTATION, CanaryState, write_state
from mlref.experiment import control
from mlref.experiment.assign import STATE_KEY, TREATMENT, Experiment
from mlref.k8s.gateway import IngressConfig
from mlref.k8s.gateway import predictor_route as kserve_route
from mlref.k8s.knative import load_features
from mlref.k8s.kserve import DEPLOYMENT_MODE, KNATIVE, STANDARD, launch
from mlref.k8s.render import chart_value_sets, render_chart, repo_root
from mlref.monitoring.inference import read_inference_log
from mlref.serving.predictor import resolve
from mlref.serving.requests import VARIANT_HEADER, VERSION_HEADER
from mlref.training.publish import served_uri
from tests.canary.fake_kube import canary_statuses
from tests.canary.platform import Nginx
from tests.cluster import kubelet_volume
from tests.cluster.kserve_pods import (
    laptop_with_two_models,
    pod_labels,
    predictor_pod,
    predictor_route,
    transformer_pod,
)
from tests.cluster.network import Endpoint, Route, service_map
from tests.cluster.pods import installed
from tests.conftest import S3Server
from tests.k8s.test_shadow import RecordedConfigMaps
from tests.servers import wait_until
from tests.serving.conftest import KNOWN_USERS
from tests.serving.test_servers import business_rows

pytestmark = pytest.mark.slow
BUCKET = "mlref"  # values.yaml objectStore.bucket
USERS = list(KNOWN_USERS)
TAG_FEATURE = "tag-header-based-routing"


# Envoy Gateway's proxy pods for Gateway kserve/kserve-ingress-gateway (values.yaml
# serving.gateway), and the port its listener for port 80 binds in them.
GATEWAY_NAMESPACE = "envoy-gateway-system"
GATEWAY_PODS = {
    "app.kubernetes.io/name": "envoy",
    "gateway.envoyproxy.io/owning-gateway-name": "kserve-ingress-gateway",
}
GATEWAY_PORT = 10080


def kind_chart(candidate: str, mode: str, canary: bool = True) -> list[dict]:
    """``helm install -f values-kind.yaml --set experiment.enabled=true`` (and the canary)
    in deployment ``mode``."""
    values = copy.deepcopy(chart_value_sets(repo_root())["kind"])
    values["experiment"] = {"enabled": True}
    values["serving"] = {**values.get("serving", {}), "deploymentMode": mode}
    if canary:
        values["canary"] = {"enabled": True, "percent": 50, "modelUri": candidate}
    return render_chart(repo_root(), values, "kind").objects


def inference_service(objects: list[dict]) -> dict:
    return next(o for o in objects if o["kind"] == "InferenceService")


class KnativeRoute(Nginx):
    """Knative's route to the predictor, as the gateway applies it: untagged calls split by
    the latest revision's ``canaryTrafficPercent``; with the revisions tagged (KServe's
    enable-tag-routing: the rolled-out one ``prev``, the latest ``latest``) and Knative's
    tag-header-based-routing enabled, a call whose ``Knative-Serving-Tag`` names a tag goes to
    that revision alone; an unknown tag falls back to the split."""

    def route_revisions(self, isvc: dict, ports: dict[str, int], features: dict) -> None:
        percent = int(isvc["spec"]["predictor"].get("canaryTrafficPercent", 100))
        annotations = isvc["metadata"].get("annotations") or {}
        tagged = (
            annotations.get(TAG_ROUTING_ANNOTATION) == "true"
            and features.get(TAG_FEATURE) == "enabled"
        )
        tags = "".join(f"\n    {tag} tag_{tag};" for tag in ports) if tagged else ""
        upstreams = "".join(
            f"\n  upstream tag_{tag} {{ server 127.0.0.1:{port}; keepalive 8; }}"
            for tag, port in ports.items()
        )
        weights = {ports["latest"]: percent, ports["prev"]: 100 - percent}
        split = "".join(
            f"\n    server 127.0.0.1:{port} weight={weight};"
            for port, weight in weights.items()
            if weight
        )
        self.conf.write_text(
            f"""{self.preamble()}
  map $http_knative_serving_tag $revision {{
    default split;{tags}
  }}
  upstream split {{{split}
    keepalive 8;
  }}{upstreams}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass http://$revision;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream off;
    }}
  }}
}}
"""
        )
        self.apply()


class GatewayRoute(Nginx):
    """A Gateway with the HTTPRoutes of one host: a request for another host gets 404; among
    the rules whose matches hold, the one with the most header matches wins (the Gateway API's
    precedence once path matches tie: every rule here must match KServe's path ``^/.*$``), its
    backends weighted and its headers set. Supports what the predictor's routes use: header
    matches on one header name, Exact, at most one per match, the same filters on every
    rule."""

    def route_http(self, routes: list[dict], services: dict[str, int]) -> None:
        (hosts,) = {tuple(r["spec"]["hostnames"]) for r in routes}
        header, by_value, default, filters = None, {}, None, []
        for rule in (rule for r in routes for rule in r["spec"]["rules"]):
            filters.append(rule.get("filters"))
            backends = {services[b["name"]]: int(b.get("weight", 1)) for b in rule["backendRefs"]}
            for match in rule["matches"]:
                assert match["path"] == {"type": "RegularExpression", "value": "^/.*$"}, match
                headers = match.get("headers") or []
                if not headers:
                    default = backends
                    continue
                ((found),) = headers
                assert found.get("type", "Exact") == "Exact" and header in (None, found["name"])
                header = found["name"]
                by_value.setdefault(found["value"], backends)  # the first rule of a tie
        assert default is not None and all(f == filters[0] for f in filters), filters
        sets = [s for f in filters[0] or [] for s in f["requestHeaderModifier"]["set"]]
        variable = "$http_" + (header or "none").lower().replace("-", "_")
        pools = {"split": default, **{f"tag_{i}": b for i, b in enumerate(by_value.values())}}
        names = dict(zip(by_value, list(pools)[1:], strict=True))
        set_headers = "".join(f"\n      proxy_set_header {h['name']} {h['value']};" for h in sets)
        tags = "".join(f"\n    {value} {name};" for value, name in names.items())
        self.conf.write_text(
            f"""{self.preamble()}
  map {variable} $backend {{
    default split;{tags}
  }}{_upstreams(pools)}
  server {{
    listen 127.0.0.1:{self.port};
    server_name {" ".join(hosts)};
    location / {{
      proxy_pass http://$backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";{set_headers}
      proxy_next_upstream off;
    }}
  }}
  server {{
    listen 127.0.0.1:{self.port} default_server;
    return 404;
  }}
}}
"""
        )
        self.apply()


def _upstreams(pools: dict[str, dict[int, int]]) -> str:
    return "".join(
        f"\n  upstream {name} {{"
        + "".join(f"\n    server 127.0.0.1:{port} weight={w};" for port, w in ports.items() if w)
        + "\n    keepalive 8;\n  }"
        for name, ports in pools.items()
    )


def gateway_routes(objects: list[dict], isvc: dict, runtimes: list[dict], server: str) -> dict:
    """The Gateway's Service as the transformer names it (``--predictor_host``), routed to
    ``server`` through the Gateway's proxy pods, then the predictor's pods."""
    args = launch(isvc, "transformer").args
    host = args[args.index("--predictor_host") + 1]
    namespace = isvc["metadata"]["namespace"]
    predictor = Endpoint(namespace, pod_labels(isvc, "predictor"))
    port = int(launch(isvc, "predictor", runtimes).ports[0]["containerPort"])
    gateway = Endpoint(GATEWAY_NAMESPACE, GATEWAY_PODS)
    route = Route(server, ((gateway, GATEWAY_PORT), (predictor, port)))
    return {address: route for address in (host, f"{host}:80")}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def canary_pod_isvc(isvc: dict, runtimes: list[dict]) -> dict:
    """The InferenceService whose predictor pod is the Standard-mode canary's: KServe runs
    ``spec.canary``'s predictor behind Service ``<isvc>-candidate-predictor``."""
    spec = isvc["spec"]
    (entry,) = spec["canary"]
    alone = {**isvc, "spec": {**spec, "predictor": entry["predictor"]}}
    del alone["spec"]["canary"]
    ours, kserve = (
        launch(alone, "predictor", runtimes),
        launch(isvc, "predictor", runtimes, "candidate"),
    )
    assert (ours.command, ours.args, ours.env, ours.storage_uri) == (
        kserve.command,
        kserve.args,
        kserve.env,
        kserve.storage_uri,
    )
    return alone


@pytest.mark.parametrize("mode", [KNATIVE, STANDARD])
def test_each_user_is_scored_by_their_variants_pod_as_the_config_map_changes(
    s3_env: S3Server, redis_server: str, tmp_path: Path, mode: str
) -> None:
    s3 = s3_env
    laptop, candidate = laptop_with_two_models(
        s3, BUCKET, redis_server, tmp_path, ("stable", "candidate")
    )
    objects = kind_chart(candidate, mode)
    isvc = inference_service(objects)
    assert isvc["metadata"]["annotations"][DEPLOYMENT_MODE] == mode
    runtimes = [o for o in objects if o["kind"] == "ServingRuntime"]
    if mode == KNATIVE:  # the predictor is the latest revision's, the candidate's
        rolled_out, latest_isvc = inference_service(kind_chart(candidate, mode, False)), isvc
    else:  # the predictor is the stable model's, spec.canary the candidate's
        rolled_out, latest_isvc = isvc, canary_pod_isvc(isvc, runtimes)
    services = service_map(objects, {"seaweedfs": s3.endpoint, "redis": redis_server})
    cluster = installed(objects, services, store=s3)
    features = load_features(repo_root() / "manifests" / "cluster" / "knative-serving.yaml")

    # `mlref canary start` left its state on the laptop; `mlref experiment start` applies the
    # ConfigMap the transformer mounts.
    write_state(laptop, CanaryState(candidate, served_uri(laptop, "champion"), 50))
    core = RecordedConfigMaps()
    first = control.start(laptop, "ab-one", 50, core=core)
    config_map = core.maps[("mlref", "ctr-experiment")]
    cluster.objects.append(config_map)

    since = datetime.now(UTC) - timedelta(minutes=5)
    client = httpx.Client(timeout=60)
    rows = business_rows(len(USERS), seed=7)
    for row, user in zip(rows, USERS, strict=True):
        row["user_id"] = user

    def single(url: str, tag: str, row: dict) -> httpx.Response:
        answer = client.post(
            f"{url}/v1/models/ctr:predict",
            json={"instances": [{**row, "request_id": f"{mode}-{tag}-{row['user_id']}"}]},
        )
        assert answer.status_code == 200, answer.text[-2000:]
        return answer

    def scored_by_variant(url: str, tag: str, experiment: Experiment) -> None:
        """Each user's row alone: named with the user's variant and answered by its model."""
        b = experiment.variants(USERS) == TREATMENT
        assert 0 < b.sum() < len(USERS)
        for row, in_b in zip(rows, b.tolist(), strict=True):
            answer = single(url, tag, row)
            (prediction,) = answer.json()["predictions"]
            assert prediction["experiment_variant"] == ("B" if in_b else "A")
            assert answer.headers[VARIANT_HEADER] == ("canary" if in_b else "stable")
            assert answer.headers[VERSION_HEADER] == ("2" if in_b else "1")

    def unassigned(url: str) -> bool:
        return "experiment_variant" not in single(url, "probe", rows[0]).json()["predictions"][0]

    route = (KnativeRoute if mode == KNATIVE else GatewayRoute)(tmp_path / "route")
    base = tmp_path / "serving"
    second = None
    try:
        with contextlib.ExitStack() as pods:
            prev, prev_models, _ = pods.enter_context(
                predictor_pod(cluster, rolled_out, runtimes, base / "prev")
            )
            latest, latest_models, _ = pods.enter_context(
                predictor_pod(cluster, latest_isvc, runtimes, base / "latest")
            )
            # Each storage initializer fetched its own revision's model.
            assert resolve(laptop, str(prev_models)).version == "1"
            assert resolve(laptop, str(latest_models)).version == "2"
            server = f"127.0.0.1:{route.port}"
            if mode == KNATIVE:
                ports = {"prev": port_of(prev), "latest": port_of(latest)}
                route.route_revisions(isvc, ports, features)
                cluster.routes.update(predictor_route(isvc, runtimes, KNATIVE, server))
            else:  # KServe's route (the canary Ready) and the chart's, on the Gateway
                ready = {**isvc, "status": {"canaryStatuses": canary_statuses(isvc["spec"])}}
                routes = [
                    kserve_route(ready, IngressConfig(ingress_domain="example.com")),
                    *(o for o in objects if o["kind"] == "HTTPRoute"),
                ]
                assert len(routes) == 2
                services = {
                    "ctr-predictor": port_of(prev),
                    "ctr-candidate-predictor": port_of(latest),
                }
                route.route_http(routes, services)
                cluster.routes.update(gateway_routes(objects, isvc, runtimes, server))
            with transformer_pod(cluster, isvc, runtimes, base / "transformer") as (url, _):
                (volume,) = (base / "transformer").glob("*/volumes/experiment")
                assert (volume / STATE_KEY).is_symlink()  # through kubelet's ..data

                # 1. The experiment the pod started with: single rows, then one mixed batch.
                scored_by_variant(url, "one", first)
                mixed = [{**r, "request_id": f"{mode}-batch-{i}"} for i, r in enumerate(rows)]
                batch = client.post(f"{url}/v1/models/ctr:predict", json={"instances": mixed})
                assert batch.status_code == 200, batch.text[-2000:]
                assert [p["experiment_variant"] for p in batch.json()["predictions"]] == [
                    "B" if b else "A" for b in (first.variants(USERS) == TREATMENT).tolist()
                ]

                # 2. `mlref experiment stop`: the ConfigMap says stopped; kubelet refreshes it.
                control.stop(laptop, core=core)
                kubelet_volume.refresh(volume, core.maps[("mlref", "ctr-experiment")]["data"])
                wait_until(lambda: unassigned(url), 30.0, "the transformer to see the stop")

                # 3. Another experiment, another salt and split: the pod follows it.
                second = control.start(laptop, "ab-two", 30, salt="other", core=core)
                kubelet_volume.refresh(volume, core.maps[("mlref", "ctr-experiment")]["data"])
                wait_until(lambda: not unassigned(url), 30.0, "the transformer to see ab-two")
                scored_by_variant(url, "two", second)

                # 4. The ConfigMap deleted: the optional volume loses its key.
                kubelet_volume.refresh(volume, {})
                wait_until(lambda: unassigned(url), 30.0, "the transformer to see no experiment")
                assert not (volume / STATE_KEY).exists()
    finally:
        route.stop()

    assert cluster.refused == []
    # The transformer flushed its log on stop: each experiment's rows, by user.
    until = datetime.now(UTC) + timedelta(minutes=5)
    storage.filesystem(laptop.inference_log_uri)[0].invalidate_cache()  # listed before
    log = read_inference_log(laptop, since, until)
    for tag, experiment in (("one", first), ("two", second)):
        ours = log[log["request_id"].str.startswith(f"{mode}-{tag}-")].sort_values("user_id")
        assert ours["user_id"].tolist() == USERS  # each row once
        in_b = experiment.variants(ours["user_id"].to_numpy()) == TREATMENT
        assert (ours["experiment"] == experiment.name).all()
        assert (ours["experiment_variant"] == np.where(in_b, "B", "A")).all()
        assert (ours["variant"] == np.where(in_b, "canary", "stable")).all()
        assert (ours["model_version"] == np.where(in_b, "2", "1")).all()
    batch = log[log["request_id"].str.startswith(f"{mode}-batch-")]
    assert len(batch) == len(USERS) and (batch["experiment"] == first.name).all()
    in_b = first.variants(batch["user_id"].to_numpy()) == TREATMENT
    assert (batch["model_version"] == np.where(in_b, "2", "1")).all()
