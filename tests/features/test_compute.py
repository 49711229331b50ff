"""Daily snapshot arithmetic, against hand-computed values and a brute-force recount."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlref.features.compute import TABLES, compute_tables, snapshots
from mlref.features.counts import NoCuratedDataError, daily_counts
from mlref.features.transform import AD_STATS, USER_STATS, smoothed_ctr
from mlref.settings import Settings
from tests.features import LOG, events, write_curated

DAY = pd.Timedelta(days=1)


def _stamp(day: str) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC")


def test_user_snapshots_match_hand_computed_windows(settings: Settings):
    write_curated(settings.curated_dir, events(LOG))
    result = compute_tables(settings)
    users = pd.read_parquet(result.uris["user_stats"])
    assert list(users.columns) == ["user_id", "event_timestamp", *USER_STATS, "created"]
    assert (result.first_snapshot, result.last_snapshot) == (
        _stamp("2026-01-02"),
        _stamp("2026-01-10"),
    )

    user1 = users[users["user_id"] == 1].set_index("event_timestamp")
    counts = ["user_impressions_1d", "user_clicks_1d", "user_impressions_7d", "user_clicks_7d"]
    expected = {
        # Jan 1's two impressions; the click at Jan 2 00:00 is not before Jan 2 00:00.
        "2026-01-02": [2, 1, 2, 1],
        "2026-01-03": [1, 1, 3, 2],
        "2026-01-08": [0, 0, 3, 2],
        # Jan 1 has left the 7-day window [Jan 2, Jan 9).
        "2026-01-09": [0, 0, 1, 1],
        "2026-01-10": [1, 0, 1, 0],
    }
    for day, values in expected.items():
        assert user1.loc[_stamp(day), counts].tolist() == values, day
    assert len(user1) == 9  # every day from Jan 2 to Jan 10: active within the last 7 days

    prior, strength = settings.features.ctr_prior, settings.features.prior_strength
    row = user1.loc[_stamp("2026-01-03")]
    assert row["user_ctr_1d"] == pytest.approx((1 + prior * strength) / (1 + strength))
    assert row["user_ctr_7d"] == pytest.approx((2 + prior * strength) / (3 + strength))
    # A snapshot counts as created when it could first have been: at its own timestamp.
    assert (users["created"] == users["event_timestamp"]).all()


def test_entities_without_activity_in_the_last_week_have_no_snapshot(settings: Settings):
    write_curated(settings.curated_dir, events(LOG))
    result = compute_tables(settings)
    ads = pd.read_parquet(result.uris["ad_stats"])
    assert list(ads.columns) == ["ad_id", "event_timestamp", *AD_STATS, "created"]
    ad10 = set(ads.loc[ads["ad_id"] == 10, "event_timestamp"])
    assert _stamp("2026-01-09") not in ad10  # no ad 10 impression in [Jan 2, Jan 9)
    assert _stamp("2026-01-10") in ad10
    users = pd.read_parquet(result.uris["user_stats"])
    user3 = users.loc[users["user_id"] == 3, "event_timestamp"]
    assert (user3.min(), user3.max()) == (_stamp("2026-01-02"), _stamp("2026-01-08"))
    assert result.entities == {"user_stats": 3, "ad_stats": 2}


def test_snapshots_equal_a_brute_force_recount_of_earlier_events():
    rng = np.random.default_rng(3)
    n = 400
    log = pd.DataFrame(
        {
            "event_timestamp": _stamp("2026-03-01")
            + pd.to_timedelta(rng.integers(0, 12 * 86400, n), unit="s"),
            "user_id": rng.integers(0, 15, n),
            "clicked": (rng.random(n) < 0.2).astype("int64"),
        }
    )
    log["day"] = log["event_timestamp"].dt.floor("D")
    daily = (
        log.groupby(["user_id", "day"])["clicked"]
        .agg(impressions="size", clicks="sum")
        .reset_index()
    )
    table = TABLES[0]
    got = snapshots(daily, table, 0.05, 10.0).set_index(["user_id", "event_timestamp"])

    expected_keys = set()
    for snapshot in pd.date_range(log["day"].min() + DAY, log["day"].max() + DAY, tz="UTC"):
        for user in range(15):
            mine = log[log["user_id"] == user]
            week = mine[
                (mine["event_timestamp"] >= snapshot - 7 * DAY)
                & (mine["event_timestamp"] < snapshot)
            ]
            if week.empty:
                continue
            expected_keys.add((user, snapshot))
            day = week[week["event_timestamp"] >= snapshot - DAY]
            row = got.loc[(user, snapshot)]
            assert row["user_impressions_7d"] == len(week)
            assert row["user_clicks_7d"] == week["clicked"].sum()
            assert row["user_impressions_1d"] == len(day)
            assert row["user_clicks_1d"] == day["clicked"].sum()
            assert row["user_ctr_7d"] == pytest.approx(
                smoothed_ctr(week["clicked"].sum(), len(week), 0.05, 10.0)
            )
    assert set(got.index) == expected_keys


def test_daily_counts_do_not_depend_on_the_batch_size(settings: Settings):
    write_curated(settings.curated_dir, events(LOG))
    whole = daily_counts(settings.curated_dir, batch_rows=1_000)
    pieces = daily_counts(settings.curated_dir, batch_rows=1)
    for key, frame in whole.items():
        pd.testing.assert_frame_equal(
            frame.sort_values([key, "day"]).reset_index(drop=True),
            pieces[key].sort_values([key, "day"]).reset_index(drop=True),
        )


def test_missing_curated_data_names_the_fix(settings: Settings):
    with pytest.raises(NoCuratedDataError, match="mlref ingest run"):
        compute_tables(settings)
