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


def relevance_auc(relevance: np.ndarray, scores: np.ndarray) -> float:
    """The AUC ``scores`` would have on average if each row were clicked with probability
    ``relevance``: each row counts as a click with weight r and as a non-click with 1 - r.

    Synthetic data knows each row's true click probability at a fixed slot; this reads how
    well a model orders rows by it, without the noise of one draw of clicks.
    """
    r = np.asarray(relevance, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    labels = np.concatenate([np.ones(len(r)), np.zeros(len(r))])
    return float(roc_auc_score(labels, np.concatenate([s, s]), sample_weight=np.r_[r, 1 - r]))


def slate_ndcg(relevance: np.ndarray, scores: np.ndarray, slate: int, k: int) -> float:
    """Mean NDCG@k over consecutive slates of ``slate`` rows (a remainder is left out): how
    well ordering each slate by ``scores`` puts its most relevant rows on top."""
    n = len(relevance) // slate * slate
    if n == 0:
        raise ValueError(f"need at least one slate of {slate} rows, got {len(relevance)}")
    r = np.asarray(relevance, dtype=np.float64)[:n].reshape(-1, slate)
    s = np.asarray(scores, dtype=np.float64)[:n].reshape(-1, slate)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    chosen = np.take_along_axis(r, np.argsort(-s, axis=1, kind="stable")[:, :k], axis=1)
    ideal = -np.sort(-r, axis=1)[:, :k]
    return float(np.mean((chosen @ discount) / (ideal @ discount)))
