"""Data-parallel training under torchrun: ``python -m mlref.training.distributed``.

Every rank runs the training step's own code (:func:`mlref.training.workflow.fit`) on its rows
of the training set; rank 0 writes the model and report to ``--out``, exactly what the
single-process step writes. Started by torchrun locally::

    torchrun --standalone --nproc_per_node 2 -m mlref.training.distributed --sets S --out M

and in a cluster by Kubeflow Trainer's ``torch-distributed`` runtime, which runs the same
torchrun in each node's pod. ``record`` writes a failing rank's traceback to the error file
torchrun names, so the launcher reports that rank's error as the run's root cause.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from mlref.console import console
from mlref.settings import get_settings
from mlref.training import ranks as rank_env
from mlref.training.train import resolve_device
from mlref.training.workflow import fit


@record
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mlref.training.distributed", description=__doc__)
    parser.add_argument("--sets", required=True, help="training-set folder (with manifest.json)")
    parser.add_argument("--out", required=True, help="folder rank 0 writes the model to")
    parser.add_argument("--epochs", type=int, default=0, help="0 keeps the settings' value")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.epochs:
        settings.train.epochs = args.epochs
    ranks = rank_env.from_env()
    console.quiet = not ranks.main  # one progress output, rank 0's
    with ranks.group(resolve_device(settings.train.device)):
        fit(settings, Path(args.sets), Path(args.out), ranks)


if __name__ == "__main__":
    main()
