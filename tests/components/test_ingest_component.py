"""The ingest component, run by kfp's local runner in a subprocess of this interpreter."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from kfp import local

from mlref.components.ingest import ingest_op
from mlref.schema import RAW_COLUMNS, examples
from mlref.settings import Settings


@pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")  # kfp: base_image
def test_ingest_component_runs_locally(tmp_path: Path, settings: Settings) -> None:
    ts = pd.date_range("2026-01-01", periods=4, freq="7h", tz="UTC")
    examples(4).assign(
        event_timestamp=ts,
        request_id=["a", "b", "c", "a"],  # the last one is a duplicate
        hour=ts.hour,
        clicked=[0, 1, 0, 0],
    )[list(RAW_COLUMNS)].to_parquet(tmp_path / "logs.parquet")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))

    task = ingest_op(source=str(tmp_path / "logs.parquet"), overrides=settings.model_dump_json())

    counts = {k: task.outputs[k] for k in ("rows_in", "rows_curated", "rows_quarantined")}
    assert counts == {"rows_in": 4, "rows_curated": 3, "rows_quarantined": 1}
    assert task.outputs["curated_uri"] == settings.curated_uri
    curated = pd.read_parquet(settings.curated_dir)
    assert sorted(curated["request_id"]) == ["a", "b", "c"]
    assert curated["date"].astype(str).unique().tolist() == ["2026-01-01"]
    assert pd.read_parquet(settings.quarantine_dir)["reason"].tolist() == ["request_id: duplicate"]
