"""Install defects on kind, each checked on the rendered forms against upstream behaviour.

Upstream (versions pinned in scripts/kind-up.sh): Helm v3.21 / v4.2 pkg/kube/ready.go,
statuswait.go and pkg/action/hooks.go; KServe v0.21 inference_service_validation.go,
pkg/utils/storage.go, pkg/credentials/s3/s3_secret.go, reconcilers/ingress/
httproute_reconciler.go and hack/setup (Gateway API, Envoy Gateway); Knative Serving v1.21.1
pkg/apis/config/features.go and pkg/deployment/config.go.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlref.cli import app
from mlref.k8s.checks import (
    HOST_HEADER_ENV,
    canary_problems,
    container_problems,
    helm_wait_problems,
    optional_api_problems,
    s3_annotation_problems,
    service_monitor_problems,
)
from mlref.k8s.gateway import IngressConfig, predictor_route_host
from mlref.k8s.install import IDENTITIES, IDENTITIES_KEY, IDENTITIES_SECRET, kind_objects
from mlref.k8s.knative import feature_problems
from mlref.k8s.kserve import launch
from mlref.k8s.render import MONITORING_API, render_chart
from mlref.k8s.stages import stage_problems
from mlref.pipelines.runner import COMPILED
from mlref.settings import Settings
from tests.k8s.conftest import find, form
from tests.k8s.test_scripts import commands

STAGES = ("canary", "promote", "rollback", "log-sink", "shadow", "experiment")
runner = CliRunner()


def _kinds(objects):
    return {(o["apiVersion"], o["kind"]) for o in objects}


def _script(root: Path) -> str:
    return (root / "scripts" / "kind-up.sh").read_text()


def _script_value(root: Path, name: str) -> str:
    return re.search(rf'^{name}="([^"]+)"', _script(root), re.MULTILINE).group(1)


def test_chart_installs_on_a_cluster_without_the_prometheus_operator(root):
    bare = render_chart(root, {}, "bare")
    assert not [o for o in bare.objects if o["apiVersion"] == MONITORING_API]
    assert not [p for o in bare.objects for p in optional_api_problems(o, set())]


def test_chart_renders_monitoring_where_the_api_is_served(root):
    served = render_chart(root, {}, "served", api_versions=[MONITORING_API])
    kinds = [o["kind"] for o in served.objects if o["apiVersion"] == MONITORING_API]
    assert sorted(kinds) == ["PrometheusRule", "ServiceMonitor", "ServiceMonitor"]
    off = render_chart(
        root, {"monitoring": {"enabled": False}}, "off", api_versions=[MONITORING_API]
    )
    assert not [o for o in off.objects if o["apiVersion"] == MONITORING_API]
    (monitor,) = [o for o in served.objects if o["kind"] == "PrometheusRule"]
    assert optional_api_problems(monitor, set())  # the check names what a bare cluster lacks


def test_kustomize_forms_for_kind_apply_without_the_operator(forms):
    for rendered in forms:
        monitoring = [k for k in _kinds(rendered.objects) if k[0] == MONITORING_API]
        if rendered.source in {"overlay:monitoring", "chart:monitoring"}:
            assert len(monitoring) == 2, rendered.source
        else:
            assert not monitoring, rendered.source


def test_helm_wait_does_not_wait_on_the_drift_state_claim(forms):
    for rendered in forms:
        if rendered.api_versions is None:
            continue
        assert helm_wait_problems(rendered.objects) == {}, rendered.source
        claim = find(rendered.objects, "PersistentVolumeClaim", "drift-state")
        assert claim["metadata"]["annotations"]["helm.sh/hook"] == "pre-install"
    objects = copy.deepcopy(form(forms, "chart:kind").objects)
    del find(objects, "PersistentVolumeClaim", "drift-state")["metadata"]["annotations"]
    assert ("PersistentVolumeClaim", "drift-state") in helm_wait_problems(objects)


@pytest.mark.parametrize(
    ("variable", "package", "tag_prefix"),
    [("KSERVE_VERSION", "kserve", "v"), ("KFP_VERSION", "kfp", "")],
)
def test_kind_up_installs_the_backend_of_the_sdks_version(root, variable, package, tag_prefix):
    """One KServe and one Kubeflow Pipelines: the controller or backend kind-up installs is
    the release of the Python SDK the image ships (constraints.txt)."""
    assert _script_value(root, variable) == f"{tag_prefix}{version(package)}"


def test_kserve_mode_names_are_the_charts(root):
    """KServe v0.21's deployment modes, as the chart's schema allows them."""
    schema = (root / "helm" / "mlref" / "values.schema.json").read_text()
    assert '"enum": ["Knative", "Standard"]' in schema


def test_standard_canary_passes_kserves_webhook(forms):
    isvc = find(form(forms, "chart:standard-canary").objects, "InferenceService", "ctr")
    assert "maxReplicas" not in isvc["spec"]["canary"][0]["predictor"]
    assert canary_problems(isvc) == []
    broken = copy.deepcopy(isvc)
    broken["spec"]["canary"][0]["predictor"]["maxReplicas"] = 3
    assert [p for p, _ in canary_problems(broken)] == ["spec.canary.0.predictor.maxReplicas"]


def test_knative_features_cover_the_pod_fields(forms, knative_features, root):
    objects = form(forms, "overlay:kind").objects
    assert feature_problems(objects, knative_features) == {}
    missing = feature_problems(objects, {})[("InferenceService", "ctr")]
    assert {path for path, _ in missing} == {
        "spec.predictor.securityContext",
        "spec.transformer.securityContext",
    }
    assert "manifests/cluster/knative-serving.yaml" in _script(root)


def _mlref_images(objects):
    for obj in objects:
        for container in _containers(obj):
            if "mlref" in container.get("image", "") and "seaweedfs" not in container["image"]:
                yield container["image"]


def _containers(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"containers", "initContainers"} and isinstance(value, list):
                yield from value
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def test_kind_runs_an_image_knative_does_not_resolve(forms, root):
    image = _script_value(root, "IMAGE").replace("${IMAGE_TAG}", "0.1.0")
    assert image.startswith("kind.local/")
    kind_forms = [f for f in forms if f.source in {"overlay:kind", "chart:kind"}]
    kind_forms += [f for f in forms if f.source.startswith("overlay:kind-")]
    for rendered in kind_forms:
        assert set(_mlref_images(rendered.objects)) == {image}, rendered.source
        data = find(rendered.objects, "ConfigMap", "mlref-settings")["data"]
        assert data["MLREF_IMAGE"] == image, rendered.source


STORAGE_INITIALIZER = {
    # What KServe injects (pkg/utils/storage.go CreateInitContainerWithConfig): no
    # securityContext at all.
    "name": "storage-initializer",
    "image": "kserve/storage-initializer:v0.21.0",
    "args": ["s3://mlref/models/ctr/champion", "/mnt/models"],
    "resources": {
        "requests": {"cpu": "100m", "memory": "100Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    },
}


def test_namespace_admits_kserves_storage_initializer(forms):
    pod = {"kind": "Pod", "spec": {"initContainers": [STORAGE_INITIALIZER], "containers": []}}
    restricted = [p for p, _ in container_problems(pod) if ".securityContext." in p]
    assert restricted, "the injected container would pass `restricted`: re-check upstream"
    labels = find(form(forms, "overlay:base").objects, "Namespace", "mlref")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"


def test_s3_endpoint_is_annotated_on_the_secret(forms, root):
    for rendered in forms:
        for obj in rendered.objects:
            assert s3_annotation_problems(obj) == [], rendered.source
    for rendered in (form(forms, "overlay:base"), form(forms, "chart:default")):
        account = find(rendered.objects, "ServiceAccount", "mlref-serving")
        assert account["secrets"] == [{"name": "mlref-store-serving"}], rendered.source
    flagged = copy.deepcopy(account)
    flagged["metadata"]["annotations"] = {"serving.kserve.io/s3-endpoint": "seaweedfs:8333"}
    assert s3_annotation_problems(flagged)
    # The serving identity's Secret points KServe at the store the kind forms deploy.
    secret = find(kind_objects(root, "mlref", "kubeflow"), "Secret", "mlref-store-serving")
    assert secret["metadata"]["namespace"] == "mlref"
    for source in ("chart:kind", "overlay:kind"):
        settings = find(form(forms, source).objects, "ConfigMap", "mlref-settings")
        assert (
            "http://" + secret["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"]
            == (settings["data"]["AWS_ENDPOINT_URL"])
        ), source


def _ir_env_sources() -> set[tuple[str, str, str]]:
    """``(kind, name, key)`` of every ConfigMap and Secret key the compiled pipeline maps."""
    _, platform = yaml.safe_load_all(COMPILED.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    sources = set()
    for config in executors.values():
        for kind, entries, name_field, key_field in (
            ("Secret", "secretAsEnv", "secretName", "secretKey"),
            ("ConfigMap", "configMapAsEnv", "configMapName", "configMapKey"),
        ):
            for entry in config.get(entries, []):
                for pair in entry["keyToEnv"]:
                    sources.add((kind, entry[name_field], pair[key_field]))
    return sources


def test_every_env_source_of_the_pipeline_exists_where_its_pods_run(forms, root):
    """Kubeflow runs the steps in the pipelines' namespace and a pod takes env only from its
    own namespace: in every rendered form, together with what kind-up applies besides, each
    ConfigMap and Secret key the IR maps is there (else CreateContainerConfigError)."""
    sources = _ir_env_sources()
    assert {kind for kind, _, _ in sources} == {"Secret", "ConfigMap"}
    settings = Settings()
    pipelines = settings.pipeline.namespace
    install = kind_objects(root, settings.cluster.namespace, pipelines)
    for rendered in forms:
        objects = [*install, *rendered.objects]
        for kind, name, key in sorted(sources):
            found = [
                {**(o.get("data") or {}), **(o.get("stringData") or {})}
                for o in objects
                if o["kind"] == kind
                and o["metadata"]["name"] == name
                and o["metadata"].get("namespace", settings.cluster.namespace) == pipelines
            ]
            assert any(key in data for data in found), (
                f"{rendered.source}: {kind} {pipelines}/{name} with key {key}"
            )


def test_kind_up_applies_the_install_objects_and_keeps_their_values(root):
    script = _script(root)
    assert "create secret" not in script
    assert re.search(
        r"\| mlref manifests kind-objects --existing - .*\n.*\n\s*\| kubectl apply -f -", script
    )
    first = kind_objects(root, "mlref", "kubeflow")
    again = kind_objects(root, "mlref", "kubeflow", existing=[{"kind": "List", "items": first}])
    assert again == first  # a re-run keeps PostgreSQL's password and the store's keys
    stores = [o for o in first if o["metadata"]["name"] == "mlref-object-store"]
    assert [o["metadata"]["namespace"] for o in stores] == ["mlref", "kubeflow"]
    assert stores[0]["stringData"] == stores[1]["stringData"]
    # The script reads back every Secret whose values are chosen once (the identities config
    # is derived from the identities' keys).
    chosen = {
        o["metadata"]["name"]
        for o in first
        if o["kind"] == "Secret" and o["metadata"]["name"] != "mlref-object-store-identities"
    }
    read_back = re.search(r"get secret ((?:[\w-]+\s+|\\\n\s*)+)--ignore-not-found", script)
    assert set(read_back.group(1).replace("\\", " ").split()) == chosen
    printed = runner.invoke(app, ["manifests", "kind-objects", "--pipelines-namespace", "kf"])
    assert printed.exit_code == 0, printed.output
    docs = list(yaml.safe_load_all(printed.output))
    assert [(o["kind"], o["metadata"].get("namespace")) for o in docs] == [
        ("Namespace", None),
        *[("Secret", "mlref")] * 7,
        ("Secret", "kf"),
    ]


def test_each_workload_gets_its_own_identity_with_only_its_prefixes(forms, root):
    """No workload holds a key that may write everywhere: each pod's object-store env comes
    from its own identity's Secret, and the store's config grants that identity only its
    prefixes (the operator's bucket-wide grant is given to no pod)."""
    install = kind_objects(root, "mlref", "kubeflow")
    config = json.loads(find(install, "Secret", IDENTITIES_SECRET)["stringData"][IDENTITIES_KEY])
    grants = {i["name"]: i["actions"] for i in config["identities"]}
    assert grants["operator"] == ["Admin:mlref"]
    assert "Write:mlref/inference_log/*" in grants["serving"]
    assert not [a for a in grants["serving"] if a.startswith("Write:mlref/models")]
    assert not [a for a in grants["drift"] if a.startswith("Write:") and "labels/" not in a]
    assert not [a for n, g in grants.items() if n != "operator" for a in g if "Admin" in a]
    # No pod's identity reads the whole bucket: "Read:mlref" (no wildcard) covers every key.
    assert not [n for n, g in grants.items() if n != "operator" and "Read:mlref" in g]
    assert "Read:mlref/models*" in grants["serving"]
    assert not [a for a in grants["serving"] if a.startswith("Read:mlref/data")]
    expected = {
        "drift-labels": "mlref-store-drift",
        "drift-check": "mlref-store-drift",
        "features-materialize": "mlref-object-store",
        "mlflow": "mlref-store-mlflow",
        "ctr": "mlref-store-serving",
    }
    for source in ("chart:kind", "overlay:kind", "overlay:base", "chart:default"):
        seen = {}
        for obj in form(forms, source).objects:
            refs = {
                env["valueFrom"]["secretKeyRef"]["name"]
                for container in _containers(obj)
                for env in container.get("env", [])
                if env["name"] == "AWS_ACCESS_KEY_ID"
            }
            if refs:
                seen[obj["metadata"]["name"]] = refs
        assert {name: {secret} for name, secret in expected.items()} == {
            name: seen[name] for name in expected
        }, source
        assert set().union(*seen.values()) <= {i.secret for i in IDENTITIES if not i.admin}


def _kserve_values(root: Path, mode: str) -> dict[str, str]:
    """The chart values kind-up.sh sets on KServe in ``mode``: its own lines, run by bash."""
    script = _script(root)
    start = script.index("KSERVE_SETTINGS=(")
    block = script[start : script.index("\nfi\n", start) + 4]
    env = {"MODE": mode, "KSERVE_GATEWAY": "ns/gw", "INGRESS_DOMAIN": "example.com"}
    shown = subprocess.run(
        ["bash", "-euc", f'{block}printf "%s\\n" "${{KSERVE_SETTINGS[@]}}"'],
        env={**env, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert shown[::2] == ["--set"] * (len(shown) // 2), shown
    return dict(value.split("=", 1) for value in shown[1::2])


def test_kourier_gets_no_istio_virtual_host(root):
    """Knative mode behind Kourier: KServe makes no Istio VirtualService; Standard mode
    routes through the Gateway API instead."""
    assert _kserve_values(root, "Knative") == {
        "kserve.controller.deploymentMode": "Knative",
        "kserve.controller.gateway.disableIstioVirtualHost": "true",
    }
    standard = _kserve_values(root, "Standard")
    assert "kserve.controller.gateway.disableIstioVirtualHost" not in standard
    assert standard["kserve.controller.gateway.ingressGateway.enableGatewayApi"] == "true"
    assert standard["kserve.controller.gateway.ingressGateway.kserveGateway"] == "ns/gw"
    kserve = _script(root).split("helm upgrade --install kserve ")[1].split("\n\n")[0]
    assert '"${KSERVE_SETTINGS[@]}"' in kserve


@pytest.mark.parametrize("stage", STAGES)
def test_stage_on_kind_keeps_the_kind_settings(forms, root, stage):
    kind, staged = form(forms, "overlay:kind"), form(forms, f"overlay:kind-{stage}")
    assert stage_problems(root / "manifests" / "overlays" / f"kind-{stage}") == []
    keys = {(o["kind"], o["metadata"]["name"]) for o in staged.objects}
    assert {(o["kind"], o["metadata"]["name"]) for o in kind.objects} <= keys
    settings = find(staged.objects, "ConfigMap", "mlref-settings")["data"]
    for key, value in find(kind.objects, "ConfigMap", "mlref-settings")["data"].items():
        if not key.startswith("MLREF_SERVING__LOG_SINK"):
            assert settings[key] == value, (stage, key)
    isvc = find(staged.objects, "InferenceService", "ctr")["spec"]
    assert isvc["predictor"]["maxReplicas"] == 1
    assert isvc["transformer"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"


def test_stage_built_on_base_is_reported_for_kind(root, tmp_path):
    """The layout before: the stage overlay built on base, applied to a kind cluster."""
    overlays = tmp_path / "overlays"
    repo = root / "manifests"
    (overlays / "kind").mkdir(parents=True)
    (overlays / "kind-canary").mkdir()
    (overlays / "kind" / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(repo / 'overlays' / 'kind', overlays / 'kind')}]\n"
    )
    stage = overlays / "kind-canary"
    (stage / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(repo / 'base', stage)}]\n"
        f"components: [{os.path.relpath(repo / 'components' / 'canary', stage)}]\n"
    )
    (problem,) = stage_problems(overlays / "kind-canary")
    assert "data.MLREF_IMAGE" in problem and "build it on kind" in problem
    result = runner.invoke(
        app, ["manifests", "verify", "--skip-security", str(overlays / "kind-canary")]
    )
    assert result.exit_code == 1 and "build it on kind" in result.output


def test_verify_a_users_values_file(tmp_path):
    values = tmp_path / "prod.yaml"
    values.write_text("serving:\n  deploymentMode: Standard\ncanary:\n  enabled: true\n")
    result = runner.invoke(app, ["manifests", "verify", "--skip-security", str(values)])
    assert result.exit_code == 0, result.output
    assert f"chart:{values}"[:20] in result.output
    result = runner.invoke(app, ["manifests", "verify", "--skip-security", str(tmp_path / "no")])
    assert result.exit_code == 1 and "neither a kustomize directory" in result.output


def test_no_gpu_on_kind_and_gpu_values_ask_for_one(forms, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    def settings(source):
        data = find(form(forms, source).objects, "ConfigMap", "mlref-settings")["data"]
        with monkeypatch.context() as env:
            for key, value in data.items():
                env.setenv(key, value)
            return Settings()

    assert not settings("overlay:kind").train.use_gpu_in_cluster
    assert not settings("chart:kind").train.use_gpu_in_cluster
    gpu = settings("chart:gpu")
    assert gpu.train.use_gpu_in_cluster and gpu.image.endswith("-cuda")
    for source in ("overlay:kind", "chart:kind"):
        assert "nvidia.com/gpu" not in str(form(forms, source).objects)


def test_service_monitor_scrapes_both_modes(root):
    served = render_chart(root, {}, "served", api_versions=[MONITORING_API])
    assert service_monitor_problems(served.objects) == {}
    knative_only = copy.deepcopy(served.objects)
    monitor = find(knative_only, "ServiceMonitor", "mlref-serving")
    monitor["spec"]["selector"] = {
        "matchLabels": {
            "serving.kserve.io/inferenceservice": "ctr",
            "networking.internal.knative.dev/serviceType": "Private",
        }
    }
    messages = [
        m for _, m in service_monitor_problems(knative_only)[("ServiceMonitor", "mlref-serving")]
    ]
    assert messages == [
        "scrapes transformer in Standard mode through 0 Services, not 1",
        "scrapes predictor in Standard mode through 0 Services, not 1",
    ]


def test_standard_mode_installs_the_gateway_that_splits_a_canary(root):
    """kind-up --standard: Gateway API CRDs, Envoy Gateway, the Gateway KServe attaches its
    HTTPRoutes to (httproute_reconciler.go parentRefs: ingress.kserveIngressGateway), then KServe
    with enableGatewayApi and ingress creation on (Reconcile makes no route without it), then
    the chart whose transformer calls that Gateway's Service with the predictor route's host."""
    script = _script(root)
    standard = script[script.index('step "3/9 Gateway API') : script.index('step "5/9')]
    order = [
        "gateway-api/releases/download/${GATEWAY_API_VERSION}/standard-install.yaml",
        "established crd/gatewayclasses.gateway.networking.k8s.io",
        "crds.envoyGateway.enabled=true",
        "established crd/envoyproxies.gateway.envoyproxy.io",
        "gateway-helm",
        "manifests/cluster/kserve-gateway.yaml",
        "condition=Programmed gateway/kserve-ingress-gateway",
        "kserve.controller.gateway.ingressGateway.enableGatewayApi=true",
    ]
    positions = [standard.index(step) for step in order]
    assert positions == sorted(positions)
    assert "disableIngressCreation=true" not in script
    assert _script_value(root, "GATEWAY_API_VERSION") == "v1.5.1"
    assert _script_value(root, "ENVOY_GATEWAY_VERSION") == "v1.8.1"
    docs = list(yaml.safe_load_all((root / "manifests/cluster/kserve-gateway.yaml").read_text()))
    gateway = next(d for d in docs if d["kind"] == "Gateway")
    proxy = next(d for d in docs if d["kind"] == "EnvoyProxy")
    ingress = IngressConfig(ingress_domain=_script_value(root, "INGRESS_DOMAIN"))
    placed = f"{gateway['metadata']['namespace']}/{gateway['metadata']['name']}"
    assert placed == _script_value(root, "KSERVE_GATEWAY") == ingress.kserve_ingress_gateway
    ref = gateway["spec"]["infrastructure"]["parametersRef"]
    assert (ref["kind"], ref["name"]) == ("EnvoyProxy", proxy["metadata"]["name"])
    service = proxy["spec"]["provider"]["kubernetes"]["envoyService"]["name"]
    assert _script_value(root, "GATEWAY_SERVICE") == f"{service}.envoy-gateway-system"
    # The chart's defaults are what kind-up installs; its transformer names that Gateway.
    values = {"serving": {"deploymentMode": "Standard"}}
    isvc = find(render_chart(root, values, "std").objects, "InferenceService", "ctr")
    started = launch(isvc, "transformer")
    assert started.argv[started.argv.index("--predictor_host") + 1] == (
        _script_value(root, "GATEWAY_SERVICE")
    )
    route_host = predictor_route_host(isvc, ingress)
    assert started.literal_env()[HOST_HEADER_ENV] == route_host == "ctr-predictor-mlref.example.com"


def test_the_chart_install_waits_only_on_what_can_be_ready(forms, root):
    """Helm 4's --wait watches every release object with kstatus (pkg/kube/statuswait.go,
    v4.2): the InferenceService is Ready=False (in progress) until the first model exists, so
    the wait fails on a fresh install, and no annotation exempts an object. Helm 3's
    (pkg/kube/ready.go) skips custom resources. kind-up installs the chart without --wait and
    waits on the release's Deployments and StatefulSets, whichever Helm it runs."""
    objects = form(forms, "chart:kind").objects
    assert find(objects, "InferenceService", "ctr")
    calls = commands(root / "scripts" / "kind-up.sh")
    (install,) = [
        words for words in calls if words[:4] == ["helm", "upgrade", "--install", "mlref"]
    ]
    assert not [word for word in install if word.startswith("--wait")]
    (listing,) = [words for words in calls if words[:4] == ["helm", "get", "manifest", "mlref"]]
    body = calls[calls.index(listing) + 1]  # while read -r workload; do ...; done
    assert body[3:6] == ["rollout", "status", "$workload"]
    pattern = listing[listing.index("-E") + 1]
    waited = {
        (o["kind"], o["metadata"]["name"])
        for o in objects
        if re.search(pattern, f"{o['kind'].lower()}.{o['apiVersion'].split('/')[0]}/x")
    }
    workloads = {
        (o["kind"], o["metadata"]["name"])
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
    }
    assert waited == workloads and ("StatefulSet", "postgres") in waited
