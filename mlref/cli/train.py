"""`mlref train` commands."""

from __future__ import annotations

import json

import typer

from mlref.console import fail, summary

app = typer.Typer(no_args_is_help=True)


@app.command("run")
def run(
    start_date: str = typer.Option("", help="First curated day to use (ISO date); empty: all."),
    end_date: str = typer.Option("", help="Last curated day to use (ISO date); empty: all."),
    epochs: int = typer.Option(0, help="Training epochs; 0 keeps the settings' value."),
) -> None:
    """Training set -> train -> ONNX + int8 + parity gate -> MLflow registry, in-process."""
    from mlref.platform import platform_for
    from mlref.settings import get_settings
    from mlref.training.dataset import DatasetError
    from mlref.training.warm_start import IncompatibleParent
    from mlref.training.workflow import REPORT_FILE, GateFailed, run_all

    settings = get_settings()
    if epochs:
        settings.train.epochs = epochs
    work = settings.artifacts_dir / "train"
    try:
        launch = platform_for(settings).train_ranks
        decision = run_all(settings, work, start_date, end_date, launch)
    except (DatasetError, GateFailed, IncompatibleParent) as exc:
        raise fail(f"error: {exc}") from exc
    init = json.loads((work / "model" / REPORT_FILE).read_text())["init"]
    summary(
        "trained",
        {
            "model version": decision.version,
            "started from": init["reason"],
            "champion now": decision.version if decision.promoted else decision.champion_before,
            "decision": decision.reason,
            "artifacts": work,
            "tracking": settings.tracking_uri,
        },
    )
