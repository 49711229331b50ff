"""Rollout steps (start, promote, roll back) and the automated staged rollout.

Every step is the same move: compute the next :class:`CanaryState`, write its patch, and in
cluster mode server-side apply it and wait for the InferenceService to be Ready. Local
serving picks the state file up by itself. Promotion also makes the candidate the registry's
champion; a rollback leaves the champion alone.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from mlref.canary import kube
from mlref.canary.analysis import Action, Analysis, analyze
from mlref.canary.sources import MetricSource, default_source
from mlref.canary.state import (
    CanaryState,
    read_state,
    standard_mode,
    state_path,
    to_patch,
    write_state,
)
from mlref.settings import MODELS_SCHEME, Settings

Report = Callable[[str], None]


class RolloutError(RuntimeError):
    """A step that cannot be taken as asked, in one line naming the fix."""


@dataclass(frozen=True)
class Applied:
    """A step taken: the state, where its patch was written, the live split (cluster)."""

    state: CanaryState
    path: Path
    traffic: list[str] = field(default_factory=list)


def model_reference(settings: Settings, uri: str) -> tuple[str, str]:
    """(what storageUri holds, registry version) for a model URI.

    A ``models:/`` alias is pinned to its version (an alias may move during the rollout);
    in cluster mode the version becomes its published folder, which KServe can fetch.
    Anything else (a path, s3://...) is used as it is.
    """
    if not uri.startswith(MODELS_SCHEME):
        return uri, ""
    from mlref.training.registry import registered_version

    version = registered_version(settings, uri)
    number = str(version.version)
    if settings.mode == "cluster":
        from mlref.training.publish import served_uri

        return served_uri(settings, number), number
    return settings.registry_uri(number), number


def stable_reference(settings: Settings) -> str:
    """The champion, pinned the same way as the candidate."""
    from mlref.training.registry import CHAMPION

    name = settings.model_name
    try:
        return model_reference(settings, settings.registry_uri(alias=CHAMPION))[0]
    except LookupError:
        raise RolloutError(
            f"no champion of {name} to compare with; register one first (`mlref train run`)"
        ) from None


def apply_state(
    settings: Settings,
    state: CanaryState,
    write_only: bool = False,
    out: Path | None = None,
    api: Any = None,
) -> Applied:
    """Write the patch; in cluster mode (unless ``write_only``) apply it and wait for Ready.

    The live InferenceService is read first: its deployment mode must be the one the patch
    is written for, and in Standard mode its predictor lends the candidate its pod settings.
    """
    if write_only or settings.mode != "cluster":
        return Applied(state, write_state(settings, state, out))
    api = api or kube.connect()
    live = kube.get_inference_service(api, settings)
    kube.check_deployment_mode(settings, live)
    stable = (live.get("spec") or {}).get("predictor")
    path = write_state(settings, state, out, stable)
    kube.apply_patch(api, settings, to_patch(settings, state, stable), live)
    ready = kube.wait_ready(api, settings)
    return Applied(state, path, kube.traffic_split(ready, standard_mode(settings)))


def current_state(settings: Settings) -> CanaryState:
    state = read_state(state_path(settings))
    if state is None:
        raise RolloutError(
            f"no rollout started ({state_path(settings)} missing): run `mlref canary start`"
        )
    return state


def start(
    settings: Settings,
    model_uri: str,
    percent: int,
    stable_uri: str | None = None,
    **apply: Any,
) -> Applied:
    """Send ``percent`` of traffic to the candidate; the champion (or ``stable_uri``) keeps
    the rest. Repeating it with the same candidate moves the split."""
    candidate, version = model_reference(settings, model_uri)
    previous = read_state(state_path(settings))
    if previous is not None and previous.phase == "canary":
        if previous.candidate_model != candidate:
            raise RolloutError(
                f"a rollout of {previous.candidate_model} is in progress: "
                "`mlref canary promote` or `mlref canary rollback` it first"
            )
        stable = previous.stable_model
    else:
        stable = stable_uri or stable_reference(settings)
    if stable == candidate:
        raise RolloutError(f"{candidate} is already the stable model: nothing to roll out")
    return apply_state(settings, CanaryState(candidate, stable, percent, version), **apply)


def promote(settings: Settings, **apply: Any) -> Applied:
    """All traffic to the candidate, which becomes the registry's champion."""
    state = current_state(settings)
    applied = apply_state(settings, replace(state, percent=100), **apply)
    if state.candidate_version and not apply.get("write_only"):
        from mlref.training.registry import set_champion

        set_champion(settings, state.candidate_version, "canary rollout promoted")
    return applied


def rollback(settings: Settings, **apply: Any) -> Applied:
    """No traffic to the candidate; the champion stays champion."""
    return apply_state(settings, replace(current_state(settings), percent=0), **apply)


def status(settings: Settings, api: Any = None) -> Applied:
    """The recorded state, and in cluster mode the live traffic split."""
    state = current_state(settings)
    if settings.mode != "cluster":
        return Applied(state, state_path(settings))
    live = kube.get_inference_service(api or kube.connect(), settings)
    return Applied(state, state_path(settings), kube.traffic_split(live, standard_mode(settings)))


@dataclass(frozen=True)
class StageResult:
    percent: int
    analysis: Analysis
    start: datetime
    end: datetime

    @property
    def action(self) -> Action:
        return self.analysis.action


@dataclass(frozen=True)
class RolloutResult:
    """How a staged rollout ended, with every stage's evidence."""

    candidate: str
    outcome: Literal["promoted", "rolled_back"]
    reason: str
    stages: tuple[StageResult, ...]

    @property
    def promoted(self) -> bool:
        return self.outcome == "promoted"


def check_stages(stages: list[int]) -> list[int]:
    if not stages or any(b <= a for a, b in itertools.pairwise(stages)):
        raise RolloutError(f"canary.stages {stages} must be increasing")
    if stages[0] <= 0 or stages[-1] > 100:
        raise RolloutError(f"canary.stages {stages} must lie in 1..100")
    return [s for s in stages if s < 100]


def bake_and_analyze(
    settings: Settings,
    source: MetricSource,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> tuple[Analysis, datetime, datetime]:
    """Serve for bake_seconds, then analyse; while the analysis holds (too little data),
    keep serving and re-analyse every poll_seconds for at most max_hold_seconds (default one
    more bake). The wait ends as soon as the evidence suffices, so a loaded machine, where
    evidence accrues slower, takes longer but reaches the same verdict."""
    rules = settings.canary
    source.begin()
    sleep(rules.bake_seconds)
    deadline = clock() + (rules.max_hold_seconds or rules.bake_seconds)
    while True:
        window = source.collect()
        analysis = analyze(window.stable, window.canary, rules, window.outcomes)
        if analysis.action != "hold" or clock() >= deadline:
            return analysis, window.start, window.end
        sleep(rules.poll_seconds)


def run_rollout(
    settings: Settings,
    candidate_uri: str,
    source: MetricSource | None = None,
    *,
    stable_uri: str | None = None,
    report: Report = print,
    api: Any = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RolloutResult:
    """Stage by stage through ``canary.stages``: bake, analyse, roll back at the first
    failed check (or when the evidence is still short after a doubled bake), promote after
    the last stage below 100. The 100 stage is the promotion itself: there is no stable
    traffic left to compare with."""
    source = source or default_source(settings)
    stages = check_stages(settings.canary.stages)
    results: list[StageResult] = []
    candidate = candidate_uri
    for percent in stages:
        applied = start(settings, candidate_uri, percent, stable_uri, api=api)
        candidate = applied.state.candidate_model
        split = f" ({', '.join(applied.traffic)})" if applied.traffic else ""
        report(f"stage {percent}%: {candidate} vs {applied.state.stable_model}{split}")
        try:
            analysis, begun, ended = bake_and_analyze(settings, source, sleep, clock)
        except BaseException:  # no evidence, no candidate traffic: never leave a split behind
            rollback(settings, api=api)
            raise
        results.append(StageResult(percent, analysis, begun, ended))
        for line in analysis.lines():
            report(f"  {line}")
        if analysis.action != "promote":
            failed = ", ".join(c.name for c in analysis.failed) or "not enough evidence"
            reason = f"stage {percent}%: {failed}"
            rollback(settings, api=api)
            report(f"rolled back: {reason}")
            return RolloutResult(candidate, "rolled_back", reason, tuple(results))
        report(f"stage {percent}%: all checks passed")
    promote(settings, api=api)
    report(f"promoted {candidate}")
    return RolloutResult(candidate, "promoted", "every stage passed", tuple(results))
