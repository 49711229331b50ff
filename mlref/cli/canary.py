"""`mlref canary` commands: move traffic to a candidate model, analyse it, promote or roll back."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from mlref.console import console, one_line_errors

app = typer.Typer(no_args_is_help=True)

WRITE_ONLY = typer.Option(False, "--write-only", help="Only write the patch; apply nothing.")
OUT = typer.Option(None, "--out", help="Write the patch here (e.g. into an overlay) instead.")


def _one_line_errors():
    """Expected failures end the command with their one line and exit code 1."""
    from mlref.canary.kube import KubeError
    from mlref.canary.rollout import RolloutError
    from mlref.canary.sources import SourceError

    return one_line_errors(KubeError, RolloutError, SourceError, LookupError, ValueError)


def _show(applied) -> None:
    state = applied.state
    console.print(
        f"{state.phase}: candidate {state.candidate_model} takes {state.percent}%, "
        f"stable {state.stable_model or '-'}; patch {applied.path}",
        highlight=False,
    )
    for line in applied.traffic:
        console.print(f"  traffic {line}", highlight=False)


@app.command()
def start(
    model: str = typer.Option(..., help="Candidate: models:/ctr@challenger, a path, s3://..."),
    percent: int = typer.Option(10, min=1, max=99, help="Share of traffic for the candidate."),
    write_only: bool = WRITE_ONLY,
    out: Path | None = OUT,
) -> None:
    """Send a share of traffic to the candidate; the champion keeps the rest."""
    from mlref.canary import rollout
    from mlref.settings import get_settings

    with _one_line_errors():
        _show(rollout.start(get_settings(), model, percent, write_only=write_only, out=out))


@app.command()
def promote(write_only: bool = WRITE_ONLY, out: Path | None = OUT) -> None:
    """All traffic to the candidate; it becomes the registry's champion."""
    from mlref.canary import rollout
    from mlref.settings import get_settings

    with _one_line_errors():
        _show(rollout.promote(get_settings(), write_only=write_only, out=out))


@app.command()
def rollback(write_only: bool = WRITE_ONLY, out: Path | None = OUT) -> None:
    """No traffic to the candidate; the champion keeps serving and stays champion."""
    from mlref.canary import rollout
    from mlref.settings import get_settings

    with _one_line_errors():
        _show(rollout.rollback(get_settings(), write_only=write_only, out=out))


@app.command()
def status() -> None:
    """The rollout state (and the live traffic split in cluster mode)."""
    from mlref.canary import rollout
    from mlref.settings import get_settings

    with _one_line_errors():
        _show(rollout.status(get_settings()))


@app.command()
def analyze(
    seconds: float = typer.Option(60.0, min=1, help="Window length."),
) -> None:
    """Compare canary and stable over a window and print the decision with its evidence.

    With canary.prometheus_url the window is the last SECONDS; locally it is the next SECONDS
    (two scrapes of the predictors)."""
    from mlref.canary.analysis import analyze as run_analysis
    from mlref.canary.sources import PrometheusSource
    from mlref.platform import platform_for
    from mlref.settings import get_settings

    settings = get_settings()
    with _one_line_errors():
        source = platform_for(settings).metric_source()
        if isinstance(source, PrometheusSource):
            source.begin(lookback_seconds=seconds)
        else:
            source.begin()
            time.sleep(seconds)
        window = source.collect()
        result = run_analysis(window.stable, window.canary, settings.canary, window.outcomes)
    for line in result.lines():
        console.print(line, highlight=False)
    console.print(f"decision: {result.action}", highlight=False)
    raise typer.Exit(0 if result.action == "promote" else 2 if result.action == "hold" else 3)


@app.command()
def run(
    model: str = typer.Option(..., help="Candidate: models:/ctr@challenger, a path, s3://..."),
) -> None:
    """Staged rollout through canary.stages: bake, analyse, roll back or promote."""
    from mlref.canary.rollout import run_rollout
    from mlref.settings import get_settings

    with _one_line_errors():
        result = run_rollout(
            get_settings(), model, report=lambda line: console.print(line, highlight=False)
        )
    raise typer.Exit(0 if result.promoted else 3)
