"""The experiment's cluster form: every rendering mounts the experiment's ConfigMap into the
transformer and routes each variant's tagged calls to its model (Knative's tag routing, or
in Standard mode an HTTPRoute beside KServe's); the check names each broken link; `mlref
experiment start|stop` applies the ConfigMap in cluster mode."""

from __future__ import annotations

import copy

import pytest

from mlref.k8s.checks import EXPERIMENT_STATE_KEY, experiment_problems
from mlref.k8s.gateway import IngressConfig, predictor_route
from mlref.k8s.render import Rendered
from tests.k8s.conftest import find, form
from tests.k8s.test_shadow import RecordedConfigMaps

FORMS = ["chart:experiment", "overlay:experiment", "chart:standard-experiment"]


@pytest.mark.parametrize("source", FORMS)
def test_experiment_form_is_wired(forms: list[Rendered], source: str):
    objects = form(forms, source).objects
    assert experiment_problems(objects) == {}
    settings = find(objects, "ConfigMap", "mlref-settings")["data"]
    assert settings[EXPERIMENT_STATE_KEY] == "/etc/mlref/experiment/experiment.yaml"
    transformer = find(objects, "InferenceService", "ctr")["spec"]["transformer"]
    volumes = {v["name"]: v for v in transformer["volumes"]}
    assert volumes["experiment"]["configMap"] == {"name": "ctr-experiment", "optional": True}
    mounts = {m["name"]: m for m in transformer["containers"][0]["volumeMounts"]}
    assert mounts["experiment"]["mountPath"] == "/etc/mlref/experiment"
    role = find(objects, "Role", "mlref-canary")
    assert any(
        "ctr-experiment" in rule.get("resourceNames", []) and {"get", "patch"} <= set(rule["verbs"])
        for rule in role["rules"]
        if "configmaps" in rule["resources"]
    )


@pytest.mark.parametrize("source", ["chart:default", "overlay:base", "chart:standard-canary"])
def test_no_experiment_without_the_stage(forms: list[Rendered], source: str):
    objects = form(forms, source).objects
    assert experiment_problems(objects) == {}
    assert not [o for o in objects if o["kind"] == "HTTPRoute"]
    transformer = find(objects, "InferenceService", "ctr")["spec"]["transformer"]
    assert "experiment" not in {v["name"] for v in transformer["volumes"]}


def test_the_standard_route_sends_each_tag_to_its_variant(forms: list[Rendered], validator):
    """The rendered route is valid against the Gateway API's CRD, on KServe's route's host and
    Gateway, and ranks above KServe's rule only by its one header match."""
    objects = form(forms, "chart:standard-experiment").objects
    route = find(objects, "HTTPRoute", "ctr-predictor-experiment")
    assert validator.validate(route) == []
    isvc = find(objects, "InferenceService", "ctr")
    kserve = predictor_route(isvc, IngressConfig(ingress_domain="example.com"))
    assert route["spec"]["hostnames"] == kserve["spec"]["hostnames"]
    assert route["spec"]["parentRefs"] == kserve["spec"]["parentRefs"]
    (base,) = kserve["spec"]["rules"]
    by_tag = {}
    for rule in route["spec"]["rules"]:
        (match,) = rule["matches"]
        assert match["path"] == base["matches"][0]["path"]
        (header,) = match["headers"]
        assert header["name"] == "Knative-Serving-Tag" and header["type"] == "Exact"
        assert rule["filters"] == base["filters"] and rule["timeouts"] == base["timeouts"]
        by_tag[header["value"]] = [b["name"] for b in rule["backendRefs"]]
    assert by_tag == {"prev": ["ctr-predictor"], "latest": ["ctr-candidate-predictor"]}
    broken = copy.deepcopy(route)
    broken["spec"]["rules"][0]["matches"][0]["headers"][0]["type"] = "Prefix"
    assert validator.validate(broken) != []


