"""docs/cluster.md tells kind users the port-forward and Host header that reach the model.

The hosts are computed here as Knative and KServe compute them for the rendered
InferenceService: Knative's DefaultDomainTemplate (knative.dev/networking) over the
transformer's Knative Service and the domain manifests/cluster/knative-serving.yaml sets
(Knative mode, Kourier: KServe makes no top-level route), and KServe's ingress domainTemplate
over the InferenceService (Standard mode, the top-level HTTPRoute). Kourier's Service is
net-kourier's config/300-gateway.yaml (knative-v1.21.0): kourier, kourier-system, port 80.
"""

from __future__ import annotations

import yaml

from mlref.k8s.gateway import IngressConfig
from mlref.k8s.kserve import fill_template
from tests.k8s.conftest import find, form

KNATIVE_DOMAIN_TEMPLATE = "{{.Name}}.{{.Namespace}}.{{.Domain}}"


def _knative_domain(root) -> str:
    documents = yaml.safe_load_all((root / "manifests/cluster/knative-serving.yaml").read_text())
    (domain,) = next(d for d in documents if d["metadata"]["name"] == "config-domain")["data"]
    return domain


def test_docs_give_the_port_forward_and_host_that_reach_the_model(forms, root):
    docs = (root / "docs" / "cluster.md").read_text()
    isvc = find(form(forms, "chart:kind").objects, "InferenceService", "ctr")
    metadata = isvc["metadata"]
    transformer = {**metadata, "name": f"{metadata['name']}-transformer"}
    knative_host = fill_template(KNATIVE_DOMAIN_TEMPLATE, transformer, Domain=_knative_domain(root))
    ingress = IngressConfig()
    standard_host = fill_template(
        ingress.domain_template, metadata, IngressDomain=ingress.ingress_domain
    )
    assert (knative_host, standard_host) == (
        "ctr-transformer.mlref.example.com",
        "ctr-mlref.example.com",
    )
    assert "kubectl -n kourier-system port-forward svc/kourier 8090:80" in docs
    assert f'-H "Host: {knative_host}"' in docs
    assert "kubectl -n envoy-gateway-system port-forward svc/kserve-ingress-gateway" in docs
    assert f"`Host: {standard_host}`" in docs
    assert f"Endpoint: http://{knative_host}" in docs  # what kind-up prints in Knative mode


def test_docs_say_how_to_switch_deployment_mode(root):
    """KServe refuses a deployment-mode change (validateDeploymentMode): re-runs of kind-up
    converge only in the same mode, and the docs name the way out."""
    docs = (root / "docs" / "cluster.md").read_text()
    assert "kubectl -n mlref delete inferenceservice ctr" in docs
    assert "validateDeploymentMode" in docs
