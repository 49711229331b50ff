"""The closed loop end to end, on a small learnable world: every step real, nothing skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlref.demo.loop import demo_dir, run_loop
from mlref.monitoring.trigger import read_decisions
from mlref.training import registry
from tests.monitoring.conftest import world_settings
from tests.servers import free_port

pytestmark = pytest.mark.slow


def test_concept_drift_is_caught_retrained_and_rolled_out(tmp_path: Path) -> None:
    small = world_settings(tmp_path / ".mlref")
    settings = small.model_copy(
        update={
            "serving": small.serving.model_copy(
                update={"transformer_port": free_port(), "predictor_port": free_port()}
            ),
            "canary": small.canary.model_copy(
                update={
                    "candidate_port": free_port(),
                    "proxy_port": free_port(),
                    "min_requests": 100,
                    "poll_seconds": 1,
                }
            ),
            "shadow": small.shadow.model_copy(update={"port": free_port()}),
            "demo": small.demo.model_copy(
                update={"replay_rows": 4_000, "replay_batch": 20, "canary_bake_seconds": 4}
            ),
        }
    )

    record = run_loop(settings)

    assert [(p.label, p.decision) for p in record.drift] == [
        ("before drift", "none"),
        ("after drift", "retrain"),
    ]
    assert [d["status"] for d in read_decisions(settings)] == ["no action", "submitted"]
    progress = json.loads((demo_dir(settings) / "progress.json").read_text())
    assert progress["champion"] == "1" and progress["challenger"] == "2"
    assert progress["gate"] == "canary"
    # v2 shadowed v1 for a day first: compared on the same requests, with their labels.
    shadowed = int(progress["shadow"].split()[0])
    assert shadowed >= settings.demo.replay_rows // settings.demo.replay_batch // 2
    assert any(line.startswith("logloss") for line in record.shadow)
    # The retrained model is better on the live day (below), and each stage decides on
    # evidence, not on how much traffic this machine served in a given time: promoted.
    assert progress["rollout"] == "promoted"
    assert str(registry.model_version_of(settings, registry.CHAMPION).version) == "2"
    stages = sorted({p.percent for p in record.canary})
    assert stages == [s for s in settings.canary.stages if s < 100]
    assert {p.action for p in record.canary} == {"promote"}
    assert all(p.requests >= settings.canary.min_requests for p in record.canary)
    auc = {(p.model.split()[0], p.day.split()[1]): p.auc for p in record.quality}
    live = max(day for _, day in auc)
    assert auc[("v2", live)] > auc[("v1", live)]  # retrained on drift: better after it
    report = (demo_dir(settings) / "report.html").read_text()
    assert "Drift checks" in report and "Canary rollout" in report and "data:image/png" in report
    assert "Shadow before the canary" in report
