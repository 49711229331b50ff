"""Performance drift: the champion on labelled live traffic against its own test figures.

Concept drift leaves the inputs alone and changes how they click, so only labels can show
it. Logloss is the deciding figure (it sees both ranking and calibration); AUC and the
calibration ratio are reported beside it. A few thousand labelled rows at a 3% CTR give a
logloss only good to about +-0.01, so the rise must be significant (a one-sided Welch test
of per-row losses, live against the reference's labelled rows) as well as larger than the
tolerance: a quiet day's noise never retrains.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from mlref.monitoring.inference import LABEL
from mlref.settings import DriftSettings
from mlref.training.metrics import evaluate


@dataclass(frozen=True)
class PerformanceResult:
    labelled_rows: int
    current: dict[str, float]  # auc, logloss, calibration, observed_ctr, ... on labelled rows
    reference: dict[str, float]  # the same figures on the reference's labelled rows
    logloss_increase: float
    p_value: float  # of "live logloss is no higher than the reference's"
    degraded: bool

    def to_dict(self) -> dict:
        return asdict(self)


def row_losses(labels: np.ndarray, probability: np.ndarray) -> np.ndarray:
    p = np.clip(probability.astype(np.float64), 1e-7, 1 - 1e-7)
    y = labels.astype(np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def performance(
    current: pd.DataFrame, reference: pd.DataFrame, rules: DriftSettings
) -> PerformanceResult | None:
    """None when no labelled row holds both classes (nothing to judge yet)."""
    if LABEL not in current:
        return None
    labelled = current[current[LABEL].notna()]
    if labelled.empty or labelled[LABEL].nunique() < 2:
        return None
    live_labels, live_p = labelled[LABEL].to_numpy(), labelled["probability"].to_numpy()
    ref_labels, ref_p = reference[LABEL].to_numpy(), reference["probability"].to_numpy()
    scores = evaluate(live_labels, live_p).scalars()
    baseline = evaluate(ref_labels, ref_p).scalars()
    live, ref = row_losses(live_labels, live_p), row_losses(ref_labels, ref_p)
    increase = float(live.mean() - ref.mean())
    se = math.sqrt(live.var(ddof=1) / len(live) + ref.var(ddof=1) / len(ref))
    p_value = float(norm.sf(increase / se)) if se > 0 else 1.0
    return PerformanceResult(
        labelled_rows=len(labelled),
        current={k: v for k, v in scores.items() if not math.isnan(v)},
        reference={k: v for k, v in baseline.items() if not math.isnan(v)},
        logloss_increase=increase,
        p_value=p_value,
        degraded=increase > rules.max_logloss_increase and p_value < rules.alpha,
    )
