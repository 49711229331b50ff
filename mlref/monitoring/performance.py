"""Performance drift: the champion on labelled live traffic against its own test figures.

Concept drift leaves the inputs alone and changes how they click, so only labels can show
it. Logloss is the deciding figure (it sees both ranking and calibration); AUC and the
calibration ratio are reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd

from mlref.monitoring.inference import LABEL
from mlref.settings import DriftSettings
from mlref.training.metrics import evaluate


@dataclass(frozen=True)
class PerformanceResult:
    labelled_rows: int
    current: dict[str, float]  # auc, logloss, calibration, observed_ctr, ... on labelled rows
    reference: dict[str, float]  # the champion's test split
    logloss_increase: float
    degraded: bool

    def to_dict(self) -> dict:
        return asdict(self)


def performance(
    current: pd.DataFrame, reference_test: dict[str, float], rules: DriftSettings
) -> PerformanceResult | None:
    """None when no labelled row holds both classes (nothing to judge yet)."""
    if LABEL not in current:
        return None
    labelled = current[current[LABEL].notna()]
    if labelled.empty or labelled[LABEL].nunique() < 2:
        return None
    scores = evaluate(labelled[LABEL].to_numpy(), labelled["probability"].to_numpy()).scalars()
    increase = scores["logloss"] - reference_test["logloss"]
    return PerformanceResult(
        labelled_rows=len(labelled),
        current={k: v for k, v in scores.items() if not math.isnan(v)},
        reference=dict(reference_test),
        logloss_increase=increase,
        degraded=increase > rules.max_logloss_increase,
    )
