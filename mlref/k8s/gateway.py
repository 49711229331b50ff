"""The Gateway API HTTPRoute KServe's controller makes for a Standard-mode predictor.

In Standard (RawDeployment) mode a canary's ``trafficPercent`` becomes weighted backends on
this route and nowhere else, so a transformer reaches the canary only by calling the Gateway
with the route's host. Computed here from an InferenceService and its status the way KServe
v0.21 does (kserve/kserve at aaac4e29), so that a stand-in Gateway can be configured from it
and the chart's transformer settings can be checked against it:

* ``pkg/controller/v1beta1/inferenceservice/reconcilers/ingress/httproute_reconciler.go``:
  ``Reconcile`` (no route when ingress creation is disabled, the InferenceService is labelled
  ``networking.kserve.io/visibility: cluster-local``, or the ingress domain is
  ``svc.cluster.local``), ``createRawPredictorHTTPRoute`` (route and host named after
  ``<isvc>-predictor`` without the predictor's name, backends after the predictor Service;
  one rule matching every path, ``KServe-Isvc-Name``/``-Namespace`` set, timeout
  ``timeoutSeconds`` or 60s; parent: the ``kserveIngressGateway`` ``<namespace>/<name>``),
  ``applyCanaryWeights`` (stable weight 100 minus the Ready canaries' percents; a canary
  takes its ``trafficPercent`` only once ``status.canaryStatuses`` reports it Ready);
* ``.../ingress/domain.go`` ``GenerateDomainName``: the host is the ingress ``domainTemplate``
  (default ``{{ .Name }}-{{ .Namespace }}.{{ .IngressDomain }}``) over the route name;
* ``.../reconcilers/service/service_reconciler.go`` ``createDefaultSvc``: the predictor
  Service's first port is 80 (``constants.CommonDefaultHttpPort``), the backend port. A
  predictor with a gRPC port gets a second rule upstream; mlref's runtime serves HTTP only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlref.k8s.kserve import STANDARD, deployment_mode, fill_template, predictor_service_name

GATEWAY_API = "gateway.networking.k8s.io/v1"
VISIBILITY_LABEL = "networking.kserve.io/visibility"
CLUSTER_LOCAL = "cluster-local"
CLUSTER_LOCAL_DOMAIN = "svc.cluster.local"
SERVICE_PORT = 80
DEFAULT_TIMEOUT_SECONDS = 60
ANY_PATH = "^/.*$"  # constants.FallbackPrefix()


@dataclass(frozen=True)
class IngressConfig:
    """The ``ingress`` entry of KServe's ``inferenceservice-config`` ConfigMap (the fields the
    predictor route depends on), defaults as in config/configmap/inferenceservice.yaml."""

    enable_gateway_api: bool = True
    kserve_ingress_gateway: str = "kserve/kserve-ingress-gateway"
    ingress_domain: str = "example.com"
    domain_template: str = "{{ .Name }}-{{ .Namespace }}.{{ .IngressDomain }}"
    disable_ingress_creation: bool = False
    disable_http_route_timeout: bool = False


def predictor_route_host(isvc: dict[str, Any], ingress: IngressConfig = IngressConfig()) -> str:
    """The host the predictor's HTTPRoute answers: the domain template over ``<isvc>-predictor``
    (the route keeps this name through a canary promotion)."""
    metadata = isvc.get("metadata") or {}
    route = {**metadata, "name": predictor_service_name(metadata.get("name", ""))}
    return fill_template(ingress.domain_template, route, IngressDomain=ingress.ingress_domain)


def predictor_route(
    isvc: dict[str, Any], ingress: IngressConfig = IngressConfig()
) -> dict[str, Any] | None:
    """The predictor HTTPRoute of a Standard-mode ``isvc`` (its status read for canary
    readiness), or None where KServe makes none: Knative mode, no Gateway API, ingress off."""
    metadata = isvc.get("metadata") or {}
    labels = metadata.get("labels") or {}
    if (
        deployment_mode(isvc) != STANDARD
        or not ingress.enable_gateway_api
        or ingress.disable_ingress_creation
        or labels.get(VISIBILITY_LABEL) == CLUSTER_LOCAL
        or ingress.ingress_domain == CLUSTER_LOCAL_DOMAIN
    ):
        return None
    name, namespace = metadata.get("name", ""), metadata.get("namespace", "")
    spec = isvc.get("spec") or {}
    predictor = spec.get("predictor") or {}
    gateway_namespace, gateway_name = ingress.kserve_ingress_gateway.split("/", 1)
    rule: dict[str, Any] = {
        "matches": [{"path": {"type": "RegularExpression", "value": ANY_PATH}}],
        "filters": [
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {
                    "set": [
                        {"name": "KServe-Isvc-Name", "value": name},
                        {"name": "KServe-Isvc-Namespace", "value": namespace},
                    ]
                },
            }
        ],
        "backendRefs": _backends(isvc, name, namespace, predictor),
    }
    if not ingress.disable_http_route_timeout:
        timeout = predictor.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)
        rule["timeouts"] = {"request": f"{timeout}s"}
    return {
        "apiVersion": GATEWAY_API,
        "kind": "HTTPRoute",
        "metadata": {"name": predictor_service_name(name), "namespace": namespace},
        "spec": {
            "hostnames": [predictor_route_host(isvc, ingress)],
            "parentRefs": [
                {
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "namespace": gateway_namespace,
                    "name": gateway_name,
                }
            ],
            "rules": [rule],
        },
    }


def _backend(service: str, namespace: str) -> dict[str, Any]:
    return {"kind": "Service", "name": service, "namespace": namespace, "port": SERVICE_PORT}


def _backends(
    isvc: dict[str, Any], name: str, namespace: str, predictor: dict[str, Any]
) -> list[dict[str, Any]]:
    """applyCanaryWeights: the stable Service, then each Ready canary with its percent."""
    stable = _backend(predictor_service_name(name, predictor.get("name", "")), namespace)
    canaries = (isvc.get("spec") or {}).get("canary") or []
    if not canaries:
        return [stable]
    statuses = (isvc.get("status") or {}).get("canaryStatuses") or []
    ready = {s.get("name"): bool(s.get("ready")) for s in statuses}
    weighted = [
        {
            **_backend(predictor_service_name(name, c["predictor"]["name"]), namespace),
            "weight": int(c.get("trafficPercent", 0)),
        }
        for c in canaries
        if ready.get((c.get("predictor") or {}).get("name"))
    ]
    return [{**stable, "weight": 100 - sum(b["weight"] for b in weighted)}, *weighted]


def backend_weights(route: dict[str, Any]) -> dict[str, int]:
    """Service name -> weight of the route's (single) rule; an unweighted backend takes 1, as
    Gateway API defaults it."""
    (rule,) = route["spec"]["rules"]
    return {b["name"]: int(b.get("weight", 1)) for b in rule["backendRefs"]}


EXPERIMENT_SUFFIX = "-experiment"


def experiment_route_name(isvc_name: str) -> str:
    return predictor_service_name(isvc_name) + EXPERIMENT_SUFFIX


def experiment_route(
    isvc: dict[str, Any],
    header: str,
    host: str,
    tags: dict[str, str],
    ingress: IngressConfig = IngressConfig(),
) -> dict[str, Any] | None:
    """The HTTPRoute that sends a user-level experiment's tagged calls to their variant's
    predictor Service in Standard mode, where KServe's route splits by weight only.

    ``tags``: header value -> predictor Service. Each rule is KServe's rule (same path match,
    headers set, timeout) with one header match more and that Service as its only backend, on
    the same Gateway and ``host`` (the one the transformer sends). The Gateway API gives a
    match with more header matches precedence over KServe's rule once the path matches tie
    (HTTPRouteRule.matches: exact path, longest prefix, method, then the largest number of
    header matches; RegularExpression path precedence is implementation-specific, so the path
    match is KServe's own). None where KServe makes no predictor route."""
    spec = isvc.get("spec") or {}
    kserve = predictor_route({**isvc, "spec": {**spec, "canary": []}}, ingress)
    if kserve is None:
        return None
    name = (isvc.get("metadata") or {}).get("name", "")
    namespace = kserve["metadata"]["namespace"]
    (rule,) = kserve["spec"]["rules"]
    (path,) = rule["matches"]
    rules = [
        {
            **rule,
            "matches": [{**path, "headers": [{"type": "Exact", "name": header, "value": tag}]}],
            "backendRefs": [_backend(service, namespace)],
        }
        for tag, service in tags.items()
    ]
    return {
        "apiVersion": GATEWAY_API,
        "kind": "HTTPRoute",
        "metadata": {"name": experiment_route_name(name), "namespace": namespace},
        "spec": {"hostnames": [host], "parentRefs": kserve["spec"]["parentRefs"], "rules": rules},
    }
