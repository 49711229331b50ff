"""Training sets and materialization on Spark (Feast's Spark offline store and compute
engine): the local engine's set, shard for shard, and its online rows; bad input and faults."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlref.data.generate import generate
from mlref.data.ingest import ingest
from mlref.features import store
from mlref.features.compute import compute_tables
from mlref.schema import DATE_COLUMN
from mlref.settings import EngineSettings, Settings
from mlref.training import dataset, dataset_spark, shards
from mlref.training.dataset_spark import TrainingSetFailed
from tests.conftest import newest_job


def on_spark(settings: Settings) -> Settings:
    """``settings`` with ``engine.data=spark``, registered with Feast as such."""
    spark_settings = settings.model_copy(update={"engine": EngineSettings(data="spark")})
    store.apply(spark_settings)
    return spark_settings


@pytest.fixture
def features(settings: Settings) -> Settings:
    """Generated days, ingested and computed into snapshots, registered for the local engine."""
    generate(settings)
    ingest(str(settings.raw_dir), settings)
    compute_tables(settings)
    store.apply(settings)
    return settings


def read_set(uri: Path | str) -> tuple[dict, dict[str, pd.DataFrame]]:
    sets = shards.ShardSet(str(uri))
    return sets.manifest, {split: sets.frame(split) for split in shards.SPLITS}


def test_spark_builds_the_local_engines_training_set(
    features: Settings, spark, tmp_path, monkeypatch
):
    # Feast joins a day at a time here: several joins, unioned, give the local engine's set.
    monkeypatch.setattr(dataset_spark, "JOIN_DAYS", 1)
    files = dataset.curated_files(features, {"all": dataset.curated_days(features)})
    assert len(dataset_spark.day_groups(files, 1)) == 3
    local = dataset.write_training_sets(features, str(tmp_path / "local"))
    spark_settings = features.model_copy(update={"engine": EngineSettings(data="spark")})
    with pytest.raises(store.EngineMismatchError, match="run `mlref features build` with"):
        dataset.write_training_sets(spark_settings, str(tmp_path / "spark"))
    on = on_spark(features)
    built = dataset.write_training_sets(on, str(tmp_path / "spark"))

    assert built == local
    assert local.feast_dropped > 0  # rows of entities with snapshots, none valid yet
    assert 0 < local.defaulted["user_ctr_1d"] < sum(local.rows.values())
    manifest, frames = read_set(tmp_path / "spark")
    expected_manifest, expected = read_set(tmp_path / "local")
    assert manifest == expected_manifest
    for split in shards.SPLITS:
        pd.testing.assert_frame_equal(frames[split], expected[split])
    assert not list((tmp_path / "spark").glob(".*"))  # no staging left
    # A query per group of days, not one over the range: each holds its own days' rows only.
    with dataset_spark.joined_by_day(on, files) as groups:
        seen = [
            (days, sorted(row[0] for row in joined.select(DATE_COLUMN).distinct().collect()))
            for days, joined in groups
        ]
    assert seen == [([day], [day]) for day in sorted({day for _, day in files})]


def test_spark_materializes_the_local_engines_online_rows(features: Settings, spark):
    end = compute_tables(features).last_snapshot
    ids = np.arange(1, 301), np.resize(np.arange(1, 61), 300)

    store.materialize(features, end)
    expected = store.OnlineFeatureLookup(features, cache_rows=0).lookup(*ids)
    for name in ("online.db", "registry.db"):
        (features.feature_dir / name).unlink()
    on = on_spark(features)
    jobs = newest_job(spark)
    starts = store.materialize(on, end)
    online = store.OnlineFeatureLookup(on, cache_rows=0).lookup(*ids)

    assert newest_job(spark) > jobs  # Spark wrote
    assert starts == {name: end - timedelta(days=1) for name in starts}
    pd.testing.assert_frame_equal(online, expected)
    assert expected.notna().any().all()


def test_a_schema_mismatch_fails_as_locally_and_publishes_nothing(
    features: Settings, spark, tmp_path
):
    part = next(features.curated_dir.glob("date=*/part-*.parquet"))
    table = pq.read_table(part)
    users = pa.array([f"u{user}" for user in table.column("user_id").to_pylist()])
    pq.write_table(
        table.set_column(table.schema.get_field_index("user_id"), "user_id", users), part
    )
    with pytest.raises(Exception) as local:
        dataset.write_training_sets(features, str(tmp_path / "local"))
    out = tmp_path / "spark"
    with pytest.raises(TrainingSetFailed, match="Spark job failed after its retries") as failed:
        dataset.write_training_sets(on_spark(features), str(out))
    assert str(local.value).splitlines()[0] in str(failed.value)
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_a_corrupt_file_fails_as_locally(features: Settings, spark, tmp_path):
    next(features.curated_dir.glob("date=*/part-*.parquet")).write_bytes(b"not parquet")
    with pytest.raises(Exception) as local:
        dataset.write_training_sets(features, str(tmp_path / "local"))
    with pytest.raises(type(local.value)) as failed:
        dataset.write_training_sets(on_spark(features), str(tmp_path / "spark"))
    assert str(failed.value) == str(local.value)
    assert not (tmp_path / "spark").exists()


def test_a_worker_killed_while_writing_loses_and_duplicates_nothing(
    features: Settings, spark, spark_faults: Path, tmp_path
):
    dataset.write_training_sets(features, str(tmp_path / "local"))
    expected = read_set(tmp_path / "local")
    out = tmp_path / "spark"
    (out / "train" / "date=2026-01-01").mkdir(parents=True)
    (out / "train" / "date=2026-01-01" / "part-00000.parquet").write_text("an earlier set")

    marker = spark_faults / "kill-publishing"
    marker.touch()
    report = dataset.write_training_sets(on_spark(features), str(out))

    assert not marker.exists()  # a worker died publishing a shard; its task ran again
    manifest, frames = read_set(out)
    assert manifest == expected[0]
    for split in shards.SPLITS:
        pd.testing.assert_frame_equal(frames[split], expected[1][split])
    assert sum(report.rows.values()) == sum(len(f) for f in frames.values())
    published = sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet"))
    assert published == sorted(s["path"] for split in manifest["shards"].values() for s in split)


def test_spark_publishes_the_local_engines_set_to_an_object_store(
    features: Settings, spark, s3_env, tmp_path
):
    """Executors write the shards to s3:// through fsspec (the Spark fixture gives them the
    store's env, as the Secret does in a cluster); each partition is published by copies."""
    local = dataset.write_training_sets(features, str(tmp_path / "local"))
    uri = f"{s3_env.create_bucket('spark-training-sets')}/sets"

    built = dataset.write_training_sets(on_spark(features), uri)

    assert built == local
    manifest, frames = read_set(uri)
    expected_manifest, expected = read_set(tmp_path / "local")
    assert manifest == expected_manifest
    for split in shards.SPLITS:
        pd.testing.assert_frame_equal(frames[split], expected[split])
    listing = s3_env.client().list_objects_v2(Bucket="spark-training-sets")
    keys = sorted(item["Key"] for item in listing.get("Contents", []))
    shards_listed = [s["path"] for split in manifest["shards"].values() for s in split]
    assert keys == sorted([f"sets/{shards.MANIFEST}", *(f"sets/{p}" for p in shards_listed)])


def test_day_groups_take_consecutive_days_in_the_files_order():
    files = [("a", "d1"), ("b", "d3"), ("c", "d2"), ("d", "d1"), ("e", "d4"), ("f", "d5")]
    assert dataset_spark.day_groups(files, 2) == [[0, 2, 3], [1, 4], [5]]
    assert dataset_spark.day_groups(files, 7) == [[0, 1, 2, 3, 4, 5]]
