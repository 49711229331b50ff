"""Inference-log records: one row per scored request, labelled with the model that scored it."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from mlref.serving.requests import BusinessBatch


def defaulted_names(missing: np.ndarray, names: Sequence[str]) -> list[list[str]]:
    """Per row, the names whose value was defaulted; rows share a few patterns, built once."""
    codes = missing @ (1 << np.arange(len(names), dtype=np.int64))
    built = {
        int(code): [name for j, name in enumerate(names) if code >> j & 1]
        for code in np.unique(codes)
    }
    return [built[code] for code in codes.tolist()]


def log_record(
    batch: BusinessBatch,
    numeric: Sequence[str],
    filled: np.ndarray,
    missing: np.ndarray,
    probability: np.ndarray,
    model_version: str,
    variant: str,
    experiment: str | None = None,
    experiment_variant: str | None = None,
) -> dict:
    """The columns of a log record: the request, the stats it was scored with (in
    ``numeric`` order, the lookup's), the score, and the version and variant the predictor
    reported for it, and the user-level experiment that chose that model, if one did."""
    n = len(probability)
    return {
        "timestamp": np.full(n, np.datetime64(time.time_ns() // 1000, "us")),  # UTC
        "request_id": batch.request_ids,
        **batch.columns,
        **{name: filled[:, j] for j, name in enumerate(numeric)},
        "defaulted": missing,
        "probability": probability,
        "model_version": model_version,
        "variant": variant,
        "experiment": experiment,
        "experiment_variant": experiment_variant,
    }
