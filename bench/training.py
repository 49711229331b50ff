"""Training and int8 benchmark: train throughput per device, int8 vs fp32 onnxruntime speed.

Run from the repo root: ``python bench/training.py [--rows-per-day N] [--days N]``.
Data comes from the click-log generator, with point-in-time user/ad stats built by the same
snapshot code the feature step uses (joined in-process instead of through Feast). Every ratio
is measured in one run: training samples/s CPU vs CUDA (when present), and int8 vs fp32 rows/s
at batch 1 and 256 on ONE onnxruntime thread, next to file sizes and the AUC delta.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
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

SECONDS_PER_MEASURE = 3.0


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


def rows_per_second(model: onnx_model.OnnxModel, cat: np.ndarray, num: np.ndarray, batch: int):
    """Rows/s scoring consecutive batches for a fixed wall time (after a warm-up)."""
    starts = range(0, len(cat) - batch + 1, batch)
    inputs = [(cat[i : i + batch], num[i : i + batch]) for i in starts]
    for c, n in inputs[:20]:
        model.predict(c, n)
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < SECONDS_PER_MEASURE:
        for c, n in inputs[:200]:
            model.predict(c, n)
        done += min(len(inputs), 200) * batch
    return done / (time.perf_counter() - began)


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
        reference = onnx_model.load(fp32, intra_op_threads=1)
        base = {batch: rows_per_second(reference, cat, num, batch) for batch in (1, 256)}
        size = fp32.stat().st_size
        print(
            f"onnx fp32: {size / 1e6:.2f} MB, 1 thread: batch 1 {base[1]:,.0f} rows/s, "
            f"batch 256 {base[256]:,.0f} rows/s"
        )
        for name, path in variants.items():
            quantized = onnx_model.load(path, intra_op_threads=1)
            speed = {batch: rows_per_second(quantized, cat, num, batch) for batch in (1, 256)}
            report = check_parity(model, fp32, path, cat, num, test.labels, settings.parity)
            verdict = "PASS" if report.passed else "FAIL"
            print(
                f"onnx {name}: {path.stat().st_size / 1e6:.2f} MB "
                f"({size / path.stat().st_size:.1f}x smaller), "
                f"int8/fp32 rows/s: batch 1 {speed[1] / base[1]:.2f}x, "
                f"batch 256 {speed[256] / base[256]:.2f}x; AUC drop {report.auc_drop:+.5f}, "
                f"max |diff| {report.max_abs_diff:.4f}, parity {verdict}"
            )


if __name__ == "__main__":
    main()
