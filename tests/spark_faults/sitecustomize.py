"""Faults for the Spark tests, in Spark's Python workers only (this folder is on their
PYTHONPATH, see the ``spark`` fixture). A test turns one on with a marker file in the folder
$MLREF_TEST_SPARK_FAULTS:

- ``kill-checking``: the first worker to check a batch removes the marker and SIGKILLs itself;
- ``kill-writing``: the first worker to publish its second staged part does the same;
- ``fail-writing``: every worker raises when it publishes its second staged part;
- ``kill-publishing``: the first worker to publish any file (a staged part, a training-set
  shard) does the same as ``kill-checking``.
"""

import os
import signal
from pathlib import Path

FOLDER = os.environ.get("MLREF_TEST_SPARK_FAULTS")

if FOLDER:
    import mlref.data.validate as validate  # patched before mlref.data.ingest imports it
    from mlref import storage

    def _once(name: str) -> None:
        """Die if the marker ``name`` is there and this process is the one removing it."""
        try:
            (Path(FOLDER) / name).unlink()
        except FileNotFoundError:
            return
        os.kill(os.getpid(), signal.SIGKILL)

    check, publish = validate.check, storage.publish
    published = [0]

    def checking(*args, **kwargs):
        _once("kill-checking")
        return check(*args, **kwargs)

    def publishing(*args, **kwargs):
        _once("kill-publishing")
        published[0] += 1
        if published[0] >= 2:
            _once("kill-writing")
            if (Path(FOLDER) / "fail-writing").exists():
                raise RuntimeError("injected write failure")
        return publish(*args, **kwargs)

    validate.check, storage.publish = checking, publishing
