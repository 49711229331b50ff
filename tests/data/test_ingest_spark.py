"""Ingestion on Spark gives the local engine's output, file for file, and survives faults."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlref.data.generate import ScenarioWindow, generate
from mlref.data.ingest import ingest
from mlref.data.ingest_spark import CHECKED_SCHEMA, IDS_SCHEMA, _with_flags, writer_rows
from mlref.data.parts import IngestError, IngestResult
from mlref.settings import EngineSettings, Settings, StorageSettings
from tests.conftest import newest_job
from tests.data.test_ingest import (  # noqa: F401  (corrupted is a fixture)
    BAD_FILES,
    NOW,
    corrupted,
    data_files,
    row,
    typed,
    write_bad_file,
)

# Every test here runs on the shared session.
pytestmark = pytest.mark.usefixtures("spark")


def on_spark(settings: Settings, work_dir: Path) -> Settings:
    return settings.model_copy(
        update={"work_dir": work_dir, "engine": EngineSettings(data="spark")}
    )


def outputs(settings: Settings) -> dict[str, object]:
    """Every curated and quarantined part, by path under the data folder, as a table."""
    root = settings.work_dir / "data"
    return {p.relative_to(root).as_posix(): pq.read_table(p) for p in data_files(root)}


def summary(result: IngestResult, settings: Settings) -> dict[str, object]:
    root = str(settings.work_dir.resolve())
    return {
        "counts": (result.rows_in, result.rows_curated, result.rows_quarantined),
        "reasons": result.reasons,
        "unknown": result.unknown_values,
        "files": result.files,
        "partitions": [p.removeprefix(root) for p in result.partitions],
    }


@pytest.fixture
def raw(corrupted: Path, settings: Settings, tmp_path: Path) -> Path:  # noqa: F811
    """The hand-built bad rows, three generated days with the quality scenario's bad rows,
    and files repeating rows of two generated days, read before and after them (request ids
    duplicated across files)."""
    generate(settings, scenarios=[ScenarioWindow("quality", 2, 2)], out_dir=corrupted / "gen")
    days = [pq.read_table(p) for p in sorted((corrupted / "gen").rglob("*.parquet"))]
    pq.write_table(days[0].slice(0, 40), corrupted / "0-before.parquet")
    pq.write_table(days[1].slice(100, 40), corrupted / "z-after.parquet")
    return corrupted


def ingest_both(raw: Path, settings: Settings, tmp_path: Path) -> tuple[Settings, list]:
    """The same input on both engines, each after the same earlier ingestion."""
    spark_settings = on_spark(settings, tmp_path / "spark")
    earlier = spark_settings.model_copy(update={"engine": EngineSettings()})
    ingest(str(tmp_path / "earlier.parquet"), earlier, now=NOW)
    results = [ingest(str(raw), s, now=NOW) for s in (settings, spark_settings)]
    return spark_settings, results


def test_spark_curates_and_quarantines_exactly_as_the_local_engine(
    raw: Path, settings: Settings, tmp_path: Path
) -> None:
    spark_settings, (local, on_spark_) = ingest_both(raw, settings, tmp_path)

    assert summary(on_spark_, spark_settings) == summary(local, settings)
    assert outputs(spark_settings) == outputs(settings)
    assert on_spark_.rows_in == on_spark_.rows_curated + on_spark_.rows_quarantined
    # The input has what the comparison is about: bad rows and ids repeated across files.
    assert local.reasons["request_id: duplicate"] >= 40
    assert len(local.reasons) >= 10
    assert local.unknown_values


def test_spark_rerun_rewrites_the_same_files(raw: Path, settings: Settings, tmp_path: Path) -> None:
    spark_settings = on_spark(settings, settings.work_dir)
    first = ingest(str(raw), spark_settings, now=NOW)
    files = {p: p.read_bytes() for p in data_files(settings.work_dir / "data")}
    second = ingest(str(raw), spark_settings, now=NOW)

    assert {p: p.read_bytes() for p in data_files(settings.work_dir / "data")} == files
    assert summary(second, spark_settings) == summary(first, spark_settings)
    assert not (settings.work_dir / "staging").exists()


@pytest.mark.parametrize(("case", "message"), BAD_FILES)
def test_bad_files_fail_as_locally_and_write_nothing(
    tmp_path: Path, settings: Settings, case: str, message: str
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    typed(row("good")).to_parquet(raw / "a.parquet")
    write_bad_file(raw, case)
    errors = []
    for engine_settings in (settings, on_spark(settings, tmp_path / "spark")):
        with pytest.raises(IngestError) as error:
            ingest(str(raw), engine_settings, now=NOW)
        errors.append(str(error.value))

    assert errors[0] == errors[1]
    assert message in errors[1]
    assert data_files(tmp_path / "spark") == []


@pytest.mark.parametrize("fault", ["kill-checking", "kill-writing"])
def test_a_killed_python_worker_loses_and_duplicates_nothing(
    raw: Path, settings: Settings, tmp_path: Path, spark_faults: Path, fault: str
) -> None:
    """The worker kills itself once (SIGKILL); Spark retries its task on another."""
    marker = spark_faults / fault
    marker.touch()
    try:
        spark_settings, (local, on_spark_) = ingest_both(raw, settings, tmp_path)
    finally:
        fired = not marker.exists()
        marker.unlink(missing_ok=True)

    assert fired
    assert summary(on_spark_, spark_settings) == summary(local, settings)
    assert outputs(spark_settings) == outputs(settings)


def test_a_run_failing_mid_write_publishes_nothing(
    raw: Path, settings: Settings, tmp_path: Path, spark_faults: Path
) -> None:
    """Writers fail after staging their first part: the earlier data stays as it was."""
    spark_settings = on_spark(settings, settings.work_dir)
    before = {p: p.read_bytes() for p in data_files(settings.work_dir)}
    marker = spark_faults / "fail-writing"
    marker.touch()
    try:
        with pytest.raises(IngestError, match=r"Spark job failed.*: RuntimeError: injected write"):
            ingest(str(raw), spark_settings, now=NOW)
    finally:
        marker.unlink()

    assert {p: p.read_bytes() for p in data_files(settings.work_dir)} == before
    ingest(str(raw), spark_settings, now=NOW)  # and a rerun succeeds


def test_cli_ingests_on_the_engine_the_settings_name(
    raw: Path, settings: Settings, spark, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from mlref.cli import app
    from mlref.settings import get_settings

    monkeypatch.setenv("MLREF_WORK_DIR", str(settings.work_dir))
    monkeypatch.setenv("MLREF_ENGINE__DATA", "spark")
    get_settings.cache_clear()
    jobs = newest_job(spark)
    try:
        ok = CliRunner().invoke(app, ["ingest", "run", str(raw / "b.csv")])
    finally:
        get_settings.cache_clear()

    assert ok.exit_code == 0, ok.output
    assert newest_job(spark) > jobs  # it ran on Spark
    assert "request_id: already curated" in ok.output  # r99, curated by the fixture


def test_engines_mix_a_rerun_on_spark_rewrites_the_local_parts(
    raw: Path, settings: Settings
) -> None:
    """The same part names: a file re-ingested by the other engine is not "already curated"."""
    local = ingest(str(raw), settings, now=NOW)
    before = outputs(settings)
    again = ingest(str(raw), on_spark(settings, settings.work_dir), now=NOW)

    assert summary(again, settings) == summary(local, settings)
    assert outputs(settings) == before


def test_spark_ingests_into_object_storage(
    raw: Path, settings: Settings, tmp_path: Path, s3_env
) -> None:
    """Executors read and write through fsspec with the object store's env; staged parts are
    moved within the bucket, and nothing is left in staging."""
    bucket = s3_env.create_bucket("spark-ingest")
    on_s3 = on_spark(settings, tmp_path / "s3-work").model_copy(
        update={"storage": StorageSettings(root=bucket)}
    )
    earlier = on_s3.model_copy(update={"engine": EngineSettings()})
    ingest(str(tmp_path / "earlier.parquet"), earlier, now=NOW)
    local = ingest(str(raw), settings, now=NOW)

    result = ingest(str(raw), on_s3, now=NOW)

    fs, root = fsspec.core.url_to_fs(f"{bucket}/data")
    found = {
        path.removeprefix(f"{root}/"): pq.read_table(path, filesystem=fs) for path in fs.find(root)
    }
    assert found == outputs(settings)
    assert (result.rows_in, result.rows_curated, result.reasons) == (
        local.rows_in,
        local.rows_curated,
        local.reasons,
    )
    assert not fs.exists(f"{bucket}/staging")


def test_a_big_parquet_file_is_checked_by_several_tasks_with_the_same_result(
    tmp_path: Path, settings: Settings
) -> None:
    """Row groups split over tasks: row numbers, and a duplicate and its first clean row in
    different tasks, come out as locally."""
    settings.ingest.batch_rows = 1_000
    df = typed(*(row(f"r{i}") for i in range(2_500)))
    df.loc[1_500, "request_id"] = "r10"  # a duplicate of a row the first task checks
    df.loc[1_600, ["request_id", "position"]] = ["r2300", 0]  # bad, so row 2300 is the first
    raw = tmp_path / "raw"
    raw.mkdir()
    df.to_parquet(raw / "big.parquet", row_group_size=700)  # two tasks: groups 0-1, 2-3
    spark_settings = on_spark(settings, tmp_path / "spark")

    local, on_spark_ = (ingest(str(raw), s, now=NOW) for s in (settings, spark_settings))

    assert summary(on_spark_, spark_settings) == summary(local, settings)
    assert outputs(spark_settings) == outputs(settings)
    assert local.reasons == {"request_id: duplicate": 1, "position: out of range 1..8": 1}


def exchanges(frame) -> list[tuple[str, bool]]:
    """The shuffles of ``frame``'s physical plan: each one's node, and whether the checked
    rows' values (``original_*``) cross it."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        frame.explain(mode="formatted")
    nodes = re.findall(
        r"^\(\d+\) (\w*Exchange)\s*\nInput \[\d+\]: \[(.*)\]$", text.getvalue(), re.M
    )
    return sorted((node, "original_request_id#" in columns) for node, columns in nodes)


