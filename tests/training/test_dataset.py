"""Training sets built a day at a time: the same rows as one join of the whole range, written
as shards with a manifest, and partitions outside the range never read."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mlref.features import store
from mlref.features.transform import build_spec, fill_defaults
from mlref.settings import Settings
from mlref.training import dataset, shards


def test_day_by_day_equals_one_join_of_the_whole_range(applied: Settings, tmp_path):
    out = tmp_path / "sets"
    report = dataset.write_training_sets(applied, str(out))

    whole = dataset.read_curated(applied)
    joined, dropped = store.historical_features(applied, whole)
    filled, missing = fill_defaults(joined, build_spec(applied.features))
    sets = shards.ShardSet(str(out))
    for split, days in report.days.items():
        expected = filled[filled["date"].isin(days)][dataset.COLUMNS].reset_index(drop=True)
        pd.testing.assert_frame_equal(sets.frame(split), expected)
        assert report.rows[split] == len(expected) == sets.rows(split)
        assert report.positive_rate[split] == expected["clicked"].mean()
    assert report.days == {
        "train": ["2026-01-01", "2026-01-02"],
        "val": ["2026-01-03"],
        "test": ["2026-01-09"],
    }
    assert report.feast_dropped == dropped
    assert report.defaulted == {name: int(missing[name].sum()) for name in report.defaulted}

    manifest = json.loads((out / shards.MANIFEST).read_text())
    assert [s["path"] for s in manifest["shards"]["train"]] == [
        "train/date=2026-01-01/part-00000.parquet",
        "train/date=2026-01-02/part-00000.parquet",
    ]
    assert manifest["feature_version"] == report.feature_version
    assert {f["name"] for f in manifest["schema"]} == set(dataset.COLUMNS)
    assert all((out / s["path"]).is_file() for s in manifest["shards"]["test"])
    assert not list(out.rglob(".mlref-shard-*"))  # each shard's scratch folder is gone


def test_days_outside_the_range_are_never_read(applied: Settings, tmp_path):
    # A corrupt file in a day before the range: reading it would fail the build.
    (applied.curated_dir / "date=2026-01-01" / "part-0.parquet").write_bytes(b"not parquet")
    report = dataset.write_training_sets(applied, str(tmp_path / "sets"), start="2026-01-02")
    assert report.days["train"] == ["2026-01-02"]
    assert dataset.read_curated(applied, "2026-01-09", "2026-01-09")["date"].unique() == [
        "2026-01-09"
    ]
    with pytest.raises(dataset.DatasetError, match="no curated rows between 2026-01-04"):
        dataset.curated_days(applied, "2026-01-04", "2026-01-08")


def test_a_folder_without_a_manifest_is_not_a_training_set(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(shards.ShardSetError, match=r"no manifest\.json"):
        shards.ShardSet(str(tmp_path))
