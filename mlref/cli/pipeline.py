"""`mlref pipeline` commands."""

from __future__ import annotations

from pathlib import Path

import typer

from mlref.console import console, fail, summary

app = typer.Typer(no_args_is_help=True)

SOURCE_HELP = "Raw click logs (path or fsspec URI); default: the generator's output."


@app.command("compile")
def compile_(
    out: Path = typer.Option(None, help="Where to write the IR YAML; default: pipelines/."),
) -> None:
    """Write the training pipeline's IR YAML."""
    from mlref.pipelines.runner import COMPILED, compile_pipeline

    path = compile_pipeline(out or COMPILED)
    console.print(f"compiled: {path}")


@app.command("run")
def run(
    local: bool = typer.Option(
        True, "--local/--no-local", help="Run with kfp's local runner (the only mode here)."
    ),
    source: str = typer.Option("", help=SOURCE_HELP),
    start_date: str = typer.Option("", help="First day to train on (ISO date)."),
    end_date: str = typer.Option("", help="Last day to train on (ISO date)."),
    epochs: int = typer.Option(0, help="Training epochs; 0 keeps the settings' value."),
) -> None:
    """Run the whole training pipeline locally with kfp's SubprocessRunner."""
    from mlref.pipelines.runner import pipeline_arguments, run_local
    from mlref.settings import get_settings

    if not local:
        raise fail("error: use `mlref pipeline submit --host URL` for a cluster")
    settings = get_settings()
    arguments = pipeline_arguments(source or settings.raw_uri, start_date, end_date, epochs)
    try:
        result = run_local(settings, arguments)
    except RuntimeError as exc:
        raise fail(f"error: {str(exc).splitlines()[0]}") from exc
    summary(
        "pipeline run",
        {
            "champion version": result.champion,
            "step artifacts": result.pipeline_root,
            "curated data": settings.curated_uri,
            "features": settings.feature_dir,
            "tracking": settings.tracking_uri,
        },
    )


@app.command("submit")
def submit(
    host: str = typer.Option("", help="Kubeflow Pipelines endpoint (default: settings)."),
    source: str = typer.Option(..., help=SOURCE_HELP),
    schedule: str = typer.Option("", help="Cron expression: create a recurring run instead."),
    start_date: str = typer.Option("", help="First day to train on (ISO date)."),
    end_date: str = typer.Option("", help="Last day to train on (ISO date)."),
    epochs: int = typer.Option(0, help="Training epochs; 0 keeps the settings' value."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="A setting for this run's steps, e.g. train.batch_size=4096 (repeatable); the "
        "rest come from the cluster's ConfigMap mlref-settings.",
    ),
) -> None:
    """Submit the training pipeline to a Kubeflow Pipelines endpoint with kfp.Client.

    The steps take their settings from the cluster, not from this machine."""
    from mlref.pipelines.runner import SubmitError, parse_overrides, pipeline_arguments
    from mlref.pipelines.runner import submit as submit_run
    from mlref.settings import get_settings

    settings = get_settings()
    try:
        overrides = parse_overrides(set_)
        arguments = pipeline_arguments(source, start_date, end_date, epochs, overrides)
        run_id = submit_run(settings, arguments, host or None, schedule or None)
    except SubmitError as exc:
        raise fail(f"error: {exc}") from exc
    console.print(f"submitted: {'recurring run' if schedule else 'run'} {run_id}")
