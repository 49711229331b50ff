"""`mlref ingest` commands."""

from __future__ import annotations

from datetime import datetime

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("run")
def run(
    source: str = typer.Argument(
        ..., help="Raw logs: a Parquet/CSV file, a directory or glob of them; any fsspec URI."
    ),
    now: str = typer.Option(
        "", help="Time (ISO) rows later than which are quarantined as future; default: now."
    ),
) -> None:
    """Validate raw click logs into curated Parquet; bad rows go to quarantine with reasons."""

    from mlref.console import fail, progress, summary
    from mlref.data.ingest import ingest
    from mlref.data.parts import IngestError
    from mlref.settings import get_settings

    settings = get_settings()
    try:
        clock = datetime.fromisoformat(now) if now else None
    except ValueError:
        example = "2026-01-03T00:00:00+00:00"
        raise fail(f"error: --now {now!r} is not an ISO time, e.g. {example}") from None
    if clock is not None and clock.tzinfo is None:
        raise fail(f"error: --now {now!r} has no time zone; add one, e.g. +00:00")
    try:
        with progress() as bar:
            task = bar.add_task("Ingesting files", total=None)
            result = ingest(
                source,
                settings,
                now=clock,
                on_progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except IngestError as e:
        raise fail(f"ingest failed: {e}") from None
    rows = {
        "files read": len(result.files),
        "rows in": result.rows_in,
        "rows curated": result.rows_curated,
        "rows quarantined": result.rows_quarantined,
        **{f"  {reason}": count for reason, count in result.reasons.items()},
        **{f"kept, {c} outside the vocabulary": n for c, n in result.unknown_values.items()},
        "curated data": settings.curated_uri,
        "quarantine": settings.quarantine_uri,
        "partitions written": len(result.partitions),
        "seconds": f"{result.seconds:.1f}",
    }
    summary("Ingestion", rows)
