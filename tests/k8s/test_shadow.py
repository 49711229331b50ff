"""The shadow's cluster form: both renderings wire transformer, shadow predictor and policy,
and the check names each broken link."""

from __future__ import annotations

import copy

import pytest

from mlref.k8s.checks import SHADOW_MODEL_KEY, SHADOW_URL_KEY, shadow_problems
from mlref.k8s.render import Rendered
from tests.k8s.conftest import find, form


@pytest.mark.parametrize("source", ["chart:shadow", "overlay:shadow"])
def test_shadow_form_is_wired(forms: list[Rendered], source: str):
    objects = form(forms, source).objects
    assert shadow_problems(objects) == {}
    shadow = find(objects, "InferenceService", "ctr-shadow")
    env = shadow["spec"]["predictor"]["model"]["env"]
    assert {"name": "MLREF_SERVING__VARIANT", "value": "shadow"} in env
    settings = find(objects, "ConfigMap", "mlref-settings")["data"]
    assert settings[SHADOW_URL_KEY] == "http://ctr-shadow-predictor.mlref.svc.cluster.local"
    assert settings[SHADOW_MODEL_KEY] == "ctr-shadow"  # KServe's model name: the isvc's
    live = find(objects, "InferenceService", "ctr")
    volumes = {v["name"]: v for v in live["spec"]["transformer"]["volumes"]}
    assert volumes["shadow"]["configMap"] == {"name": "ctr-shadow", "optional": True}


@pytest.mark.parametrize("source", ["chart:default", "overlay:base"])
def test_no_shadow_without_the_stage(forms: list[Rendered], source: str):
    objects = form(forms, source).objects
    assert shadow_problems(objects) == {}
    assert not [o for o in objects if o["metadata"]["name"] == "ctr-shadow"]


def test_each_broken_link_is_named(forms: list[Rendered]):
    objects = form(forms, "chart:shadow").objects

    def broken(change) -> dict:
        copied = copy.deepcopy(objects)
        change(copied)
        return shadow_problems(copied)

    def drop_policy(objs):
        objs[:] = [o for o in objs if o["metadata"]["name"] != "shadow"]

    def wrong_url(objs):
        find(objs, "ConfigMap", "mlref-settings")["data"][SHADOW_URL_KEY] = "http://ctr-predictor"

    def no_mount(objs):
        container = find(objs, "InferenceService", "ctr")["spec"]["transformer"]["containers"][0]
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "shadow"]

    def required_map(objs):
        volumes = find(objs, "InferenceService", "ctr")["spec"]["transformer"]["volumes"]
        next(v for v in volumes if v["name"] == "shadow")["configMap"]["optional"] = False

    def another_map(objs):
        volumes = find(objs, "InferenceService", "ctr")["spec"]["transformer"]["volumes"]
        next(v for v in volumes if v["name"] == "shadow")["configMap"]["name"] = "ctr-other"

    def no_grant(objs):
        role = find(objs, "Role", "mlref-canary")
        role["rules"] = [r for r in role["rules"] if "configmaps" not in r.get("resources", [])]

    def live_model_name(objs):
        find(objs, "ConfigMap", "mlref-settings")["data"][SHADOW_MODEL_KEY] = "ctr"

    def no_setting(objs):
        del find(objs, "ConfigMap", "mlref-settings")["data"][SHADOW_URL_KEY]

    assert "no NetworkPolicy" in str(broken(drop_policy)[("InferenceService", "ctr-shadow")])
    assert "not the predictor Service" in str(broken(wrong_url)[("ConfigMap", "mlref-settings")])
    assert "mounts no ConfigMap ctr-shadow" in str(broken(no_mount)[("InferenceService", "ctr")])
    assert "mounts no ConfigMap ctr-shadow" in str(broken(another_map)[("InferenceService", "ctr")])
    assert "is not optional" in str(broken(required_map)[("InferenceService", "ctr")])
    assert "mlref shadow start" in str(broken(no_grant)[("Role", "mlref-canary")])
    assert SHADOW_URL_KEY in str(broken(no_setting)[("InferenceService", "ctr-shadow")])
    found = str(broken(live_model_name)[("ConfigMap", "mlref-settings")])
    assert SHADOW_MODEL_KEY in found and "would find no model" in found


