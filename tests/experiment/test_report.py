"""The report on the generator's world: a real lift for B is found, an A/A world finds none.

The click logs come from the generator with ``data.treatment_lift`` giving users assigned to B
truly more clicks; each impression is logged by serving's own inference-log writer with the
variant its user was assigned and the model that variant routes to, and its click is stored
as a label, as the label job does. The report reads them back through the same functions
``mlref experiment report`` calls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mlref.canary.sources import LocalSource
from mlref.canary.state import CanaryState, write_state
from mlref.cli import app
from mlref.data.generate import generate
from mlref.data.world import World
from mlref.experiment import control
from mlref.experiment.assign import TREATMENT, Experiment, write_experiment
from mlref.experiment.report import plan, report
from mlref.monitoring.replay import record
from mlref.schema import FIELDS, STAT_COLUMNS
from mlref.settings import DataSettings, ExperimentSettings, Settings, get_settings
from tests.servers import refused_port

NAME = "ranker"


def world(root: Path, lift: float, seed: int = 11) -> Settings:
    data = DataSettings(seed=seed, days=2, rows_per_day=20_000, n_users=2_000, treatment_lift=lift)
    return Settings(
        work_dir=root / ".mlref", data=data, experiment=ExperimentSettings(name=NAME, percent=50)
    )


def log_experiment(settings: Settings, planned_users: int = 0, misrouted: int = 0) -> Experiment:
    """Generate the days, log every impression as served under the experiment, label it;
    the first ``misrouted`` rows as if the other variant's model had scored them."""
    generate(settings)
    raw = pd.read_parquet(settings.raw_dir).drop(columns="date")
    experiment = Experiment(
        NAME,
        NAME,
        settings.experiment.percent,
        "models:/ctr/1",
        "models:/ctr/2",
        started_at="2025-12-31T00:00:00+00:00",
        planned_users=planned_users,
    )
    write_experiment(settings.experiment_state_path, experiment)
    arm = experiment.variants(raw["user_id"])
    b = arm == TREATMENT
    served_b = b.copy()
    served_b[:misrouted] = ~b[:misrouted]
    scored = pd.DataFrame(
        {
            "timestamp": raw["event_timestamp"],
            "request_id": raw["request_id"],
            **{f.name: raw[f.name] for f in FIELDS},
            **{name: np.zeros(len(raw)) for name in STAT_COLUMNS},
            "defaulted": [[] for _ in range(len(raw))],
            "probability": World.from_settings(settings).click_probability(raw).astype("float32"),
            "model_version": np.where(served_b, "2", "1"),
            "variant": np.where(served_b, "canary", "stable"),
            "experiment": NAME,
            "experiment_variant": arm,
            "clicked": raw["clicked"],
        }
    )
    record(settings, scored, "labels-0")
    return experiment


def offline_report(settings: Settings, **kwargs):
    """The report with the predictors' metrics unreachable (a refused port)."""
    with refused_port() as port:
        source = LocalSource(settings, [f"http://127.0.0.1:{port}/metrics"])
        return report(settings, source=source, **kwargs)


def test_report_finds_the_true_lift(tmp_path: Path):
    lift = 0.25
    settings = world(tmp_path, lift)
    log_experiment(settings, planned_users=1_000)
    found = offline_report(settings, bootstrap_resamples=500)
    effect = found.effect
    assert effect.significant and effect.low > 0
    assert effect.relative_low < lift < effect.relative_high
    assert found.bootstrap[0] > 0
    verdicts = {c.name: c.verdict for c in found.checks}
    assert verdicts["sample ratio"] == "pass" and verdicts["routing"] == "pass"
    assert verdicts["calibration"] == "pass"
    assert verdicts["errors"] == "hold" and verdicts["latency"] == "hold"  # no predictors here
    assert found.warnings == ()  # the planned 1,000 users are reached
    text = "\n".join(found.lines())
    assert "significant at alpha" in text and "not significant" not in text


def test_a_a_world_finds_no_lift_and_warns_when_peeking(tmp_path: Path):
    settings = world(tmp_path, 0.0)
    log_experiment(settings, planned_users=50_000)
    found = offline_report(settings)
    assert not found.effect.significant
    assert found.effect.relative_low < 0 < found.effect.relative_high
    assert len(found.warnings) == 1 and found.warnings[0].startswith("peeking: ")
    # The plan measured from this log: baseline near the world's CTR.
    measured = plan(settings)
    assert measured.baseline == pytest.approx(settings.data.target_ctr, rel=0.15)
    assert measured.users > 0 and set(measured.measured) == {
        "baseline CTR",
        "per-user variance",
        "new users a day",
    }


def test_routing_and_sample_ratio_guardrails_fail_on_a_broken_log(tmp_path: Path):
    """Rows scored by the other variant's model, and a split that is not the configured one."""
    settings = world(tmp_path, 0.0)
    log_experiment(settings, misrouted=3)
    skewed = Experiment(
        NAME, NAME, 20, started_at="2025-12-31T00:00:00+00:00", planned_users=10
    )  # the log was split 50/50
    write_experiment(settings.experiment_state_path, skewed)
    found = offline_report(settings)
    verdicts = {c.name: c.verdict for c in found.checks}
    assert verdicts["sample ratio"] == "fail" and verdicts["routing"] == "fail"
    assert found.check("routing").values["misrouted"] == 3


@pytest.fixture
def cli(cli_env: Settings) -> Settings:
    return cli_env


def invoke(*args: str):
    return CliRunner().invoke(app, ["experiment", *args])


def test_cli_errors_are_one_line(cli: Settings):
    result = invoke("report")
    assert result.exit_code == 1 and "never ran" in result.output
    result = invoke("stop")
    assert result.exit_code == 1 and "no experiment is running" in result.output
    result = invoke("start")
    assert result.exit_code == 1 and "mlref canary start" in result.output  # no candidate
    settings = get_settings()
    write_state(settings, CanaryState("models:/ctr/2", "models:/ctr/1", 50))
    result = invoke("start", "--percent", "100")
    assert result.exit_code == 1 and "must be within 1..99" in result.output
    result = invoke("start", "--name", "one", "--users", "800")
    assert result.exit_code == 0, result.output
    result = invoke("start", "--name", "two")
    assert result.exit_code == 1 and "'one' is running on the same users" in result.output
    result = invoke("report", "--name", "two")
    assert result.exit_code == 1 and "never ran" in result.output
    result = invoke("report")
    assert result.exit_code == 1 and "fewer than two users" in result.output
    result = invoke("plan")
    assert result.exit_code == 1 and "no labelled traffic" in result.output
    result = invoke("plan", "--baseline-ctr", "0.05", "--user-variance", "0.05")
    assert result.exit_code == 0 and "days unknown" in result.output
    result = invoke(
        "plan", "--baseline-ctr", "0.05", "--user-variance", "0.05", "--users-per-day", "100"
    )
    assert result.exit_code == 0 and "mlref experiment start --users" in result.output
    assert " days at 100 new users a day" in result.output
    assert invoke("stop").exit_code == 0
    assert "stopped" in invoke("status").output
    assert control.current(settings).stopped_at
