"""Data-parallel training benchmark: 2 DDP ranks against 1 on the CPU, in one run.

Run from the repo root: ``python bench/ddp.py``. Generated click logs with point-in-time stats
(as ``bench/training.py`` builds them) are written as a sharded training set, one shard per
day, and trained on by ``torchrun --standalone -m mlref.training.distributed`` with 1 rank and
then 2 ranks (gloo), each rank on ``cores / ranks`` threads, the same settings and seed. Prints
each run's samples/s (all ranks' rows over the slowest rank's time) and test AUC, then the
samples/s ratio and the AUC difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from training import data  # noqa: E402  (bench/training.py)

from mlref.features.transform import build_spec  # noqa: E402
from mlref.schema import TIMESTAMP  # noqa: E402
from mlref.training.shards import SPLITS, ShardWriter  # noqa: E402


def write_shards(rows_per_day: int, days: int, work: Path) -> Path:
    settings, sets = data(rows_per_day, days, work)
    out = work / "sets"
    writer = ShardWriter(str(out), build_spec(settings.features))
    for split in SPLITS:
        frame = getattr(sets, split)
        for day, part in frame.groupby(frame[TIMESTAMP].dt.date, sort=True):
            writer.write(split, str(day), part.reset_index(drop=True))
    writer.close()
    return out


def run(sets: Path, out: Path, ranks: int, epochs: int) -> dict:
    threads = max(1, (os.cpu_count() or 1) // ranks)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MLREF_TRAIN__DEVICE": "cpu"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(ranks), "-m", "mlref.training.distributed",
        "--sets", str(sets), "--out", str(out), "--epochs", str(epochs),
    ]  # fmt: skip
    subprocess.run(command, env=env, check=True)
    report = json.loads((out / "report.json").read_text())
    test = report["metrics"]["test"]
    print(
        f"{ranks} rank(s) x {threads} thread(s): {report['samples_per_s']:,.0f} samples/s, "
        f"best epoch {report['best_epoch']}, test AUC {test['auc']:.4f}, "
        f"logloss {test['logloss']:.5f}",
        flush=True,
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows-per-day", type=int, default=60_000)
    parser.add_argument("--days", type=int, default=7, help="train: all but the first and last 2")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlref-ddp-") as scratch:
        work = Path(scratch)
        sets = write_shards(args.rows_per_day, args.days, work)
        one = run(sets, work / "one", 1, args.epochs)
        two = run(sets, work / "two", 2, args.epochs)
    ratio = two["samples_per_s"] / one["samples_per_s"]
    delta = two["metrics"]["test"]["auc"] - one["metrics"]["test"]["auc"]
    print(f"2 ranks vs 1: samples/s x{ratio:.2f}, test AUC difference {delta:+.4f}")


if __name__ == "__main__":
    main()