class RecordedConfigMaps:
    """The CoreV1Api ConfigMap calls mlref makes: server-side applies by one manager, kept."""

    def __init__(self):
        self.maps: dict[tuple[str, str], dict] = {}
        self.calls: list[dict] = []

    def patch_namespaced_config_map(self, name, namespace, body, **kw):
        from kubernetes.client.exceptions import ApiException

        if body["metadata"]["name"] != name or body["metadata"]["namespace"] != namespace:
            raise ApiException(status=400, reason="the object's name does not match the URL")
        self.calls.append(kw)
        self.maps[(namespace, name)] = copy.deepcopy(body)
        return body

    def read_namespaced_config_map(self, name, namespace):
        from kubernetes.client.exceptions import ApiException

        if (namespace, name) not in self.maps:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.maps[(namespace, name)])


def test_start_and_stop_on_a_cluster(forms: list[Rendered], tmp_path):
    from mlref.experiment.assign import Watched
    from mlref.settings import CanarySettings, Settings, StorageSettings
    from mlref.shadow import control
    from mlref.shadow.state import STATE_KEY, read_shadow
    from tests.canary.fake_kube import RecordedCustomObjectsApi

    settings = Settings(
        mode="cluster",
        work_dir=tmp_path / ".mlref",
        storage=StorageSettings(root="s3://mlref"),
        canary=CanarySettings(poll_seconds=0.01),
    )
    deployed = find(form(forms, "chart:shadow").objects, "InferenceService", "ctr-shadow")
    custom = RecordedCustomObjectsApi(None)
    custom.update(deployed, "helm")
    core = RecordedConfigMaps()
    apis = (custom, core)
    with pytest.raises(control.ShadowError, match="no shadow ever ran"):
        control.current(settings, apis)

    control.start(settings, "s3://mlref/models/ctr/7", apis=apis)
    model = custom.isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == "s3://mlref/models/ctr/7"
    assert {"name": "MLREF_SERVING__VARIANT", "value": "shadow"} in model["env"]
    assert [c[0] for c in custom.calls].count("get") >= 2  # waited for Ready
    assert core.calls[-1] == {"field_manager": "mlref", "force": True}
    assert control.current(settings, apis).running
    with pytest.raises(control.ShadowError, match="stop it first"):
        control.start(settings, "s3://mlref/models/ctr/8", apis=apis)

    # What the transformer pods see: the ConfigMap's file, mounted at shadow.state_file.
    mounted = tmp_path / "etc" / STATE_KEY
    mounted.parent.mkdir()
    mounted.write_text(core.maps[("mlref", "ctr-shadow")]["data"][STATE_KEY])
    assert Watched(mounted, read=read_shadow).current().model == "s3://mlref/models/ctr/7"

    generation = custom.isvc["metadata"]["generation"]
    control.stop(settings, apis)
    assert not control.current(settings, apis).running
    assert custom.isvc["metadata"]["generation"] == generation  # the predictor stays
    mounted.write_text(core.maps[("mlref", "ctr-shadow")]["data"][STATE_KEY])
    assert Watched(mounted, read=read_shadow).current() is None


@pytest.mark.parametrize("source", ["chart:shadow", "overlay:shadow"])
def test_the_rollout_identity_may_drive_the_shadow(forms: list[Rendered], source: str):
    role = find(form(forms, source).objects, "Role", "mlref-canary")
    granted = {
        (resource, name): set(rule["verbs"])
        for rule in role["rules"]
        for resource in rule["resources"]
        for name in rule.get("resourceNames", [])
    }
    assert granted[("inferenceservices", "ctr-shadow")] >= {"get", "patch"}
    assert granted[("configmaps", "ctr-shadow")] >= {"get", "patch"}
