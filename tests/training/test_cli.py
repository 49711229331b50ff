"""`mlref train run` through the command line app: a small generated world in, a registered
champion and its artifacts out; no data: one line, exit 1."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mlref.cli import app
from mlref.data.generate import generate
from mlref.data.ingest import ingest
from mlref.features.store import compute_and_materialize
from mlref.settings import Settings, get_settings
from mlref.training import registry
from mlref.training.tracking import client
from mlref.training.warm_start import PARENT_VERSION_TAG
from tests.monitoring.conftest import day_window

pytestmark = pytest.mark.slow


def rows(output: str) -> dict[str, str]:
    """The summary table's ``name | value`` rows."""
    cells = (
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.strip().startswith("│")
    )
    return {c[0]: c[1] for c in cells if len(c) == 2}


def test_train_run_registers_a_champion(cli_env: Settings, monkeypatch):
    # a model this small loses more to int8 than the production gate allows
    for key in ("MAX_ABS_DIFF", "MEAN_ABS_DIFF", "MAX_AUC_DROP", "MAX_LOGLOSS_INCREASE"):
        monkeypatch.setenv(f"MLREF_PARITY__{key}", "1")
    monkeypatch.setenv("MLREF_TRAIN__HIDDEN_UNITS", "[16]")
    get_settings.cache_clear()
    settings = get_settings()
    generate(settings)
    ingest(str(settings.raw_dir), settings, now=day_window(settings, settings.data.days)[1])
    compute_and_materialize(settings)

    result = CliRunner().invoke(app, ["train", "run", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    assert (table["model version"], table["champion now"]) == ("1", "1")
    champion = registry.model_version_of(settings, registry.CHAMPION)
    assert champion is not None and str(champion.version) == "1"
    work = settings.artifacts_dir / "train"
    assert sorted(p.name for p in (work / "onnx").glob("*.onnx"))
    assert any((work / "sets").iterdir()) and any((work / "model").iterdir())
    assert table["started from"] == "train.init=scratch: a full retrain"

    # A warm start from that champion, on its last training day; version 2 names its parent.
    monkeypatch.setenv("MLREF_TRAIN__INIT", "champion")
    monkeypatch.setenv("MLREF_TRAIN__WINDOW_DAYS", "1")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["train", "run", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    assert table["model version"] == "2"
    assert table["started from"].startswith("train.init=champion: warm start")
    version = client(settings).get_model_version(settings.model_name, "2")
    assert version.tags[PARENT_VERSION_TAG] == "1"

    # The champion no longer fits: one line naming the fix, exit 1, nothing registered.
    monkeypatch.setenv("MLREF_TRAIN__EMBEDDING_DIM", "4")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["train", "run", "--epochs", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: cannot warm-start from champion version 1" in result.output
    assert "MLREF_TRAIN__EMBEDDING_DIM=16" in result.output
    assert len(client(settings).search_model_versions(f"name='{settings.model_name}'")) == 2


def test_train_run_without_data_is_one_line_exit_1(cli_env: Settings):
    result = CliRunner().invoke(app, ["train", "run", "--epochs", "1"])
    assert result.exit_code == 1
    assert result.output.startswith("error:") and "Traceback" not in result.output
