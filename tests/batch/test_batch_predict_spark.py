"""Batch prediction on Spark: the local engine's partitions, row for row and score for score,
each published whole by an executor task, even when a worker dies while publishing."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mlref.batch_predict import _day_chunks, partition_uri, predict_range
from mlref.schema import DATE_COLUMN
from tests.batch import DAYS
from tests.batch.test_batch_predict import world  # noqa: F401  (the fixture)
from tests.conftest import newest_job
from tests.training.test_dataset_spark import on_spark


def test_spark_writes_the_local_engines_predictions(world, spark, spark_faults: Path):  # noqa: F811
    settings, model, _ = world
    local = predict_range(settings, str(model), DAYS[0], DAYS[-1], name="local")
    on = on_spark(settings)
    (spark_faults / "kill-publishing").touch()  # the first task to publish a day dies first
    jobs = newest_job(spark)

    built = predict_range(on, str(model), DAYS[0], DAYS[-1], name="spark")

    assert not (spark_faults / "kill-publishing").exists()  # a worker was killed, and retried
    assert newest_job(spark) > jobs  # Spark scored
    assert built.rows == local.rows == {DAYS[0]: 60, DAYS[1]: 60}
    assert built.feast_dropped == local.feast_dropped
    assert (built.model_version, built.run_id) == (local.model_version, local.run_id)
    for day in DAYS:
        got, want = (pq.read_table(partition_uri(r.output, day)) for r in (built, local))
        assert got.equals(want), day
        folder = Path(partition_uri(built.output, day)).parent
        assert [p.name for p in folder.iterdir()] == ["part-0.parquet"]  # no staging left


def test_a_task_holds_a_chunk_of_a_day_not_the_day() -> None:
    """An executor's batches, days one after another and cut anywhere, come back per day in
    order, in tables of at least the chunk's rows (a day's last one may hold fewer) and at
    most a batch more: a task holds a chunk, not a day."""
    dates = ["2026-01-01"] * 10 + ["2026-01-02"] * 23 + ["2026-01-03"] * 2
    rows = pa.table({DATE_COLUMN: dates, "n": range(len(dates))})
    batches = iter(rows.to_batches(max_chunksize=4))

    days = {}  # each day's chunks are read before the next day is asked for, as a task does
    for day, chunks in _day_chunks(batches, 7):
        days[day] = [table.column("n").to_pylist() for table in chunks]

    assert list(days) == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert [n for chunks in days.values() for chunk in chunks for n in chunk] == list(range(35))
    for chunks in days.values():
        assert all(7 <= len(chunk) < 7 + 4 for chunk in chunks[:-1])
    assert [len(chunks) for chunks in days.values()] == [2, 3, 1]
