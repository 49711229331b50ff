"""Starting and stopping a user-level experiment: A is the stable model, B the candidate.

Both models must already be behind the predictor route (a canary split, ``mlref canary
start``): the experiment then routes each user's rows to their variant's model by tag,
whatever the split's percentage says for untagged traffic. One experiment runs at a time, so
no user is in two experiments at once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

from mlref.canary.state import read_state
from mlref.canary.state import state_path as canary_path
from mlref.experiment.assign import Experiment, stop_running
from mlref.platform import platform_for
from mlref.settings import Settings


class ExperimentError(RuntimeError):
    """A step that cannot be taken as asked, in one line naming the fix."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def start(
    settings: Settings,
    name: str = "",
    percent: int | None = None,
    salt: str = "",
    users: int = 0,
    core: Any = None,
) -> Experiment:
    """Record the running experiment; the transformer picks it up within a second (locally)
    or once kubelet refreshes its ConfigMap (a cluster)."""
    platform = platform_for(settings)
    running = platform.experiment_state(core)
    name = name or settings.experiment.name
    if running is not None and running.running:
        raise ExperimentError(
            f"experiment {running.name!r} is running on the same users since "
            f"{running.started_at}; stop it first (mlref experiment stop)"
        )
    canary = read_state(canary_path(settings))
    if canary is None or not 0 < canary.percent < 100:
        raise ExperimentError(
            "an experiment compares the stable model with a candidate, and needs both behind "
            "the route: start a split first (mlref canary start --model MODEL --percent 50)"
        )
    experiment = Experiment(
        name=name,
        salt=salt or settings.experiment.salt or name,
        percent=settings.experiment.percent if percent is None else percent,
        control_model=canary.stable_model,
        treatment_model=canary.candidate_model,
        started_at=now_iso(),
        planned_users=users,
    )
    platform.apply_experiment(experiment, core)
    return experiment


def stop(settings: Settings, core: Any = None) -> Experiment:
    """Mark the experiment stopped: every user is served by the split again."""
    platform = platform_for(settings)
    return stop_running(
        platform.experiment_state(core),
        partial(platform.apply_experiment, core=core),
        now_iso(),
        ExperimentError("no experiment is running (mlref experiment start)"),
    )


def current(settings: Settings, name: str = "", core: Any = None) -> Experiment:
    """The last experiment started (running or stopped), checked against ``name``."""
    found = platform_for(settings).experiment_state(core)
    if found is None or (name and found.name != name):
        raise ExperimentError(
            f"experiment {name or settings.experiment.name!r} never ran here (no "
            f"{settings.experiment_state_path} or the cluster's ConfigMap "
            f"{settings.experiment.config_map} naming it); start it with mlref experiment start"
        )
    return found
