"""The job as it runs: log and labels on disk, the Pushgateway, the trigger and its record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path

from mlref.monitoring.check import check_frames, run_check
from mlref.monitoring.reference import load_reference
from mlref.monitoring.replay import record
from mlref.monitoring.trigger import SUBMITTED, read_decisions, trigger
from mlref.settings import Settings
from tests.monitoring.conftest import SCENARIO_DAY, day_window


def test_run_check_reads_the_log_and_pushes_gauges(
    job_settings: Settings, scenario_log, pushgateway: str, tmp_path: Path
) -> None:
    record(job_settings, scenario_log("quality"), "day9")
    job_settings.cluster.pushgateway_url = pushgateway
    since, until = day_window(job_settings, SCENARIO_DAY)
    result = run_check(job_settings, since, until, tmp_path / "out")
    assert result.rows["current"] == job_settings.data.rows_per_day
    assert result.performance is not None  # labels joined by request id
    assert result.decision.action == "alert"
    summary = json.loads(result.summary.read_text())
    assert summary["data_quality_alert"] and summary["decision"] == "alert"
    assert summary["window"]["since"] == since.isoformat()
    metrics = urllib.request.urlopen(f"{pushgateway}/metrics", timeout=10).read().decode()
    lines = [line for line in metrics.splitlines() if 'job="mlref-drift"' in line]
    assert any(
        line.startswith("mlref_data_quality_alert{") and line.endswith(" 1") for line in lines
    )
    assert any(line.startswith("mlref_drift_share{") for line in lines)
    assert any('column="device_type"' in line for line in lines if "mlref_drift_score" in line)


def test_settings_a_test_changes_stay_its_own(world: Settings, job_settings: Settings) -> None:
    """The Pushgateway test sets a section's field: no later check may push because of it."""
    job_settings.cluster.pushgateway_url = "http://127.0.0.1:9091"
    job_settings.drift.window_hours = 1
    assert world.cluster.pushgateway_url == ""
    assert world.drift.window_hours == Settings().drift.window_hours


def test_an_empty_window_is_no_action(job_settings: Settings, tmp_path: Path) -> None:
    since, until = day_window(job_settings, 30)
    result = run_check(job_settings, since, until, tmp_path)
    assert result.decision.action == "none" and result.rows["current"] == 0


def test_one_retraining_per_key_and_none_within_the_cooldown(
    job_settings: Settings, scenario_log, tmp_path: Path
) -> None:
    reference = load_reference(job_settings)
    since, until = day_window(job_settings, SCENARIO_DAY)
    current = scenario_log("covariate")
    result = check_frames(job_settings, reference, current, tmp_path, since, until)
    later = check_frames(
        job_settings,
        reference,
        current,
        tmp_path,
        since + timedelta(hours=1),
        until + timedelta(hours=1),
    )
    submitted: list[dict] = []

    def submitter(settings: Settings, arguments: dict) -> str:
        submitted.append(arguments)
        return f"run-{len(submitted)}"

    first = trigger(job_settings, result, submitter=submitter, now=until)
    again = trigger(job_settings, result, submitter=submitter, now=until + timedelta(hours=2))
    sliding = trigger(job_settings, later, submitter=submitter, now=until + timedelta(hours=3))
    cooled = trigger(job_settings, later, submitter=submitter, now=until + timedelta(hours=25))
    assert [first.status, cooled.status] == [SUBMITTED, SUBMITTED]
    assert again.status.startswith("skipped: already submitted")
    assert sliding.status.startswith("skipped: cooldown")
    assert len(submitted) == 2
    # The run's steps take the settings of where they run, but for the training mode the
    # trigger chose; the source is shared storage.
    assert json.loads(submitted[0]["overrides"]) == {"train": {"init": "scratch"}}
    assert submitted[0]["source"] == job_settings.raw_uri
    assert read_decisions(job_settings)[0]["source"] == job_settings.raw_uri
    assert [d["status"].split(" (")[0] for d in read_decisions(job_settings)] == [
        SUBMITTED,
        "skipped: already submitted",
        "skipped: cooldown",
        SUBMITTED,
    ]


def test_the_trigger_asks_for_a_warm_start_and_its_log_says_which_mode_and_why(
    job_settings: Settings, scenario_log, tmp_path: Path
) -> None:
    job_settings.drift.retrain_init = "champion"
    job_settings.train.window_days = 2
    since, until = day_window(job_settings, SCENARIO_DAY)
    reference, current = load_reference(job_settings), scenario_log("covariate")
    result = check_frames(job_settings, reference, current, tmp_path, since, until)
    submitted: list[tuple[Settings, dict]] = []

    def submitter(settings: Settings, arguments: dict) -> str:
        submitted.append((settings, arguments))
        return "run-1"

    outcome = trigger(job_settings, result, submitter=submitter, now=until)
    assert outcome.status == SUBMITTED
    ((settings, arguments),) = submitted
    # Locally the run gets all of the trigger's settings; in a cluster just the overrides.
    assert settings.train.init == "champion" and job_settings.train.init == "scratch"
    assert json.loads(arguments["overrides"]) == {"train": {"init": "champion"}}
    (line,) = read_decisions(job_settings)
    assert line["init"] == "champion"
    assert line["init_reason"].startswith(
        f"drift.retrain_init=champion: a warm start from the champion (version "
        f"{result.model_version}) on its last 2 training day(s)"
    )
    assert "the run fails naming the difference" in line["init_reason"]


def test_alerts_and_quiet_days_are_recorded_without_submitting(
    job_settings: Settings, scenario_log, tmp_path: Path
) -> None:
    reference = load_reference(job_settings)
    since, until = day_window(job_settings, SCENARIO_DAY)

    def never(settings: Settings, arguments: dict) -> str:
        raise AssertionError("nothing should be submitted")

    for kind in ("quality", "none", "coldstart"):
        result = check_frames(job_settings, reference, scenario_log(kind), tmp_path, since, until)
        trigger(job_settings, result, submitter=never)
    assert [d["decision"] for d in read_decisions(job_settings)] == ["alert", "none", "none"]


def test_cli_prints_the_decision_and_exits_zero_on_an_alert(
    job_settings: Settings, scenario_log, tmp_path: Path
) -> None:
    record(job_settings, scenario_log("quality"), "day9")
    since, until = day_window(job_settings, SCENARIO_DAY)
    env = {
        **os.environ,
        "MLREF_WORK_DIR": str(job_settings.work_dir),
        "MLREF_REGISTRY__TRACKING_URI": job_settings.tracking_uri,
        "COLUMNS": "200",
    }
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("mlref")),
            "drift",
            "check",
            "--since",
            since.isoformat(),
            "--until",
            until.isoformat(),
            "--out",
            str(tmp_path / "out"),
            "--no-trigger",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "alert" in run.stdout and "device_type" in run.stdout
    assert (tmp_path / "out" / "drift_report.html").is_file()
    assert read_decisions(job_settings)[-1]["status"].startswith("alert")
