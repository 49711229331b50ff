"""`mlref shadow` commands: start, stop and report a shadow model scoring live traffic."""

from __future__ import annotations

import typer

from mlref.console import console, one_line_errors

app = typer.Typer(no_args_is_help=True)


def _one_line_errors():
    """Expected failures end the command with their one line and exit code 1."""
    from mlref.canary.kube import KubeError
    from mlref.canary.sources import SourceError
    from mlref.shadow.control import ShadowError

    return one_line_errors(ShadowError, KubeError, SourceError, ValueError)


@app.command()
def start(
    model: str = typer.Option(..., help="The shadow model (file, directory or models:/ URI)."),
    live_model: str = typer.Option("", help="The live model, for the report; default: served."),
) -> None:
    """Mirror every scored request to the shadow predictor; answers stay the live model's."""
    from mlref.settings import get_settings
    from mlref.shadow.control import start as run_start

    settings = get_settings()
    with _one_line_errors():
        found = run_start(settings, model, live_model)
    console.print(
        f"shadow {found.model} started: every request is also scored by "
        f"{settings.shadow_url} (variant=shadow in the inference log)",
        highlight=False,
    )


@app.command()
def stop() -> None:
    """Stop mirroring; the shadow's logged rows stay for the report."""
    from mlref.settings import get_settings
    from mlref.shadow.control import stop as run_stop

    with _one_line_errors():
        found = run_stop(get_settings())
    console.print(f"shadow {found.model} stopped at {found.stopped_at}", highlight=False)


@app.command()
def report(
    latency: bool = typer.Option(True, help="Read call latency from the transformer's metrics."),
) -> None:
    """Shadow against live on the same requests: logloss, AUC, calibration, PSI, ranking
    decisions and latency."""
    from mlref.settings import get_settings
    from mlref.shadow.report import report as make_report

    with _one_line_errors():
        found = make_report(get_settings(), latency)
    for line in found.lines():
        console.print(line, highlight=False)
