"""The champion's drift reference: saved beside the model and logged to its MLflow run."""

from __future__ import annotations

import numpy as np

from mlref import onnx_model
from mlref.monitoring.reference import load_reference
from mlref.schema import TIMESTAMP
from mlref.scoring import score_rows
from mlref.serving.inference_log import SCHEMA
from mlref.settings import Settings
from mlref.training import registry


def test_reference_is_in_the_log_schema_with_labels_and_test_metrics(world: Settings) -> None:
    reference = load_reference(world)
    assert [*(f.name for f in SCHEMA), "clicked"] == list(reference.rows.columns)
    assert len(reference.rows) == reference.meta["rows"] <= world.drift.reference_rows
    assert reference.model_version == str(registry.model_version_of(world, "champion").version)
    test = reference.meta["test"]
    assert 0.5 < test["auc"] < 1 and 0 < test["logloss"] < 1
    assert reference.rows["probability"].between(0, 1).all()


def test_registry_copy_is_what_the_champion_predicts(world: Settings, job_settings) -> None:
    from_mlflow = load_reference(job_settings)  # fresh drift dir: downloaded from the run
    assert (job_settings.drift_dir / "reference").is_dir()
    cached = load_reference(job_settings)
    assert cached.meta == from_mlflow.meta
    champion = onnx_model.load(registry.resolve_model(world, "models:/ctr@champion"))
    rescored = score_rows(
        from_mlflow.rows.rename(columns={"timestamp": TIMESTAMP}), champion, "", "check"
    )
    np.testing.assert_allclose(rescored["probability"], from_mlflow.rows["probability"], atol=1e-6)
