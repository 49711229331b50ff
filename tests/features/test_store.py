"""The Feast store: point-in-time retrieval, online lookup, local and cluster configurations."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlref.features import store
from mlref.features.transform import STAT_COLUMNS, build_spec, fill_defaults
from mlref.settings import FeatureSettings, Settings
from tests.features import LOG, events, write_curated


def _stamp(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def _snapshot(settings: Settings, name: str, key: str, entity: int, day: str) -> pd.Series:
    """One row of a computed snapshot table, read straight from its Parquet file."""
    frame = pd.read_parquet(settings.feature_dir / f"{name}.parquet")
    match = frame[(frame[key] == entity) & (frame["event_timestamp"] == _stamp(day))]
    assert len(match) == 1
    return match.iloc[0]


def test_training_rows_never_see_their_own_event_or_later(applied: Settings):
    entity_df = pd.DataFrame(
        [
            ("2026-01-02 00:00:00", 1, 10),  # user 1 clicks at exactly this instant
            ("2026-01-02 00:00:00", 1, 11),  # ad 11's first impression is this one
            ("2026-01-01 23:59:59", 1, 10),  # before the first snapshot
            ("2026-01-02 23:59:59", 1, 10),
            ("2026-01-03 00:00:00", 1, 10),  # the Jan 2 click is now in the past
            ("2026-01-12 00:00:00", 2, 11),  # last snapshots Jan 10: older than the TTL
            ("2026-01-02 00:00:00", 3, 10),  # same ad and instant as the first row
        ],
        columns=["event_timestamp", "user_id", "ad_id"],
    )
    entity_df["event_timestamp"] = pd.to_datetime(entity_df["event_timestamp"], utc=True)
    entity_df["request_id"] = [f"q{i}" for i in range(len(entity_df))]

    joined, dropped = store.historical_features(applied, entity_df)

    assert joined["request_id"].tolist() == entity_df["request_id"].tolist()
    assert list(joined.columns) == [*entity_df.columns, *STAT_COLUMNS]
    user_7d = joined["user_impressions_7d"].tolist()
    ad_7d = joined["ad_impressions_7d"].tolist()
    # The click at Jan 2 00:00 (row 0) is excluded there and counted from Jan 3 on (row 4).
    assert user_7d[0] == 2 and joined.at[0, "user_clicks_7d"] == 1
    assert user_7d[3] == 2 and user_7d[4] == 3 and joined.at[4, "user_clicks_1d"] == 1
    assert np.isnan(ad_7d[1])  # the ad's only history is the impression being scored
    assert joined.iloc[2][list(STAT_COLUMNS)].isna().all()
    assert joined.iloc[5][list(STAT_COLUMNS)].isna().all()
    # Feast keeps one row per (ad, instant); both rows still get the ad's stats.
    assert ad_7d[0] == ad_7d[6] == 3
    assert user_7d[6] == 1
    expected = _snapshot(applied, "user_stats", "user_id", 1, "2026-01-03")
    assert joined.loc[4, list(expected.index[2:-1])].tolist() == expected.iloc[2:-1].tolist()
    # Rows 1, 2 and 5 have entity rows only after them, or too long before: Feast drops them.
    assert dropped == 3


def test_cold_entities_are_nan_on_both_paths_and_get_the_priors(applied: Settings):
    entity_df = pd.DataFrame(
        {"user_id": [999], "ad_id": [555], "event_timestamp": [_stamp("2026-01-05 12:00")]}
    )
    historical, _ = store.historical_features(applied, entity_df)
    store.materialize(applied, _stamp("2026-01-10").to_pydatetime())
    online = store.OnlineFeatureLookup(applied).lookup([999], [555])

    spec = build_spec(FeatureSettings(ctr_prior=applied.features.ctr_prior))
    for frame in (historical, online):
        assert frame[list(STAT_COLUMNS)].isna().all(axis=None)
        filled, missing = fill_defaults(frame, spec)
        assert missing[list(STAT_COLUMNS)].all(axis=None)
        for name in STAT_COLUMNS:
            prior = applied.features.ctr_prior if "_ctr_" in name else 0.0
            assert filled.at[0, name] == prior


def test_local_build_then_lookup_serves_the_latest_snapshots(settings: Settings):
    write_curated(settings.curated_dir, events(LOG))
    result = store.compute_and_materialize(settings)

    assert result.rows == {"user_stats": 23, "ad_stats": 16}
    assert result.online_store.startswith("sqlite ")
    assert Path(result.registry) == settings.feature_dir.resolve() / "registry.db"
    lookup = store.OnlineFeatureLookup(settings)
    found = lookup.lookup([1, 999, 2, 1], [11, 10, 555, 11])

    assert list(found.columns) == list(STAT_COLUMNS) and len(found) == 4
    user1 = _snapshot(settings, "user_stats", "user_id", 1, "2026-01-10")
    ad11 = _snapshot(settings, "ad_stats", "ad_id", 11, "2026-01-10")
    for row in (0, 3):
        assert found.loc[row, user1.index[2:-1]].tolist() == user1.iloc[2:-1].tolist()
        assert found.loc[row, ad11.index[2:-1]].tolist() == ad11.iloc[2:-1].tolist()
    assert found.loc[1, "user_impressions_7d"] != found.loc[1, "user_impressions_7d"]
    assert found.loc[2, "ad_ctr_7d"] != found.loc[2, "ad_ctr_7d"]
    assert found.loc[2, "user_impressions_1d"] == 0 and found.loc[2, "user_impressions_7d"] == 1

    # Feast's own online API agrees on everything that is fresh.
    feast = (
        store.open_store(settings)
        .get_online_features(
            features=[f"user_stats:{c}" for c in STAT_COLUMNS[:6]]
            + [f"ad_stats:{c}" for c in STAT_COLUMNS[6:]],
            entity_rows=[{"user_id": u, "ad_id": a} for u, a in [(1, 11), (999, 10), (2, 555)]],
        )
        .to_df()
    )
    np.testing.assert_allclose(
        found.iloc[:3].to_numpy(), feast[list(STAT_COLUMNS)].to_numpy(dtype=float)
    )
    with pytest.raises(ValueError, match="2 user ids but 1 ad ids"):
        lookup.lookup([1, 2], [10])


def test_incremental_materialization_and_stale_rows(applied: Settings):
    first = store.materialize(applied, _stamp("2026-01-05").to_pydatetime())
    assert set(first.values()) == {_stamp("2026-01-04")}  # one TTL before the first end
    lookup = store.OnlineFeatureLookup(applied, refresh_seconds=0)
    assert lookup.lookup([1, 3], [10, 10])["user_impressions_7d"].tolist() == [3, 1]

    second = store.materialize(applied, _stamp("2026-01-10").to_pydatetime())
    assert set(second.values()) == {_stamp("2026-01-05")}  # from where the last run ended
    assert set(store.materialize(applied, _stamp("2026-01-10").to_pydatetime()).values()) == {None}
    found = lookup.lookup([1, 3], [10, 10])
    assert found.loc[0, "user_impressions_7d"] == 1  # the Jan 10 snapshot
    # User 3's newest row (Jan 8) is still in the online store, but more than the TTL older
    # than the last materialization: a point-in-time join would not use it, nor does lookup.
    feast = store.open_store(applied).get_online_features(
        features=["user_stats:user_impressions_7d"], entity_rows=[{"user_id": 3}]
    )
    assert feast.to_dict()["user_impressions_7d"] == [1]
    assert np.isnan(found.loc[1, "user_impressions_7d"])


def test_rows_kept_between_materializations_equal_store_reads(applied: Settings):
    store.materialize(applied, _stamp("2026-01-05").to_pydatetime())
    users, ads = [3, 1, 999, 1, 2, 3], [10, 555, 11, 10, 11, 10]
    read = store.OnlineFeatureLookup(applied, refresh_seconds=0, cache_rows=0)  # keeps nothing
    kept = store.OnlineFeatureLookup(applied, refresh_seconds=0)
    tiny = store.OnlineFeatureLookup(applied, refresh_seconds=0, cache_rows=2)  # starts over
    before = kept.lookup(users[:3], ads[:3])
    for lookup in (kept, tiny, read):
        lookup.lookup(users[3:], ads[3:])  # partly seen ids, partly new ones
        pd.testing.assert_frame_equal(
            lookup.lookup(users, ads), store.OnlineFeatureLookup(applied).lookup(users, ads)
        )
    assert kept.lookup(users, ads).iloc[:3].equals(before)
    assert kept.lookup(users, ads)["user_impressions_7d"].tolist()[:2] == [1, 3]

    # A new materialization changes the views' registry entries: every kept row is read again.
    store.materialize(applied, _stamp("2026-01-10").to_pydatetime())
    after = kept.lookup(users, ads)
    pd.testing.assert_frame_equal(after, read.lookup(users, ads))
    assert after["user_impressions_7d"].tolist()[1] == 1  # user 1's Jan 10 snapshot
    assert np.isnan(after.loc[0, "user_impressions_7d"])  # user 3 is now stale


def test_kept_rows_count_hits_and_misses_and_age_from_the_last_materialization(
    applied: Settings,
):
    store.materialize(applied, _stamp("2026-01-05").to_pydatetime())
    now = [100.0]
    lookup = store.OnlineFeatureLookup(applied, refresh_seconds=0, clock=lambda: now[0])
    assert lookup.cache_stats().age_seconds == 0.0  # nothing kept yet
    lookup.lookup([3, 1, 3], [10, 10, 10])  # users 3, 1 read; ad 10 read once
    now[0] = 130.0
    lookup.lookup([1, 999], [11, 10])  # user 999 and ad 11 read; 1 and 10 kept (unknown too)
    lookup.lookup([999], [11])
    stats = lookup.cache_stats()
    assert stats.misses == {"user_id": 3, "ad_id": 2}
    assert stats.hits == {"user_id": 3, "ad_id": 4}
    assert stats.age_seconds == 30.0

    store.materialize(applied, _stamp("2026-01-10").to_pydatetime())  # seen at the next lookup
    now[0] = 150.0
    lookup.lookup([1], [10])
    now[0] = 155.0
    stats = lookup.cache_stats()
    assert stats.age_seconds == 5.0
    assert stats.misses == {"user_id": 4, "ad_id": 3}  # kept rows dropped: read again
    assert stats.hits == {"user_id": 3, "ad_id": 4}
    uncached = store.OnlineFeatureLookup(applied, cache_rows=0)
    uncached.lookup([1, 1], [10, 10])
    uncached.lookup([1], [10])
    assert uncached.cache_stats().hits == {"user_id": 1, "ad_id": 1}  # the duplicate in a call


def test_cluster_config_uses_redis_and_the_offline_uri(
    settings: Settings, redis_server: str, tmp_path: Path
):
    offline = tmp_path / "object-store" / "offline"
    cluster = settings.model_copy(
        update={
            "mode": "cluster",
            "features": settings.features.model_copy(
                update={
                    "redis_connection": redis_server,
                    "offline_uri": str(offline),
                    "project": "mlref_cluster_test",
                }
            ),
        }
    )
    write_curated(cluster.curated_dir, events(LOG))
    result = store.compute_and_materialize(cluster)

    assert result.online_store == f"redis {redis_server}"
    assert result.registry == f"{offline}/registry.db" and Path(result.registry).is_file()
    assert result.uris["user_stats"] == f"{offline}/user_stats.parquet"
    assert not (cluster.feature_dir / "online.db").exists()
    found = store.OnlineFeatureLookup(cluster).lookup([1, 999], [11, 10])
    assert found.loc[
        0, ["user_impressions_1d", "ad_impressions_1d", "ad_impressions_7d"]
    ].tolist() == [1, 0, 1]
    assert found.loc[1, "user_impressions_1d"] != found.loc[1, "user_impressions_1d"]
    joined, _ = store.historical_features(
        cluster,
        pd.DataFrame(
            {"user_id": [1], "ad_id": [10], "event_timestamp": [_stamp("2026-01-03 05:00")]}
        ),
    )
    assert joined.at[0, "user_impressions_7d"] == 3


def test_cluster_mode_without_shared_storage_names_the_setting(settings: Settings):
    with pytest.raises(ValueError, match="MLREF_STORAGE__ROOT"):
        Settings(mode="cluster", work_dir=settings.work_dir)


def test_cluster_feature_store_lives_under_the_storage_root(settings: Settings):
    cluster = Settings(mode="cluster", work_dir=settings.work_dir, storage={"root": "s3://b/"})
    assert store.repo_config(cluster).registry.path == "s3://b/features/registry.db"


def test_chunked_joins_give_the_same_rows_as_one_join(applied: Settings):
    frame = events(LOG * 3)  # every (entity, instant) pair three times
    frame["event_timestamp"] += pd.to_timedelta([0] * 6 + [1] * 6 + [86_400] * 6, unit="s")
    whole, dropped = store.historical_features(applied, frame)
    counts = store.snapshot_counts(applied, store.TABLES[0])
    chunks = store.join_chunks(frame["user_id"], counts, 4)
    assert len(chunks) > 3 and chunks[0].start == 0 and chunks[-1].stop == len(frame)
    assert all(a.stop == b.start for a, b in itertools.pairwise(chunks))
    fan_out = frame["user_id"].map(counts).fillna(0) + 1
    assert all(fan_out[c].sum() <= 4 + fan_out[c].iloc[0] for c in chunks)

    chunked, chunked_dropped = store.historical_features(applied, frame, join_rows=4)
    pd.testing.assert_frame_equal(chunked, whole)
    assert chunked_dropped == dropped


def test_a_join_reads_its_ttl_window_and_answers_as_feast_over_the_whole_table(applied: Settings):
    frame = events(LOG * 3)
    frame["event_timestamp"] += pd.to_timedelta([0] * 6 + [3_600] * 6 + [2 * 86_400] * 6, unit="s")
    joined, dropped = store.historical_features(applied, frame)

    feast = store.open_store(applied)
    expected_lost = np.zeros(len(frame), dtype=bool)
    for table in store.TABLES:
        pairs = frame[[table.key, "event_timestamp"]].drop_duplicates().reset_index(drop=True)
        pairs[store.ROW_KEY] = np.arange(len(pairs))
        refs = [f"{table.name}:{name}" for name in table.columns]
        whole = feast.get_historical_features(entity_df=pairs, features=refs).to_df()
        answer = whole.drop_duplicates(store.ROW_KEY).set_index(store.ROW_KEY)[list(table.columns)]
        expected = frame.merge(pairs, on=[table.key, "event_timestamp"], how="left")
        stats = answer.reindex(expected[store.ROW_KEY]).reset_index(drop=True).astype("float64")
        pd.testing.assert_frame_equal(joined[list(table.columns)], stats, check_names=False)
        counts = store.snapshot_counts(applied, table)
        expected_lost |= stats.isna().all(axis=1).to_numpy() & frame[table.key].isin(counts.index)
    assert dropped == int(expected_lost.sum()) > 0

    table = store.TABLES[0]
    view = feast.get_feature_view(table.name)
    day = frame[frame["event_timestamp"].dt.normalize() == _stamp("2026-01-04")]
    window = store.snapshot_window(
        applied, table, day["event_timestamp"].min() - view.ttl, day["event_timestamp"].max()
    )
    stamps = window.column("event_timestamp").to_pandas()
    full = pd.read_parquet(applied.feature_dir / f"{table.name}.parquet")
    assert 0 < len(window) < len(full)
    assert stamps.min() >= _stamp("2026-01-03") and stamps.max() <= day["event_timestamp"].max()
