"""`mlref ingest` commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("run")
def run(
    source: str = typer.Argument(
        ..., help="Raw logs: a Parquet/CSV file, a directory or glob of them; any fsspec URI."
    ),
) -> None:
    """Validate raw click logs into curated Parquet; bad rows go to quarantine with reasons."""

    from mlref.console import fail, progress, summary
    from mlref.data.ingest import ingest
    from mlref.data.parts import IngestError
    from mlref.settings import get_settings

    settings = get_settings()
    try:
        with progress() as bar:
            task = bar.add_task("Ingesting files", total=None)
            result = ingest(
                source,
                settings,
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