def test_the_checked_rows_cross_one_shuffle_and_the_request_ids_one_of_their_own(spark) -> None:
    """The duplicate rule shuffles only its few columns, with the earlier curated ids (never
    broadcast); the rows' values are shuffled once, to their writers."""
    one = {"file": 0, "source_row": 0, "date": "2026-01-01", "request_id": "r1"}
    checked = spark.createDataFrame(
        pa.Table.from_pylist([one | {"problems": [], "unknown": []}], schema=CHECKED_SCHEMA)
    )
    before = spark.createDataFrame(
        pa.Table.from_pylist([{"date": "2026-01-01", "request_id": "r1"}], schema=IDS_SCHEMA)
    )

    for earlier in (None, before):
        assert exchanges(writer_rows(checked, earlier)) == [("Exchange", False), ("Exchange", True)]


def test_flags_cut_from_their_rows_by_a_batch_boundary_still_mark_them() -> None:
    """A flag ending one Arrow batch marks the row that starts the next."""
    schema = pa.schema(
        [
            ("file", pa.int32()),
            ("source_row", pa.int64()),
            ("already", pa.bool_()),
            ("duplicate", pa.bool_()),
        ]
    )
    batches = [
        pa.RecordBatch.from_arrays(
            [pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
        )
        for columns in (
            ([0, 0, 0], [0, 1, 1], [None, False, None], [None, True, None]),
            ([0, 0], [2, 3], [None, True], [None, False]),  # row 3's flag; its row comes next
            ([0, 0], [3, 4], [None, None], [None, None]),
        )
    ]
    carried, marked = (False, False), []
    for batch in batches:
        rows, flags, carried = _with_flags(batch, carried)
        marked += zip(
            rows.column("source_row").to_pylist(),
            flags["request_id: already curated"].tolist(),
            flags["request_id: duplicate"].tolist(),
            strict=True,
        )

    assert marked == [
        (0, False, False),
        (1, False, True),
        (2, False, False),
        (3, True, False),
        (4, False, False),
    ]


def test_mostly_duplicates_over_many_small_batches_come_out_as_locally(
    tmp_path: Path, settings: Settings, spark
) -> None:
    """Most rows are duplicates (a whole file repeated, an id in every row of another), and
    the writers' batches are small, so flags and their rows fall on both sides of batch
    boundaries: the same output as the local engine."""
    first = typed(*(row(f"r{i}", hour=i % 24) for i in range(300)))
    same_id = typed(*(row("r7", hour=i % 24) for i in range(200)))
    raw = tmp_path / "raw"
    raw.mkdir()
    first.to_parquet(raw / "a.parquet")
    first.to_parquet(raw / "b.parquet")
    same_id.to_parquet(raw / "c.parquet")
    spark_settings = on_spark(settings, tmp_path / "spark")
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    batch_rows = spark.conf.get(key)
    spark.conf.set(key, "7")
    try:
        local, on_spark_ = (ingest(str(raw), s, now=NOW) for s in (settings, spark_settings))
    finally:
        spark.conf.set(key, batch_rows)

    assert summary(on_spark_, spark_settings) == summary(local, settings)
    assert outputs(spark_settings) == outputs(settings)
    assert local.reasons == {"request_id: duplicate": 500}
    assert on_spark_.rows_in == on_spark_.rows_curated + on_spark_.rows_quarantined == 800
