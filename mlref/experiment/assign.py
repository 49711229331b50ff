"""Who sees which variant: a sticky assignment by user, and the experiment it belongs to.

A user's variant is a pure function of the experiment's salt and the user id: the id is
hashed (SplitMix64's finalizer, twice, with the salt's 64-bit digest mixed in between) into
one of :data:`BUCKETS` buckets, and the first ``percent`` % of buckets are B. The same user
therefore gets the same variant on every request, in every process and after every restart,
and a new salt reshuffles users independently of the last experiment. The transformer, the
click generator and the analysis all call :func:`variants`, so they cannot disagree.

The running experiment is one YAML file (``settings.experiment_state_path``: next to the
canary patch locally; in a cluster the file of the ConfigMap ``experiment.config_map``
mounted into the transformer), written by ``mlref experiment start|stop`` and re-read by the
transformer when it changes (:class:`Watched`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

from mlref import storage

log = logging.getLogger(__name__)
BUCKETS = 10_000
CONTROL, TREATMENT = "A", "B"
State = TypeVar("State")
# The tag each variant's calls carry (``experiment.route_header``): the tags KServe gives the
# revisions of a Knative canary (enable-tag-routing), the last rolled-out one (the stable
# model, A) and the latest one (the candidate, B); in Standard mode the chart's experiment
# HTTPRoute matches the same values (mlref/k8s/gateway.py).
ROUTE_TAGS = {CONTROL: "prev", TREATMENT: "latest"}
STATE_KEY = "experiment.yaml"  # the local file's name, and its key in the cluster's ConfigMap


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: a bijection on uint64 that scrambles every bit."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def salt_key(salt: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=8).digest(), "big"))


def buckets(user_ids, salt: str) -> np.ndarray:
    """Each user's bucket in ``0 .. BUCKETS-1`` under ``salt``."""
    ids = np.asarray(user_ids, dtype=np.int64).astype(np.uint64)
    return (mix64(mix64(ids) ^ salt_key(salt)) % np.uint64(BUCKETS)).astype(np.int64)


def in_treatment(user_ids, salt: str, percent: int) -> np.ndarray:
    """True for the users assigned to B (``percent`` % of buckets)."""
    return buckets(user_ids, salt) < percent * BUCKETS // 100


@dataclass(frozen=True)
class Experiment:
    """A user-level experiment: A (control) is the stable model, B (treatment) the candidate."""

    name: str
    salt: str
    percent: int
    control_model: str = ""
    treatment_model: str = ""
    started_at: str = ""  # ISO 8601 UTC
    stopped_at: str = ""  # empty while running
    planned_users: int = 0  # the sample the plan asked for; 0: none recorded

    def __post_init__(self) -> None:
        if not 1 <= self.percent <= 99:
            raise ValueError(
                f"experiment {self.name!r}: split {self.percent}% to B must be within 1..99 "
                "(both variants need users)"
            )
        if not self.name:
            raise ValueError("an experiment needs a name (--name)")

    @property
    def running(self) -> bool:
        return bool(self.started_at) and not self.stopped_at

    def variants(self, user_ids) -> np.ndarray:
        """``"A"`` or ``"B"`` per user id."""
        return np.where(in_treatment(user_ids, self.salt, self.percent), TREATMENT, CONTROL)


def to_yaml(experiment: Experiment) -> str:
    return yaml.safe_dump(asdict(experiment), sort_keys=False)


def from_yaml(text: str) -> Experiment:
    document = yaml.safe_load(text) or {}
    known = set(Experiment.__dataclass_fields__)
    return Experiment(**{k: v for k, v in document.items() if k in known})


def write_experiment(path: Path, experiment: Experiment) -> Path:
    """Write atomically: the transformer never reads half a file."""
    storage.write_atomically(str(path), lambda staging: staging.write_text(to_yaml(experiment)))
    return path


def read_experiment(path: Path) -> Experiment | None:
    """The experiment in ``path``, or None when none was ever started."""
    return from_yaml(path.read_text()) if path.is_file() else None


def file_identity(path: Path) -> tuple | None:
    """What changes whenever the content at ``path`` may have; None when there is none.

    A file replaced by a rename (:func:`write_experiment`) gets a new inode. A ConfigMap
    volume is refreshed by kubelet's atomic writer: the new content goes to a new
    ``..<timestamp>`` directory and the ``..data`` symlink that ``path`` resolves through is
    swapped to it, so the path itself is never written. Its resolved target names the
    directory of each write, which a reused inode or a timestamp within the filesystem's
    granularity cannot hide; the stat of that target covers plain files written in place."""
    try:
        stat = path.stat()
        return (os.path.realpath(path), stat.st_mtime_ns, stat.st_ino, stat.st_size)
    except (FileNotFoundError, NotADirectoryError):
        return None


class Watched:
    """The running experiment from ``path``, re-read when the file changes (checked at most
    every ``interval`` seconds, so the hot path costs one clock read). ``read`` parses the
    file (default :func:`read_experiment`); any state with a ``running`` flag can be watched."""

    interval = 0.5

    def __init__(self, path: Path, clock=time.monotonic, read=None):
        self.path = path
        self.clock = clock
        self.read = read or read_experiment
        self.experiment: Experiment | None = None
        self._seen: tuple | None = None
        self._checked = -float("inf")
        self.current()

    def current(self) -> Experiment | None:
        now = self.clock()
        if now - self._checked < self.interval:
            return self.experiment
        self._checked = now
        seen = file_identity(self.path)
        if seen != self._seen:
            self._seen = seen  # a broken file is reported once, not at every check
            try:
                found = self.read(self.path) if seen else None
                self.experiment = found if found and found.running else None
            except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
                log.warning("state file %s unreadable, keeping the last: %s", self.path, exc)
        return self.experiment


def stop_running(
    state: State | None, apply: Callable[[State], Any], stopped_at: str, not_running: Exception
) -> State:
    """Stamp a running state (an experiment, a shadow) stopped and ``apply`` it; raise
    ``not_running`` when none runs, so a second stop fails instead of moving the stop time."""
    if state is None or not state.running:
        raise not_running
    stopped = replace(state, stopped_at=stopped_at)
    apply(stopped)
    return stopped
