"""The features and training-set steps on the local engine vs Spark, on one small input.

The generator writes ``--days`` x ``--rows-per-day`` rows, the local engine ingests them once;
then, for each engine in turn (``MLREF_ENGINE__DATA``), the features step (snapshots, Feast
registration, materialization) and the training-set step each run in a process of their own,
as pipeline steps do (``bench/data_path.py``'s stages and measurement: wall time and peak
resident memory of the step's whole process tree, Spark's JVM and Python workers included).
Prints each cell and the Spark / local ratios, and checks that both engines wrote the same set.

Run from the repo root: ``python bench/training_set_engines.py`` (Spark: ``local[*]``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.data_path import GIB, environment, measure  # noqa: E402

STEPS = ("features", "training set")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--rows-per-day", type=int, default=25_000)
    parser.add_argument("--limit-gib", type=float, default=6.0)
    options = parser.parse_args()
    limit = int(options.limit_gib * GIB)
    with tempfile.TemporaryDirectory(prefix="mlref-bench-sets-") as tmp:
        work = Path(tmp)
        log = work / "bench.log"
        env = environment(work, options.days, options.rows_per_day, 1, 0, "on")
        for stage in ("generate", "ingest"):
            if measure(["--stage", stage, "--work", str(work)], env, limit, log).returncode:
                raise SystemExit(f"{stage} failed: see {log}")
        results, manifests = {}, {}
        for engine in ("local", "spark"):
            engine_env = {**env, "MLREF_ENGINE__DATA": engine}
            for name in ("online.db", "registry.db"):  # materialize from scratch each time
                (work / ".mlref" / "features" / name).unlink(missing_ok=True)
            for step in STEPS:
                args = ["--stage", step, "--work", str(work)]
                result = measure(args, engine_env, limit, log)
                if result.returncode:
                    raise SystemExit(f"{engine} {step} failed: see {log}")
                results[engine, step] = result
            manifests[engine] = json.loads((work / "sets" / "manifest.json").read_text())
        rows = options.days * options.rows_per_day
        print(f"{options.days} days x {options.rows_per_day:,} rows ({rows:,}), Spark local[*]\n")
        print("| step | local | spark | spark / local time | spark / local peak |")
        print("|---|---|---|---|---|")
        for step in STEPS:
            local, spark = results["local", step], results["spark", step]
            print(
                f"| {step} | {local.cell()} | {spark.cell()} | "
                f"{spark.seconds / local.seconds:.2f}x | "
                f"{spark.peak_bytes / local.peak_bytes:.2f}x |"
            )
        same = manifests["local"] == manifests["spark"]
        print(f"\nsame training set (manifest: shards, rows, bytes, schema): {same}")


if __name__ == "__main__":
    main()
