"""The Spark session of the data steps when ``engine.data`` is ``spark``.

Spark reads and writes nothing itself here: executors open files through fsspec and pyarrow,
like the local engine, so object storage needs no Hadoop S3 connector, and Spark only
schedules, retries and shuffles (Spark SQL reads Parquet as a view, :func:`parquet_view`).
Its Python workers run ``engine.spark_python``, else $PYSPARK_PYTHON, else this interpreter,
so that they import the same mlref and libraries.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mlref import storage
from mlref.platform import platform_for
from mlref.settings import Settings

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import SparkSession

JAVA_HINT = "install a Java runtime (Debian: `apt-get install openjdk-17-jre-headless`)"


class SparkUnavailable(RuntimeError):
    """engine.data is spark, but this machine cannot start Spark; the message says why."""


def java_available() -> bool:
    return bool(shutil.which("java") or os.environ.get("JAVA_HOME"))


def session(settings: Settings, **conf: str) -> SparkSession:
    """The process's Spark session (created on first use): the platform's master (the
    step's process, or executor pods in a cluster: ``engine.spark_master``) and
    ``engine.spark_conf``, then ``conf``, on top of these defaults."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise SparkUnavailable(
            "engine.data is spark but pyspark is not installed: "
            "`pip install -c constraints.txt pyspark`"
        ) from e
    if not java_available():
        raise SparkUnavailable(f"engine.data is spark but Java is not found: {JAVA_HINT}")
    python = settings.engine.spark_python or os.environ.get("PYSPARK_PYTHON") or sys.executable
    # PySpark gives its Python functions the interpreter of this variable, not of the setting.
    os.environ["PYSPARK_PYTHON"] = python
    defaults = {
        "spark.pyspark.python": python,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.session.timeZone": "UTC",
        # Spark's own progress bar (stage, tasks done + running / total), as spark-shell
        # shows it, when someone watches a terminal; in a pod's log its redraws are noise.
        "spark.ui.showConsoleProgress": str(sys.stderr.isatty()).lower(),
        # No web UI: nobody watches a data step's session, and the UI's server and listeners
        # cost start-up time and memory (engine.spark_conf can turn it on).
        "spark.ui.enabled": "false",
        # The driver keeps every finished job's, stage's and SQL query's status (the UI's
        # store, kept without a UI too): by default up to 1,000 of each and every RDD graph,
        # which a long range's day groups (hundreds of jobs, Feast's large plans) grow until
        # the driver's heap runs out. Keep the recent ones only.
        "spark.ui.retainedJobs": "50",
        "spark.ui.retainedStages": "100",
        "spark.ui.retainedTasks": "10000",
        "spark.sql.ui.retainedExecutions": "20",
        "spark.ui.dagGraph.retainedRootRDDs": "50",
        # The master and what it needs: this process, or executor pods in a cluster.
        **platform_for(settings).spark_conf(python, os.environ),
    }
    builder = SparkSession.builder.appName("mlref")
    for key, value in {**defaults, **settings.engine.spark_conf, **conf}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def failure_cause(error: Exception) -> str:
    """The first Python error in a Spark failure's text, else a JVM out of memory (with the
    setting that fixes it), else a crashed worker, else its first line."""
    text = str(error)
    # A traceback's last line: the first unindented line after its frames (ArrowInvalid too).
    last = re.search(r"^Traceback \(most recent call last\):\n(?:[ \t].*\n)+(\S.*)$", text, re.M)
    if last:
        return last[1]
    if "java.lang.OutOfMemoryError" in text:
        return (
            "a Spark JVM ran out of memory (java.lang.OutOfMemoryError): give it more in "
            'engine.spark_conf, e.g. MLREF_ENGINE__SPARK_CONF=\'{"spark.driver.memory": "4g"}\' '
            "with a local[N] master (its tasks run in the driver), spark.executor.memory on a "
            "cluster"
        )
    python = re.findall(r"^(?!org\.|java\.|py4j\.)([\w.]*(?:Error|Exception): .+)$", text, re.M)
    if python:
        return python[0]
    if "Python worker exited unexpectedly" in text:
        return "a Python worker exited unexpectedly (crashed)"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def tasks(spark: SparkSession, n: int):
    """One row per task: 0..n-1, each in its own partition."""
    return spark.range(0, n, 1, numPartitions=max(n, 1))


def spark_schema(schema: pa.Schema):
    """Spark's type for an Arrow schema (of ``mapInArrow``'s batches)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def parquet_view(spark: SparkSession, uri: str, name: str) -> None:
    """Register the Parquet file ``uri`` as the temporary view ``name`` of ``spark``, its rows
    read by the executors through fsspec and pyarrow, a row group per task: Spark SQL
    (Feast's Spark offline store and compute engine) then reads object storage as the data
    steps do, without Hadoop's S3 connector. The footer is read now, the rows by the first
    query, which keeps them on the executors' disks for the next ones: Feast's point-in-time
    join reads a view several times (once per subquery naming it), and each read would
    otherwise run Python tasks again. The view that ``name`` held before is dropped from the
    cache, so a file rewritten since is read anew."""
    import pyarrow.parquet as pq
    from pyspark import StorageLevel
    from pyspark.errors import AnalysisException

    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as f:
        footer = pq.ParquetFile(f)
        schema, groups = footer.schema_arrow, footer.num_row_groups

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fs, path = storage.filesystem(uri)
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            for batch in batches:
                for group in batch.column(0).to_pylist():
                    yield from parquet.read_row_group(group).to_batches()

    frame = tasks(spark, groups).mapInArrow(read, spark_schema(schema))
    with contextlib.suppress(AnalysisException):  # no view of that name yet
        spark.catalog.uncacheTable(name)
    frame.createOrReplaceTempView(name)
    spark.catalog.cacheTable(name, StorageLevel.DISK_ONLY)
