"""Training and int8 benchmark: CPU vs GPU training speed and quality, int8 vs fp32 speed.

Run from the repo root: ``python bench/training.py``. Data comes from the click-log generator,
with point-in-time user/ad stats built by the same snapshot code the feature step uses (joined
in-process instead of through Feast). Every ratio is measured in one run:

- Same data, sized for the CPU (a few hundred thousand training rows): the default recipe on
  the CPU on ``--cpu-threads`` threads against the large-batch recipe on the training device
  (the GPU when there is one, else the CPU): samples/s, test AUC and calibration of each, the
  quality gap against the parity thresholds, and the time each needs to reach the CPU model's
  best validation logloss.
- On a GPU only: float32 / TF32 / bf16 step throughput at the GPU batch, then the GPU recipe on
  data sized for the GPU (tens of millions of rows), its samples/s against the CPU's above, and
  its quality and time to quality against the default recipe on the same data on the GPU;
  last, the same recipe on the same data streamed from day shards (as a set larger than host
  memory trains), its samples/s against the resident run's.
- int8 vs fp32 onnxruntime rows/s at batch 1 and 256 on ONE thread, with file sizes and the AUC
  delta.

The onnx models are timed in alternating short rounds and each reports its median: on a shared
CPU, timing one model after the other measures the neighbours' load as much as the model.
int8 speed depends on the CPU's integer dot-product instructions, so they are printed too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from itertools import chain, islice, repeat
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlref import onnx_model  # noqa: E402
from mlref.data.generate import ScenarioWindow, generate  # noqa: E402
from mlref.features.compute import TABLES, snapshots  # noqa: E402
from mlref.features.transform import (  # noqa: E402
    REQUEST_COLUMNS,
    STAT_COLUMNS,
    FeatureSpec,
    build_spec,
    fill_defaults,
)
from mlref.schema import TIMESTAMP  # noqa: E402
from mlref.settings import DataSettings, ParitySettings, Settings, TrainSettings  # noqa: E402
from mlref.training.export import export_onnx, quantize_int8  # noqa: E402
from mlref.training.loader import Batches  # noqa: E402
from mlref.training.model import CTRModel  # noqa: E402
from mlref.training.parity import check_parity  # noqa: E402
from mlref.training.shards import ShardSet, ShardWriter  # noqa: E402
from mlref.training.train import (  # noqa: E402
    Tensors,
    TrainingSets,
    TrainResult,
    encode,
    optimizer_and_schedule,
    precision_scope,
    recipe,
    step,
    train,
)
from mlref.training.windows import compared_on  # noqa: E402

ROUNDS = 11  # alternating rounds per batch size; the median of each model is reported
SECONDS_PER_ROUND = 0.3
MAX_BATCHES = 100  # distinct batches cycled through, bounding each round's input set


def training_sets(settings: Settings, scenarios: Sequence[ScenarioWindow] = ()) -> TrainingSets:
    """Generated impressions (under ``scenarios``' drift) joined with the user/ad snapshots
    valid at each impression."""
    result = generate(settings, scenarios=scenarios, out_dir=settings.raw_dir)
    log = pd.concat(pd.read_parquet(path) for path in result.paths)
    log["day"] = log[TIMESTAMP].dt.floor("D")
    for table in TABLES:
        daily = (
            log.groupby([table.key, "day"])["clicked"]
            .agg(impressions="size", clicks="sum")
            .reset_index()
        )
        prior, strength = settings.features.ctr_prior, settings.features.prior_strength
        snap = snapshots(daily, table, prior, strength).rename(columns={TIMESTAMP: "day"})
        log = log.merge(snap[[table.key, "day", *table.columns]], on=[table.key, "day"], how="left")
    filled, _ = fill_defaults(log, build_spec(settings.features))
    filled = filled[[TIMESTAMP, *REQUEST_COLUMNS, *STAT_COLUMNS, "clicked", "day"]]
    days = sorted(filled["day"].unique())
    parts = {
        "train": filled[filled["day"].isin(days[1:-2])],  # day 1 has no history: warm-up only
        "val": filled[filled["day"] == days[-2]],
        "test": filled[filled["day"] == days[-1]],
    }
    return TrainingSets(
        **{k: v.drop(columns="day").reset_index(drop=True) for k, v in parts.items()}
    )


def cpu_features() -> str:
    """The x86 SIMD extensions onnxruntime's int8 kernels pick from (Linux only)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return "unknown"
    flags = set(cpuinfo.read_text().split())
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return ", ".join(found) or "none of avx2/avx512/vnni"


def rows_per_second(
    models: list[onnx_model.OnnxModel], cat: np.ndarray, num: np.ndarray, batch: int
) -> list[float]:
    """Median rows/s of each model scoring consecutive batches, the models taking turns."""
    starts = range(0, min(len(cat), MAX_BATCHES * batch) - batch + 1, batch)
    inputs = [(cat[i : i + batch], num[i : i + batch]) for i in starts]
    rates: list[list[float]] = [[] for _ in models]
    for model in models:
        for c, n in inputs[:20]:  # warm-up
            model.predict(c, n)
    for _ in range(ROUNDS):
        for model, rate in zip(models, rates, strict=True):
            done, began = 0, time.perf_counter()
            while time.perf_counter() - began < SECONDS_PER_ROUND:
                for c, n in inputs:
                    model.predict(c, n)
                done += len(inputs) * batch
            rate.append(done / (time.perf_counter() - began))
    return [float(np.median(rate)) for rate in rates]


PROBE_STEPS = 200  # timed optimizer steps per precision, after as many warm-up steps


def data(rows_per_day: int, days: int, work: Path, **world: int) -> tuple[Settings, TrainingSets]:
    """Generated days through the feature pipeline; ``world``: other ``data.*`` settings."""
    settings = Settings(
        work_dir=work, data=DataSettings(days=days, rows_per_day=rows_per_day, **world)
    )
    sets = training_sets(settings)
    print(
        f"data: train {len(sets.train):,} / val {len(sets.val):,} / test {len(sets.test):,} "
        f"rows, CTR {sets.train['clicked'].mean():.4f}; {compared_on(split_days(sets))}"
    )
    return settings, sets


def streamed(sets: TrainingSets, spec: FeatureSpec, settings: TrainSettings, uri: Path):
    """``sets`` written as day shards, as the training-set step writes them, and trained on
    streamed from them (a host budget of one byte: nothing fits), as a set larger than host
    memory trains."""
    writer = ShardWriter(str(uri), spec)
    for name, frame in vars(sets).items():
        for day, rows in frame.groupby(frame[TIMESTAMP].dt.date):
            writer.write(name, day.isoformat(), rows.reset_index(drop=True))
    writer.close()
    return train(ShardSet(str(uri)), spec, settings.model_copy(update={"host_memory_bytes": 1}))


def split_days(sets: TrainingSets) -> dict[str, list[str]]:
    """The ISO days of each split."""
    return {
        name: sorted({day.isoformat() for day in frame[TIMESTAMP].dt.date})
        for name, frame in vars(sets).items()
    }


def show(name: str, result: TrainResult) -> None:
    test, plan = result.metrics["test"], result.recipe
    print(
        f"{name} on {result.device} ({result.precision}, batch {plan.batch_size:,}, "
        f"lr {plan.learning_rate:.3g}, warm-up {plan.warmup_steps}, "
        f"{'resident' if result.resident else 'streamed'}): "
        f"{result.samples_per_s:,.0f} samples/s, {len(result.history)} epochs, "
        f"test AUC {test.auc:.4f}, logloss {test.logloss:.5f}, calibration {test.calibration:.3f}"
    )


def seconds_to_reach(result: TrainResult, target: float) -> float:
    """Training seconds (evaluation excluded) until an epoch's val logloss is <= ``target``."""
    rows, elapsed = result.metrics["train"].rows, 0.0
    for record in result.history:
        elapsed += rows / record.samples_per_s
        if record.val_logloss <= target:
            return elapsed
    return float("inf")


def compare(name: str, base: TrainResult, other: TrainResult, parity: ParitySettings) -> None:
    """``other`` against ``base`` on the same test rows, on the int8 gate's margins (AUC drop,
    logloss rise, and the gap in mean prediction against ``mean_abs_diff``), then the training
    seconds ``base`` took to its best val logloss and ``other`` took to reach it."""
    a, b = base.metrics["test"], other.metrics["test"]
    auc_drop, logloss_rise = a.auc - b.auc, b.logloss - a.logloss
    mean_gap = abs(b.mean_predicted - a.mean_predicted)
    passed = (
        auc_drop <= parity.max_auc_drop
        and logloss_rise <= parity.max_logloss_increase
        and mean_gap <= parity.mean_abs_diff
    )
    print(
        f"{name}: AUC {b.auc:.4f} vs {a.auc:.4f}, drop {auc_drop:+.4f} "
        f"(max {parity.max_auc_drop}), logloss rise {logloss_rise:+.5f} "
        f"(max {parity.max_logloss_increase}), mean prediction gap {mean_gap:.4f} (max "
        f"{parity.mean_abs_diff}; calibration {b.calibration:.3f} vs {a.calibration:.3f}): "
        f"{'PASS' if passed else 'FAIL'}"
    )
    target = min(record.val_logloss for record in base.history)
    cpu, device = seconds_to_reach(base, target), seconds_to_reach(other, target)
    reached = f"{device:.2f} s, {cpu / device:.1f}x" if device < float("inf") else "not reached"
    print(
        f"training time to the default model's best val logloss {target:.5f}: "
        f"default {cpu:.2f} s, large-batch {reached}"
    )


def precision_probe(
    train_set: Tensors, spec: FeatureSpec, settings: TrainSettings, device: torch.device
) -> None:
    """Training samples/s at the GPU batch in each precision (the data's content is irrelevant)."""
    rates = {}
    for precision in ("float32", "tf32", "bfloat16"):
        torch.manual_seed(settings.seed)
        model = CTRModel(
            spec, settings, np.zeros(len(spec.numeric)), np.ones(len(spec.numeric)), 0.05
        ).to(device)
        plan = recipe(settings.model_copy(update={"large_batch": "on"}), device, 2**62)
        batches = Batches(
            (train_set.cat, train_set.num, train_set.labels), plan.batch_size, device, 0
        )
        optimizer, schedule = optimizer_and_schedule(model, plan, settings)
        epochs = chain.from_iterable(repeat(batches))  # a fresh permutation each pass
        with precision_scope(device, precision) as amp:
            for batch in islice(epochs, PROBE_STEPS):  # warm-up: kernels, allocator, cuBLAS
                step(model, batch, optimizer, schedule, amp)
            torch.cuda.synchronize()
            rows, started = 0, time.perf_counter()
            for batch in islice(epochs, PROBE_STEPS):
                step(model, batch, optimizer, schedule, amp)
                rows += len(batch[-1])
            torch.cuda.synchronize()
        rates[precision] = rows / (time.perf_counter() - started)
    print(
        f"precision at batch {plan.batch_size:,} on {torch.cuda.get_device_name()}: "
        + ", ".join(f"{name} {rate:,.0f} samples/s" for name, rate in rates.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=6, help="day 1 warm-up, 3 train, val, test")
    parser.add_argument("--rows-per-day", type=int, default=100_000, help="CPU-sized data")
    parser.add_argument("--gpu-rows-per-day", type=int, default=4_000_000, help="GPU-sized data")
    parser.add_argument("--epochs", type=int, default=TrainSettings().epochs)
    parser.add_argument("--cpu-threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.cpu_threads)
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        settings, sets = data(args.rows_per_day, args.days, Path(tmp) / "cpu")
        spec = build_spec(settings.features)
        base = TrainSettings(epochs=args.epochs, device="cpu")
        default = train(sets, spec, base)
        show(f"default recipe ({args.cpu_threads} CPU threads)", default)
        large = base.model_copy(update={"device": "auto", "large_batch": "on"})
        same_data = train(sets, spec, large)
        show("large-batch recipe", same_data)
        compare("large-batch vs default, same data", default, same_data, settings.parity)
        if gpu:
            precision_probe(encode(sets.train, spec), spec, large, torch.device("cuda"))
            _, big = data(args.gpu_rows_per_day, args.days, Path(tmp) / "gpu")
            scaled = train(big, spec, large)
            show("GPU recipe at GPU size", scaled)
            print(
                f"train cuda / cpu ({args.cpu_threads} threads): "
                f"{scaled.samples_per_s / default.samples_per_s:.1f}x samples/s"
            )
            # The recipe the CPU uses, on the same GPU-sized data: what the large batch costs
            small_batch = base.model_copy(update={"device": "cuda", "large_batch": "off"})
            reference = train(big, spec, small_batch)
            show("default recipe on the GPU at GPU size", reference)
            name = "large-batch vs default, same GPU-sized data"
            compare(name, reference, scaled, settings.parity)
            from_shards = streamed(big, spec, large, Path(tmp) / "shards")
            show("GPU recipe at GPU size, streamed from shards", from_shards)
            print(
                f"streamed / resident on the GPU: "
                f"{from_shards.samples_per_s / scaled.samples_per_s:.2f}x samples/s"
            )
        else:
            print("train cuda: GPU not available (torch.cuda.is_available() is False)")

        model = default.model
        fp32 = export_onnx(model, spec, Path(tmp) / "model.onnx")
        test = encode(sets.test, spec)
        cat, num = test.cat.numpy(), test.num.numpy()
        variants = {
            "int8 (MatMul+Gemm+Gather)": quantize_int8(fp32, Path(tmp) / "all.int8.onnx"),
            "int8 (MatMul+Gemm only)": quantize_int8(
                fp32, Path(tmp) / "dense.int8.onnx", ops=("MatMul", "Gemm")
            ),
        }
        paths = [fp32, *variants.values()]
        models = [onnx_model.load(path, intra_op_threads=1) for path in paths]
        speed = {batch: rows_per_second(models, cat, num, batch) for batch in (1, 256)}
        size = fp32.stat().st_size
        print(f"onnxruntime {ort.__version__}, 1 thread, CPU features: {cpu_features()}")
        print(
            f"onnx fp32: {size / 1e6:.2f} MB, batch 1 {speed[1][0]:,.0f} rows/s, "
            f"batch 256 {speed[256][0]:,.0f} rows/s"
        )
        for i, (name, path) in enumerate(variants.items(), start=1):
            report = check_parity(model, fp32, path, cat, num, test.labels, settings.parity)
            verdict = "PASS" if report.passed else "FAIL: " + "; ".join(report.reasons)
            print(
                f"onnx {name}: {path.stat().st_size / 1e6:.2f} MB "
                f"({size / path.stat().st_size:.1f}x smaller), int8/fp32 rows/s: "
                f"batch 1 {speed[1][i] / speed[1][0]:.2f}x, "
                f"batch 256 {speed[256][i] / speed[256][0]:.2f}x; "
                f"AUC drop {report.auc_drop:+.5f}, max |diff| {report.max_abs_diff:.4f}, "
                f"parity {verdict}"
            )


if __name__ == "__main__":
    main()
