"""Input and prediction drift with Evidently: the live window against the champion's reference.

Every model input is compared (ids excepted: they are hashed into embeddings, and new ids are
cold start, reported by :func:`mlref.monitoring.quality.cold_shares`). Stats of entities
scored with the priors are left out on both sides, so a wave of new ads shows up as cold start
rather than as drift of the ad stats. The prediction score is compared too, but only reported:
it moves with its inputs and never decides on its own. So is vocabulary drift, the share of
category values outside the contract's vocabularies: the model reads them as out-of-vocabulary
until the contract learns them, which retraining alone cannot do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import ValueDrift
from evidently.presets import DataDriftPreset

from mlref import schema
from mlref.monitoring.quality import cold_rows
from mlref.schema import AD_STATS, STAT_COLUMNS, USER_STATS
from mlref.settings import DriftSettings

# The contract's request inputs (ids excepted) are compared as categories, the stats as numbers.
CATEGORICAL = (*schema.CATEGORICAL_COLUMNS, *schema.ORDINAL_COLUMNS)
FEATURES = (*CATEGORICAL, *STAT_COLUMNS)
PREDICTION = "probability"
NEW_VALUES_SHOWN = 5


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class VocabularyDrift:
    """Values of a category column outside the contract's vocabulary (the model reads them as
    out-of-vocabulary): their share on each side, and the most frequent new ones."""

    column: str
    reference_share: float
    current_share: float
    new_values: dict[str, int]  # value -> rows in the current window, most frequent first
    drifted: bool  # the share rose by more than drift.max_new_value_share


@dataclass(frozen=True)
class DriftResult:
    columns: tuple[ColumnDrift, ...]  # the model inputs
    prediction: ColumnDrift
    drifted_share: float
    dataset_drift: bool
    vocabulary: tuple[VocabularyDrift, ...] = ()
    # Inputs the reference has no value of: a field added after its model was trained,
    # compared once a model trained with it is the champion.
    not_compared: tuple[str, ...] = ()

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def to_dict(self) -> dict:
        return {
            "dataset_drift": self.dataset_drift,
            "drifted_share": self.drifted_share,
            "columns": [asdict(c) for c in self.columns],
            "prediction": asdict(self.prediction),
            "vocabulary": [asdict(v) for v in self.vocabulary],
            "not_compared": list(self.not_compared),
        }

    @property
    def vocabulary_drift(self) -> list[VocabularyDrift]:
        return [v for v in self.vocabulary if v.drifted]


def vocabulary_drift(
    reference: pd.DataFrame, current: pd.DataFrame, rules: DriftSettings
) -> tuple[VocabularyDrift, ...]:
    """Per category column, the share of values outside its vocabulary on both sides."""
    out = []
    for column, vocabulary in schema.VOCABULARIES.items():
        shares = []
        for frame in (reference, current):
            values = frame[column].dropna()
            unknown = values[~values.isin(vocabulary)]
            shares.append(len(unknown) / len(values) if len(values) else 0.0)
        counts = unknown.value_counts().head(NEW_VALUES_SHOWN)
        out.append(
            VocabularyDrift(
                column,
                shares[0],
                shares[1],
                {str(k): int(v) for k, v in counts.items()},
                shares[1] - shares[0] > rules.max_new_value_share,
            )
        )
    return tuple(out)


def comparable(frame: pd.DataFrame, columns: tuple[str, ...] = FEATURES) -> pd.DataFrame:
    """The compared columns, with the stats of defaulted entities blanked (NaN is skipped)."""
    out = frame[[*columns, PREDICTION]].copy()
    out[PREDICTION] = out[PREDICTION].astype("float64")
    for name in schema.ORDINAL_COLUMNS:  # categorical for the model, so for the comparison too
        if name in out:
            out[name] = out[name].astype("Int64").astype("string")
    for entity, columns in (("user", USER_STATS), ("ad", AD_STATS)):
        out.loc[cold_rows(frame, entity), list(columns)] = np.nan
    return out


def numeric_method_of(column: str, rules: DriftSettings) -> tuple[str, float]:
    return (
        rules.column_methods.get(column, rules.numeric_method),
        rules.column_thresholds.get(column, rules.numeric_threshold),
    )


def compare(
    reference: pd.DataFrame, current: pd.DataFrame, rules: DriftSettings, html: Path
) -> DriftResult:
    """Run the Evidently report (saved as ``html``) and read back per-column verdicts.

    Inputs the reference has no value of (a reference older than a nullable field) are left
    out of the comparison and listed as ``not_compared``.
    """
    columns = tuple(c for c in FEATURES if c in reference and reference[c].notna().any())
    definition = DataDefinition(
        numerical_columns=[*STAT_COLUMNS, PREDICTION],
        categorical_columns=[c for c in CATEGORICAL if c in columns],
    )
    method, threshold = numeric_method_of(PREDICTION, rules)
    report = Report(
        [
            DataDriftPreset(
                columns=list(columns),
                drift_share=rules.drift_share,
                cat_method=rules.method,
                cat_threshold=rules.threshold,
                num_method=rules.numeric_method,
                num_threshold=rules.numeric_threshold,
                per_column_method=dict(rules.column_methods) or None,
                per_column_threshold=dict(rules.column_thresholds) or None,
            ),
            ValueDrift(column=PREDICTION, method=method, threshold=threshold),
        ],
        include_tests=True,
    )
    snapshot = report.run(
        Dataset.from_pandas(comparable(current, columns), data_definition=definition),
        Dataset.from_pandas(comparable(reference, columns), data_definition=definition),
    )
    html.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html))
    return replace(
        _read(snapshot.dict(), columns),
        vocabulary=vocabulary_drift(reference, current, rules),
        not_compared=tuple(c for c in FEATURES if c not in columns),
    )


def _read(snapshot: dict, compared: tuple[str, ...]) -> DriftResult:
    """Per-column score from each ValueDrift metric, the verdict from its test."""
    failed = {
        test["metric_config"]["metric_id"]
        for test in snapshot["tests"]
        if str(getattr(test["status"], "value", test["status"])) == "FAIL"
    }
    verdicts, share = {}, 0.0
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":ValueDrift"):
            verdicts[config["column"]] = ColumnDrift(
                config["column"],
                config["method"],
                float(metric["value"]),
                float(config["threshold"]),
                metric["id"] in failed,
            )
        elif config["type"].endswith(":DriftedColumnsCount"):
            share = float(metric["value"]["share"])
            dataset_drift = metric["id"] in failed
    columns = tuple(verdicts[name] for name in compared)
    return DriftResult(columns, verdicts[PREDICTION], share, dataset_drift)
