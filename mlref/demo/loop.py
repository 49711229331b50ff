"""The closed loop, step by step, on embedded defaults.

baseline days -> training pipeline -> serve the champion -> live traffic -> drift check (no
action) -> drift days arrive -> live traffic -> drift check -> retraining pipeline -> the
challenger shadows the champion for a day (scored, never answering; compared on the same
requests) -> it goes out as a canary -> automated analysis promotes or rolls it back -> report.

Every step is the same function a user or a cluster job runs; this module only sequences them
and records what happened (:class:`~mlref.demo.report.LoopRecord`). Progress is kept in
``work_dir/demo/progress.json`` so ``--resume`` continues after the last finished phase.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd

from mlref.console import console
from mlref.data.generate import ScenarioWindow, day_date, generate, partition_dir
from mlref.demo import report
from mlref.demo.traffic import replay
from mlref.settings import Settings

PROGRESS_FILE = "progress.json"
PIPELINE_LOG = "pipelines.log"
READY_TIMEOUT_SECONDS = 180.0


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where its log is."""


def demo_dir(settings: Settings) -> Path:
    return settings.work_dir / "demo"


class Progress:
    """Finished phases and their results, persisted after each one."""

    def __init__(self, settings: Settings):
        self.path = demo_dir(settings) / PROGRESS_FILE
        self.values: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __getitem__(self, key: str):
        return self.values[key]

    def save(self, key: str, value) -> None:
        self.values[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.values, indent=2, default=str))


class Recorder:
    """Times each step, prints it, and keeps it for the report."""

    def __init__(self, record: report.LoopRecord):
        self.record = record

    @contextmanager
    def step(self, name: str) -> Iterator[dict]:
        console.rule(name)
        outcome: dict = {"text": ""}
        start = time.perf_counter()
        yield outcome
        seconds = time.perf_counter() - start
        self.record.steps.append(report.Step(name, seconds, outcome["text"]))
        console.print(f"[bold green]done[/] {name} in {seconds:.1f}s  {outcome['text']}")


