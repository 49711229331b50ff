"""Ingestion of hand-built raw logs: every corrupted row is quarantined with its exact reasons."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlref.data import ingest as ingest_module
from mlref.data.ingest import ingest
from mlref.data.parts import IngestError, IngestResult
from mlref.schema import RAW_COLUMNS, RAW_SCHEMA, examples
from mlref.settings import Settings

NOW = datetime(2026, 1, 3, tzinfo=UTC)


EXAMPLE = examples(1).iloc[0].to_dict()


def row(request_id: str, hour: int | None = 3, **values: object) -> dict[str, object]:
    """A valid raw row on 2026-01-01, with ``values`` overriding any field."""
    return (
        EXAMPLE
        | {
            "event_timestamp": pd.Timestamp(f"2026-01-01T{hour or 0:02d}:15:00Z"),
            "request_id": request_id,
            "hour": hour,
            "clicked": 1,
        }
        | values
    )


def frame(*rows: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=list(RAW_COLUMNS))


def typed(*rows: dict[str, object]) -> pd.DataFrame:
    """Rows with the nullable column types a pandas producer would write to Parquet."""
    df = frame(*rows)
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    ints = [f.name for f in RAW_SCHEMA if pa.types.is_integer(f.type)]
    return df.astype(dict.fromkeys(ints, "Int64"))


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def ingest_at(source: Path, settings: Settings) -> IngestResult:
    return ingest(str(source), settings, now=NOW)


# (file, row) -> the exact reasons; every other row of the input must be curated.
EXPECTED_REASONS = {
    ("a.parquet", 2): "position: out of range 1..8; hour: null",
    ("a.parquet", 3): "event_timestamp: in the future",
    ("a.parquet", 4): "device_type: longer than 64 characters",
    ("a.parquet", 5): "hour: does not match event_timestamp",
    ("a.parquet", 6): "request_id: duplicate",
    ("a.parquet", 7): "user_id: negative; clicked: out of range 0..1",
    ("a.parquet", 8): "ad_id: null; site_category: null",
    ("a.parquet", 9): "event_timestamp: null",
    ("b.csv", 1): "request_id: duplicate",
    ("b.csv", 2): "user_id: not an integer; position: not an integer",
    ("b.csv", 3): "event_timestamp: not a timestamp",
    ("b.csv", 5): "request_id: null",
    ("b.csv", 6): "request_id: already curated",
    ("b.csv", 7): "request_id: duplicate; position: out of range 1..8",
}


@pytest.fixture
def corrupted(tmp_path: Path, settings: Settings) -> Path:
    """A Parquet and a CSV file with every kind of bad row, after an earlier ingestion."""
    earlier = tmp_path / "earlier.parquet"
    typed(row("r99")).to_parquet(earlier)
    assert ingest_at(earlier, settings).rows_curated == 1

    raw = tmp_path / "raw"
    raw.mkdir()
    typed(
        row("r0"),
        row("r1", hour=7),
        row("r2", position=9, hour=None),
        row("r3", hour=1, event_timestamp=pd.Timestamp("2026-01-05T01:00Z")),
        row("r4", device_type="x" * 200_000),
        row("r5", hour=4, event_timestamp=pd.Timestamp("2026-01-01T05:59Z")),
        row("r0", user_id=12),
        row("r7", user_id=-1, clicked=2),
        row("r8", ad_id=None, site_category=None),
        row("r9", event_timestamp=None),
        row("r15", ad_category="toys", device_type="phone"),  # new values: kept, counted
    ).to_parquet(raw / "a.parquet")
    csv = frame(
        row("r10"),
        row("r1"),
        row("r12", user_id="abc", position="2.5"),
        row("r13", event_timestamp="yesterday"),
        row("r14", clicked="1.0", position="3.0"),
        row("", hour=2),
        row("r99"),
        row("r14", position=0),
    )
    csv["event_timestamp"] = csv["event_timestamp"].astype(str).str.replace("+00:00", "Z")
    csv.to_csv(raw / "b.csv", index=False)
    return raw


def test_corrupted_rows_are_quarantined_with_every_reason(
    corrupted: Path, settings: Settings
) -> None:
    result = ingest_at(corrupted, settings)

    quarantine = pd.read_parquet(settings.quarantine_dir)
    found = {
        (Path(f).name, r): reason
        for f, r, reason in zip(
            quarantine["source_file"], quarantine["source_row"], quarantine["reason"], strict=True
        )
    }
    assert found == EXPECTED_REASONS
    curated = pd.read_parquet(settings.curated_dir)
    assert sorted(curated["request_id"]) == ["r0", "r1", "r10", "r14", "r15", "r99"]  # r99: earlier
    r15 = curated.set_index("request_id").loc["r15"]
    assert (r15["ad_category"], r15["device_type"]) == ("toys", "phone")
    assert result.unknown_values == {"ad_category": 1, "device_type": 1}

    # Nothing lost: every input row is curated or quarantined, and the counts reconcile.
    assert result.rows_in == 19
    assert result.rows_quarantined == len(quarantine) == len(EXPECTED_REASONS)
    assert result.rows_curated == len(curated) - 1 == result.rows_in - result.rows_quarantined
    assert result.reasons == Counter(r for v in EXPECTED_REASONS.values() for r in v.split("; "))
    assert [Path(f).name for f in result.files] == ["a.parquet", "b.csv"]

    # Unreadable timestamps go to their own partition; others by day, the future one too.
    ids = quarantine["request_id"].fillna("")
    by_date = ids.groupby(quarantine["date"].astype(str)).apply(sorted)
    assert by_date.to_dict() == {
        "2026-01-01": ["", "r0", "r1", "r12", "r14", "r2", "r4", "r5", "r7", "r8", "r99"],
        "2026-01-05": ["r3"],
        "unknown": ["r13", "r9"],
    }
    # The original values are kept, as text.
    bad_types = quarantine.set_index("request_id").loc["r12"]
    assert (bad_types["user_id"], bad_types["position"]) == ("abc", "2.5")
    # Loosely typed but castable values are curated with the exact schema types.
    for part in data_files(settings.curated_dir):
        assert pq.read_schema(part).remove_metadata() == RAW_SCHEMA
    r14 = curated.set_index("request_id").loc["r14"]
    assert (r14["position"], r14["clicked"], r14["hour"]) == (3, 1, 3)


def test_reingesting_is_idempotent(corrupted: Path, settings: Settings) -> None:
    first = ingest_at(corrupted, settings)
    files = {p: p.read_bytes() for p in data_files(settings.work_dir / "data")}
    second = ingest_at(corrupted, settings)

    assert {p: p.read_bytes() for p in data_files(settings.work_dir / "data")} == files
    assert (second.rows_curated, second.reasons) == (first.rows_curated, first.reasons)
    assert pd.read_parquet(settings.curated_dir)["request_id"].is_unique


def test_csv_and_parquet_curate_the_same_rows(tmp_path: Path, settings: Settings) -> None:
    df = typed(*(row(f"r{i}", hour=i, user_id=i, clicked=i % 2) for i in range(24)))
    df.to_parquet(tmp_path / "logs.parquet")
    df.to_csv(tmp_path / "logs.csv", index=False)
    by_csv = settings.model_copy(update={"work_dir": tmp_path / "from_csv"})

    assert ingest_at(tmp_path / "logs.parquet", settings).rows_curated == 24
    assert ingest_at(tmp_path / "logs.csv", by_csv).rows_curated == 24
    from_parquet = pq.read_table(settings.curated_dir)
    assert from_parquet.equals(pq.read_table(by_csv.curated_dir))
    assert from_parquet.to_pandas()["user_id"].tolist() == list(range(24))


def test_loosely_typed_parquet_is_cast_when_lossless(tmp_path: Path, settings: Settings) -> None:
    df = frame(row("r0"), row("r1"), row("r2"), row("r3"))
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"]).dt.tz_localize(None)  # naive
    df["position"] = [3.0, 2.5, None, 8.0]  # pandas writes ints with nulls as floats
    df["device_type"] = df["device_type"].astype("category")  # dictionary-encoded
    df["user_id"] = ["7", "x", "8", "9"]  # text
    df.to_parquet(tmp_path / "loose.parquet")

    result = ingest_at(tmp_path / "loose.parquet", settings)

    assert pd.read_parquet(settings.quarantine_dir)["reason"].tolist() == [
        "user_id: not an integer; position: not an integer",
        "position: null",
    ]
    curated = pd.read_parquet(settings.curated_dir)
    assert curated[["request_id", "user_id", "position"]].values.tolist() == [
        ["r0", 7, 3],
        ["r3", 9, 8],
    ]
    assert curated["event_timestamp"].iloc[0] == pd.Timestamp("2026-01-01T03:15Z")
    assert (result.rows_curated, result.rows_quarantined) == (2, 2)


def test_any_fsspec_uri_and_glob(settings: Settings) -> None:
    fs = fsspec.filesystem("memory")
    for name, request_id in [("a.parquet", "r0"), ("b.parquet", "r1"), ("c.csv", "r2")]:
        with fs.open(f"/mlref-test/raw/{name}", "wb") as f:
            if name.endswith(".csv"):
                frame(row(request_id)).to_csv(f, index=False)
            else:
                typed(row(request_id)).to_parquet(f)
    fs.pipe("/mlref-test/raw/_SUCCESS", b"")  # a marker file, skipped
    try:
        by_glob = ingest("memory://mlref-test/raw/*.parquet", settings, now=NOW)
        by_dir = ingest("memory://mlref-test/raw", settings, now=NOW)
    finally:
        fs.rm("/mlref-test", recursive=True)

    assert by_glob.files == [
        "memory:///mlref-test/raw/a.parquet",
        "memory:///mlref-test/raw/b.parquet",
    ]
    assert len(by_dir.files) == 3
    assert sorted(pd.read_parquet(settings.curated_dir)["request_id"]) == ["r0", "r1", "r2"]


@pytest.mark.parametrize("runs", ["in memory", "on disk"])
@pytest.mark.parametrize("hashes", ["real", "all equal"])
def test_big_files_are_read_in_batches(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch, hashes: str, runs: str
) -> None:
    """Duplicates across batch boundaries and row numbers stay right when a file is split;
    the ids of earlier batches are kept as hashes, in memory or moved to disk, and an equal
    hash is not an equal id."""
    if hashes == "all equal":
        monkeypatch.setattr(ingest_module, "_hash", lambda ids: np.zeros(len(ids), np.uint64))
    if runs == "on disk":
        monkeypatch.setattr(ingest_module, "MEMORY_RUN", 1)  # every batch's run goes to disk
    settings.ingest.batch_rows = 1_000
    df = typed(*(row(f"r{i}") for i in range(2_500)))
    df.loc[1_500, "request_id"] = "r10"  # a duplicate of a row in the first batch
    df.loc[1_600, ["request_id", "position"]] = ["r2300", 0]  # bad, so row 2300 is the first
    df.to_parquet(tmp_path / "big.parquet", row_group_size=700)

    result = ingest_at(tmp_path / "big.parquet", settings)

    quarantine = pd.read_parquet(settings.quarantine_dir).sort_values("source_row")
    assert quarantine["source_row"].tolist() == [1_500, 1_600]
    assert quarantine["reason"].tolist() == ["request_id: duplicate", "position: out of range 1..8"]
    assert (result.rows_in, result.rows_curated) == (2_500, 2_498)
    assert "r2300" in set(pd.read_parquet(settings.curated_dir)["request_id"])


# Each kind of bad file write_bad_file makes, with the error's message; both engines give it.
BAD_FILES = [
    ("json", "z.json: not a Parquet or CSV file (expected .parquet, .pq, .csv)"),
    ("empty", "z.csv: empty file"),
    ("header only", "z.csv: empty file (no data rows)"),
    ("missing columns", "z.parquet: missing column(s) hour, clicked"),
    ("corrupt", "z.parquet: unreadable or corrupt parquet file: "),
]


def write_bad_file(root: Path, case: str) -> Path:
    if case == "json":
        path = root / "z.json"
        path.write_text("{}")
    elif case == "empty":
        path = root / "z.csv"
        path.touch()
    elif case == "header only":
        path = root / "z.csv"
        frame().to_csv(path, index=False)
    elif case == "missing columns":
        path = root / "z.parquet"
        typed(row("x")).drop(columns=["hour", "clicked"]).to_parquet(path)
    else:
        path = root / "z.parquet"
        path.write_bytes(b"PAR1 this is not a parquet footer PAR1")
    return path


@pytest.mark.parametrize(("case", "message"), BAD_FILES)
def test_bad_files_fail_clearly_and_write_nothing(
    tmp_path: Path, settings: Settings, case: str, message: str
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    typed(row("good")).to_parquet(raw / "a.parquet")  # read first, so it would be staged
    write_bad_file(raw, case)

    with pytest.raises(IngestError, match=r"^file://") as error:
        ingest_at(raw, settings)

    assert message in str(error.value)
    assert data_files(settings.work_dir) == []


def test_a_source_that_matches_nothing_fails(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(IngestError, match="nothing matches"):
        ingest_at(tmp_path / "missing" / "*.csv", settings)


def test_cli_summarizes_or_fails_in_one_line(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from mlref.cli import app
    from mlref.settings import get_settings

    monkeypatch.setenv("MLREF_WORK_DIR", str(settings.work_dir))
    monkeypatch.setenv("COLUMNS", "300")  # so that rich does not wrap the summary's paths
    get_settings.cache_clear()
    typed(row("r0"), row("r0")).to_parquet(tmp_path / "logs.parquet")
    (tmp_path / "logs.json").write_text("{}")
    runner = CliRunner()

    clock = ["--now", NOW.isoformat()]
    ok = runner.invoke(app, ["ingest", "run", str(tmp_path / "logs.parquet"), *clock])
    failed = runner.invoke(app, ["ingest", "run", str(tmp_path / "logs.json"), *clock])
    monkeypatch.setenv("MLREF_WORK_DIR", str(tmp_path / "earlier"))
    get_settings.cache_clear()
    earlier = ["--now", "2025-12-31T00:00:00+00:00"]  # before the rows: both lie in the future
    future = runner.invoke(app, ["ingest", "run", str(tmp_path / "logs.parquet"), *earlier])
    naive = runner.invoke(app, ["ingest", "run", str(tmp_path / "logs.parquet"), "--now", "1 Jan"])
    get_settings.cache_clear()

    assert ok.exit_code == 0, ok.output
    assert re.search(r"rows quarantined\s+│ 1\s", ok.output)
    assert str(settings.curated_dir) in ok.output
    assert failed.exit_code == 1
    assert failed.output.strip().splitlines() == [
        f"ingest failed: file://{tmp_path}/logs.json: not a Parquet or CSV file "
        "(expected .parquet, .pq, .csv)"
    ]
    assert future.exit_code == 0, future.output
    assert re.search(r"rows quarantined\s+│ 2\s", future.output)
    assert naive.exit_code == 1
    assert naive.output.strip() == (
        "error: --now '1 Jan' is not an ISO time, e.g. 2026-01-03T00:00:00+00:00"
    )