def test_each_broken_link_is_named(forms: list[Rendered]):
    def broken(source: str, change) -> dict:
        copied = copy.deepcopy(form(forms, source).objects)
        change(copied)
        return experiment_problems(copied)

    def transformer(objs):
        return find(objs, "InferenceService", "ctr")["spec"]["transformer"]

    def no_mount(objs):
        container = transformer(objs)["containers"][0]
        container["volumeMounts"] = [
            m for m in container["volumeMounts"] if m["name"] != "experiment"
        ]

    def required(objs):
        for volume in transformer(objs)["volumes"]:
            volume.get("configMap", {}).pop("optional", None)

    def untagged(objs):
        del find(objs, "InferenceService", "ctr")["metadata"]["annotations"][
            "serving.kserve.io/enable-tag-routing"
        ]

    def no_route(objs):
        objs[:] = [o for o in objs if o["kind"] != "HTTPRoute"]

    def swapped(objs):
        rules = find(objs, "HTTPRoute", "ctr-predictor-experiment")["spec"]["rules"]
        rules[0]["backendRefs"], rules[1]["backendRefs"] = (
            rules[1]["backendRefs"],
            rules[0]["backendRefs"],
        )

    def other_host(objs):
        route = find(objs, "HTTPRoute", "ctr-predictor-experiment")
        route["spec"]["hostnames"] = ["ctr-predictor.mlref.svc.cluster.local"]

    def no_grant(objs):
        role = find(objs, "Role", "mlref-canary")
        role["rules"] = [r for r in role["rules"] if "configmaps" not in r["resources"]]

    isvc = ("InferenceService", "ctr")
    route = ("HTTPRoute", "ctr-predictor-experiment")
    assert "mounts no ConfigMap" in str(broken("chart:experiment", no_mount)[isvc])
    assert "not optional" in str(broken("overlay:experiment", required)[isvc])
    assert "enable-tag-routing" in str(broken("chart:experiment", untagged)[isvc])
    assert "no HTTPRoute" in str(broken("chart:standard-experiment", no_route)[isvc])
    assert "spec.rules" in str(broken("chart:standard-experiment", swapped)[route])
    assert "spec.hostnames" in str(broken("chart:standard-experiment", other_host)[route])
    assert "ctr-experiment" in str(broken("chart:experiment", no_grant)[("Role", "mlref-canary")])


def test_start_and_stop_on_a_cluster(tmp_path):
    from mlref.canary.kube import KubeError
    from mlref.canary.state import CanaryState, write_state
    from mlref.experiment import control
    from mlref.experiment.assign import STATE_KEY, Watched
    from mlref.settings import Settings, StorageSettings

    settings = Settings(
        mode="cluster", work_dir=tmp_path / ".mlref", storage=StorageSettings(root="s3://mlref")
    )
    core = RecordedConfigMaps()
    with pytest.raises(control.ExperimentError, match="ConfigMap ctr-experiment"):
        control.current(settings, core=core)
    write_state(settings, CanaryState("s3://mlref/models/ctr/2", "s3://mlref/models/ctr/1", 50))

    started = control.start(settings, "ab1", 30, users=500, core=core)
    assert core.calls[-1] == {"field_manager": "mlref", "force": True}
    assert control.current(settings, core=core) == started
    assert started.treatment_model == "s3://mlref/models/ctr/2"
    with pytest.raises(control.ExperimentError, match="stop it first"):
        control.start(settings, "ab2", core=core)
    assert not settings.experiment_state_path.exists()  # the cluster holds it, not this machine

    # What the transformer pods see: the ConfigMap's file, mounted at experiment.state_file.
    mounted = tmp_path / "etc" / STATE_KEY
    mounted.parent.mkdir()
    mounted.write_text(core.maps[("mlref", "ctr-experiment")]["data"][STATE_KEY])
    assert Watched(mounted).current() == started

    stopped = control.stop(settings, core=core)
    assert stopped.stopped_at and control.current(settings, "ab1", core=core) == stopped
    mounted.write_text(core.maps[("mlref", "ctr-experiment")]["data"][STATE_KEY])
    assert Watched(mounted).current() is None

    class Forbidden(RecordedConfigMaps):
        def read_namespaced_config_map(self, name, namespace):
            from kubernetes.client.exceptions import ApiException

            raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(KubeError, match="grant get/patch on configmaps"):
        control.start(settings, "ab3", core=Forbidden())
