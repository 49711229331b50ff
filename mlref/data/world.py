"""The hidden ground truth behind the synthetic click logs.

A :class:`World` is drawn once from the seed: users with a hidden segment and a bias, ads with
an advertiser, a category and a quality, and the effects that turn an impression into a click
probability. The logs never show segments or qualities, so a model has to learn them from ids
and the segment x category interaction from behaviour, as with real traffic. Tests and the
drift demo ask the world for the true probability of any logged row.

Every row is drawn from a fixed number of uniforms (:data:`ROW_DRAWS`), so the generator can
replay any slice of a day from a counter-based random stream without drawing the rows before it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd

from mlref import schema
from mlref.settings import DataSettings, Settings

# Columns of the uniform matrix one row is drawn from; the rest are reserved so that a new
# draw never shifts the streams of existing ones.
U_TIME, U_USER, U_AD, U_DEVICE, U_SITE, U_POSITION, U_CLICK, U_QUALITY, U_COLD, U_OS = range(10)
ROW_DRAWS = 12

DEVICE_MIX = np.array([0.58, 0.30, 0.09, 0.03])  # mobile, desktop, tablet, ctv
# `covariate`: a connected-TV partnership and a tablet campaign change who sees ads.
COVARIATE_DEVICE_MIX = np.array([0.34, 0.21, 0.15, 0.30])
COVARIATE_SEGMENT_BOOST = 4.0  # the first quarter of the segments gets this much more traffic
DEVICE_EFFECT = np.array([0.0, 0.25, -0.1, -0.55])
# The operating system given the device (rows: DEVICE_TYPES, columns: OPERATING_SYSTEMS), so
# a change of the device mix moves the OS mix too.
OS_MIX = np.array(
    [
        [0.56, 0.42, 0.00, 0.00, 0.02],  # mobile
        [0.00, 0.00, 0.68, 0.27, 0.05],  # desktop
        [0.45, 0.50, 0.03, 0.00, 0.02],  # tablet
        [0.30, 0.20, 0.00, 0.00, 0.50],  # ctv
    ]
)
OS_EFFECT = np.array([0.0, 0.15, -0.05, 0.1, -0.2])  # android, ios, windows, macos, other
SITE_MIX = np.array([0.22, 0.12, 0.24, 0.16, 0.12, 0.08, 0.06])
POSITION_MIX = np.array([0.20, 0.18, 0.15, 0.13, 0.11, 0.09, 0.08, 0.06])
POSITION_EFFECT = -0.25 * np.arange(schema.MAX_POSITION)  # slot 1 is seen most
_HOURS = np.arange(24)
HOURLY_TRAFFIC = 1.0 + 0.65 * np.sin(2 * np.pi * (_HOURS - 14) / 24)  # peaks at 20:00 UTC
HOUR_EFFECT = 0.15 * np.cos(2 * np.pi * (_HOURS - 21) / 24)  # evening users click a bit more
_TRAFFIC_CDF = np.concatenate([[0.0], np.cumsum(HOURLY_TRAFFIC) / HOURLY_TRAFFIC.sum()])

MICROS_PER_HOUR = 3_600_000_000
CALIBRATION_ROWS = 100_000
BASELINE, CONCEPT = 0, 1  # index of the regime in `affinity` and `intercept`


def _rng(seed: int, part: str) -> np.random.Generator:
    """An independent stream per part of the world, so resizing one part leaves the rest."""
    return np.random.default_rng([seed, zlib.crc32(part.encode())])


def _heavy_tailed(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Activity weights: a few entities carry a large share of the traffic, as in real logs."""
    return rng.lognormal(0.0, sigma, n)


def _cdf(weights: np.ndarray) -> np.ndarray:
    return np.cumsum(weights) / weights.sum()


