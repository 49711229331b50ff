"""`mlref pipeline` commands."""

from __future__ import annotations

from pathlib import Path

import typer

from mlref.console import console, fail, summary

app = typer.Typer(no_args_is_help=True)

SOURCE_HELP = "Raw click logs (path or fsspec URI); default: the generator's output."
PIPELINE_HELP = "Which pipeline: training or batch-predict."
MODEL_HELP = "batch-predict: the model, a models:/ URI or an ONNX file; default: the champion."
NAME_HELP = "batch-predict: the output's name under <root>/predictions/; default: the model's."


@app.command("compile")
def compile_(
    pipeline: str = typer.Argument("training", help=PIPELINE_HELP),
    out: Path = typer.Option(None, help="Where to write the IR YAML; default: pipelines/."),
) -> None:
    """Write a pipeline's IR YAML (default: the training pipeline)."""
    from mlref.pipelines.runner import SubmitError, compile_pipeline, compiled_path

    try:
        path = compile_pipeline(out or compiled_path(pipeline), pipeline)
    except (SubmitError, KeyError) as exc:
        raise fail(
            f"error: unknown pipeline {pipeline!r}: expected training or batch-predict"
        ) from exc
    console.print(f"compiled: {path}")


@app.command("run")
def run(
    pipeline: str = typer.Argument("training", help=PIPELINE_HELP),
    local: bool = typer.Option(
        True, "--local/--no-local", help="Run with kfp's local runner (the only mode here)."
    ),
    source: str = typer.Option("", help=SOURCE_HELP),
    start_date: str = typer.Option("", help="First day to train on (ISO date)."),
    end_date: str = typer.Option("", help="Last day to train on (ISO date)."),
    epochs: int = typer.Option(0, help="Training epochs; 0 keeps the settings' value."),
    model: str = typer.Option("", help=MODEL_HELP),
    name: str = typer.Option("", help=NAME_HELP),
) -> None:
    """Run a whole pipeline locally with kfp's SubprocessRunner (default: training)."""
    from mlref.batch_predict import predictions_uri
    from mlref.pipelines.runner import (
        BATCH_PREDICT,
        SubmitError,
        batch_arguments,
        pipeline_arguments,
        pipeline_function,
        run_local,
    )
    from mlref.settings import get_settings

    if not local:
        raise fail("error: use `mlref pipeline submit --host URL` for a cluster")
    try:
        pipeline_function(pipeline)
    except SubmitError as exc:
        raise fail(f"error: {exc}") from exc
    settings = get_settings()
    if pipeline == BATCH_PREDICT:
        arguments = batch_arguments(model, start_date, end_date, name)
    else:
        arguments = pipeline_arguments(source or settings.raw_uri, start_date, end_date, epochs)
    try:
        result = run_local(settings, arguments, pipeline)
    except RuntimeError as exc:
        raise fail(f"error: {str(exc).splitlines()[0]}") from exc
    if pipeline == BATCH_PREDICT:
        summary(
            "batch prediction",
            {
                "model version": result.champion,
                "predictions": predictions_uri(settings, name),
                "step artifacts": result.pipeline_root,
            },
        )
        return
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
    pipeline: str = typer.Argument("training", help=PIPELINE_HELP),
    host: str = typer.Option("", help="Kubeflow Pipelines endpoint (default: settings)."),
    source: str = typer.Option("", help=SOURCE_HELP + " Required for training."),
    schedule: str = typer.Option("", help="Cron expression: create a recurring run instead."),
    start_date: str = typer.Option("", help="First day to train on (ISO date)."),
    end_date: str = typer.Option("", help="Last day to train on (ISO date)."),
    epochs: int = typer.Option(0, help="Training epochs; 0 keeps the settings' value."),
    model: str = typer.Option("", help=MODEL_HELP),
    name: str = typer.Option("", help=NAME_HELP),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="A setting for this run's steps, e.g. train.batch_size=4096 (repeatable); the "
        "rest come from the cluster's ConfigMap mlref-settings.",
    ),
) -> None:
    """Submit a pipeline (default: training) to a Kubeflow Pipelines endpoint with kfp.Client.

    The steps take their settings from the cluster, not from this machine."""
    from mlref.pipelines.runner import (
        BATCH_PREDICT,
        SubmitError,
        batch_arguments,
        parse_overrides,
        pipeline_arguments,
        pipeline_function,
    )
    from mlref.pipelines.runner import submit as submit_run
    from mlref.settings import get_settings

    settings = get_settings()
    try:
        pipeline_function(pipeline)
        overrides = parse_overrides(set_)
        if pipeline == BATCH_PREDICT:
            arguments = batch_arguments(model, start_date, end_date, name, overrides)
        elif not source:
            raise SubmitError("the training pipeline needs --source (the raw click logs)")
        else:
            arguments = pipeline_arguments(source, start_date, end_date, epochs, overrides)
        run_id = submit_run(settings, arguments, host or None, schedule or None, name=pipeline)
    except SubmitError as exc:
        raise fail(f"error: {exc}") from exc
    console.print(f"submitted: {'recurring run' if schedule else 'run'} {run_id}")
