"""A small world for batch prediction: served features, a model and later impressions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlref.settings import Settings
from tests.features import events, write_curated
from tests.serving.conftest import KNOWN_ADS, KNOWN_USERS, build_features
from tests.serving.model import build_model

# build_features logs Jan 1-3; Jan 4 comes after its last snapshot, within the views' TTL, so
# the point-in-time join reads the snapshot the online store holds. Users/ads 900+ are new.
DAYS = ("2026-01-04", "2026-01-05")


def later_impressions(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for day in DAYS:
        stamps = pd.Timestamp(day, tz="UTC") + pd.to_timedelta(rng.integers(0, 86_400, 60), "s")
        for i, stamp in enumerate(stamps):
            user = int(rng.choice([*KNOWN_USERS, 900 + i]))
            ad = int(rng.choice([*KNOWN_ADS, 950 + i]))
            rows.append((str(stamp), user, ad, 0))
    frame = events(rows)
    frame["request_id"] = [f"b{i}" for i in range(len(frame))]
    return frame


def build_batch_world(settings: Settings, root: Path) -> tuple[Path, pd.DataFrame]:
    """A model file, Feast features of Jan 1-3 (materialized online) and the curated
    impressions of ``DAYS`` to score; returns (model, impressions)."""
    model = build_model(root / "model" / "model.onnx", settings)
    build_features(settings, KNOWN_USERS, KNOWN_ADS)
    impressions = later_impressions()
    write_curated(settings.curated_dir, impressions)
    return model, impressions
