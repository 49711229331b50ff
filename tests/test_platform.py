"""The one place local and cluster part ways: which platform runs, and what each one does."""

from __future__ import annotations

import pytest

from mlref.canary.state import CanaryState, read_state
from mlref.platform import ClusterPlatform, LocalPlatform, platform_for
from mlref.settings import Settings


def _cluster(tmp_path) -> Settings:
    return Settings(work_dir=tmp_path, mode="cluster", storage={"root": "s3://mlref"})


def test_the_mode_picks_the_platform(tmp_path):
    assert type(platform_for(Settings(work_dir=tmp_path))) is LocalPlatform
    assert type(platform_for(_cluster(tmp_path))) is ClusterPlatform


def test_a_platform_refuses_the_other_modes_settings(tmp_path):
    with pytest.raises(ValueError, match="runs cluster mode, not local"):
        ClusterPlatform(Settings(work_dir=tmp_path))
    with pytest.raises(ValueError, match="runs local mode, not cluster"):
        LocalPlatform(_cluster(tmp_path))


def test_served_models_come_from_the_registry_or_their_published_folder(tmp_path):
    assert platform_for(Settings(work_dir=tmp_path)).served_uri("3") == "models:/ctr/3"
    assert platform_for(_cluster(tmp_path)).served_uri("3") == "s3://mlref/models/ctr/3"


def test_locally_a_canary_is_the_state_file_local_serving_reads(tmp_path):
    local = platform_for(Settings(work_dir=tmp_path))
    state = CanaryState("models:/ctr/3", "models:/ctr/2", 20, "3")
    path, split = local.apply_canary(state)
    assert read_state(path) == state and split == []
    assert local.live_split() == []
