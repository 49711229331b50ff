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
        ({"serving": {"deploymentMode": "Serverless"}}, "deploymentMode"),
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


LOG_SINK_OBJECTS = {
    ("Deployment", "log-sink"),
    ("Service", "log-sink"),
    ("NetworkPolicy", "log-sink"),
    ("NetworkPolicy", "log-sink-egress"),
    ("NetworkPolicy", "transformer-log-sink"),
}


def _keys(rendered):
    objects = rendered.objects
    return {(o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] != "Namespace"}


def _sink_settings(rendered):
    data = find(rendered.objects, "ConfigMap", "mlref-settings")["data"]
    return {k: v for k, v in data.items() if k.startswith("MLREF_SERVING__LOG_SINK")}


def test_log_sink_overlay_and_chart_agree(forms):
    overlay, chart = form(forms, "overlay:log-sink"), form(forms, "chart:log-sink")
    assert _keys(chart) == _keys(overlay)
    assert _keys(chart) - _keys(form(forms, "chart:default")) == LOG_SINK_OBJECTS
    for kind, name in LOG_SINK_OBJECTS:
        assert find(chart.objects, kind, name)["spec"] == find(overlay.objects, kind, name)["spec"]
    expected = {
        "MLREF_SERVING__LOG_SINK": "http",
        "MLREF_SERVING__LOG_SINK_URL": "http://log-sink.mlref.svc/",
    }
    assert _sink_settings(chart) == _sink_settings(overlay) == expected
    assert _sink_settings(form(forms, "chart:default")) == {}


def test_log_sink_url_only_sets_the_settings(root, forms):
    url = "http://broker-ingress.knative-eventing.svc.cluster.local/mlref/default"
    rendered = render_chart(root, {"inferenceLog": {"sink": "http", "sinkUrl": url}}, "broker")
    assert _keys(rendered) == _keys(form(forms, "chart:default"))
    assert _sink_settings(rendered) == {
        "MLREF_SERVING__LOG_SINK": "http",
        "MLREF_SERVING__LOG_SINK_URL": url,
    }


@pytest.mark.parametrize(
    ("values", "field"),
    [({"sink": "kafka"}, "sink"), ({"sink": "http", "sinkUrl": "broker"}, "sinkUrl")],
)
def test_schema_rejects_bad_inference_log(root, values, field):
    with pytest.raises(RenderError, match=field):
        render_chart(root, {"inferenceLog": values}, "bad")
