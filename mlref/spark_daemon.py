"""Spark's Python daemon for mlref's data steps: pyspark's own (:mod:`pyspark.daemon`), with
the modules that the executors' tasks run imported once, before the daemon forks a worker.

An executor asks its daemon for a Python worker whenever it has none idle (at its first task,
after a worker was killed or exited, after workers sat idle); each fork would otherwise import
pyarrow, pandas and the step's module again, a second or more of CPU per worker. The session
names this module in ``spark.python.daemon.module`` (:func:`mlref.spark.session`); Spark runs
it as ``python -m mlref.spark_daemon pyspark.worker`` on every executor, locally and in the
image alike. Feast is not among them: only materialization's tasks need it (and it imports
torch), so they import it themselves.
"""

from __future__ import annotations

from pyspark.daemon import manager

from mlref import batch_predict
from mlref.data import ingest_spark
from mlref.features import compute_spark
from mlref.training import dataset_spark

# The modules whose functions the tasks run, imported for the forked workers.
TASK_MODULES = (batch_predict, compute_spark, dataset_spark, ingest_spark)

if __name__ == "__main__":
    manager()
