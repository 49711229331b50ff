"""Streamed vs resident training on the CPU, alternated in one process so that load cancels.

The training set is built once, as ``bench/data_path.py`` builds it (generate, ingest,
features, training set: each stage its own process), under ``--work`` (kept, and reused when it
already holds a finished set). Then the trainer runs on that set ``--pairs`` times resident and
streamed in turn (R S R S ...), same seed, the large-batch CPU recipe, ``--epochs`` epoch(s)
each: resident under a host budget of 8 GiB, streamed from its shards under
``--host-memory-mib``. A neighbour's load lands on both runs of a pair alike, so the ratio of a
pair says more than either time.

Printed per pair and as median (min-max) over the pairs, streamed against resident: training
samples/s (the epochs' loop, as the trainer reports it); the speed of the whole ``train()`` call
(reading, statistics, epochs, validation, final evaluation: resident time / streamed time); its
CPU time (resident / streamed, all threads of the process: less load-dependent than time,
though threads spin-waiting for a descheduled peer inflate it under load); and each run's test
AUC and logloss. Before the pairs, ``--read-rounds`` rounds time (CPU) what streaming adds to
every epoch, reading and encoding the train shards: a whole-shard read against the columns
training encodes (what the streamed path reads), in turn. Then ``--host-rounds`` rounds time the
loader alone (no model) from the encoded-shard cache: the host's share of streaming on CUDA
(reading and joining each buffer) against the whole CPU loader, in rows per CPU second.

Run from the repo root: ``python bench/streaming.py --work /tmp/mlref-streaming`` (10 days of
100,000 rows, 3 pairs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.data_path import GIB, environment, measure  # noqa: E402


def build(work: Path, days: int, rows: int) -> Path:
    """The set's folder under ``work``, built unless it is already there."""
    sets = work / "local" / "sets"
    if (sets / "manifest.json").is_file():
        print(f"reusing the training set in {sets}")
        return sets
    work.mkdir(parents=True, exist_ok=True)
    env = environment(work / "local", days, rows, 1, 0, "on", "local")
    log = work / "build.log"
    for stage in ("generate", "ingest", "features", "training set"):
        print(f"building: {stage}", flush=True)
        args = ["--stage", stage, "--work", str(work / "local")]
        if measure(args, env, 8 * GIB, log).returncode:
            raise SystemExit(f"{stage} failed: see {log}")
    return sets


def read_cpu(sets, spec, columns: list[str] | None) -> float:
    """CPU seconds (all threads) to read and encode every train shard: every column, or only
    ``columns`` as streamed training reads them."""
    from mlref.training.train import encode

    started = time.process_time()
    for shard in sets.shards("train"):
        encode(sets.read(shard) if columns is None else sets.inputs(shard, columns), spec)
    return time.process_time() - started


def loader_cpu(split, batch_size: int, host_share: bool) -> float:
    """CPU seconds (all threads) of one epoch of the streamed loader over ``split``'s cached
    tensors, with no model: on the CPU the whole loader (reading, joining, permuting, cutting
    batches); with ``host_share`` only what the host does per row on CUDA (reading and joining
    each buffer, :meth:`ShardBatches.buffers`), after which the GPU permutes the buffer."""
    import torch

    from mlref.training.loader import ShardBatches

    def load(i: int):
        tensors = split.load(i, 1)
        return tensors.cat, tensors.num, tensors.labels

    batches = ShardBatches(load, split.shard_rows, batch_size, torch.device("cpu"), seed=0)
    started = time.process_time()
    for _ in batches.buffers() if host_share else batches:
        pass
    return time.process_time() - started


