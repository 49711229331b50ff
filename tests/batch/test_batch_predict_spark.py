"""Batch prediction on Spark: the local engine's partitions, row for row and score for score,
each published whole by an executor task, even when a worker dies while publishing."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from mlref.batch_predict import partition_uri, predict_range
from tests.batch import DAYS
from tests.batch.test_batch_predict import world  # noqa: F401  (the fixture)
from tests.training.test_dataset_spark import on_spark


def test_spark_writes_the_local_engines_predictions(world, spark, spark_faults: Path):  # noqa: F811
    settings, model, _ = world
    local = predict_range(settings, str(model), DAYS[0], DAYS[-1], name="local")
    on = on_spark(settings)
    (spark_faults / "kill-publishing").touch()  # the first task to publish a day dies first
    jobs = len(spark.sparkContext.statusTracker().getJobIdsForGroup())

    built = predict_range(on, str(model), DAYS[0], DAYS[-1], name="spark")

    assert not (spark_faults / "kill-publishing").exists()  # a worker was killed, and retried
    assert len(spark.sparkContext.statusTracker().getJobIdsForGroup()) > jobs  # Spark scored
    assert built.rows == local.rows == {DAYS[0]: 60, DAYS[1]: 60}
    assert built.feast_dropped == local.feast_dropped
    assert (built.model_version, built.run_id) == (local.model_version, local.run_id)
    for day in DAYS:
        got, want = (pq.read_table(partition_uri(r.output, day)) for r in (built, local))
        assert got.equals(want), day
        folder = Path(partition_uri(built.output, day)).parent
        assert [p.name for p in folder.iterdir()] == ["part-0.parquet"]  # no staging left
