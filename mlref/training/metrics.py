"""Offline metrics of a click model: ranking (AUC), probability quality (logloss, NE) and
calibration. CTR models feed bids, so a well-ranked but miscalibrated model is still broken:
every split reports both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score

EPS = 1e-7  # probabilities are clipped so one confident mistake cannot give an infinite loss


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of the reliability diagram: rows whose predictions fall in it."""

    mean_predicted: float
    observed: float
    count: int


@dataclass(frozen=True)
class SplitMetrics:
    auc: float
    logloss: float
    normalized_entropy: float
    mean_predicted: float
    observed_ctr: float
    calibration: float  # mean predicted / observed CTR; 1.0 is calibrated
    rows: int
    bins: tuple[ReliabilityBin, ...] = field(default=(), compare=False)

    def scalars(self) -> dict[str, float]:
        """The numbers to log and compare (bins left out)."""
        values = asdict(self)
        values.pop("bins")
        return {name: float(value) for name, value in values.items()}


def auc(labels: np.ndarray, probability: np.ndarray) -> float:
    """ROC AUC; NaN when the labels hold one class only (undefined, not 0.5)."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, probability))


def logloss(labels: np.ndarray, probability: np.ndarray) -> float:
    p = np.clip(np.asarray(probability, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def normalized_entropy(labels: np.ndarray, probability: np.ndarray) -> float:
    """Logloss over the entropy of always predicting the observed CTR: < 1 means the model
    knows more than the base rate, comparable across days whose CTR differs."""
    rate = float(np.clip(np.mean(labels), EPS, 1 - EPS))
    base = -(rate * np.log(rate) + (1 - rate) * np.log1p(-rate))
    return logloss(labels, probability) / base


def reliability_bins(
    labels: np.ndarray, probability: np.ndarray, n_bins: int = 10
) -> tuple[ReliabilityBin, ...]:
    """Equal-count bins: with CTRs of a few percent, equal-width bins would put nearly all rows
    in the first bin and leave the rest empty."""
    order = np.argsort(probability, kind="stable")
    y = np.asarray(labels, dtype=np.float64)[order]
    p = np.asarray(probability, dtype=np.float64)[order]
    return tuple(
        ReliabilityBin(float(pb.mean()), float(yb.mean()), len(pb))
        for yb, pb in zip(np.array_split(y, n_bins), np.array_split(p, n_bins), strict=True)
        if len(pb)
    )


def evaluate(labels: np.ndarray, probability: np.ndarray, n_bins: int = 10) -> SplitMetrics:
    if len(labels) == 0:
        raise ValueError("cannot evaluate on an empty split")
    mean_predicted = float(np.mean(probability))
    observed = float(np.mean(labels))
    return SplitMetrics(
        auc=auc(labels, probability),
        logloss=logloss(labels, probability),
        normalized_entropy=normalized_entropy(labels, probability),
        mean_predicted=mean_predicted,
        observed_ctr=observed,
        calibration=mean_predicted / observed if observed > 0 else float("nan"),
        rows=len(labels),
        bins=reliability_bins(labels, probability, n_bins),
    )
