"""The one feature transform, shared by training and serving.

Training builds its tensors with :func:`transform` from the point-in-time training set; the
serving transformer calls the same function on the rows it looked up in the online store.
Cold entities (no feature row) get the same priors on both paths through :func:`fill_defaults`,
so a model never sees a value at serving time that training could not have produced.

Categorical inputs become int64 embedding indices; index 0 is the out-of-vocabulary / missing
bucket, so an unseen id or category can never crash serving. Unbounded ids are hashed.

Position bias: the slot an ad was shown in changes how often it is seen, not how good it is.
The model trains on the logged slot; with a reference position in the spec, every score is
given as if the ad were in that slot (docs/position-bias.md), so rankings follow relevance.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from mlref import schema
from mlref.schema import AD_STATS, REQUEST_COLUMNS, STAT_COLUMNS, USER_STATS  # noqa: F401
from mlref.settings import FeatureSettings

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing multiplier
POSITION = "position"  # the request field that holds the ad's slot


def smoothed_ctr(clicks: np.ndarray, impressions: np.ndarray, prior: float, strength: float):
    """Bayesian-smoothed CTR: a cold entity sits at the prior, a busy one at its own rate."""
    return (clicks + prior * strength) / (impressions + strength)


@dataclass(frozen=True)
class CategoricalFeature:
    """One embedding input. ``vocab`` None means the values are int ids, hashed into ``size``."""

    name: str
    size: int
    vocab: tuple[str | int, ...] | None = None

    def encode(self, values: pd.Series | np.ndarray) -> np.ndarray:
        if self.vocab is not None:
            codes = pd.Categorical(values, categories=list(self.vocab)).codes
            return codes.astype(np.int64) + 1
        ids = pd.to_numeric(pd.Series(values), errors="coerce")
        valid = ids.notna().to_numpy() & (ids.fillna(-1).to_numpy() >= 0)
        raw = ids.fillna(0).to_numpy().astype(np.uint64)
        with np.errstate(over="ignore"):
            mixed = (raw * _GOLDEN) >> np.uint64(32)
        buckets = (mixed % np.uint64(self.size - 1)).astype(np.int64) + 1
        return np.where(valid, buckets, 0)


@dataclass(frozen=True)
class FeatureSpec:
    """What the model consumes, in order. Saved inside the ONNX model as its metadata."""

    categorical: tuple[CategoricalFeature, ...]
    numeric: tuple[str, ...]
    defaults: Mapping[str, float] = field(default_factory=dict)
    # Scores read the ``position`` input as this slot instead of the row's (None: the row's).
    reference_position: int | None = None

    @property
    def categorical_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.categorical)

    def to_json(self) -> str:
        raw = asdict(self)
        if raw["reference_position"] is None:  # specs without one keep their fingerprint
            del raw["reference_position"]
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        cats = tuple(
            CategoricalFeature(
                c["name"], c["size"], tuple(c["vocab"]) if c["vocab"] is not None else None
            )
            for c in raw["categorical"]
        )
        return cls(
            cats, tuple(raw["numeric"]), dict(raw["defaults"]), raw.get("reference_position")
        )

    @property
    def fingerprint(self) -> str:
        """Short hash that tells two specs apart (serving refuses a model built for another)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]


def build_spec(settings: FeatureSettings) -> FeatureSpec:
    """The feature spec for the current settings."""
    categorical = tuple(
        CategoricalFeature(field.name, getattr(settings, f"{field.name[:-3]}_hash_buckets"))
        if field.kind == "id"
        else CategoricalFeature(field.name, len(field.values) + 1, field.values)
        for field in schema.FIELDS
    )
    defaults = {name: (settings.ctr_prior if "_ctr_" in name else 0.0) for name in STAT_COLUMNS}
    return FeatureSpec(categorical, STAT_COLUMNS, defaults, settings.reference_position)


def fill_defaults(frame: pd.DataFrame, spec: FeatureSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fill missing stats with the priors; return the filled frame and a mask of what was filled.

    A missing column counts as missing for every row (an entity absent from the store).
    """
    filled = frame.copy()
    missing = pd.DataFrame(index=frame.index)
    for name in spec.numeric:
        column = filled[name] if name in filled else pd.Series(np.nan, index=filled.index)
        missing[name] = column.isna()
        filled[name] = column.astype("float64").fillna(spec.defaults[name])
    return filled, missing


def transform(
    frame: pd.DataFrame, spec: FeatureSpec, *, logged_position: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs for ``frame``: (categorical int64 [N, C], numeric float32 [N, M]).

    ``frame`` must hold the request columns and the (already filled) stat columns.
    Counts enter the model as log1p; rates as they are. Normalization lives in the model.
    Scores are at the spec's reference position (:func:`at_reference_position`); training,
    and evaluations against the clicks a row got, pass ``logged_position`` to read the slot
    the row was shown in, where its click happened.
    """
    cat = np.stack([f.encode(frame[f.name]) for f in spec.categorical], axis=1).astype(np.int64)
    num = numeric_inputs(frame[list(spec.numeric)].to_numpy(dtype=np.float64), spec)
    return (cat if logged_position else at_reference_position(cat, spec)), num


def at_reference_position(cat: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Encoded inputs ``cat`` with every row's slot set to the spec's reference position (in
    place; unchanged when the spec has none): the score ranks ads by how often they would be
    clicked in the same slot, not by where they happened to be shown."""
    if spec.reference_position is None:
        return cat
    column = spec.categorical_names.index(POSITION)
    reference = spec.categorical[column].encode(np.array([spec.reference_position]))[0]
    cat[:, column] = reference
    return cat


def numeric_inputs(stats: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Filled stats [N, M] as model inputs: counts as log1p, rates as they are."""
    rate = np.array(["_ctr_" in name for name in spec.numeric])
    return np.where(rate, stats, np.log1p(np.clip(stats, 0, None))).astype(np.float32)


class SmallBatchTransform:
    """:func:`fill_defaults` + :func:`transform` for a few rows, without pandas.

    The serving hot path scores one or a few rows per request, where building DataFrames
    costs more than the model. Categorical codes come from the spec's own encoders (memoized
    per value, so each distinct value costs one ``encode`` call) and the numeric rule is
    :func:`numeric_inputs`, so the numbers equal the pandas path exactly (tests assert it).
    """

    memo_limit = 200_000

    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        self.memo: dict[str, dict] = {f.name: {} for f in spec.categorical}
        self.defaults = np.array([spec.defaults[n] for n in spec.numeric], dtype=np.float64)

    def __call__(self, columns: dict[str, list], stats: np.ndarray):
        """(cat, num, filled stats, missing mask) for ``stats`` [N, len(spec.numeric)]."""
        cat = np.empty((len(stats), len(self.spec.categorical)), dtype=np.int64)
        for j, feature in enumerate(self.spec.categorical):
            memo = self.memo[feature.name]
            values = columns[feature.name]
            new = list(dict.fromkeys(v for v in values if v not in memo))
            if new:
                if len(memo) > self.memo_limit:
                    memo.clear()
                memo.update(zip(new, feature.encode(pd.Series(new)).tolist(), strict=True))
            cat[:, j] = [memo[v] for v in values]
        at_reference_position(cat, self.spec)
        missing = np.isnan(stats)
        filled = np.where(missing, self.defaults, stats)
        return cat, numeric_inputs(filled, self.spec), filled, missing
