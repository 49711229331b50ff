"""Training-run plots as PNG files (headless Agg canvas: no display, no pyplot global state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mlref.training.metrics import SplitMetrics
from mlref.training.train import EpochRecord


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def reliability_diagram(metrics: Mapping[str, SplitMetrics], path: str | Path) -> Path:
    """Observed CTR against mean prediction per equal-count bin, one line per split."""
    figure = Figure(figsize=(5.5, 5))
    axes = figure.add_subplot()
    top = max(max(b.mean_predicted, b.observed) for m in metrics.values() for b in m.bins)
    axes.plot([0, top], [0, top], color="grey", linestyle="--", label="calibrated")
    for split, values in metrics.items():
        axes.plot(
            [b.mean_predicted for b in values.bins],
            [b.observed for b in values.bins],
            marker="o",
            label=f"{split} (pred/obs {values.calibration:.3f})",
        )
    axes.set(xlabel="mean predicted CTR", ylabel="observed CTR", title="Reliability")
    axes.legend()
    return _save(figure, path)


def training_curve(history: Sequence[EpochRecord], path: str | Path) -> Path:
    """Train and validation logloss per epoch, with validation AUC on a second axis."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    epochs = [r.epoch for r in history]
    axes.plot(epochs, [r.train_logloss for r in history], marker="o", label="train logloss")
    axes.plot(epochs, [r.val_logloss for r in history], marker="o", label="val logloss")
    axes.set(xlabel="epoch", ylabel="logloss", title="Training")
    auc_axes = axes.twinx()
    auc_axes.plot(epochs, [r.val_auc for r in history], color="green", marker="s", label="val AUC")
    auc_axes.set_ylabel("val AUC")
    lines = axes.get_legend_handles_labels()
    more = auc_axes.get_legend_handles_labels()
    axes.legend(lines[0] + more[0], lines[1] + more[1], loc="center right")
    return _save(figure, path)
