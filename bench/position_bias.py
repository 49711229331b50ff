"""Position-bias benchmark: ranking against the generator's true relevance, with and without
scoring at the reference slot.

Run from the repo root: ``python bench/position_bias.py``. The same generated data as
bench/training.py (day 1 warm-up, then train days, a validation day and a test day) trains the
default CPU model once, with the slot as a feature. The test day, which the model did not train
on, is scored twice through the shared transform: at each row's logged slot (uncorrected) and
at the reference slot (corrected, ``features.reference_position``). Both are compared with the
generator's true relevance (each row's click probability in the top slot, which real logs never
show): relevance AUC (the AUC expected were each row clicked with its relevance) and NDCG@3 over
slates of 8 rows. Printed, measured in one run: both numbers and their ratios, and what each
scoring does to calibration against the clicks observed at the logged slots.
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
from mlref.data.world import World  # noqa: E402
from mlref.features.transform import build_spec, transform  # noqa: E402
from mlref.schema import MAX_POSITION  # noqa: E402
from mlref.settings import TrainSettings  # noqa: E402
from mlref.training.metrics import auc, relevance_auc, slate_ndcg  # noqa: E402
from mlref.training.train import predict, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7, help="day 1 warm-up, 4 train, val, test")
    parser.add_argument("--rows-per-day", type=int, default=40_000)
    parser.add_argument("--reference", type=int, default=1, help="reference slot (1 = top)")
    parser.add_argument("--epochs", type=int, default=TrainSettings().epochs)
    parser.add_argument("--cpu-threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.cpu_threads)
    with tempfile.TemporaryDirectory() as tmp:
        settings, sets = data(args.rows_per_day, args.days, Path(tmp) / "data")
        features = settings.features.model_copy(update={"reference_position": args.reference})
        spec = build_spec(features)
        model = train(sets, spec, TrainSettings(epochs=args.epochs, device="cpu")).model
        relevance = World.from_settings(settings).relevance(sets.test)
        labels = sets.test["clicked"].to_numpy()
        results = {}
        for name, logged in (("uncorrected", True), ("corrected", False)):
            inputs = transform(sets.test, spec, logged_position=logged)
            scores = predict(model, *map(torch.from_numpy, inputs))
            results[name] = (
                relevance_auc(relevance, scores),
                slate_ndcg(relevance, scores, MAX_POSITION, 3),
            )
            print(
                f"{name} (scored at {'the logged slot' if logged else f'slot {args.reference}'})"
                f": relevance AUC {results[name][0]:.4f}, NDCG@3 over slates of {MAX_POSITION} "
                f"{results[name][1]:.4f}; against observed clicks: AUC {auc(labels, scores):.4f}"
                f", calibration {scores.mean() / labels.mean():.3f}"
            )
        (auc_u, ndcg_u), (auc_c, ndcg_c) = results.values()
        print(
            f"corrected / uncorrected: relevance AUC {auc_c / auc_u:.3f}x ({auc_c - auc_u:+.4f}), "
            f"NDCG@3 {ndcg_c / ndcg_u:.3f}x ({ndcg_c - ndcg_u:+.4f})"
        )


if __name__ == "__main__":
    main()
