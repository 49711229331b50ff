"""Scaling of the local engine's data path: wall time and peak memory per stage, as days grow.

For each ``--days`` x ``--rows-per-day`` the generator writes the raw log, then each stage runs
in its own process, as a pipeline step does: ingest, features (snapshots + Feast materialize),
training set (the day-by-day point-in-time join, written as shards), training (``--epochs``
epochs on the CPU with the large-batch recipe unless ``--large-batch off``, streamed from the
shards: ``--host-memory-mib`` is the trainer's host budget, below the set's size). Peak = the
largest resident memory of the stage's whole process tree, sampled every 50 ms. A stage whose
tree passes ``--limit-gib`` is killed and reported as such (the machine is shared). Then the
peak ratios between the largest and the smallest day count, and, on the first configuration's
training set, the trainer resident vs streamed from shards in one run: samples/s and test
quality of each.

Run from the repo root: ``python bench/data_path.py`` (10 and 40 days of 100,000 rows; add
``--days 10 40 160`` for the longer range).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlref.training.windows import compared_on  # noqa: E402

STAGES = ("ingest", "features", "training set", "training")
GIB = 1 << 30


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_bytes: int
    killed: bool
    returncode: int

    def cell(self) -> str:
        if self.killed:
            return f"killed above the limit after {self.seconds:.0f} s"
        if self.returncode:
            return f"failed (exit {self.returncode})"
        return f"{self.seconds:.1f} s, {self.peak_bytes / (1 << 20):,.0f} MiB"


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of ``process`` and all its descendants (gone ones count as 0)."""
    total = 0
    for member in (process, *process.children(recursive=True)):
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def measure(args: list[str], env: dict[str, str], limit: int, log: Path) -> Measured:
    """Run ``python bench/data_path.py <args>`` as a child; its time and peak tree memory."""
    started = time.perf_counter()
    with log.open("a") as out:
        child = subprocess.Popen(
            [sys.executable, __file__, *args], env=env, cwd=REPO, stdout=out, stderr=out
        )
        process, peak, killed = psutil.Process(child.pid), 0, False
        while child.poll() is None:
            try:
                peak = max(peak, tree_rss(process))
            except psutil.NoSuchProcess:
                break
            if peak > limit:
                for member in (*process.children(recursive=True), process):
                    member.kill()
                killed = True
                break
            time.sleep(0.05)
        child.wait()
    return Measured(time.perf_counter() - started, peak, killed, child.returncode)


def run_stage(name: str, work: Path) -> None:
    """One stage, in this (child) process; settings come from the MLREF_* environment."""
    from mlref.data.generate import generate
    from mlref.data.ingest import ingest
    from mlref.features import store
    from mlref.settings import Settings
    from mlref.training import workflow

    settings = Settings()
    if name == "generate":
        generate(settings)
    elif name == "ingest":
        ingest(str(settings.raw_dir), settings)
    elif name == "features":
        store.compute_and_materialize(settings)
    elif name == "training set":
        workflow.make_training_set(settings, work / "sets")
    elif name == "training":
        workflow.fit(settings, work / "sets", work / os.environ["BENCH_MODEL_DIR"])
    else:
        raise SystemExit(f"unknown stage {name!r}")


def environment(
    work: Path, days: int, rows: int, epochs: int, host_bytes: int, large_batch: str
) -> dict:
    return {
        **os.environ,
        "MLREF_WORK_DIR": str(work / ".mlref"),
        "MLREF_DATA__DAYS": str(days),
        "MLREF_DATA__ROWS_PER_DAY": str(rows),
        "MLREF_TRAIN__EPOCHS": str(epochs),
        "MLREF_TRAIN__DEVICE": "cpu",
        "MLREF_TRAIN__HOST_MEMORY_BYTES": str(host_bytes),
        "MLREF_TRAIN__LARGE_BATCH": large_batch,
        "BENCH_MODEL_DIR": "model",
    }


