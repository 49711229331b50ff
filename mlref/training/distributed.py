"""Data-parallel training under torchrun: ``python -m mlref.training.distributed``.

Every rank runs the training step's own code (:func:`mlref.training.workflow.fit`) on its rows
of the training set; rank 0 writes the model and report to ``--out``, exactly what the
single-process step writes. Started by torchrun locally::

    torchrun --standalone --nproc_per_node 2 -m mlref.training.distributed --sets S --out M

and in a cluster by Kubeflow Trainer's ``torch-distributed`` runtime, which runs the same
torchrun in each node's pod (``--sets``/``--out`` on the object store, and
``--termination-log /dev/termination-log``: a failing rank's error becomes its pod's
termination message, which the step reports). ``record`` writes a failing rank's
traceback to the error file torchrun names, so the launcher reports that rank's error as
the run's root cause.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from mlref import storage
from mlref.console import console
from mlref.settings import get_settings
from mlref.training import ranks as rank_env
from mlref.training.train import resolve_device
from mlref.training.workflow import fit

TERMINATION_MESSAGE_BYTES = 4096  # what the kubelet keeps of a termination message


@record
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mlref.training.distributed", description=__doc__)
    parser.add_argument("--sets", required=True, help="training-set folder (with manifest.json)")
    parser.add_argument(
        "--out", required=True, help="folder (or fsspec URI) rank 0 writes the model to"
    )
    parser.add_argument("--epochs", type=int, default=0, help="0 keeps the settings' value")
    parser.add_argument(
        "--termination-log", default="", help="file a failing rank writes its error to"
    )
    args = parser.parse_args(argv)
    try:
        train_rank(args.sets, args.out, args.epochs)
    except BaseException as exc:
        if args.termination_log:
            write_termination_message(Path(args.termination_log), exc)
        raise


def train_rank(sets: str, out: str, epochs: int) -> None:
    """This rank's share of training; rank 0 writes the model to ``out``, uploading it when
    ``out`` is an object store (the node pods of a TrainJob share no disk)."""
    settings = get_settings()
    if epochs:
        settings.train.epochs = epochs
    ranks = rank_env.from_env()
    console.quiet = not ranks.main  # one progress output, rank 0's
    fs, path = storage.filesystem(out)
    with ranks.group(resolve_device(settings.train.device)):
        if storage.is_local(fs):
            fit(settings, sets, Path(path), ranks)
            return
        with tempfile.TemporaryDirectory(prefix="mlref-model-") as scratch:
            fit(settings, sets, Path(scratch), ranks)
            if ranks.main:
                storage.upload_tree(Path(scratch), out)


def write_termination_message(path: Path, exc: BaseException) -> None:
    """This rank's error as its container's termination message, unless a rank of the same
    pod wrote one first (the first failure is the cause, later ones its echoes)."""
    rank = os.environ.get("RANK", "?")
    node = os.environ.get("GROUP_RANK", "?")
    message = f"rank {rank} (node {node}): {type(exc).__name__}: {exc}"
    try:
        with path.open("a") as log:
            if log.tell() == 0:
                log.write(message.encode()[:TERMINATION_MESSAGE_BYTES].decode(errors="ignore"))
    except OSError:
        pass  # no such file outside a pod: torchrun's own report remains


if __name__ == "__main__":
    main()
