"""`mlref demo`: the closed loop, end to end, on embedded defaults."""

from __future__ import annotations

import os
import shutil
import time

import typer

from mlref.console import console, fail

app = typer.Typer()


@app.callback(invoke_without_command=True)
def demo(
    scenario: str = typer.Option(
        "", help="Drift scenario after the baseline days: concept, covariate, quality, coldstart."
    ),
    fresh: bool = typer.Option(
        True, "--fresh/--resume", help="Start from an empty work dir, or resume the last run."
    ),
) -> None:
    """Train a champion, serve it, drift, retrain, roll the challenger out as a canary."""
    from rich.table import Table

    from mlref.demo.loop import DemoError, run_loop
    from mlref.settings import get_settings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings = get_settings()
    if fresh and settings.work_dir.exists():
        shutil.rmtree(settings.work_dir)
    start = time.perf_counter()
    try:
        record = run_loop(settings, scenario)
    except DemoError as exc:
        raise fail(f"demo failed: {exc}") from None
    table = Table(title=f"mlref demo: {time.perf_counter() - start:.0f}s", title_justify="left")
    for column in ("step", "s", "outcome"):
        table.add_column(column, overflow="fold")
    for step in record.steps:
        table.add_row(step.name, f"{step.seconds:.0f}", step.outcome)
    console.print(table)
    points = record.quality.points
    quality = Table(title="AUC per day no model trained on (offline, same features for all)")
    days = list(dict.fromkeys(p.day for p in points))  # in the order scored
    quality.add_column("model")
    quality.add_column("trained on")
    for day in days:
        quality.add_column(day)
    for model, window in record.quality.windows.items():
        scores = {p.day: p.auc for p in points if p.model == model}
        quality.add_row(model, window, *(f"{scores[d]:.3f}" if d in scores else "-" for d in days))
    console.print(quality)
    if record.quality.left_out:
        console.print("left out, inside a training window: " + ", ".join(record.quality.left_out))
    for name, target in record.links.items():
        console.print(f"{name}: {target}")
