"""Sticky assignment by user, the experiment file, and the generator's true lift for B."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom, chi2_contingency

from mlref.canary.state import TAG_ROUTING_ANNOTATION, CanaryState, to_patch
from mlref.data.generate import treated
from mlref.experiment.assign import (
    STATE_KEY,
    Experiment,
    Watched,
    buckets,
    in_treatment,
    read_experiment,
    to_yaml,
    write_experiment,
)
from mlref.settings import CanarySettings, DataSettings, ExperimentSettings, Settings
from tests.cluster import kubelet_volume

USERS = np.arange(1, 100_001)


@pytest.mark.parametrize("percent", [10, 50, 90])
def test_the_share_in_b_is_the_configured_split(percent):
    b = int(in_treatment(USERS, "salt", percent).sum())
    low, high = (
        binom.ppf(0.0005, len(USERS), percent / 100),
        binom.isf(0.0005, len(USERS), percent / 100),
    )
    assert low <= b <= high


def test_assignment_is_a_function_of_salt_and_user_only():
    first = in_treatment(USERS, "homepage-ranker", 50)
    shuffled = np.random.default_rng(0).permutation(USERS)
    again = in_treatment(shuffled, "homepage-ranker", 50)
    assert (again == first[shuffled - 1]).all()  # order and batching do not matter
    assert (in_treatment(USERS[:7], "homepage-ranker", 50) == first[:7]).all()
    assert buckets(USERS, "x").min() >= 0 and buckets(USERS, "x").max() < 10_000


def test_salts_assign_independently():
    """A new experiment reshuffles users: its assignment is independent of the last one's."""
    one, two = in_treatment(USERS, "exp-1", 50), in_treatment(USERS, "exp-2", 50)
    table = np.array(
        [[(one & two).sum(), (one & ~two).sum()], [(~one & two).sum(), (~one & ~two).sum()]]
    )
    assert chi2_contingency(table).pvalue > 0.001
    assert 0.45 < (one == two).mean() < 0.55


def test_experiment_file_round_trip_and_invalid_split(tmp_path: Path):
    path = tmp_path / "experiment.yaml"
    experiment = Experiment("ab", "s", 30, "m1", "m2", "2026-01-01T00:00:00+00:00")
    write_experiment(path, experiment)
    assert read_experiment(path) == experiment
    assert read_experiment(tmp_path / "none.yaml") is None
    for bad in (0, 100, 150):
        with pytest.raises(ValueError, match=r"must be within 1\.\.99"):
            Experiment("ab", "s", bad)


def test_watched_follows_the_file(tmp_path: Path):
    path = tmp_path / "experiment.yaml"
    clock = [0.0]
    watched = Watched(path, clock=lambda: clock[0])
    assert watched.current() is None
    running = Experiment("ab", "s", 50, started_at="2026-01-01T00:00:00+00:00")
    write_experiment(path, running)
    assert watched.current() is None  # not re-read before the interval
    clock[0] += 1
    assert watched.current() == running
    write_experiment(path, Experiment(**{**running.__dict__, "stopped_at": "2026-01-02"}))
    clock[0] += 1
    assert watched.current() is None  # a stopped experiment assigns nobody
    path.write_text("percent: [")  # a broken file keeps the last state
    clock[0] += 1
    assert watched.current() is None


def test_watched_follows_a_config_map_volume_as_kubelet_refreshes_it(tmp_path: Path):
    """The mounted file is a symlink through ``..data``, which kubelet swaps to a new
    directory: the path itself is never written, yet each refresh is seen, and a deleted
    (optional) ConfigMap ends the experiment."""
    volume = tmp_path / "volume"
    clock = [0.0]
    watched = Watched(volume / STATE_KEY, clock=lambda: clock[0])
    a = Experiment("ab", "s", 50, started_at="2026-01-01T00:00:00+00:00")
    b = Experiment("ab2", "t", 30, started_at="2026-01-03T00:00:00+00:00")
    states = [a, Experiment(**{**a.__dict__, "stopped_at": "2026-01-02"}), b, None]
    for state in states:
        kubelet_volume.write(volume, {STATE_KEY: to_yaml(state)} if state else {})
        clock[0] += 1
        assert watched.current() == (state if state and state.running else None)
    assert all(p.name.startswith("..") for p in volume.iterdir())  # no key, only kubelet's own


def test_watched_sees_a_refresh_that_reuses_inode_and_mtime(tmp_path: Path):
    """A refresh whose file has the last one's inode, size and mtime (a freed inode reused
    within one timestamp tick) still names a new ``..data`` directory."""
    volume = tmp_path / "volume"
    clock = [0.0]
    watched = Watched(volume / STATE_KEY, clock=lambda: clock[0])
    a = Experiment("ab", "s", 50, started_at="2026-01-01T00:00:00+00:00")
    kubelet_volume.write(volume, {STATE_KEY: to_yaml(a)})
    clock[0] += 1
    assert watched.current() == a
    b = Experiment("ab", "t", 50, started_at="2026-01-01T00:00:00+00:00")  # same length
    seen = volume / os.readlink(volume / kubelet_volume.DATA) / STATE_KEY
    stat = seen.stat()
    kept = tmp_path / "kept"
    os.link(seen, kept)  # the inode outlives kubelet's removal of the old directory
    kubelet_volume.write(volume, {STATE_KEY: to_yaml(b)})
    # The coincidence, made on purpose: the new file is the old inode, rewritten in place
    # with the same size and given the old mtime.
    new = volume / os.readlink(volume / kubelet_volume.DATA) / STATE_KEY
    os.replace(kept, new)
    new.write_text(to_yaml(b))
    os.utime(new, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    now = (volume / STATE_KEY).stat()
    assert (now.st_ino, now.st_mtime_ns, now.st_size) == (
        stat.st_ino,
        stat.st_mtime_ns,
        stat.st_size,
    )
    clock[0] += 1
    assert watched.current() == b


def test_generator_lifts_ctr_only_for_users_in_b(tmp_path: Path):
    settings = Settings(
        work_dir=tmp_path,
        data=DataSettings(treatment_lift=0.2),
        experiment=ExperimentSettings(name="ab", percent=50),
    )
    users = np.arange(1, 1001)
    p = np.full(len(users), 0.05)
    lifted = treated(settings, users, p)
    b = in_treatment(users, "ab", 50)
    assert np.allclose(lifted[b], 0.06) and np.allclose(lifted[~b], 0.05)
    plain = Settings(work_dir=tmp_path)
    assert treated(plain, users, p) is p


@pytest.mark.parametrize("mode", ["Serverless", "Standard"])
def test_a_serverless_split_tags_its_revisions_for_experiments(tmp_path: Path, mode: str):
    """KServe tags a Serverless canary's revisions (prev, latest) only with this annotation;
    Standard mode has no revisions to tag."""
    settings = Settings(work_dir=tmp_path, canary=CanarySettings(deployment_mode=mode))
    patch = to_patch(settings, CanaryState("models:/ctr/2", "models:/ctr/1", 50))
    annotations = patch["metadata"]["annotations"]
    assert annotations.get(TAG_ROUTING_ANNOTATION) == ("true" if mode == "Serverless" else None)