@contextmanager
def output_to(path: Path) -> Iterator[Path]:
    """Send this process's stdout and stderr, and its children's, to ``path`` for a while.

    kfp's local runner streams every task's full log to the terminal; the demo keeps its
    own progress lines on screen and the pipeline's logs in a file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)


def raw_day(settings: Settings, day: int) -> pd.DataFrame:
    return pd.read_parquet(partition_dir(settings.raw_dir, day_date(settings, day)))


def sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """A random sample in time order (traffic replays in the order it happened)."""
    picked = frame.sample(n=min(rows, len(frame)), random_state=seed)
    return picked.sort_values("event_timestamp", kind="stable")


def model_uri(settings: Settings, version: str) -> str:
    return settings.registry_uri(version)


@contextmanager
def serving(settings: Settings, model: str, candidate: str = "", shadow: str = "") -> Iterator[str]:
    """``mlref serve`` in a child process; yields the transformer's predict URL, stops by PID."""
    from mlref.serving.server import settings_env

    folder = demo_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "mlref.cli", "serve", "--model", model]
    if candidate:
        argv += ["--candidate", candidate]
    if shadow:
        argv += ["--shadow", shadow]
    log_path = folder / "serving.log"
    serving_ = settings.serving
    base = f"http://{serving_.host}:{serving_.transformer_port}/v1/models/{settings.model_name}"
    with log_path.open("a") as log:
        child = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=settings_env(settings),
        )
    try:
        _wait_ready(child, base, log_path)
        yield f"{base}:predict"
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _wait_ready(child: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise DemoError(f"serving exited with {child.returncode}; see {log_path}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise DemoError(f"serving not ready after {READY_TIMEOUT_SECONDS:.0f}s; see {log_path}")


def score_days(settings: Settings, days: list[int], models: dict[str, str]) -> report.Quality:
    """Each model's AUC on each of ``days`` that no model trained on (features from the
    offline store as of each impression); the others are named and left out, not scored."""
    from mlref import onnx_model
    from mlref.monitoring.replay import as_served
    from mlref.scoring import score_rows
    from mlref.serving.predictor import resolve
    from mlref.training.metrics import auc
    from mlref.training.registry import registered_version, training_window
    from mlref.training.windows import out_of_sample, require_out_of_sample

    loaded, windows = {}, {}
    for name, uri in models.items():
        resolved = resolve(settings, uri)
        loaded[name] = (onnx_model.load(resolved.path), resolved.version)
        windows[name] = training_window(registered_version(settings, uri))
    dates = {day_date(settings, day).isoformat(): day for day in days}
    outside = require_out_of_sample(dates, windows, "the demo's model comparison")
    points = []
    for date in outside:
        day = dates[date]
        joined = as_served(settings, raw_day(settings, day))
        for name, (model, version) in loaded.items():
            scored = score_rows(joined, model, version, name)
            label = f"day {day} ({date})"
            points.append(
                report.QualityPoint(label, name, auc(scored["clicked"], scored["probability"]))
            )
    left_out = [f"day {dates[date]} ({date})" for date in out_of_sample(dates, windows)[1]]
    return report.Quality(
        points, {name: str(w or "days not recorded") for name, w in windows.items()}, left_out
    )


def run_loop(settings: Settings, scenario: str = "") -> report.LoopRecord:
    """The whole loop; returns what happened (also written as ``demo/report.html``)."""
    from mlref.pipelines.runner import pipeline_arguments, run_local
    from mlref.training import registry

    demo = settings.demo
    scenario = scenario or demo.scenario
    # The demo's traffic delivers click labels as it goes, so a score shift (expected of a
    # model retrained after drift) waits for the labelled checks instead of deciding alone,
    # and a stage keeps serving until its evidence suffices: the verdict rests on the data,
    # however fast this machine serves; canary_max_seconds only bounds the wait (an error).
    # The split is seeded; the labelled checks read the inference log, so it is flushed at
    # least twice a bake.
    bake = demo.canary_bake_seconds
    canary = {
        "bake_seconds": bake,
        "await_labels": True,
        "max_hold_seconds": demo.canary_max_seconds,
        "split_seed": settings.data.seed
        if settings.canary.split_seed is None
        else settings.canary.split_seed,
    }
    flush = {"log_flush_seconds": min(settings.serving.log_flush_seconds, bake / 2)}
    settings = settings.model_copy(
        update={
            "canary": settings.canary.model_copy(update=canary),
            "serving": settings.serving.model_copy(update=flush),
        }
    )
    progress = Progress(settings)
    record = report.LoopRecord()
    steps = Recorder(record)
    baseline = settings.data.days
    quiet_day = baseline + 1  # the first day served: like the training days, no drift
    drift_first, drift_last = quiet_day + 1, quiet_day + demo.drift_days
    shadow_day = drift_last + 1  # served with the challenger as shadow; no model trains on it
    live_day = shadow_day + 1  # served during the canary; no model ever trains on it
    window = ScenarioWindow(scenario, drift_first, live_day)
    raw_source = str(settings.raw_dir.resolve())

    if "champion" not in progress:
        with steps.step(f"generate baseline days 1-{baseline}") as out:
            generated = generate(settings)
            out["text"] = f"{generated.rows:,} impressions"
        with steps.step("training pipeline (kfp local runner)") as out:
            console.print(f"pipeline logs: {demo_dir(settings) / PIPELINE_LOG}")
            with output_to(demo_dir(settings) / PIPELINE_LOG):
                run = run_local(settings, pipeline_arguments(raw_source))
            out["text"] = f"champion v{run.champion}"
        progress.save("champion", run.champion)
    champion = str(progress["champion"])

    if "challenger" not in progress:
        marks = [datetime.now(UTC)]
        with serving(settings, model_uri(settings, champion)) as url:
            with steps.step(f"live traffic: day {quiet_day}, before any drift") as out:
                generate(settings, [quiet_day])
                out["text"] = _replay_window(settings, url, [quiet_day], "quiet")
            marks.append(datetime.now(UTC))
            with steps.step(f"days {drift_first}-{drift_last} arrive ({scenario} drift)") as out:
                generated = generate(settings, range(drift_first, drift_last + 1), [window])
                out["text"] = f"{generated.rows:,} impressions"
            drifted = [drift_first, drift_first + 1]
            with steps.step(f"live traffic: days {drifted[0]}-{drifted[1]}, drifted") as out:
                out["text"] = _replay_window(settings, url, drifted, "drifted")
            marks.append(datetime.now(UTC))
        # Serving has stopped, so the inference log is flushed; each check judges one window.
        with steps.step("drift check: the window before drift") as out:
            out["text"] = _check(settings, record, "before drift", marks[0], marks[1])
        with steps.step("drift check: the window after drift, retraining on a trigger") as out:
            console.print(f"retraining pipeline logs: {demo_dir(settings) / PIPELINE_LOG}")
            with output_to(demo_dir(settings) / PIPELINE_LOG):
                text = _check(settings, record, "after drift", marks[1], marks[2])
            out["text"] = text
        challenger = registry.model_version_of(settings, registry.CHALLENGER)
        decision = "" if challenger is None else challenger.tags.get(registry.DECISION_TAG, "")
        progress.save("challenger", str(challenger.version) if challenger else "")
        progress.save("gate", decision)
    challenger, gate = str(progress["challenger"]), progress["gate"]

    # The shadow's day, then the canary's: each serves the challenger if the gate allows.
    phases = (("shadow", "shadow", _shadow, shadow_day), ("rollout", "canary", _canary, live_day))
    for key, name, phase, day in phases:
        if key in progress:
            continue
        if challenger and challenger != champion and gate == "canary":
            generate(settings, [day], [window])
            progress.save(key, phase(settings, steps, record, champion, challenger, day))
        else:
            progress.save(key, f"no {name}: the retrained model's offline gate said {gate!r}")

    with steps.step("model quality per day (offline, point-in-time features)") as out:
        models = {f"v{champion} (old champion)": model_uri(settings, champion)}
        if challenger and challenger != champion:
            models[f"v{challenger} (retrained)"] = model_uri(settings, challenger)
        served = partition_dir(settings.raw_dir, day_date(settings, live_day)).exists()
        days = [baseline, quiet_day, drift_first] + ([live_day] if served else [])
        record.quality = score_days(settings, days, models)
        out["text"] = ", ".join(f"{p.model} {p.day}: {p.auc:.3f}" for p in record.quality.points)
    record.links = _links(settings)
    record.links["mlref report"] = report.write_report(record, demo_dir(settings) / "report.html")
    return record


def _replay_window(settings: Settings, url: str, days: list[int], name: str) -> str:
    rows = pd.concat(
        [sample(raw_day(settings, day), settings.demo.replay_rows, seed=day) for day in days]
    )
    result = replay(settings, url, rows, name, batch=settings.demo.replay_batch)
    if result.errors:
        raise DemoError(f"{result.errors} of {result.requests} requests failed replaying {days}")
    return f"{result.scored:,} impressions scored in {result.requests} requests, labels stored"


def _check(
    settings: Settings,
    record: report.LoopRecord,
    label: str,
    since: datetime,
    until: datetime,
) -> str:
    """The drift job over one window, then its trigger (retraining on all the data)."""
    from mlref.monitoring.check import run_check
    from mlref.monitoring.trigger import trigger
    from mlref.platform import platform_for

    result = run_check(settings, since=since, until=until)
    outcome = trigger(settings, result, submitter=platform_for(settings).submit_retraining)
    perf = result.performance
    record.drift.append(
        report.DriftPoint(
            label,
            result.drift.drifted_share if result.drift else 0.0,
            perf.ne_increase if perf else None,
            result.decision.action,
            result.decision.reason,
        )
    )
    record.links[f"Evidently report ({label})"] = result.report
    return f"{result.decision.action}: {result.decision.reason} -> {outcome.status}"


def _shadow(
    settings: Settings,
    steps: Recorder,
    record: report.LoopRecord,
    champion: str,
    challenger: str,
    day: int,
) -> str:
    """Serve the champion with the challenger as its shadow for a day of traffic; compare
    them on the same requests once the day's labels are stored."""
    from mlref.shadow import control
    from mlref.shadow.report import latency_samples
    from mlref.shadow.report import report as shadow_report

    stable, candidate = model_uri(settings, champion), model_uri(settings, challenger)
    name = f"shadow: v{challenger} scores day {day} beside v{champion}, answering no one"
    with steps.step(name) as out:
        shadow = control.start(settings, candidate, stable)  # before serving: no row missed
        with serving(settings, stable, shadow=candidate) as url:
            replayed = _replay_window(settings, url, [day], "shadow")
            control.stop(settings)
            samples = latency_samples(settings, shadow)
        # Serving has stopped, so both models' rows are in the inference log.
        found = shadow_report(settings, samples=samples)
        record.shadow = found.lines()
        c = found.comparison
        out["text"] = (
            f"{replayed}; {c.requests:,} requests scored by both: logloss "
            f"{c.live.logloss:.4f} live / {c.shadow.logloss:.4f} shadow, ranking decision "
            f"differs on {c.decision_differs:.1%}"
        )
    for line in record.shadow:
        console.print(f"  {line}", highlight=False)
    return f"{c.requests} requests compared"


def _canary(
    settings: Settings,
    steps: Recorder,
    record: report.LoopRecord,
    champion: str,
    challenger: str,
    live_day: int,
) -> str:
    """Serve champion and challenger; drive the staged rollout under live traffic."""
    from mlref.canary.rollout import run_rollout
    from mlref.canary.sources import LocalSource

    stable, candidate = model_uri(settings, champion), model_uri(settings, challenger)
    stages = settings.canary.stages
    with serving(settings, stable, candidate) as url:
        name = f"canary rollout of v{challenger} ({'-'.join(map(str, stages))}%), day {live_day}"
        with steps.step(name) as out, Traffic(settings, url, live_day) as traffic:
            rollout = run_rollout(
                settings,
                candidate,
                LocalSource(settings),
                stable_uri=stable,
                report=console.print,
                sleep=traffic.sleep,
            )
            record.canary = _canary_points(rollout)
            out["text"] = f"{rollout.outcome}: {rollout.reason}"
    return rollout.outcome


class Traffic:
    """The live day replayed against serving in a thread, pass after pass, while the
    rollout runs. Its :meth:`sleep` is the rollout's wait: a stage keeps serving while
    traffic flows, and the demo stops with an error, rather than decide on too little
    evidence, when the traffic runs out or ``demo.canary_max_seconds`` pass."""

    def __init__(self, settings: Settings, url: str, day: int):
        demo = settings.demo
        self.day, self.passes, self.limit = day, demo.canary_passes, demo.canary_max_seconds
        self.log = demo_dir(settings) / "serving.log"
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.deadline = time.monotonic() + self.limit
        args = (settings, url, raw_day(settings, day), "canary")
        # The replay's own time bound lies beyond the rollout's, which reports first.
        kwargs = {"max_seconds": self.limit + 60, "stop": self.stop, "passes": self.passes}
        self.thread = threading.Thread(target=self._run, args=args, kwargs=kwargs)

    def _run(self, *args, **kwargs) -> None:
        try:
            replay(*args, **kwargs)
        except BaseException as exc:  # reported by the rollout's next wait
            self.failure = exc

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def sleep(self, seconds: float) -> None:
        if self.failure is not None:
            raise DemoError(f"canary traffic failed: {self.failure}") from self.failure
        if time.monotonic() >= self.deadline:
            raise DemoError(
                f"the canary rollout was still short of evidence after {self.limit:.0f}s "
                f"(demo.canary_max_seconds); raise it on a slow machine, or see {self.log}"
            )
        if not self.thread.is_alive():
            raise DemoError(
                f"the canary's traffic ({self.passes} passes over day {self.day}) ran out "
                "before the rollout decided: raise demo.canary_passes"
            )
        self.stop.wait(min(seconds, max(0.0, self.deadline - time.monotonic())))


def _canary_points(rollout) -> list[report.CanaryPoint]:
    points = []
    for stage in rollout.stages:
        checks = {c.name: c.values for c in stage.analysis.checks}
        for variant in ("stable", "canary"):
            p99 = checks.get("latency", {}).get(f"{variant}_p99")
            points.append(
                report.CanaryPoint(
                    stage.percent,
                    variant,
                    int(checks["traffic"].get(f"{variant}_requests", 0)),
                    checks.get("errors", {}).get(f"{variant}_rate", 0.0),
                    None if p99 is None else p99 * 1e3,
                    checks.get("logloss", {}).get(f"{variant}_logloss"),
                    stage.analysis.action,
                )
            )
    return points


def _links(settings: Settings) -> dict[str, Path]:
    return {"drift decisions": settings.drift_dir / "decisions.jsonl"}
