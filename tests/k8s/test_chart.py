"""The chart: values.schema.json refuses bad values, rollout stages render as KServe expects."""

from __future__ import annotations

import pytest

from mlref.k8s.render import RenderError, render_chart
from tests.k8s.conftest import find, form


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"image": {"tag": "latest"}}, "tag"),
        ({"canary": {"percent": 150}}, "percent"),
        ({"serving": {"deploymentMode": "Knative"}}, "deploymentMode"),
        ({"redis": {"image": "redis"}}, "image"),
        ({"servng": {"name": "x"}}, "servng"),
        ({"settings": {"LOG_LEVEL": "debug"}}, "LOG_LEVEL"),
    ],
)
def test_schema_rejects_bad_values(root, values, field):
    with pytest.raises(RenderError, match=field):
        render_chart(root, values, "bad")


def _predictor(forms, source):
    return find(form(forms, source).objects, "InferenceService", "ctr")["spec"]


def test_rollout_stages(forms):
    assert "canaryTrafficPercent" not in _predictor(forms, "chart:default")["predictor"]
    canary = _predictor(forms, "chart:canary")["predictor"]
    assert canary["canaryTrafficPercent"] == 10
    assert canary["model"]["storageUri"].endswith("/candidate")
    promote = _predictor(forms, "chart:promote")["predictor"]
    assert "canaryTrafficPercent" not in promote and promote["model"]["storageUri"].endswith(
        "/candidate"
    )
    assert _predictor(forms, "chart:rollback")["predictor"]["canaryTrafficPercent"] == 0
    standard = _predictor(forms, "chart:standard-canary")
    assert "canaryTrafficPercent" not in standard["predictor"]
    assert standard["canary"][0]["trafficPercent"] == 10


def test_overlay_and_chart_stages_agree(forms):
    for stage in ("canary", "promote", "rollback"):
        overlay = _predictor(forms, f"overlay:{stage}")["predictor"]
        chart = _predictor(forms, f"chart:{stage}")["predictor"]
        assert overlay.get("canaryTrafficPercent") == chart.get("canaryTrafficPercent"), stage
        assert overlay["model"] == chart["model"], stage