def _pick(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: index i with probability of its share of the weights."""
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def _pick_given(weights: np.ndarray, given: np.ndarray, u: np.ndarray) -> np.ndarray:
    """:func:`_pick` per row, from the row of ``weights`` (a mix per condition) ``given`` names."""
    cdf = np.cumsum(weights, axis=1) / weights.sum(axis=1, keepdims=True)
    return np.minimum((u[:, None] >= cdf[given]).sum(axis=1), weights.shape[1] - 1)


def _affinity(rng: np.random.Generator, n_segments: int) -> np.ndarray:
    """Segment x category taste: mild noise plus two favourite categories per segment."""
    n_categories = len(schema.AD_CATEGORIES)
    taste = rng.normal(0.0, 0.5, (n_segments, n_categories))
    favourites = np.argsort(rng.random((n_segments, n_categories)), axis=1)[:, :2]
    np.put_along_axis(taste, favourites, np.take_along_axis(taste, favourites, 1) + 1.2, 1)
    return taste


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _calibrate(logits: np.ndarray, target: float) -> float:
    """The intercept whose mean click probability over ``logits`` equals ``target``.

    Newton's method on a smooth, increasing function: a handful of steps from the
    intercept that would be right if every row had the median logit.
    """
    intercept = float(np.log(target / (1 - target)) - np.median(logits))
    for _ in range(50):
        p = _sigmoid(logits + intercept)
        step = (p.mean() - target) / (p * (1 - p)).mean()
        intercept -= step
        if abs(step) < 1e-9:
            break
    return intercept


@dataclass(frozen=True)
class Rows:
    """Impressions as world indices, before they are written as a log."""

    user: np.ndarray  # index into the world's users (user_id - 1)
    ad: np.ndarray  # index into the world's ads (ad_id - 1)
    device: np.ndarray
    os: np.ndarray
    site: np.ndarray
    position: np.ndarray  # 1..MAX_POSITION
    micros: np.ndarray  # microseconds since midnight UTC
    hour: np.ndarray  # the true UTC hour
    probability: np.ndarray


@dataclass(frozen=True, eq=False)
class World:
    """Users, ads and click effects; ids are 1-based indices into these arrays.

    Ads ``n_ads + 1 ..`` and advertisers ``n_advertisers + 1 ..`` are the cold pool: they
    receive impressions only in the ``coldstart`` scenario.
    """

    n_ads: int
    n_advertisers: int
    user_segment: np.ndarray
    user_bias: np.ndarray
    user_weight: np.ndarray
    segment_boost: np.ndarray  # covariate traffic multiplier per segment
    ad_advertiser: np.ndarray  # advertiser_id per ad, known and cold
    ad_category: np.ndarray
    ad_quality: np.ndarray
    ad_weight: np.ndarray
    affinity: np.ndarray  # [regime, segment, category]
    site_category: np.ndarray  # [site, category]
    intercept: np.ndarray  # [regime]

    @classmethod
    def from_settings(cls, settings: Settings) -> World:
        """The world of ``settings.data``: the same seed and sizes give the same world."""
        return cls.build(settings.data)

    @classmethod
    def build(cls, data: DataSettings) -> World:
        seed, n_segments = data.seed, data.n_segments
        n_cold_ads = max(1, data.n_ads // 4)
        n_cold_advertisers = max(1, data.n_advertisers // 5)
        n_categories = len(schema.AD_CATEGORIES)

        users = _rng(seed, "users")
        user_segment = users.integers(0, n_segments, data.n_users)
        user_bias = users.normal(0.0, 0.5, data.n_users)
        user_weight = _heavy_tailed(users, data.n_users, 1.2)
        segment_boost = np.ones(n_segments)
        segment_boost[: max(1, n_segments // 4)] = COVARIATE_SEGMENT_BOOST

        advertisers = _rng(seed, "advertisers")
        n_all_advertisers = data.n_advertisers + n_cold_advertisers
        home_category = advertisers.integers(0, n_categories, n_all_advertisers)
        advertiser_cdf = _cdf(_heavy_tailed(advertisers, data.n_advertisers, 1.0))
        cold_advertiser_cdf = _cdf(_heavy_tailed(advertisers, n_cold_advertisers, 1.0))

        ads = _rng(seed, "ads")
        ad_advertiser = np.concatenate(
            [
                _pick(advertiser_cdf, ads.random(data.n_ads)),
                data.n_advertisers + _pick(cold_advertiser_cdf, ads.random(n_cold_ads)),
            ]
        )
        n_all_ads = len(ad_advertiser)
        off_home = ads.random(n_all_ads) < 0.2
        ad_category = np.where(
            off_home, ads.integers(0, n_categories, n_all_ads), home_category[ad_advertiser]
        )
        ad_quality = ads.normal(0.0, 0.4, n_all_ads)
        ad_weight = _heavy_tailed(ads, n_all_ads, 1.3)

        world = cls(
            n_ads=data.n_ads,
            n_advertisers=data.n_advertisers,
            user_segment=user_segment,
            user_bias=user_bias,
            user_weight=user_weight,
            segment_boost=segment_boost,
            ad_advertiser=ad_advertiser + 1,
            ad_category=ad_category,
            ad_quality=ad_quality,
            ad_weight=ad_weight,
            affinity=np.stack(
                [
                    _affinity(_rng(seed, "affinity"), n_segments),
                    _affinity(_rng(seed, "affinity-after-concept-drift"), n_segments),
                ]
            ),
            site_category=_rng(seed, "sites").normal(
                0.0, 0.3, (len(schema.SITE_CATEGORIES), n_categories)
            ),
            intercept=np.zeros(2),
        )
        return world.calibrated(data.target_ctr, seed)

    def calibrated(self, target_ctr: float, seed: int) -> World:
        """This world with intercepts that put a baseline day's CTR at ``target_ctr``.

        The concept regime is calibrated to the same CTR, so concept drift changes who
        clicks on what, not how much is clicked overall.
        """
        u = _rng(seed, "calibration").random((CALIBRATION_ROWS, ROW_DRAWS))
        rows = replace(self, intercept=np.zeros(2)).draw(u, u[:, U_TIME])
        logits = [self.logit(rows, regime=regime) for regime in (BASELINE, CONCEPT)]
        intercept = np.array([_calibrate(logit, target_ctr) for logit in logits])
        return replace(self, intercept=intercept)

    @property
    def n_users(self) -> int:
        return len(self.user_segment)

    @property
    def cold_ad_ids(self) -> np.ndarray:
        return np.arange(self.n_ads, len(self.ad_advertiser)) + 1

    @cached_property
    def _user_cdf(self) -> tuple[np.ndarray, np.ndarray]:
        boosted = self.user_weight * self.segment_boost[self.user_segment]
        return _cdf(self.user_weight), _cdf(boosted)

    @cached_property
    def _ad_cdf(self) -> tuple[np.ndarray, np.ndarray]:
        return _cdf(self.ad_weight[: self.n_ads]), _cdf(self.ad_weight[self.n_ads :])

    def draw(
        self,
        u: np.ndarray,
        day_fraction: np.ndarray,
        *,
        covariate: bool = False,
        concept: bool = False,
        coldstart: bool = False,
        coldstart_share: float = 0.0,
    ) -> Rows:
        """Impressions from uniforms ``u`` [n, ROW_DRAWS]; ``day_fraction`` places them in time.

        Scenarios change only how the uniforms are read, so a drifted day keeps the draws of
        its baseline: ``concept`` leaves every input as it was and changes only the clicks.
        """
        hours = np.interp(day_fraction, _TRAFFIC_CDF, np.arange(25))
        micros = np.minimum((hours * MICROS_PER_HOUR).astype(np.int64), 24 * MICROS_PER_HOUR - 1)
        known_ads, cold_ads = self._ad_cdf
        ad = _pick(known_ads, u[:, U_AD])
        if coldstart:
            cold = u[:, U_COLD] < coldstart_share
            ad = np.where(cold, self.n_ads + _pick(cold_ads, u[:, U_AD]), ad)
        device = _pick(_cdf(COVARIATE_DEVICE_MIX if covariate else DEVICE_MIX), u[:, U_DEVICE])
        rows = Rows(
            user=_pick(self._user_cdf[covariate], u[:, U_USER]),
            ad=ad,
            device=device,
            os=_pick_given(OS_MIX, device, u[:, U_OS]),
            site=_pick(_cdf(SITE_MIX), u[:, U_SITE]),
            position=_pick(_cdf(POSITION_MIX), u[:, U_POSITION]) + 1,
            micros=micros,
            hour=micros // MICROS_PER_HOUR,
            probability=np.empty(0),
        )
        regime = CONCEPT if concept else BASELINE
        return replace(rows, probability=_sigmoid(self.logit(rows, regime=regime)))

    def logit(self, rows: Rows, *, regime: int = BASELINE) -> np.ndarray:
        """The true log-odds of a click; a missing device or OS (code -1) gets no effect."""
        category = self.ad_category[rows.ad]
        device = np.where(rows.device >= 0, DEVICE_EFFECT[rows.device], 0.0)
        os = np.where(rows.os >= 0, OS_EFFECT[rows.os], 0.0)
        return (
            self.intercept[regime]
            + self.user_bias[rows.user]
            + self.ad_quality[rows.ad]
            + self.affinity[regime, self.user_segment[rows.user], category]
            + device
            + os
            + self.site_category[rows.site, category]
            + POSITION_EFFECT[rows.position - 1]
            + HOUR_EFFECT[rows.hour]
        )

    def segments_of(self, user_ids: np.ndarray | pd.Series) -> np.ndarray:
        """The hidden segment of each user id."""
        return self.user_segment[self._index(user_ids, self.n_users, "user_id")]

    def click_probability(self, frame: pd.DataFrame, *, concept: bool = False) -> np.ndarray:
        """True click probability of logged rows (raw columns), before or after concept drift.

        The hour comes from ``event_timestamp``, not the logged ``hour`` column, which the
        ``quality`` scenario corrupts.
        """
        timestamps = pd.to_datetime(frame["event_timestamp"], utc=True)
        micros = (
            (timestamps - timestamps.dt.normalize())
            .to_numpy()
            .astype("timedelta64[us]")
            .astype(np.int64)
        )
        rows = Rows(
            user=self._index(frame["user_id"], self.n_users, "user_id"),
            ad=self._index(frame["ad_id"], len(self.ad_advertiser), "ad_id"),
            device=_codes(frame["device_type"], schema.DEVICE_TYPES),
            os=_codes(frame["os"], schema.OPERATING_SYSTEMS),
            site=_codes(frame["site_category"], schema.SITE_CATEGORIES, required=True),
            position=frame["position"].to_numpy(np.int64),
            micros=micros,
            hour=micros // MICROS_PER_HOUR,
            probability=np.empty(0),
        )
        return _sigmoid(self.logit(rows, regime=CONCEPT if concept else BASELINE))

    def relevance(self, frame: pd.DataFrame, *, concept: bool = False) -> np.ndarray:
        """True click probability of logged rows had each been shown in the top slot: what a
        ranker should order ads by, free of where the log happened to show them. Real logs
        never hold it; benchmarks and tests score rankings against it."""
        return self.click_probability(frame.assign(position=1), concept=concept)

    @staticmethod
    def _index(ids: np.ndarray | pd.Series, size: int, name: str) -> np.ndarray:
        index = np.asarray(ids, dtype=np.int64) - 1
        outside = (index < 0) | (index >= size)
        if outside.any():
            raise ValueError(
                f"{name} {index[outside][0] + 1} is not in this world (ids 1..{size}); "
                "score rows generated with the same seed and sizes"
            )
        return index


def _codes(values: pd.Series, vocabulary: tuple[str, ...], required: bool = False) -> np.ndarray:
    """Vocabulary codes; -1 for a missing or unknown value, an error where one is ``required``."""
    codes = pd.Categorical(values, categories=list(vocabulary)).codes.astype(np.int64)
    if required and (codes < 0).any():
        bad = values[codes < 0].iloc[0]
        raise ValueError(f"{values.name}={bad!r} is not one of {', '.join(vocabulary)}")
    return codes
