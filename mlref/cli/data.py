"""`mlref data` commands."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command()
def generate(
    days: int | None = typer.Option(
        None, help="How many days to generate (default: settings data.days)."
    ),
    first_day: int = typer.Option(
        1, help="Number of the first day to generate; day 1 is the start date."
    ),
    rows_per_day: int | None = typer.Option(
        None, help="Impressions per day (default: settings data.rows_per_day)."
    ),
    start_date: str | None = typer.Option(
        None, help="Date of day 1, YYYY-MM-DD (default: settings data.start_date)."
    ),
    seed: int | None = typer.Option(
        None, help="Seed of the world and the logs (default: settings data.seed)."
    ),
    scenario: list[str] = typer.Option(
        [],
        help="Drift scenario KIND:FIRST-LAST (days from 1), KIND one of covariate, concept, "
        "quality, coldstart; repeatable, e.g. --scenario concept:7-9.",
    ),
    out: Path | None = typer.Option(
        None,
        help="Output folder, one date=YYYY-MM-DD partition per day (default: settings raw_dir).",
    ),
    upload: bool = typer.Option(
        False,
        "--upload",
        help="Then copy them to the raw location the settings name (storage.raw_uri, by "
        "default <storage.root>/data/raw), e.g. a cluster's object store.",
    ),
) -> None:
    """Generate seeded synthetic click logs; regenerating a day replaces its partition."""
    from pydantic import ValidationError

    from mlref.console import console, fail, summary
    from mlref.data.generate import ScenarioWindow, day_date
    from mlref.data.generate import generate as generate_logs
    from mlref.settings import DataSettings, get_settings

    settings = get_settings()
    overrides = {"days": days, "rows_per_day": rows_per_day, "start_date": start_date, "seed": seed}
    try:
        if first_day < 1:
            raise ValueError(f"--first-day {first_day}: days are numbered from 1 (the start date)")
        data = DataSettings.model_validate(
            settings.data.model_dump() | {k: v for k, v in overrides.items() if v is not None}
        )
        settings = settings.model_copy(update={"data": data})
        windows = [ScenarioWindow.parse(text) for text in scenario]
        day_numbers = range(first_day, first_day + data.days)
        day_date(settings, first_day)  # a bad start date fails here, before any work
    except ValidationError as error:
        first = error.errors()[0]
        raise fail(f"error: --{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    except ValueError as error:
        raise fail(f"error: {error}") from None
    for window in windows:
        if not any(window.covers(day) for day in day_numbers):
            console.print(
                f"[yellow]note:[/] scenario {window} covers none of days "
                f"{day_numbers.start}-{day_numbers.stop - 1}"
            )
    result = generate_logs(settings, day_numbers, windows, out)
    uploaded = {}
    if upload:
        from mlref.storage import upload_tree

        try:
            files = upload_tree(result.out_dir, settings.raw_uri)
        except (OSError, ValueError) as error:  # s3fs raises PermissionError, OSError...
            raise fail(f"error: upload to {settings.raw_uri}: {error}") from None
        uploaded = {"uploaded to": f"{settings.raw_uri} ({len(files)} files)"}
    summary(
        "Click logs",
        {
            "written to": result.out_dir,
            "days": ", ".join(
                f"{d.day} ({d.date}{', ' + '+'.join(d.scenarios) if d.scenarios else ''})"
                for d in result.days
            ),
            "rows": f"{result.rows:,} ({len(result.paths)} files)",
            "CTR per day": ", ".join(f"{ctr:.2%}" for ctr in result.ctr_per_day.values()),
            **uploaded,
        },
    )
