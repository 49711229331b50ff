"""The canary patch on the real manifests: every stage as KServe expects, schema-valid, in
Serverless mode (on the kustomize base) and Standard mode (on the chart)."""

from __future__ import annotations

import copy

import pytest
import yaml

from mlref.canary.state import (
    CANDIDATE_ANNOTATION,
    NOT_INHERITED,
    STABLE_ANNOTATION,
    CanaryState,
    from_patch,
    read_state,
    to_patch,
    write_state,
)
from mlref.k8s.checks import canary_problems, launch_problems
from mlref.k8s.kserve import CONTAINER, launches
from mlref.k8s.render import render_chart, render_overlay
from tests.canary.fake_kube import server_side_apply
from tests.k8s.conftest import COMMAND, find

CANDIDATE = "s3://mlref/models/ctr/candidate"
STABLE = "s3://mlref/models/ctr/champion"


@pytest.fixture(scope="module")
def base_isvc(root) -> dict:
    return find(render_overlay(root, "base").objects, "InferenceService", "ctr")


@pytest.mark.parametrize("percent", [10, 50, 0, 100])
def test_patch_on_base_manifest_field_by_field(settings, base_isvc, validator, percent):
    state = CanaryState(CANDIDATE, STABLE, percent, "7")
    patched = server_side_apply(base_isvc, to_patch(settings, state))

    predictor = patched["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == CANDIDATE
    assert predictor.get("canaryTrafficPercent") == (None if percent == 100 else percent)
    variant = "stable" if percent == 100 else "canary"
    assert predictor["model"]["env"] == [{"name": "MLREF_SERVING__VARIANT", "value": variant}]
    assert predictor["model"]["runtime"] == base_isvc["spec"]["predictor"]["model"]["runtime"]
    assert patched["spec"]["transformer"] == base_isvc["spec"]["transformer"]
    assert patched["metadata"]["annotations"][STABLE_ANNOTATION] == STABLE
    assert patched["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert from_patch(patched) == state
    assert validator.validate(patched) == []
    assert canary_problems(patched) == []


def test_promote_after_canary_drops_the_traffic_split(settings, base_isvc):
    canary = server_side_apply(base_isvc, to_patch(settings, CanaryState(CANDIDATE, STABLE, 10)))
    promoted = server_side_apply(canary, to_patch(settings, CanaryState(CANDIDATE, STABLE, 100)))
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]


@pytest.mark.parametrize("stage", ["canary", "promote", "rollback"])
def test_overlays_match_the_patch_of_their_stage(settings, root, base_isvc, validator, stage):
    """kubectl apply -k overlays/<stage> and `mlref canary` put the same spec in force."""
    percent = {"canary": 10, "promote": 100, "rollback": 0}[stage]
    overlay = find(render_overlay(root, stage).objects, "InferenceService", "ctr")
    patched = server_side_apply(
        base_isvc, to_patch(settings, CanaryState(CANDIDATE, STABLE, percent))
    )
    assert overlay["spec"] == patched["spec"]
    assert validator.validate(overlay) == []


def test_state_file_round_trip(settings, tmp_path):
    state = CanaryState("models:/ctr/3", "models:/ctr/2", 50, "3")
    path = write_state(settings, state, tmp_path / "overlay" / "isvc.yaml")
    assert read_state(path) == state
    assert read_state(tmp_path / "missing.yaml") is None


def test_raw_deployment_canary_is_a_structure_problem(settings, base_isvc):
    patched = server_side_apply(base_isvc, to_patch(settings, CanaryState(CANDIDATE, STABLE, 10)))
    patched["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    ((path, message),) = canary_problems(patched)
    assert path == "spec.predictor.canaryTrafficPercent" and "spec.canary" in message


def standard(settings):
    return settings.model_copy(
        update={"canary": settings.canary.model_copy(update={"deployment_mode": "Standard"})}
    )


@pytest.fixture(scope="module")
def standard_objects(root) -> list[dict]:
    return render_chart(root, {"serving": {"deploymentMode": "Standard"}}, "standard").objects


@pytest.fixture(scope="module")
def standard_isvc(standard_objects) -> dict:
    """The chart's InferenceService in Standard mode before any rollout: the stable predictor."""
    return find(standard_objects, "InferenceService", "ctr")


def apply_standard(settings, isvc: dict, percent: int) -> dict:
    state = CanaryState(CANDIDATE, STABLE, percent, "7")
    patch = to_patch(standard(settings), state, isvc["spec"]["predictor"])
    assert from_patch(patch) == state
    return server_side_apply(isvc, patch)


def pod_settings(predictor: dict) -> dict:
    return {k: v for k, v in predictor.items() if k not in {"name", "model"}}


@pytest.mark.parametrize("percent", [10, 50, 0, 100])
def test_standard_patch_on_chart_manifest_field_by_field(
    settings, standard_isvc, validator, percent
):
    patched = apply_standard(settings, standard_isvc, percent)

    base = standard_isvc["spec"]["predictor"]
    predictor = patched["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == (CANDIDATE if percent == 100 else STABLE)
    assert predictor["model"]["env"] == [{"name": "MLREF_SERVING__VARIANT", "value": "stable"}]
    assert "canaryTrafficPercent" not in predictor
    assert pod_settings(predictor) == pod_settings(base)
    assert predictor["model"]["runtime"] == base["model"]["runtime"] == "mlref-onnx"
    if 0 < percent < 100:
        ((canary,),) = [patched["spec"]["canary"]]
        assert canary["trafficPercent"] == percent
        candidate = canary["predictor"]
        assert candidate["name"] == "candidate"
        # Service account and security as stable's; no autoscaling, which KServe's webhook
        # refuses on a canary (validateCanarySpecs: "canary uses fixed replicas").
        assert "maxReplicas" in base and "maxReplicas" not in candidate
        assert pod_settings(candidate) == {
            k: v for k, v in pod_settings(base).items() if k not in NOT_INHERITED
        }
        assert candidate["model"] == {
            "name": "kserve-container",
            "modelFormat": base["model"]["modelFormat"],
            "runtime": base["model"]["runtime"],
            "storageUri": CANDIDATE,
            "env": [{"name": "MLREF_SERVING__VARIANT", "value": "canary"}],
        }
    else:
        assert "canary" not in patched["spec"]
    annotations = patched["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert annotations[STABLE_ANNOTATION] == STABLE
    assert annotations.get(CANDIDATE_ANNOTATION) == (CANDIDATE if percent == 0 else None)
    assert patched["spec"]["transformer"] == standard_isvc["spec"]["transformer"]
    assert from_patch(patched) == CanaryState(CANDIDATE, STABLE, percent, "7")
    assert validator.validate(patched) == []
    assert canary_problems(patched) == []


@pytest.mark.parametrize("percent", [10, 50])
def test_standard_canary_keeps_the_container_kserve_mounts_the_model_into(
    settings, standard_objects, standard_isvc, percent
):
    """The canary's model.name (required by the CRD) names the merged container; KServe's pod
    mutator mounts the model into ``kserve-container`` only, and refuses a pod without it."""
    patched = apply_standard(settings, standard_isvc, percent)
    runtimes = [o for o in standard_objects if o["kind"] == "ServingRuntime"]
    started = {launch.component: launch for launch in launches(patched, runtimes)}
    assert started["predictor:candidate"].container == CONTAINER
    assert started["predictor:candidate"].storage_uri == CANDIDATE
    assert started["predictor"].container == CONTAINER
    assert launch_problems([patched, *runtimes], settings.model_name, COMMAND) == {}


def test_standard_steps_drop_the_canary_by_leaving_it_out(settings, standard_isvc):
    """Server-side apply removes spec.canary (an atomic list mlref owns) once a patch omits it."""
    isvc = standard_isvc
    for percent, has_canary in [(10, True), (50, True), (0, False), (10, True), (100, False)]:
        isvc = apply_standard(settings, isvc, percent)
        assert ("canary" in isvc["spec"]) is has_canary, percent
        assert from_patch(isvc).percent == percent
    assert CANDIDATE_ANNOTATION not in isvc["metadata"]["annotations"]
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == CANDIDATE


def test_standard_canary_matches_the_chart_stage(settings, root, standard_isvc, validator):
    """helm --values ci/standard-canary-values.yaml and `mlref canary start` run the same
    candidate (KServe names its Deployment after predictor.name)."""
    values = render_chart(
        root,
        yaml.safe_load((root / "helm/mlref/ci/standard-canary-values.yaml").read_text()),
        "standard-canary",
    )
    chart = find(values.objects, "InferenceService", "ctr")
    assert validator.validate(chart) == []
    chart_canary = chart["spec"]["canary"]
    patched = apply_standard(settings, standard_isvc, chart_canary[0]["trafficPercent"])
    assert patched["spec"]["canary"] == chart_canary
    assert (
        patched["spec"]["predictor"]["model"]["storageUri"]
        == (chart["spec"]["predictor"]["model"]["storageUri"])
    )
    assert from_patch(chart).candidate_model == CANDIDATE


def test_standard_state_file_without_a_live_predictor(settings, tmp_path, validator):
    """--write-only has no live predictor to copy: the candidate gets model format and runtime."""
    state = CanaryState("models:/ctr/3", "models:/ctr/2", 25, "3")
    path = write_state(standard(settings), state, tmp_path / "isvc.yaml")
    patch = yaml.safe_load(path.read_text())
    assert patch["spec"]["canary"][0]["predictor"] == {
        "name": "candidate",
        "model": {
            "name": "kserve-container",
            "modelFormat": {"name": "mlref-onnx"},
            "runtime": "mlref-onnx",
            "storageUri": "models:/ctr/3",
            "env": [{"name": "MLREF_SERVING__VARIANT", "value": "canary"}],
        },
    }
    assert read_state(path) == state


def test_canary_apis_of_the_other_mode_are_structure_problems(settings, standard_isvc):
    serverless = copy.deepcopy(apply_standard(settings, standard_isvc, 10))
    serverless["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Serverless"
    ((path, message),) = canary_problems(serverless)
    assert path == "spec.canary" and "Standard" in message
