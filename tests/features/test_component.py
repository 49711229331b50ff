"""The features component, run by kfp's local runner in a subprocess of this interpreter."""

from __future__ import annotations

from pathlib import Path

import pytest
from kfp import local

from mlref.components.features import features_op
from mlref.features.store import OnlineFeatureLookup
from mlref.settings import Settings
from tests.features import LOG, events, write_curated


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")  # kfp: base_image
def test_features_component_materializes_and_reports_counts(tmp_path: Path, settings: Settings):
    write_curated(settings.curated_dir, events(LOG))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))

    task = features_op(overrides=settings.model_dump_json())

    outputs = {k: task.outputs[k] for k in ("user_rows", "ad_rows", "users", "ads")}
    assert outputs == {"user_rows": 23, "ad_rows": 16, "users": 3, "ads": 2}
    assert task.outputs["last_snapshot"] == "2026-01-10T00:00:00+00:00"
    # The component's subprocess wrote the online store this process now reads.
    found = OnlineFeatureLookup(settings).lookup([1], [10])
    assert found.at[0, "user_impressions_1d"] == 1