def host_share(sets, spec, rounds: int) -> None:
    """The loader alone, from the encoded-shard cache, in alternating rounds: rows per CPU
    second of the host's share on CUDA and of the whole CPU loader, and their ratio."""
    import tempfile

    from mlref.training.train import StreamedSplit

    with tempfile.TemporaryDirectory(prefix="mlref-cache-") as cache:
        split = StreamedSplit(sets, "train", spec, prefetch=2, cache=Path(cache))
        split.input_stats()  # the statistics pass, which fills the cache
        cuda, cpu = [], []
        for _ in range(rounds):
            cuda.append(split.rows / loader_cpu(split, 65_536, host_share=True))
            cpu.append(split.rows / loader_cpu(split, 65_536, host_share=False))
    print(
        f"the streamed loader alone, from the cache, {rounds} rounds, rows per CPU second, "
        f"median (min-max): the host's share on CUDA (read + join) "
        f"{statistics.median(cuda) / 1e6:.1f}M ({min(cuda) / 1e6:.1f}M-{max(cuda) / 1e6:.1f}M), "
        f"the whole loader on the CPU {statistics.median(cpu) / 1e6:.1f}M; ratio "
        f"{spread([a / b for a, b in zip(cuda, cpu, strict=True)])}\n"
    )


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="where the set is built/kept")
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--rows-per-day", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--host-memory-mib", type=int, default=256)
    parser.add_argument("--read-rounds", type=int, default=3)
    parser.add_argument("--host-rounds", type=int, default=3)
    options = parser.parse_args()
    sets_dir = build(options.work, options.days, options.rows_per_day)

    from mlref.console import console
    from mlref.features.transform import build_spec
    from mlref.settings import Settings
    from mlref.training.shards import ShardSet
    from mlref.training.train import encoded_columns, train

    console.quiet = True  # the trainer's progress bars and epoch lines
    settings = Settings()
    spec = build_spec(settings.features)
    base = settings.train.model_copy(
        update={"epochs": options.epochs, "device": "cpu", "large_batch": "on"}
    )
    budgets = {"resident": 8 * GIB, "streamed": options.host_memory_mib << 20}
    sets = ShardSet(str(sets_dir))
    print(
        f"{sets.rows('train'):,} training rows in {len(sets.shards('train'))} shards; "
        f"{options.pairs} pairs of {options.epochs} epoch(s); streamed host budget "
        f"{options.host_memory_mib} MiB; load average at start {os.getloadavg()[0]:.1f}\n"
    )
    columns = encoded_columns(spec)
    reads = [
        read_cpu(sets, spec, None) / read_cpu(sets, spec, columns)
        for _ in range(options.read_rounds)
    ]
    if reads:
        print(
            f"reading + encoding the train shards, CPU of a whole-shard read / the columns "
            f"encoded, {options.read_rounds} rounds: {spread(reads)}\n"
        )
    if options.host_rounds:
        host_share(sets, spec, options.host_rounds)
    if not options.pairs:
        return
    print(
        "| pair | samples/s | whole train(), speed | whole train(), CPU | load average | "
        "resident AUC, logloss | streamed AUC, logloss |"
    )
    print("|---|---|---|---|---|---|---|")
    loop, whole, cpu = [], [], []
    for pair in range(1, options.pairs + 1):
        runs = {}
        for name, budget in budgets.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            result = train(sets, spec, base.model_copy(update={"host_memory_bytes": budget}))
            seconds = time.perf_counter() - started
            if result.resident != (name == "resident"):
                raise SystemExit(f"the {name} run was not {name}: change --host-memory-mib")
            runs[name] = (result, seconds, time.process_time() - cpu_started)
        (res, res_s, res_cpu), (st, st_s, st_cpu) = runs["resident"], runs["streamed"]
        loop.append(st.samples_per_s / res.samples_per_s)
        whole.append(res_s / st_s)
        cpu.append(res_cpu / st_cpu)
        quality = [
            f"{r.metrics['test'].auc:.4f}, {r.metrics['test'].logloss:.5f}" for r in (res, st)
        ]
        print(
            f"| {pair} | {loop[-1]:.2f}x | {whole[-1]:.2f}x | {cpu[-1]:.2f}x | "
            f"{os.getloadavg()[0]:.1f} | {' | '.join(quality)} |",
            flush=True,
        )
    print(
        f"\nstreamed / resident over {options.pairs} pairs, median (min-max): training "
        f"samples/s {spread(loop)}; whole train() call: speed {spread(whole)}, CPU time resident / "
        f"streamed {spread(cpu)}"
    )


if __name__ == "__main__":
    main()
