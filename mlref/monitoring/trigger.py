"""From a drift decision to at most one retraining: cooldown, idempotency, and a decision log.

Every call appends one line to ``drift_dir/decisions.jsonl``, whatever happened, so the log
answers "why did (or didn't) it retrain?". A retraining is submitted only when the decision
is ``retrain``, no retraining was submitted for the same key (champion version + window), and
the last one is older than ``drift.cooldown_hours``. A file lock makes concurrent jobs on
the same work dir take turns. A retraining is a full retrain or a warm start from the champion
(``drift.retrain_init``, handed to the run as ``train.init``); its line says which, and why.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from mlref.monitoring.check import CheckResult
from mlref.retraining import pipeline_arguments
from mlref.settings import Settings

DECISIONS_FILE = "decisions.jsonl"
SUBMITTED = "submitted"

Submitter = Callable[[Settings, dict], str]
"""Starts the retraining pipeline with the given pipeline arguments; returns a run id.
Where it runs is the platform's (``mlref.platform``): callers hand in its ``submit_retraining``."""


@dataclass(frozen=True)
class TriggerOutcome:
    time: str
    key: str
    decision: str
    reason: str
    status: str  # "submitted", "skipped: cooldown", "skipped: already submitted", "no action", ...
    run_id: str = ""
    summary: str = ""
    source: str = ""  # the raw logs a submitted (or failed) retraining ingests
    init: str = ""  # a submitted retraining's train.init: "scratch" or "champion"
    init_reason: str = ""


def read_decisions(settings: Settings) -> list[dict]:
    path = settings.drift_dir / DECISIONS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    settings.drift_dir.mkdir(parents=True, exist_ok=True)
    with (settings.drift_dir / "trigger.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _skip_reason(settings: Settings, key: str, now: datetime) -> str:
    submitted = [d for d in read_decisions(settings) if d["status"] == SUBMITTED]
    same = [d for d in submitted if d["key"] == key]
    if same:
        return f"skipped: already submitted ({same[-1]['run_id']} at {same[-1]['time']})"
    if submitted:
        last = datetime.fromisoformat(submitted[-1]["time"])
        ready = last + timedelta(hours=settings.drift.cooldown_hours)
        if now < ready:
            return f"skipped: cooldown (last retraining {last.isoformat()}, next after {ready})"
    return ""


def retraining_init(settings: Settings, result: CheckResult, start_date: str) -> tuple[str, str]:
    """The submitted run's ``train.init`` and why (a line of the decision log)."""
    init, train = settings.drift.retrain_init, settings.train
    days = f"from {start_date}" if start_date else "all days"
    if init == "scratch":
        return init, f"drift.retrain_init=scratch: a full retrain from random weights ({days})"
    window = f"its last {train.window_days} training day(s)" if train.window_days else days
    fallback = (
        "a full retrain instead"
        if train.incompatible_parent == "scratch"
        else "the run fails naming the difference"
    )
    return init, (
        f"drift.retrain_init=champion: a warm start from the champion (version "
        f"{result.model_version}) on {window}; if its spec or architecture no longer fit, "
        f"{fallback} (train.incompatible_parent={train.incompatible_parent})"
    )


def trigger(
    settings: Settings,
    result: CheckResult,
    source: str = "",
    start_date: str = "",
    *,
    submitter: Submitter,
    now: datetime | None = None,
    dry_run: bool = False,
) -> TriggerOutcome:
    """Act on ``result`` and record it. ``source`` is the raw click-log location the
    retraining ingests (default: ``settings.raw_uri``, shared storage the pipeline's pods
    read), ``start_date`` its first training day (after concept drift: the first drifted
    day; empty: all data); ``submitter`` starts it; ``dry_run`` records without submitting."""
    now = now or datetime.now(UTC)
    decision = result.decision
    summary = str(result.summary or "")
    with _locked(settings):
        run_id = ""
        retrain_source = ""
        init, init_reason = "", ""
        if decision.action == "alert":
            status = "alert: data quality, not retrained"
        elif decision.action != "retrain":
            status = "no action"
        else:
            status = _skip_reason(settings, result.key, now)
            if not status and dry_run:
                status = "skipped: trigger disabled (--no-trigger)"
            if not status:
                retrain_source = source or settings.raw_uri
                init, init_reason = retraining_init(settings, result, start_date)
                overrides = {"train": {"init": init}}
                arguments = pipeline_arguments(retrain_source, start_date, overrides=overrides)
                train = settings.train.model_copy(update={"init": init})
                try:
                    run_id = submitter(settings.model_copy(update={"train": train}), arguments)
                except Exception as exc:
                    _append(
                        settings,
                        TriggerOutcome(
                            now.isoformat(),
                            result.key,
                            decision.action,
                            decision.reason,
                            f"failed: {exc}"[:500],
                            "",
                            summary,
                            retrain_source,
                            init,
                            init_reason,
                        ),
                    )
                    raise
                status = SUBMITTED
        outcome = TriggerOutcome(
            now.isoformat(),
            result.key,
            decision.action,
            decision.reason,
            status,
            run_id,
            summary,
            retrain_source,
            init,
            init_reason,
        )
        _append(settings, outcome)
    return outcome


def _append(settings: Settings, outcome: TriggerOutcome) -> None:
    with (settings.drift_dir / DECISIONS_FILE).open("a") as out:
        out.write(json.dumps(asdict(outcome)) + "\n")
