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
