"""The Spark session's own settings, on the test run's session."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

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


SLOW_JOB = """
import time
from mlref.settings import EngineSettings, Settings
from mlref.spark import session

spark = session(Settings(engine=EngineSettings(data="spark", spark_master="local[1]")))


def slow(rows):
    for row in rows:
        time.sleep(0.5)
        yield row


print("counted", spark.sparkContext.parallelize(range(4), 2).mapPartitions(slow).count())
"""


def test_a_terminal_gets_sparks_progress_bar_and_a_log_does_not(spark) -> None:
    """A data step on Spark can run for an hour: on a terminal Spark draws its own progress
    bar, as spark-shell does; in a log (a pod's, this test run's) its redraws would be noise."""
    assert spark.conf.get("spark.ui.showConsoleProgress") == "false"  # pytest's stderr
    main, terminal = pty.openpty()
    run = subprocess.Popen(
        [sys.executable, "-c", SLOW_JOB], stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal
    )
    os.close(terminal)
    shown, deadline = b"", time.monotonic() + 180
    while time.monotonic() < deadline:
        if not select.select([main], [], [], 1.0)[0]:
            continue
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal closed: the job's process has ended
            break
        if not chunk:
            break
        shown += chunk
    run.kill()
    run.wait()
    os.close(main)
    text = shown.decode(errors="replace")
    assert "counted 4" in text, text[-2000:]
    assert re.search(r"\[Stage 0:=*>? *\(\d+ \+ \d+\) / 2\]", text), text[-2000:]


def test_a_jvm_out_of_memory_names_the_setting_that_fixes_it() -> None:
    """Spark's text for a task that ran the JVM's heap out (a local[2] run's, abridged)."""
    from mlref.spark import failure_cause

    text = (
        "An error occurred while calling o1199.getResult.\n"
        ": org.apache.spark.SparkException: Exception thrown in awaitResult: \n"
        "\tat org.apache.spark.util.SparkThreadUtils$.awaitResult(SparkThreadUtils.scala:56)\n"
        "Caused by: org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 "
        "in stage 2087.0 failed 1 times, most recent failure: Lost task 0.0 in stage 2087.0 "
        "(TID 2851) (192.0.2.2 executor driver): java.lang.OutOfMemoryError: Java heap space\n"
        "Caused by: java.lang.OutOfMemoryError: Java heap space\n"
    )
    cause = failure_cause(RuntimeError(text))
    assert "java.lang.OutOfMemoryError" in cause
    assert "spark.driver.memory" in cause and "spark.executor.memory" in cause
