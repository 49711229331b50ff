"""The label job's rules on a hand-made log and click log: a click labels its request at
once, no click labels it 0 only past the maturity window, a labelled request is never
labelled again, and only the window's requests are looked at."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mlref.cli import app
from mlref.monitoring.inference import read_labels, write_labels
from mlref.monitoring.labels import LabelResult, collect
from mlref.schema import LOG_SCHEMA
from mlref.settings import Settings

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
MATURITY, WINDOW = 6.0, 24.0
# request id -> hours before NOW it was served
SERVED = {
    "young-clicked": 1,
    "young-waiting": 1,
    "mature-unclicked": 10,
    "mature-clicked": 10,
    "labelled-before": 10,
    "before-window": WINDOW + MATURITY + 1,
    "in-future": -1,
}
CLICKS = [  # request id, clicked: a request may appear more than once; any click counts
    ("young-clicked", 0),
    ("young-clicked", 1),
    ("mature-clicked", 1),
    ("mature-unclicked", 0),
    ("never-served", 1),
    ("before-window", 1),
]


def write_log(settings: Settings, served: dict[str, float], now: datetime) -> None:
    times = [now - timedelta(hours=h) for h in served.values()]
    columns = {f.name: pa.nulls(len(times), f.type) for f in LOG_SCHEMA}
    columns["timestamp"] = pa.array(times, LOG_SCHEMA.field("timestamp").type)
    columns["request_id"] = pa.array(list(served), pa.string())
    folder = Path(settings.inference_log_uri) / "date=2026-01-10"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=LOG_SCHEMA), folder / "part-0.parquet")


def write_clicks(folder: Path, clicks: list[tuple[str, int]]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(clicks, columns=["request_id", "clicked"])
    frame.to_parquet(folder / "clicks.parquet")
    return str(folder)


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> tuple[Settings, str]:
    drift = settings.drift.model_copy(
        update={"label_maturity_hours": MATURITY, "window_hours": WINDOW}
    )
    settings = settings.model_copy(update={"drift": drift})
    write_log(settings, SERVED, NOW)
    write_labels(settings, pd.DataFrame({"request_id": ["labelled-before"], "clicked": [1]}), "old")
    return settings, write_clicks(tmp_path / "clicks", CLICKS)


def stored(settings: Settings) -> dict[str, int]:
    labels = read_labels(settings)
    return dict(zip(labels["request_id"], labels["clicked"].astype(int), strict=True))


def test_each_rule(world):
    settings, clicks = world
    result = collect(settings, clicks, now=NOW)
    assert result == LabelResult(
        served=5, already=1, clicked=2, not_clicked=1, waiting=1, name="labels-20260110T120000Z"
    )
    assert stored(settings) == {
        "labelled-before": 1,
        "young-clicked": 1,
        "mature-clicked": 1,
        "mature-unclicked": 0,
    }


def test_a_second_run_labels_only_what_matured_since(world):
    settings, clicks = world
    collect(settings, clicks, now=NOW)
    again = collect(settings, clicks, now=NOW)
    assert (again.already, again.waiting, again.name) == (4, 1, "")
    later = collect(settings, clicks, now=NOW + timedelta(hours=MATURITY))
    assert (later.not_clicked, later.waiting) == (1, 1)  # "in-future" is young now
    assert stored(settings)["young-waiting"] == 0 and "in-future" not in stored(settings)


def test_no_click_logs_is_an_error(world, tmp_path):
    settings, _ = world
    with pytest.raises(FileNotFoundError, match="no Parquet click logs"):
        collect(settings, str(tmp_path / "empty"), now=NOW)


def test_cli_drift_labels(cli_env, tmp_path):
    """`mlref drift labels` at the real clock: its summary and the file it writes."""
    now = datetime.now(UTC)
    hours = cli_env.drift.label_maturity_hours
    write_log(cli_env, {"clicked": 0.01, "waiting": 0.01, "matured": hours + 1}, now)
    clicks = write_clicks(tmp_path / "clicks", [("clicked", 1)])
    runner = CliRunner()
    result = runner.invoke(app, ["drift", "labels", "--source", clicks])
    assert result.exit_code == 0, result.output
    rows = dict(
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in result.output.splitlines()
        if line.strip().startswith("│")
    )
    assert {k: v for k, v in rows.items() if k != "written"} == {
        "served requests in window": "3",
        "labelled before": "0",
        "clicked": "1",
        "not clicked (matured)": "1",
        "waiting for maturity": "1",
    }
    assert stored(cli_env) == {"clicked": 1, "matured": 0}
    missing = runner.invoke(app, ["drift", "labels", "--source", str(tmp_path / "none")])
    assert missing.exit_code != 0 and "no Parquet click logs" in missing.output
