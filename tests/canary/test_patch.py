"""The canary patch on the real base manifest: every stage as KServe expects, schema-valid."""

from __future__ import annotations

import pytest

from mlref.canary.state import (
    STABLE_ANNOTATION,
    CanaryState,
    from_patch,
    read_state,
    to_patch,
    write_state,
)
from mlref.k8s.checks import canary_problems
from mlref.k8s.render import render_overlay
from tests.canary.fake_kube import server_side_apply
from tests.k8s.conftest import find

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
    assert patched["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
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
    assert path == "spec.predictor.canaryTrafficPercent" and "Serverless" in message
