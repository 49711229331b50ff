"""`mlref demo`: the local loop, end to end, on embedded defaults."""

from __future__ import annotations

import shutil

import typer

from mlref.console import console, summary

app = typer.Typer()


@app.callback(invoke_without_command=True)
def demo(
    fresh: bool = typer.Option(
        True, "--fresh/--resume", help="Start from an empty work dir, or keep what is there."
    ),
) -> None:
    """Generate click logs, then run the training pipeline locally and register a champion."""
    from mlref.data.generate import generate
    from mlref.pipelines.runner import pipeline_arguments, run_local
    from mlref.settings import get_settings

    settings = get_settings()
    if fresh and settings.work_dir.exists():
        shutil.rmtree(settings.work_dir)
    console.rule("1/2 generate click logs")
    generated = generate(settings)
    console.rule("2/2 training pipeline (kfp local runner)")
    result = run_local(settings, pipeline_arguments(settings, str(settings.raw_dir.resolve())))
    summary(
        "demo",
        {
            "click logs": f"{generated.rows:,} rows in {settings.raw_dir}",
            "curated / quarantine": f"{settings.curated_dir} / {settings.quarantine_dir}",
            "features": settings.feature_dir,
            "champion version": result.champion,
            "pipeline artifacts": result.pipeline_root,
            "tracking": settings.tracking_uri,
            "next": "mlref serve   (serve the champion on 127.0.0.1)",
        },
    )
