"""Scaling of the data path: wall time and peak memory per stage and engine, as days and rows grow.

For each ``--days`` x ``--rows-per-day`` the generator writes the raw log once, then, for each
engine (``--engines``: local, and spark on each of ``--spark-cores`` cores, ``local[N]``),
each stage runs in its own process, as a pipeline step does: ingest, features (snapshots +
Feast materialize), training set (the point-in-time join, written as shards), training
(``--epochs`` epochs on the CPU with the large-batch recipe unless ``--large-batch off``,
streamed from the shards: ``--host-memory-mib`` is the trainer's host budget, below the set's
size; it reads shards whatever the data engine, so it runs under the local engine only) and
batch prediction (every day scored by an int8 ONNX export of mlref's network, exported
outside the clock). Peak = the largest resident memory of the stage's whole process tree
(Spark's JVM and Python workers included), sampled every 50 ms; CPU = the user and system
seconds of that tree (each member's last sample), the measure of work a shared machine's load
distorts least: the growth ratios give both. A stage whose tree passes
``--limit-gib`` is killed and reported as such (the machine is shared).

Then, from this one run: per engine and stage, the ratios of peak memory and of time between
the most and the fewest days (same rows a day), and between the most and the fewest rows a
day (same days); Spark's speed-up from the fewest to the most cores; and, on the first
configuration's training set, the trainer resident vs streamed from shards: samples/s and
test quality of each.

Run from the repo root: ``python bench/data_path.py`` (10 and 40 days of 100,000 rows, local
engine); the whole table: ``--days 10 40 160 --rows-per-day 100000 400000 1600000 --engines
local spark --spark-cores 1 2`` (rows a day grow over the fewest days only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

STAGES = ("ingest", "features", "training set", "training", "batch prediction")
ENGINE_FREE = {"training"}  # stages that read no data through engine.data
GIB = 1 << 30


@dataclass(frozen=True)
class Measured:
    seconds: float
    cpu_seconds: float
    peak_bytes: int
    killed: bool
    returncode: int
    error: str = ""  # a failed stage's first error line, from its log

    def cell(self) -> str:
        if self.killed:
            return f"killed above the limit after {self.seconds:.0f} s"
        if self.returncode:
            return f"failed (exit {self.returncode}: {self.error or 'see the log'})"
        return (
            f"{self.seconds:.1f} s ({self.cpu_seconds:.0f} CPU-s), "
            f"{self.peak_bytes / (1 << 20):,.0f} MiB"
        )


def tree_cpu(process: psutil.Process, seen: dict[tuple[int, float], float]) -> None:
    """Record in ``seen`` the CPU seconds (user + system) each member of ``process``'s tree
    has used so far, keyed by (pid, start time): the sum over ``seen`` is the tree's CPU time,
    which a machine shared with other work slows far less than the wall time."""
    for member in (process, *process.children(recursive=True)):
        try:
            used = member.cpu_times()
            seen[(member.pid, member.create_time())] = used.user + used.system
        except psutil.NoSuchProcess:
            continue


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
    since = log.stat().st_size if log.exists() else 0
    with log.open("a") as out:
        child = subprocess.Popen(
            [sys.executable, __file__, *args], env=env, cwd=REPO, stdout=out, stderr=out
        )
        process, peak, killed = psutil.Process(child.pid), 0, False
        cpu: dict[tuple[int, float], float] = {}
        while child.poll() is None:
            try:
                peak = max(peak, tree_rss(process))
                tree_cpu(process, cpu)
            except psutil.NoSuchProcess:
                break
            if peak > limit:
                for member in (*process.children(recursive=True), process):
                    member.kill()
                killed = True
                break
            time.sleep(0.05)
        child.wait()
    seconds = time.perf_counter() - started
    error = first_error(log, since) if child.returncode else ""
    return Measured(seconds, sum(cpu.values()), peak, killed, child.returncode, error)


def first_error(log: Path, since: int) -> str:
    """The first line naming an error or exception that a stage wrote to ``log`` after byte
    ``since`` (the cause, before what it broke), since the log lives in the run's temporary
    folder, gone when the run ends."""
    with log.open(errors="replace") as lines:
        lines.seek(since)
        for line in lines:
            if re.search(r"\w(Error|Exception): ", line):
                return line.strip()[:300]
    return ""


def run_stage(name: str, work: Path) -> None:
    """One stage, in this (child) process; settings come from the MLREF_* environment."""
    # Each stage imports only what it runs, so that its peak is its own (torch is not ingest's).
    from mlref.settings import Settings

    sys.argv = sys.argv[:1]  # kserve (batch prediction, the export) parses the command line
    settings = Settings()
    if name == "generate":
        from mlref.data.generate import generate

        generate(settings, out_dir=work.parent / "raw")
    elif name == "ingest":
        from mlref.data.ingest import ingest

        ingest(str(work.parent / "raw"), settings)
    elif name == "features":
        from mlref.features import store

        store.compute_and_materialize(settings)
    elif name == "training set":
        from mlref.training import workflow

        workflow.make_training_set(settings, work / "sets")
    elif name == "training":
        from mlref.training import workflow

        workflow.fit(settings, work / "sets", work / os.environ["BENCH_MODEL_DIR"])
    elif name == "export":
        sys.path.insert(0, str(REPO))
        from bench.serving import production_model

        production_model(work.parent, settings)
    elif name == "batch prediction":
        from mlref.batch_predict import predict_range

        predict_range(settings, str(work.parent / "model.int8.onnx"))
    else:
        raise SystemExit(f"unknown stage {name!r}")


def environment(
    work: Path, days: int, rows: int, epochs: int, host_bytes: int, large_batch: str, engine: str
) -> dict:
    data, _, cores = engine.partition(":")
    spark = {"MLREF_ENGINE__DATA": data, "MLREF_ENGINE__SPARK_MASTER": f"local[{cores}]"}
    return {
        **os.environ,
        **(spark if cores else {}),
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
    parser.add_argument("--engines", nargs="+", choices=["local", "spark"], default=["local"])
    parser.add_argument(
        "--spark-cores", type=int, nargs="+", default=[2], help="Spark's local[N] cores to run"
    )
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
    engines = [
        name
        for engine in options.engines
        for name in (
            [f"spark:{c}" for c in options.spark_cores] if engine == "spark" else ["local"]
        )
    ]
    # Rows a day grow over the fewest days only: the largest days x rows are not run.
    sizes = [(d, options.rows_per_day[0]) for d in options.days] + [
        (min(options.days), r) for r in options.rows_per_day[1:]
    ]
    print(
        f"engines {', '.join(engines)}; training: {options.epochs} epoch(s) on the CPU, "
        f"large-batch recipe {options.large_batch}, host budget {options.host_memory_mib} MiB "
        f"(streamed); limit {options.limit_gib} GiB per stage; load average at start "
        f"{os.getloadavg()[0]:.1f}\n"
    )
    print(f"| days x rows/day | engine | {' | '.join(options.stages)} | train samples/s |")
    print(f"|---|---|{'---|' * len(options.stages)}---|")
    results: dict[tuple[int, int, str], dict[str, Measured]] = {}
    comparison = None
    with tempfile.TemporaryDirectory(prefix="mlref-bench-data-") as tmp:
        for days, rows in sizes:
            base = Path(tmp) / f"{days}x{rows}"
            log = Path(tmp) / f"{days}x{rows}.log"
            setup = environment(base / "setup", days, rows, 1, host_bytes, "on", "local")
            # The model batch prediction scores is exported outside the clock, when it runs.
            export = ["export"] if "batch prediction" in options.stages else []
            for step in ["generate", *export]:
                if measure(
                    ["--stage", step, "--work", str(base / "setup")], setup, limit, log
                ).returncode:
                    raise SystemExit(f"{step} for {days}x{rows} failed: see {log}")
            for engine in engines:
                work = base / engine.replace(":", "-")
                env = environment(
                    work, days, rows, options.epochs, host_bytes, options.large_batch, engine
                )
                cells, speed = [], ""
                measured = results.setdefault((days, rows, engine), {})
                failed = False
                for stage in options.stages:
                    if failed:
                        cells.append("not run")
                        continue
                    if stage in ENGINE_FREE and engine != "local":
                        cells.append("as local")
                        continue
                    result = measure(["--stage", stage, "--work", str(work)], env, limit, log)
                    cells.append(result.cell())
                    failed = bool(result.returncode)
                    if not failed:
                        measured[stage] = result
                if "training" in measured:
                    speed = f"{training_report(work, 'model')['samples_per_s']:,.0f}"
                print(
                    f"| {days} x {rows:,} | {engine} | {' | '.join(cells)} | {speed} |",
                    flush=True,
                )
                if comparison is None and speed:
                    resident_env = {**env, "MLREF_TRAIN__HOST_MEMORY_BYTES": str(limit)}
                    resident_env["BENCH_MODEL_DIR"] = "model-resident"
                    args = ["--stage", "training", "--work", str(work)]
                    run = measure(args, resident_env, limit, log)
                    comparison = (days, rows, work, run)
        print()
        low_days, high_days = min(options.days), max(options.days)
        low_rows, high_rows = options.rows_per_day[0], max(options.rows_per_day)
        for engine in engines:
            for what, small, large in (
                ("days", (low_days, low_rows), (high_days, low_rows)),
                ("rows a day", (low_days, low_rows), (low_days, high_rows)),
            ):
                if small != large:
                    print(ratios(results, engine, small, large, what))
        cores = sorted(options.spark_cores)
        if "spark" in options.engines and len(cores) > 1:
            for days, rows in sizes:
                one = results.get((days, rows, f"spark:{cores[0]}"), {})
                many = results.get((days, rows, f"spark:{cores[-1]}"), {})
                speedups = ", ".join(
                    f"{stage} {one[stage].seconds / many[stage].seconds:.2f}x"
                    for stage in STAGES
                    if stage in one and stage in many
                )
                where = f"{cores[-1]} vs {cores[0]} core(s), {days} x {rows:,}"
                print(f"spark speed-up, {where}: {speedups or 'not measured'}")
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


def ratios(
    results: dict[tuple[int, int, str], dict[str, Measured]],
    engine: str,
    small: tuple[int, int],
    large: tuple[int, int],
    what: str,
) -> str:
    """Peak memory, wall time and CPU time of ``large`` over ``small`` (days, rows a day),
    per stage."""
    a, b = results.get((*small, engine), {}), results.get((*large, engine), {})
    growth = large[0] * large[1] / (small[0] * small[1])
    cells = ", ".join(
        f"{stage} {b[stage].peak_bytes / a[stage].peak_bytes:.2f}x memory, "
        f"{b[stage].seconds / a[stage].seconds:.2f}x time, "
        f"{b[stage].cpu_seconds / a[stage].cpu_seconds:.2f}x CPU"
        for stage in STAGES
        if stage in a and stage in b
    )
    return (
        f"{engine}, {what} x{growth:.0f} ({small[0]} x {small[1]:,} -> {large[0]} x "
        f"{large[1]:,}): {cells or 'not measured'}"
    )


if __name__ == "__main__":
    main()
