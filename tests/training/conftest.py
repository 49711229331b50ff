"""Small seeded training sets with a learnable signal, and one trained model shared by tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlref import schema
from mlref.features.transform import (
    REQUEST_COLUMNS,
    FeatureSpec,
    build_spec,
    fill_defaults,
    smoothed_ctr,
)
from mlref.settings import FeatureSettings, TrainSettings
from mlref.training.export import export_onnx, quantize_int8
from mlref.training.train import TrainingSets, TrainResult, train

N_USERS, N_ADS, N_ADVERTISERS = 400, 60, 12
BASE_LOGIT = -2.2  # ~10% CTR: enough positives in a few thousand rows


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def true_logit(frame: pd.DataFrame, users: int = N_USERS) -> np.ndarray:
    """The click log-odds :func:`make_frame` drew each row's click from (its world of
    ``users`` users): scored on a split's rows, the AUC no model can beat there."""
    user_skill, ad_skill, _, _ = _world(users)
    return _logit(
        user_skill[frame["user_id"].to_numpy() - 1],
        ad_skill[frame["ad_id"].to_numpy() - 1],
        frame["position"].to_numpy(),
        frame["device_type"].to_numpy(),
    )


def _logit(
    user_skill: np.ndarray, ad_skill: np.ndarray, position: np.ndarray, device: np.ndarray
) -> np.ndarray:
    return BASE_LOGIT + user_skill + ad_skill - 0.15 * (position - 1) + (device == "mobile") * 0.3


def _world(users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """User and ad propensities, ads' advertisers and categories: the same in every frame."""
    world = np.random.default_rng(0)
    user_skill = world.normal(0, 0.8, users)
    ad_skill = world.normal(0, 0.5, N_ADS)
    ad_advertiser = world.integers(1, N_ADVERTISERS + 1, N_ADS)
    return user_skill, ad_skill, ad_advertiser, world.choice(schema.AD_CATEGORIES, N_ADS)


def make_frame(
    rows: int, seed: int, spec: FeatureSpec, start: str = "2026-01-01", users: int = N_USERS
) -> pd.DataFrame:
    """Impressions whose click odds come from user and ad propensities, position and device.

    The stat columns are noisy, smoothed estimates of those propensities, so they carry signal
    (as Feast's rolling windows do); 10% of rows are cold users whose stats are missing.
    Fewer ``users`` give each more rows: a model comes closer to the true odds on as many rows.
    """
    user_skill, ad_skill, ad_advertiser, ad_category = _world(users)
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, rows)
    ad = rng.integers(0, N_ADS, rows)
    position = rng.integers(1, schema.MAX_POSITION + 1, rows)
    device = rng.choice(schema.DEVICE_TYPES, rows)
    logit = _logit(user_skill[user], ad_skill[ad], position, device)
    frame = schema.examples(rows, seed).assign(  # the fields that carry no signal: uniform
        request_id=[f"r{seed}-{i}" for i in range(rows)],
        event_timestamp=pd.Timestamp(start, tz="UTC")
        + pd.to_timedelta(np.sort(rng.uniform(0, 86_400, rows)), unit="s"),
        user_id=user + 1,
        ad_id=ad + 1,
        advertiser_id=ad_advertiser[ad],
        ad_category=ad_category[ad],
        device_type=device,
        position=position,
        clicked=(rng.random(rows) < _sigmoid(logit)).astype(np.int8),
    )
    for entity, skill in (("user", user_skill[user]), ("ad", ad_skill[ad])):
        for window, mean_impressions in (("1d", 8), ("7d", 50)):
            impressions = rng.poisson(mean_impressions, rows).astype(np.float64)
            clicks = rng.binomial(impressions.astype(np.int64), _sigmoid(BASE_LOGIT + skill))
            frame[f"{entity}_impressions_{window}"] = impressions
            frame[f"{entity}_clicks_{window}"] = clicks.astype(np.float64)
            frame[f"{entity}_ctr_{window}"] = smoothed_ctr(clicks, impressions, 0.03, 20.0)
    cold = rng.random(rows) < 0.1
    frame.loc[cold, [c for c in frame if c.startswith("user_") and c != "user_id"]] = np.nan
    filled, _ = fill_defaults(frame, spec)
    return filled[["request_id", "event_timestamp", *REQUEST_COLUMNS, *spec.numeric, "clicked"]]


def make_sets(
    spec: FeatureSpec,
    train_rows: int,
    eval_rows: int,
    seed: int = 1,
    users: int = N_USERS,
    test_rows: int | None = None,
) -> TrainingSets:
    """Three days of one world; the test day ``test_rows`` long (default ``eval_rows``)."""
    return TrainingSets(
        train=make_frame(train_rows, seed, spec, "2026-01-01", users),
        val=make_frame(eval_rows, seed + 1, spec, "2026-01-02", users),
        test=make_frame(test_rows or eval_rows, seed + 2, spec, "2026-01-03", users),
    )


@pytest.fixture(scope="session")
def spec() -> FeatureSpec:
    return build_spec(FeatureSettings())


@pytest.fixture(scope="session")
def small_train() -> TrainSettings:
    """Production architecture, fewer units and epochs: the tests check behaviour, not accuracy."""
    return TrainSettings(
        epochs=4, batch_size=256, embedding_dim=8, hidden_units=[32, 16], device="cpu", patience=2
    )


@pytest.fixture(scope="session")
def sets(spec: FeatureSpec) -> TrainingSets:
    return make_sets(spec, train_rows=8_000, eval_rows=4_000)


@pytest.fixture(scope="session")
def trained(sets: TrainingSets, spec: FeatureSpec, small_train: TrainSettings) -> TrainResult:
    return train(sets, spec, small_train)


@pytest.fixture(scope="session")
def exported(
    trained: TrainResult, spec: FeatureSpec, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The trained model as fp32 and int8 ONNX files."""
    out = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(trained.model, spec, out / "model.onnx")
    return fp32, quantize_int8(fp32, out / "model.int8.onnx")
