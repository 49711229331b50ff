"""Warm start against full retrain after drift: quality on the same post-drift test day, and cost.

Run from the repo root: ``python bench/warm_start.py``. The click-log generator writes
``--baseline-days`` days, then ``--drift-days`` days under a drift scenario (concept drift by
default: the click odds change, so a model must relearn). Point-in-time stats are joined as in
bench/training.py. Then, on the default CPU model:

- the parent (the champion before drift) is trained from scratch on the baseline days;
- a full retrain, from scratch on every training day (baseline and drifted);
- a warm start from the parent's weights on the last ``--window-days`` training days (what
  ``train.init=champion`` does);
- and, to tell what the parent's weights add from what the recent data does, a model trained from
  scratch on that same window.

Every retrained model validates on the same day (the one before the test day) and all four are
scored on the last day, which none of them trained on. Printed, measured in one run: each model's
training days, samples processed, wall time of its training call (evaluation included) and
training seconds alone, test AUC, logloss and calibration (mean predicted over observed CTR),
then the warm start's ratios and differences against the full retrain.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.downsampling import training_seconds  # noqa: E402
from bench.training import training_sets  # noqa: E402
from mlref.data.generate import SCENARIO_KINDS, ScenarioWindow  # noqa: E402
from mlref.features.transform import build_spec  # noqa: E402
from mlref.settings import DataSettings, Settings, TrainSettings  # noqa: E402
from mlref.training.metrics import evaluate  # noqa: E402
from mlref.training.model import Parent  # noqa: E402
from mlref.training.train import TrainingSets, TrainResult, encode, predict, train  # noqa: E402


def days_of(frame: pd.DataFrame) -> list[str]:
    return sorted({str(day) for day in frame["event_timestamp"].dt.date})


def on_days(frame: pd.DataFrame, days: list[str]) -> pd.DataFrame:
    return frame[frame["event_timestamp"].dt.date.astype(str).isin(days)].reset_index(drop=True)


def timed(
    sets: TrainingSets, settings: TrainSettings, parent: Parent | None = None
) -> tuple[TrainResult, float]:
    """The trained model and the wall seconds of its training call (evaluation included)."""
    spec = build_spec(Settings().features)
    started = time.perf_counter()
    result = train(sets, spec, settings, parent=parent)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-days", type=int, default=6, help="day 1 warm-up, then train")
    parser.add_argument("--drift-days", type=int, default=5, help="drifted days; last 2 val, test")
    parser.add_argument("--scenario", choices=SCENARIO_KINDS, default="concept")
    parser.add_argument("--window-days", type=int, default=2, help="the warm start's train days")
    parser.add_argument("--rows-per-day", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=TrainSettings().epochs)
    parser.add_argument("--cpu-threads", type=int, default=2)
    args = parser.parse_args()
    if args.drift_days < 3:
        parser.error("--drift-days must leave a drifted training day before val and test")
    torch.set_num_threads(args.cpu_threads)
    total = args.baseline_days + args.drift_days
    drift = ScenarioWindow(args.scenario, args.baseline_days + 1, total)
    with tempfile.TemporaryDirectory() as tmp:
        data = DataSettings(days=total, rows_per_day=args.rows_per_day)
        sets = training_sets(Settings(work_dir=Path(tmp), data=data), [drift])
    spec = build_spec(Settings().features)
    base = TrainSettings(epochs=args.epochs, device="cpu")
    train_days = days_of(sets.train)  # day 2 .. the day before validation
    baseline = train_days[: args.baseline_days - 2]  # pre-drift, less the parent's val day
    window = train_days[-args.window_days :]
    print(
        f"{args.scenario} drift from day {drift.first_day} ({train_days[drift.first_day - 2]}); "
        f"validation day {days_of(sets.val)[0]}, test day {days_of(sets.test)[0]} (out of "
        f"sample for every model); {args.rows_per_day:,} rows a day, {args.epochs} epochs max"
    )
    before = TrainingSets(
        on_days(sets.train, baseline), on_days(sets.train, [train_days[len(baseline)]]), sets.test
    )
    parent, _ = timed(before, base)
    recent = TrainingSets(on_days(sets.train, window), sets.val, sets.test)
    runs: dict[str, tuple[list[str], TrainResult, float]] = {
        "parent (no retrain)": (baseline, parent, 0.0)
    }
    runs["full retrain"] = (train_days, *timed(sets, base))
    runs["warm start"] = (
        window,
        *timed(recent, base, Parent(parent.model.state_dict(), base.negative_rate)),
    )
    runs["window from scratch"] = (window, *timed(recent, base))
    test = encode(sets.test, spec)
    print(
        "| model | training days | samples processed | wall s | training s | test AUC | "
        "test logloss | calibration |\n|---|---|---:|---:|---:|---:|---:|---:|"
    )
    scores = {}
    for name, (days, result, wall) in runs.items():
        metrics = evaluate(test.labels.numpy(), predict(result.model, test.cat, test.num))
        scores[name] = metrics
        cost = (
            ("-", "-", "-")
            if name.startswith("parent")
            else (f"{result.samples_processed:,}", f"{wall:.1f}", f"{training_seconds(result):.1f}")
        )
        print(
            f"| {name} | {days[0]} .. {days[-1]} ({len(days)}) | {' | '.join(cost)} | "
            f"{metrics.auc:.4f} | {metrics.logloss:.5f} | {metrics.calibration:.3f} |"
        )
    (_, full, full_wall), (_, warm, warm_wall) = runs["full retrain"], runs["warm start"]
    a, b = scores["full retrain"], scores["warm start"]
    print(
        f"warm start / full retrain: samples processed "
        f"{warm.samples_processed / full.samples_processed:.3f}x, wall time "
        f"{warm_wall / full_wall:.3f}x, training time "
        f"{training_seconds(warm) / training_seconds(full):.3f}x; test AUC {b.auc - a.auc:+.4f}, "
        f"logloss {b.logloss - a.logloss:+.5f}, calibration {b.calibration:.3f} "
        f"(full {a.calibration:.3f}); epochs {len(warm.history)} vs {len(full.history)}"
    )


if __name__ == "__main__":
    main()