def training_report(work: Path, model_dir: str) -> dict:
    return json.loads((work / model_dir / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--rows-per-day", type=int, nargs="+", default=[100_000])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--host-memory-mib", type=int, default=256)
    parser.add_argument(
        "--large-batch",
        choices=["on", "off"],
        default="on",
        help="on (default): the large-batch recipe, so a CPU epoch over millions of rows stays "
        "short; off: the CPU recipe (batch 1,024)",
    )
    parser.add_argument("--limit-gib", type=float, default=8.0)
    parser.add_argument(
        "--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to measure"
    )
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.stage:
        run_stage(options.stage, options.work)
        return

    limit = int(options.limit_gib * GIB)
    host_bytes = options.host_memory_mib << 20
    print(
        f"local engine; training: {options.epochs} epoch(s) on the CPU, large-batch recipe "
        f"{options.large_batch}, host budget "
        f"{options.host_memory_mib} MiB (streamed); limit {options.limit_gib} GiB per stage\n"
    )
    print(f"| days x rows/day | {' | '.join(options.stages)} | train samples/s |")
    print(f"|---|{'---|' * len(options.stages)}---|")
    peaks: dict[tuple[int, int], dict[str, int]] = {}
    comparison = None
    with tempfile.TemporaryDirectory(prefix="mlref-bench-data-") as tmp:
        for rows in options.rows_per_day:
            for days in options.days:
                work = Path(tmp) / f"{days}x{rows}"
                env = environment(work, days, rows, options.epochs, host_bytes, options.large_batch)
                log = Path(tmp) / f"{days}x{rows}.log"
                generated = measure(["--stage", "generate", "--work", str(work)], env, limit, log)
                if generated.returncode:
                    raise SystemExit(f"generating {days}x{rows} failed: see {log}")
                cells, speed = [], ""
                for stage in options.stages:
                    result = measure(["--stage", stage, "--work", str(work)], env, limit, log)
                    cells.append(result.cell())
                    if result.returncode:
                        cells += ["not run"] * (len(options.stages) - len(cells))
                        break
                    peaks.setdefault((days, rows), {})[stage] = result.peak_bytes
                if "training" in peaks.get((days, rows), {}):
                    speed = f"{training_report(work, 'model')['samples_per_s']:,.0f}"
                print(f"| {days} x {rows:,} | {' | '.join(cells)} | {speed} |", flush=True)
                if comparison is None and speed:
                    resident_env = {**env, "MLREF_TRAIN__HOST_MEMORY_BYTES": str(limit)}
                    resident_env["BENCH_MODEL_DIR"] = "model-resident"
                    args = ["--stage", "training", "--work", str(work)]
                    run = measure(args, resident_env, limit, log)
                    comparison = (days, rows, work, run)
        print()
        for rows in options.rows_per_day:
            low, high = min(options.days), max(options.days)
            if (low, rows) in peaks and (high, rows) in peaks and low != high:
                ratios = ", ".join(
                    f"{stage} {peaks[high, rows][stage] / peaks[low, rows][stage]:.2f}x"
                    for stage in STAGES
                    if stage in peaks[high, rows] and stage in peaks[low, rows]
                )
                print(f"peak memory, {high} vs {low} days of {rows:,} rows: {ratios}")
        if comparison:
            days, rows, work, run = comparison
            streamed, resident = (
                training_report(work, "model"),
                training_report(work, "model-resident"),
            )
            split_days = json.loads((work / "sets" / "report.json").read_text())["days"]
            print(
                f"\n{compared_on(split_days, ('resident', 'streamed'))}"
                f"\ntraining on {days} x {rows:,}: resident {run.cell()}, "
                f"{resident['samples_per_s']:,.0f} samples/s, test AUC "
                f"{resident['metrics']['test']['auc']:.4f}, logloss "
                f"{resident['metrics']['test']['logloss']:.5f}; streamed from shards "
                f"{streamed['samples_per_s']:,.0f} samples/s, test AUC "
                f"{streamed['metrics']['test']['auc']:.4f}, logloss "
                f"{streamed['metrics']['test']['logloss']:.5f}; streamed / resident samples/s "
                f"{streamed['samples_per_s'] / resident['samples_per_s']:.2f}x"
            )


if __name__ == "__main__":
    main()
