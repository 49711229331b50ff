"""Training and int8 benchmark: train throughput per device, int8 vs fp32 onnxruntime speed.

Run from the repo root: ``python bench/training.py [--rows-per-day N] [--days N]``.
Data comes from the click-log generator, with point-in-time user/ad stats built by the same
snapshot code the feature step uses (joined in-process instead of through Feast). Every ratio
is measured in one run: training samples/s CPU vs CUDA (when present), and int8 vs fp32 rows/s
at batch 1 and 256 on ONE onnxruntime thread, next to file sizes and the AUC delta.

The models are timed in alternating short rounds and each reports its median: on a shared
CPU, timing one model after the other measures the neighbours' load as much as the model.
int8 speed depends on the CPU's integer dot-product instructions, so they are printed too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlref import onnx_model  # noqa: E402
from mlref.data.generate import generate  # noqa: E402
from mlref.features.compute import TABLES, TIMESTAMP, snapshots  # noqa: E402
from mlref.features.transform import (  # noqa: E402
    REQUEST_COLUMNS,
    STAT_COLUMNS,
    build_spec,
    fill_defaults,
)
from mlref.settings import DataSettings, Settings, TrainSettings  # noqa: E402
from mlref.training.export import export_onnx, quantize_int8  # noqa: E402
from mlref.training.parity import check_parity  # noqa: E402
from mlref.training.train import TrainingSets, encode, train  # noqa: E402

ROUNDS = 11  # alternating rounds per batch size; the median of each model is reported
SECONDS_PER_ROUND = 0.3
MAX_BATCHES = 100  # distinct batches cycled through, bounding each round's input set


def training_sets(settings: Settings) -> TrainingSets:
    """Generated impressions joined with the user/ad snapshots valid at each impression."""
    result = generate(settings, out_dir=settings.raw_dir)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--rows-per-day", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            work_dir=Path(tmp), data=DataSettings(days=args.days, rows_per_day=args.rows_per_day)
        )
        spec = build_spec(settings.features)
        sets = training_sets(settings)
        print(
            f"data: train {len(sets.train):,} / val {len(sets.val):,} / test {len(sets.test):,} "
            f"rows, CTR {sets.train['clicked'].mean():.4f}"
        )
        torch.set_num_threads(max(1, torch.get_num_threads()))
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        results = {}
        for device in devices:
            train_settings = TrainSettings(epochs=args.epochs, device=device, patience=args.epochs)
            results[device] = train(sets, spec, train_settings)
            result = results[device]
            print(
                f"train {device} ({result.precision}, {torch.get_num_threads()} CPU threads): "
                f"{result.samples_per_s:,.0f} samples/s, test AUC {result.metrics['test'].auc:.4f}"
                f", calibration {result.metrics['test'].calibration:.3f}"
            )
        if "cuda" in results:
            ratio = results["cuda"].samples_per_s / results["cpu"].samples_per_s
            print(f"train cuda / cpu: {ratio:.1f}x samples/s")
        else:
            print("train cuda: GPU not available (torch.cuda.is_available() is False)")

        model = results["cpu"].model
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
