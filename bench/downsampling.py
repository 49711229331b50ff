"""Negative downsampling benchmark: training cost against quality at a negative rate w, over seeds.

Run from the repo root: ``python bench/downsampling.py``. The same generated data (as in
bench/training.py: day 1 warm-up, then train days, a validation day and a test day) trains the
default CPU model on every row and on every positive plus a share w of the negatives, once per
training seed (``train.seed``: initialization, shuffling and the sample of negatives). Every
model is scored on the test day, which none trained on, through the exported int8 file serving
loads (the rate's correction is inside it), and on the validation day. The generator knows each
row's true click probability: scored on the test rows it gives the ceiling AUC no model can beat
there, so the reader sees how far the full model is from what the data allows (where it is far,
more data still pays, and a share of the negatives costs AUC).

A difference of a few thousandths of AUC is within one run's noise, so every figure is over
``--seeds`` seeds, measured in one run: per seed the AUC difference on the same test rows (a
paired comparison), then its mean and spread over the seeds, how many seeds kept it within the
budget, and a 95% interval of the mean from resampling the test rows. Each model's calibration
(mean predicted over observed CTR) on the test and validation days, so a difference between the
days (drift) is told apart from one between the models; samples processed and training time
(evaluation excluded) as ratios; the downsampled models' parity gates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.training import data  # noqa: E402
from mlref import onnx_model  # noqa: E402
from mlref.data.generate import treated  # noqa: E402
from mlref.data.world import World  # noqa: E402
from mlref.features.transform import FeatureSpec, build_spec  # noqa: E402
from mlref.settings import ParitySettings, TrainSettings  # noqa: E402
from mlref.training.export import export_onnx, quantize_int8  # noqa: E402
from mlref.training.metrics import auc  # noqa: E402
from mlref.training.parity import check_parity  # noqa: E402
from mlref.training.train import Tensors, TrainResult, encode, train  # noqa: E402

AUC_BUDGET = 0.005  # the AUC a downsampled model may lose against the full one
RESAMPLES = 200  # test-row resamples for the interval of the mean AUC difference


def training_seconds(result: TrainResult) -> float:
    """Seconds spent in training steps over all epochs (evaluation excluded)."""
    return sum(record.samples / record.samples_per_s for record in result.history)


@dataclass
class Run:
    """One trained model, scored through its int8 file."""

    result: TrainResult
    test_scores: np.ndarray
    test_calibration: float
    val_calibration: float
    parity: str

    @property
    def seconds(self) -> float:
        return training_seconds(self.result)


def served(
    result: TrainResult,
    spec: FeatureSpec,
    test: Tensors,
    val: Tensors,
    parity: ParitySettings,
    out: Path,
) -> Run:
    """The exported int8 model's scores and calibration on the test and validation days, and
    its parity gate."""
    fp32 = export_onnx(result.model, spec, out / "model.fp32.onnx")
    int8 = quantize_int8(fp32, out / "model.onnx")
    gate = check_parity(result.model, fp32, int8, test.cat, test.num, test.labels, parity)
    model = onnx_model.load(int8)
    scores = model.predict(test.cat.numpy(), test.num.numpy())
    val_scores = model.predict(val.cat.numpy(), val.num.numpy())
    return Run(
        result,
        scores,
        float(scores.mean() / test.labels.numpy().mean()),
        float(val_scores.mean() / val.labels.numpy().mean()),
        "PASS" if gate.passed else "; ".join(gate.reasons),
    )


def spread(values: list[float], digits: int = 4, sign: str = "") -> str:
    """``mean ± sd (min .. max)`` over seeds (``sign="+"`` for differences)."""
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    form = f"{sign}.{digits}f"
    return (
        f"{statistics.fmean(values):{form}} ± {sd:.{digits}f} "
        f"({min(values):{form}} .. {max(values):{form}})"
    )


def mean_gap_interval(
    labels: np.ndarray, full: list[np.ndarray], sampled: list[np.ndarray], seed: int = 0
) -> tuple[float, float]:
    """95% interval of the seeds' mean AUC difference when the test rows are resampled (the
    same resample for every model: the comparison stays paired)."""
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(RESAMPLES):
        rows = rng.integers(0, len(labels), len(labels))
        means.append(
            np.mean(
                [
                    auc(labels[rows], s[rows]) - auc(labels[rows], f[rows])
                    for f, s in zip(full, sampled, strict=True)
                ]
            )
        )
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7, help="day 1 warm-up, 4 train, val, test")
    parser.add_argument("--rows-per-day", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=0.1, help="share of negatives kept")
    parser.add_argument("--epochs", type=int, default=TrainSettings().epochs)
    parser.add_argument("--seeds", type=int, default=5, help="training seeds per variant")
    parser.add_argument("--cpu-threads", type=int, default=2)
    parser.add_argument("--users", type=int, help="data.n_users (default: the setting's)")
    parser.add_argument("--ads", type=int, help="data.n_ads (default: the setting's)")
    parser.add_argument("--lr-decay", type=float, default=TrainSettings().lr_decay)
    parser.add_argument(
        "--one-sample",
        action="store_true",
        help="one sample of negatives for the whole run (negative_resample off)",
    )
    parser.add_argument(
        "--same-steps",
        action="store_true",
        help="also train at w with the batch shrunk by the rows ratio: as many optimizer steps "
        "per epoch as the full run",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.cpu_threads)
    with tempfile.TemporaryDirectory() as tmp:
        world = {"n_users": args.users, "n_ads": args.ads}
        world = {name: value for name, value in world.items() if value is not None}
        settings, sets = data(args.rows_per_day, args.days, Path(tmp) / "data", **world)
        spec = build_spec(settings.features)
        test, val = encode(sets.test, spec), encode(sets.val, spec)
        labels = test.labels.numpy()
        truth = World.from_settings(settings).click_probability(sets.test)
        ceiling = auc(labels, treated(settings, sets.test["user_id"].to_numpy(), truth))
        print(
            f"world: {settings.data.n_users:,} users, {settings.data.n_ads:,} ads; ceiling test "
            f"AUC (the true click probabilities) {ceiling:.4f}"
        )
        ctr = {name: float(frame["clicked"].mean()) for name, frame in vars(sets).items()}
        print(
            f"CTR: train {ctr['train']:.4f}, val {ctr['val']:.4f}, test {ctr['test']:.4f} "
            f"(test over train {ctr['test'] / ctr['train']:.3f}, over val "
            f"{ctr['test'] / ctr['val']:.3f}: a model calibrated on those days reads below 1 on "
            "the test day by that factor)"
        )
        base = TrainSettings(
            epochs=args.epochs,
            device="cpu",
            lr_decay=args.lr_decay,
            negative_resample=not args.one_sample,
        )
        print(
            f"recipe: {args.epochs} epochs at most, lr decay {args.lr_decay:g} per epoch, "
            f"{'one sample' if args.one_sample else 'a fresh sample'} of negatives "
            f"{'per run' if args.one_sample else 'each epoch'}"
        )
        kept = ctr["train"] * (1 - args.rate) + args.rate  # rows ratio at w
        small_batch = max(1, round(base.batch_size * kept))
        variants = [
            ("full", 1.0, base.batch_size),
            (f"w={args.rate:g}", args.rate, base.batch_size),
        ]
        if args.same_steps:
            variants.append((f"w={args.rate:g} batch {small_batch}", args.rate, small_batch))
        seeds = [base.seed + k for k in range(args.seeds)]
        runs: dict[str, list[Run]] = {name: [] for name, _, _ in variants}
        for seed in seeds:
            for name, rate, batch in variants:
                update = {"negative_rate": rate, "batch_size": batch, "seed": seed}
                result = train(sets, spec, base.model_copy(update=update))
                run = served(result, spec, test, val, settings.parity, Path(tmp) / f"{name}-{seed}")
                runs[name].append(run)
                print(
                    f"seed {seed} {name}: {result.history[0].samples:,} rows/epoch, "
                    f"{len(result.history)} epochs (best {result.best_epoch}), "
                    f"{result.samples_processed:,} samples, {run.seconds:.1f} s training; int8 "
                    f"test AUC {auc(labels, run.test_scores):.4f}, calibration test "
                    f"{run.test_calibration:.3f} / val {run.val_calibration:.3f}, parity "
                    f"{run.parity}"
                )
        full = runs.pop("full")
        print(f"\nover {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}), mean ± sd (min .. max):")
        full_auc = [auc(labels, r.test_scores) for r in full]
        print(
            f"full: test AUC {spread(full_auc)}, {ceiling - statistics.fmean(full_auc):.4f} below "
            f"the ceiling {ceiling:.4f}; calibration "
            f"test {spread([r.test_calibration for r in full], 3)}, val "
            f"{spread([r.val_calibration for r in full], 3)}"
        )
        for name, sampled in runs.items():
            pairs = list(zip(full, sampled, strict=True))
            gaps = [auc(labels, s.test_scores) - auc(labels, f.test_scores) for f, s in pairs]
            calibration_gaps = [s.test_calibration - f.test_calibration for f, s in pairs]
            low, high = mean_gap_interval(
                labels, [r.test_scores for r in full], [r.test_scores for r in sampled]
            )
            within = sum(gap >= -AUC_BUDGET for gap in gaps)
            passed = sum(r.parity == "PASS" for r in sampled)
            ratio = statistics.fmean(
                s.result.samples_processed / f.result.samples_processed for f, s in pairs
            )
            seconds = statistics.fmean(s.seconds / f.seconds for f, s in pairs)
            sampled_auc = statistics.fmean(auc(labels, r.test_scores) for r in sampled)
            print(
                f"{name}: test AUC {sampled_auc:.4f}, {ceiling - sampled_auc:.4f} below the "
                f"ceiling; difference from full (same seed, same test rows) "
                f"{spread(gaps, sign='+')}, 95% interval of the mean over test-row resamples "
                f"{low:+.4f} .. {high:+.4f}; {within}/{len(gaps)} seeds within "
                f"{AUC_BUDGET}\n  calibration test "
                f"{spread([r.test_calibration for r in sampled], 3)}, val "
                f"{spread([r.val_calibration for r in sampled], 3)}; difference from full on "
                f"the test day {spread(calibration_gaps, 3, '+')}"
                f"\n  samples processed {ratio:.3f}x, training time {seconds:.3f}x (mean of "
                f"each seed's ratio); parity {passed}/{len(sampled)} PASS"
            )


if __name__ == "__main__":
    main()
