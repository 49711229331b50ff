"""Performance drift: the champion on labelled live traffic against its own test figures.

Concept drift leaves the inputs alone and changes how they click, so only labels can show
it. Normalized entropy (logloss over the entropy of the observed CTR) is the deciding figure:
it sees ranking and calibration like logloss, but a day that simply clicks more (CTR moves by
15% from day to day) does not look worse. Twenty thousand labelled rows at a 3-5% CTR give it
to about +-0.007, so a rise must be larger than the tolerance and significant (one-sided at
``drift.alpha``, standard errors by the delta method): a quiet day's noise never retrains.
AUC, logloss and calibration are reported beside it.
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
    current: dict[str, float]  # auc, logloss, normalized_entropy, calibration, ... live
    reference: dict[str, float]  # the same figures on the reference's labelled rows
    ne_increase: float
    p_value: float  # of "live normalized entropy is no higher than the reference's"
    degraded: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _entropy(ctr: float) -> float:
    return -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))


def normalized_entropy(labels: np.ndarray, probability: np.ndarray) -> tuple[float, float]:
    """NE = mean logloss / entropy of the observed CTR, and its standard error.

    The error comes from the delta method on (mean loss, CTR), which move together (a click
    costs a large loss and raises the CTR's entropy), so both the variances and their
    covariance count. It is O(n), where a bootstrap of a million rows would not be.
    """
    p = np.clip(probability, 1e-7, 1 - 1e-7)
    loss = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    mean_loss, ctr = float(loss.mean()), float(np.clip(labels.mean(), 1e-7, 1 - 1e-7))
    h = _entropy(ctr)
    d_loss, d_ctr = 1 / h, -mean_loss * math.log((1 - ctr) / ctr) / h**2
    cov = np.cov(loss, labels) / len(labels)
    var = d_loss**2 * cov[0, 0] + d_ctr**2 * cov[1, 1] + 2 * d_loss * d_ctr * cov[0, 1]
    return mean_loss / h, math.sqrt(max(var, 0.0))


def performance(
    current: pd.DataFrame, reference: pd.DataFrame, rules: DriftSettings
) -> PerformanceResult | None:
    """None when no labelled row holds both classes (nothing to judge yet)."""
    if LABEL not in current:
        return None
    labelled = current[current[LABEL].notna()]
    if labelled.empty or labelled[LABEL].nunique() < 2:
        return None
    live = labelled[LABEL].to_numpy(np.float64), labelled["probability"].to_numpy(np.float64)
    ref = reference[LABEL].to_numpy(np.float64), reference["probability"].to_numpy(np.float64)
    scores, baseline = evaluate(*live).scalars(), evaluate(*ref).scalars()
    (live_ne, live_se), (ref_ne, ref_se) = normalized_entropy(*live), normalized_entropy(*ref)
    increase, se = live_ne - ref_ne, math.hypot(live_se, ref_se)
    p_value = float(norm.sf(increase / se)) if se > 0 else 1.0
    return PerformanceResult(
        labelled_rows=len(labelled),
        current={k: v for k, v in scores.items() if not math.isnan(v)},
        reference={k: v for k, v in baseline.items() if not math.isnan(v)},
        ne_increase=increase,
        p_value=p_value,
        degraded=increase > rules.max_ne_increase and p_value < rules.alpha,
    )
