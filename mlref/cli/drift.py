"""`mlref drift` commands."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mlref.console import fail, summary

app = typer.Typer(no_args_is_help=True)


@app.command("check")
def check(
    since: str = typer.Option("", help="Window start (ISO); default: until - window_hours."),
    until: str = typer.Option("", help="Window end (ISO); default: the start of this hour."),
    out: Path = typer.Option(None, help="Report folder; default: drift_dir/reports/<until>."),
    model_uri: str = typer.Option("", help="Reference model; default: the champion."),
    source: str = typer.Option("", help="Raw click logs a retraining ingests; default: raw_uri."),
    trigger: bool = typer.Option(
        True, "--trigger/--no-trigger", help="Submit the retraining a retrain decision asks for."
    ),
) -> None:
    """Compare the live inference log with the champion's reference and act on the result.

    Exits 0 whatever the decision (a CronJob that fails on drift would be retried and alert
    as a broken job); non-zero only when the check itself could not run.
    """
    from mlref.monitoring.check import run_check
    from mlref.monitoring.trigger import trigger as act
    from mlref.pipelines.runner import SubmitError
    from mlref.platform import platform_for
    from mlref.settings import get_settings

    settings = get_settings()
    try:
        result = run_check(
            settings,
            datetime.fromisoformat(since) if since else None,
            datetime.fromisoformat(until) if until else None,
            out,
            model_uri,
        )
    except (LookupError, FileNotFoundError, ValueError) as exc:
        raise fail(f"error: {exc}") from exc
    try:
        submitter = platform_for(settings).submit_retraining
        outcome = act(settings, result, source, submitter=submitter, dry_run=not trigger)
    except SubmitError as exc:  # recorded in the decision log; the next run tries again
        raise fail(f"error: retraining not submitted: {exc}") from exc
    if result.drift is not None:
        table = Table("column", "method", "score", "threshold", "drifted", title="drift")
        for column in (*result.drift.columns, result.drift.prediction):
            table.add_row(
                column.column,
                column.method,
                f"{column.score:.4f}",
                f"{column.threshold:.4f}",
                "yes" if column.drifted else "",
            )
        Console().print(table)
    summary(
        "drift check",
        {
            "decision": result.decision.action,
            "reason": result.decision.reason,
            "action taken": outcome.status + (f" ({outcome.run_id})" if outcome.run_id else ""),
            "retraining": outcome.init_reason or "-",
            "rows compared": f"{result.compared_rows} of {result.rows}",
            "report": result.report or "-",
            "summary": result.summary,
            "decision log": settings.drift_dir / "decisions.jsonl",
        },
    )


@app.command("labels")
def labels(
    source: str = typer.Option("", help="Click logs to take labels from; default: raw_uri."),
) -> None:
    """Label served requests from the click logs: a click at once, no click after the
    maturity window (drift.label_maturity_hours). Run it before each drift check."""
    from mlref.monitoring.labels import collect
    from mlref.settings import get_settings

    settings = get_settings()
    try:
        result = collect(settings, source)
    except FileNotFoundError as exc:
        raise fail(f"error: {exc}") from exc
    summary(
        "labels",
        {
            "served requests in window": result.served,
            "labelled before": result.already,
            "clicked": result.clicked,
            "not clicked (matured)": result.not_clicked,
            "waiting for maturity": result.waiting,
            "written": f"{settings.labels_uri}/{result.name}.parquet" if result.name else "-",
        },
    )
