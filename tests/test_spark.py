"""The Spark session's own settings, on the test run's session."""

from __future__ import annotations

RETAINED = {
    "spark.ui.retainedJobs": 50,
    "spark.ui.retainedStages": 100,
    "spark.ui.retainedTasks": 10_000,
    "spark.sql.ui.retainedExecutions": 20,
    "spark.ui.dagGraph.retainedRootRDDs": 50,
}


def test_the_driver_keeps_the_status_of_recent_jobs_only(spark) -> None:
    """A long range's step runs hundreds of jobs, and the driver keeps the status of finished
    ones even without a UI: Spark's defaults (1,000 jobs, stages and SQL queries with their
    plans, every RDD graph) ran a 1 GiB driver out of heap at 160 days. The session bounds
    each."""
    kept = {key: int(spark.conf.get(key)) for key in RETAINED}
    assert kept == RETAINED
