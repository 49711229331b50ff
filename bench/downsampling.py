"""Negative downsampling benchmark: training cost against quality at a negative rate w.

Run from the repo root: ``python bench/downsampling.py``. The same generated data (as in
bench/training.py: day 1 warm-up, then train days, a validation day and a test day) trains the
default CPU model twice, on every row and on every positive plus a share w of the negatives.
Both models are scored on the test day, which neither trained on, through the exported int8
file serving loads (the rate's correction is inside it). Printed, measured in one run: samples
processed and training time (evaluation excluded) as ratios, the AUC difference, each model's
calibration (mean predicted over observed CTR) and the downsampled model's parity gate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.training import data  # noqa: E402
from mlref import onnx_model  # noqa: E402
from mlref.features.transform import FeatureSpec, build_spec  # noqa: E402
from mlref.settings import ParitySettings, TrainSettings  # noqa: E402
from mlref.training.export import export_onnx, quantize_int8  # noqa: E402
from mlref.training.metrics import auc  # noqa: E402
from mlref.training.parity import ParityReport, check_parity  # noqa: E402
from mlref.training.train import Tensors, TrainResult, encode, train  # noqa: E402


def training_seconds(result: TrainResult) -> float:
    """Seconds spent in training steps over all epochs (evaluation excluded)."""
    return sum(record.samples / record.samples_per_s for record in result.history)


def served(
    result: TrainResult, spec: FeatureSpec, test: Tensors, parity: ParitySettings, out: Path
) -> tuple[float, float, ParityReport]:
    """Test-day AUC and calibration of the exported int8 model, and its parity gate."""
    fp32 = export_onnx(result.model, spec, out / "model.fp32.onnx")
    int8 = quantize_int8(fp32, out / "model.onnx")
    gate = check_parity(result.model, fp32, int8, test.cat, test.num, test.labels, parity)
    scores = onnx_model.load(int8).predict(test.cat.numpy(), test.num.numpy())
    labels = test.labels.numpy()
    return auc(labels, scores), float(scores.mean() / labels.mean()), gate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7, help="day 1 warm-up, 4 train, val, test")
    parser.add_argument("--rows-per-day", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=0.1, help="share of negatives kept")
    parser.add_argument("--epochs", type=int, default=TrainSettings().epochs)
    parser.add_argument("--cpu-threads", type=int, default=2)
    parser.add_argument(
        "--same-steps",
        action="store_true",
        help="also train at w with the batch shrunk by the rows ratio: as many optimizer steps "
        "per epoch as the full run",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.cpu_threads)
    with tempfile.TemporaryDirectory() as tmp:
        settings, sets = data(args.rows_per_day, args.days, Path(tmp) / "data")
        spec = build_spec(settings.features)
        test = encode(sets.test, spec)
        base = TrainSettings(epochs=args.epochs, device="cpu")
        runs = {}
        kept = sets.train["clicked"].mean() * (1 - args.rate) + args.rate  # rows ratio at w
        small_batch = max(1, round(base.batch_size * kept))
        variants = [
            ("full", 1.0, base.batch_size),
            (f"w={args.rate:g}", args.rate, base.batch_size),
        ]
        if args.same_steps:
            variants.append((f"w={args.rate:g} batch {small_batch}", args.rate, small_batch))
        for name, rate, batch in variants:
            update = {"negative_rate": rate, "batch_size": batch}
            result = train(sets, spec, base.model_copy(update=update))
            out = Path(tmp) / name
            runs[name] = (result, *served(result, spec, test, settings.parity, out))
            _, test_auc, calibration, gate = runs[name]
            print(
                f"{name}: {result.history[0].samples:,} rows/epoch, {len(result.history)} "
                f"epochs, {result.samples_processed:,} samples, "
                f"{training_seconds(result):.1f} s training; int8 test AUC {test_auc:.4f}, "
                f"calibration {calibration:.3f}, parity {'PASS' if gate.passed else gate.reasons}"
            )
        full, full_auc, full_cal, _ = runs.pop("full")
        for name, (sampled, sampled_auc, sampled_cal, _) in runs.items():
            per_epoch = sampled.history[0].samples / full.history[0].samples
            print(
                f"{name} / full: samples per epoch {per_epoch:.3f}x, samples processed "
                f"{sampled.samples_processed / full.samples_processed:.3f}x, training time "
                f"{training_seconds(sampled) / training_seconds(full):.3f}x; test AUC "
                f"difference {sampled_auc - full_auc:+.4f}; calibration {sampled_cal:.3f} "
                f"(full {full_cal:.3f})"
            )


if __name__ == "__main__":
    main()
