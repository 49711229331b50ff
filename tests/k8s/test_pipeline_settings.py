"""Every rendered form gives the pipeline's pods what the compiled pipeline maps from it."""

from __future__ import annotations

from mlref.k8s.render import Rendered
from mlref.pipelines.training import POD_SETTINGS, SETTINGS_CONFIG_MAP


def settings_maps(form: Rendered) -> dict[str, dict[str, str]]:
    return {
        o["metadata"]["namespace"]: o["data"]
        for o in form.objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == SETTINGS_CONFIG_MAP
    }


def test_the_pipeline_namespace_holds_every_key_the_pipeline_pods_take(forms) -> None:
    for form in forms:
        maps = settings_maps(form)
        own = maps["mlref"]
        pipeline = maps.get(own["MLREF_PIPELINE__NAMESPACE"])
        assert pipeline is not None, f"{form.source}: no {SETTINGS_CONFIG_MAP} for Kubeflow's pods"
        assert set(POD_SETTINGS) <= set(pipeline), form.source
        for key in POD_SETTINGS:  # the pods find the same services the mlref namespace does
            assert pipeline[key] == own[key], (form.source, key)


def test_cluster_settings_name_shared_storage_not_pod_paths(forms) -> None:
    for form in forms:
        own = settings_maps(form)["mlref"]
        assert own["MLREF_MODE"] == "cluster"
        assert own["MLREF_STORAGE__ROOT"].startswith("s3://"), form.source
        assert own["MLREF_WORK_DIR"].startswith("/tmp/"), form.source  # the pod's emptyDir
