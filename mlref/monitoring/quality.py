"""Data-quality checks: inputs that are broken, as opposed to inputs that moved.

A column that goes null, collapses to one value, or leaves its valid domain points at a bug
upstream (a client release, a logging change). Retraining on it would teach the model the
bug, so these raise an alert instead of a retraining.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from mlref import schema
from mlref.settings import DriftSettings

# The contract's request inputs the model reads, ids excepted (unseen ids are cold start, not
# broken data), and the stats. Categories have open vocabularies: a new value is vocabulary
# drift (:func:`mlref.monitoring.drift.vocabulary_drift`), not a broken input.
ENTITIES = ("user", "ad")
CHECKED_COLUMNS = (*schema.CATEGORICAL_COLUMNS, *schema.ORDINAL_COLUMNS, *schema.STAT_COLUMNS)


@dataclass(frozen=True)
class QualityIssue:
    column: str
    kind: str  # "null", "constant" or "out_of_range"
    share: float  # share of current rows affected (1.0 for "constant")
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def _out_of_range(column: str, values: pd.Series) -> pd.Series:
    present = values.dropna()
    if column in schema.VOCABULARIES:
        return pd.Series(False, index=present.index)
    if column in schema.RANGES:
        low, high = schema.RANGES[column]
        return (present < low) | (present > high)
    bad = present < 0
    if "_ctr_" in column:
        bad |= present > 1
    return bad


def quality_issues(
    reference: pd.DataFrame, current: pd.DataFrame, rules: DriftSettings
) -> list[QualityIssue]:
    """Every broken input column of ``current``; ``reference`` tells a column that was always
    constant (or null) from one that became so."""
    issues = []
    for column in CHECKED_COLUMNS:
        values = current[column]
        if values.empty:
            continue
        null_share = float(values.isna().mean())
        if null_share > max(rules.max_null_share, float(reference[column].isna().mean())):
            issues.append(QualityIssue(column, "null", null_share, f"{null_share:.1%} null"))
        bad_share = float(_out_of_range(column, values).sum()) / len(values)
        if bad_share > rules.max_out_of_range_share:
            issues.append(
                QualityIssue(column, "out_of_range", bad_share, f"{bad_share:.1%} out of range")
            )
        if values.nunique() == 1 and reference[column].nunique() > 1:
            only = values.dropna().iloc[0]
            issues.append(QualityIssue(column, "constant", 1.0, f"every row is {only!r}"))
    return issues


def cold_rows(frame: pd.DataFrame, entity: str) -> np.ndarray:
    """Rows whose ``entity`` ("user" or "ad") had no feature row and was scored with priors."""
    marker = f"{entity}_impressions_7d"
    return np.fromiter((marker in d for d in frame["defaulted"]), bool, len(frame))


def cold_shares(frame: pd.DataFrame) -> dict[str, float]:
    """Share of rows scored with the priors, per entity."""
    return {e: float(cold_rows(frame, e).mean()) if len(frame) else 0.0 for e in ENTITIES}
