"""The predictor HTTPRoute KServe makes in Standard mode, and the chart's transformer aimed at it.

Expected values follow kserve/kserve at aaac4e29 (v0.21):
pkg/controller/v1beta1/inferenceservice/reconcilers/ingress/httproute_reconciler.go
(createRawPredictorHTTPRoute, applyCanaryWeights, Reconcile) and .../ingress/domain.go.
"""

from __future__ import annotations

import copy

import pytest

from mlref.k8s.checks import HOST_HEADER_ENV, gateway_problems
from mlref.k8s.gateway import IngressConfig, backend_weights, predictor_route
from mlref.k8s.kserve import launch
from tests.k8s.conftest import COMMAND, find, form


def _standard(forms) -> tuple[dict, list[dict]]:
    """A copy of the chart's Standard canary InferenceService, and the form's other objects."""
    objects = form(forms, "chart:standard-canary").objects
    isvc = find(objects, "InferenceService", "ctr")
    return copy.deepcopy(isvc), [o for o in objects if o is not isvc]


def _ready(isvc: dict, ready: bool = True) -> dict:
    out = copy.deepcopy(isvc)
    out["status"] = {
        "canaryStatuses": [
            {"name": c["predictor"]["name"], "ready": ready, "trafficPercent": c["trafficPercent"]}
            for c in out["spec"]["canary"]
        ]
    }
    return out


def test_route_weights_a_ready_canary(forms):
    isvc, _ = _standard(forms)
    route = predictor_route(_ready(isvc))
    assert route["metadata"] == {"name": "ctr-predictor", "namespace": "mlref"}
    assert route["spec"]["hostnames"] == ["ctr-predictor-mlref.example.com"]
    assert route["spec"]["parentRefs"][0]["namespace"] == "kserve"
    assert route["spec"]["parentRefs"][0]["name"] == "kserve-ingress-gateway"
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "RegularExpression", "value": "^/.*$"}}]
    assert rule["timeouts"] == {"request": "60s"}
    assert {b["port"] for b in rule["backendRefs"]} == {80}
    assert backend_weights(route) == {"ctr-predictor": 90, "ctr-candidate-predictor": 10}


def test_canary_gets_no_traffic_until_reported_ready(forms):
    isvc, _ = _standard(forms)
    assert backend_weights(predictor_route(isvc)) == {"ctr-predictor": 100}  # no status yet
    assert backend_weights(predictor_route(_ready(isvc, False))) == {"ctr-predictor": 100}


def test_no_canary_is_one_unweighted_backend(forms):
    isvc, _ = _standard(forms)
    del isvc["spec"]["canary"]
    route = predictor_route(isvc)
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"kind": "Service", "name": "ctr-predictor", "namespace": "mlref", "port": 80}
    ]


def test_domain_template_and_timeout(forms):
    isvc, _ = _standard(forms)
    isvc["spec"]["predictor"]["timeoutSeconds"] = 5
    ingress = IngressConfig(
        ingress_domain="models.internal",
        domain_template="{{ .Name }}.{{ .Namespace }}.{{ .IngressDomain }}",
    )
    route = predictor_route(isvc, ingress)
    assert route["spec"]["hostnames"] == ["ctr-predictor.mlref.models.internal"]
    assert route["spec"]["rules"][0]["timeouts"] == {"request": "5s"}
    no_timeout = IngressConfig(disable_http_route_timeout=True)
    assert "timeouts" not in predictor_route(isvc, no_timeout)["spec"]["rules"][0]


@pytest.mark.parametrize(
    "change",
    [
        lambda isvc, ing: (isvc, IngressConfig(enable_gateway_api=False)),
        lambda isvc, ing: (isvc, IngressConfig(disable_ingress_creation=True)),
        lambda isvc, ing: (isvc, IngressConfig(ingress_domain="svc.cluster.local")),
        lambda isvc, ing: (
            {
                **isvc,
                "metadata": {
                    **isvc["metadata"],
                    "labels": {"networking.kserve.io/visibility": "cluster-local"},
                },
            },
            ing,
        ),
        lambda isvc, ing: (
            {
                **isvc,
                "metadata": {
                    **isvc["metadata"],
                    "annotations": {"serving.kserve.io/deploymentMode": "Knative"},
                },
            },
            ing,
        ),
    ],
    ids=["no-gateway-api", "ingress-off", "cluster-local-domain", "cluster-local", "knative"],
)
def test_no_route_where_kserve_makes_none(forms, change):
    isvc, _ = _standard(forms)
    assert predictor_route(*change(isvc, IngressConfig())) is None


def test_chart_standard_transformer_calls_the_gateway_with_the_route_host(forms):
    isvc, others = _standard(forms)
    started = launch(isvc, "transformer")
    argv = started.argv
    assert argv[argv.index("--predictor_host") + 1] == (
        "kserve-ingress-gateway.envoy-gateway-system"
    )
    assert argv.count("--predictor_host") == 1  # KServe appends none of its own
    assert started.literal_env()[HOST_HEADER_ENV] == predictor_route(isvc)["spec"]["hostnames"][0]
    assert gateway_problems([*others, isvc], COMMAND) == {}
    knative = find(form(forms, "chart:canary").objects, "InferenceService", "ctr")
    assert "--predictor_host" not in knative["spec"]["transformer"]["containers"][0]["args"]


def test_transformer_calling_the_predictor_service_is_flagged(forms):
    bypass, others = _standard(forms)
    container = bypass["spec"]["transformer"]["containers"][0]
    container["args"] = container["args"][: container["args"].index("--predictor_host")]
    container["env"] = [e for e in container["env"] if e["name"] != HOST_HEADER_ENV]
    problems = dict(gateway_problems([*others, bypass], COMMAND))[("InferenceService", "ctr")]
    text = " ".join(message for _, message in problems)
    assert "ctr-predictor.mlref is the predictor Service" in text
    assert "serving.gateway.service" in text and "serving.gateway.domain" in text
    assert "ctr-predictor-mlref.example.com" in text
    # The header alone does not help while the transformer calls the Service directly.
    container["env"].append({"name": HOST_HEADER_ENV, "value": "ctr-predictor-mlref.example.com"})
    (only,) = dict(gateway_problems([*others, bypass], COMMAND))[("InferenceService", "ctr")]
    assert "bypasses the canary's traffic split" in only[1]
