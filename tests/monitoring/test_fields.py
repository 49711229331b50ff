"""Every field of the contract flows from the generator to the drift report.

The test iterates over :data:`mlref.schema.FIELDS`, so a new field is followed through each
step with no edit here: the generated raw logs, the curated data (ingestion), the
point-in-time training set (Feast), the model's inputs (feature spec and ONNX input width),
the inference log (the day replayed as serving logs it), the quality checks and the drift
report. Request validation per field is in ``tests/test_contract.py``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mlref import onnx_model, schema
from mlref.monitoring import drift
from mlref.monitoring.quality import quality_issues
from mlref.monitoring.reference import load_reference
from mlref.settings import Settings
from mlref.training.shards import ShardSet
from mlref.training.workflow import INT8_FILE
from tests.monitoring.test_scenarios import check


def test_every_field_flows_from_generator_to_drift_report(
    world: Settings, scenario_log, tmp_path: Path
) -> None:
    fields = list(schema.REQUEST_COLUMNS)
    train = world.artifacts_dir / "train"
    steps = {
        "generated": pd.read_parquet(world.raw_dir),
        "curated": pd.read_parquet(world.curated_dir),
        "training set": ShardSet(str(train / "sets")).frame("train"),
        "inference log": scenario_log("none"),
    }
    for step, frame in steps.items():
        assert set(fields) <= set(frame), f"{step} lacks {set(fields) - set(frame)}"
        assert frame[fields].notna().all().all(), step
    for name, vocabulary in schema.VOCABULARIES.items():  # the generator draws known values
        assert set(steps["curated"][name]) == set(vocabulary), name

    model = onnx_model.load(train / "onnx" / INT8_FILE)
    assert model.spec.categorical_names == schema.REQUEST_COLUMNS
    widths = {i.name: i.shape[1] for i in model.session.get_inputs()}
    assert widths[onnx_model.INPUT_CAT] == len(schema.FIELDS)

    reference, log = load_reference(world).rows, steps["inference log"]
    for name in drift.CATEGORICAL:  # every field the model reads, ids excepted
        broken = log.assign(**{name: None})
        found = {(i.column, i.kind) for i in quality_issues(reference, broken, world.drift)}
        assert (name, "null") in found, name

    result = check(world, log, tmp_path)
    assert {c.column for c in result.drift.columns} >= set(drift.CATEGORICAL)
    assert {v.column for v in result.drift.vocabulary} == set(schema.CATEGORICAL_COLUMNS)
    report = (tmp_path / "drift_report.html").read_text()
    assert all(name in report for name in drift.CATEGORICAL)
