"""`mlref features` commands."""

from __future__ import annotations

import typer

from mlref.console import console, fail

app = typer.Typer(no_args_is_help=True)


@app.command()
def build() -> None:
    """Compute daily user/ad stats from curated logs, apply the Feast repo, materialize."""
    from feast.errors import FeastError

    from mlref.console import progress, summary
    from mlref.features import store
    from mlref.features.counts import NoCuratedDataError
    from mlref.settings import get_settings

    settings = get_settings()
    try:
        with progress() as bar:
            task = bar.add_task("features", total=store.STEPS)
            result = store.compute_and_materialize(
                settings, on_step=lambda step: bar.update(task, advance=1, description=step)
            )
    except (NoCuratedDataError, ValueError, FeastError) as exc:
        raise fail(str(exc)) from None
    rows = {
        f"{name} rows / entities": f"{result.rows[name]} / {result.entities[name]}"
        for name in result.rows
    }
    summary(
        "Features",
        {
            **rows,
            "snapshots": f"{result.first_snapshot:%Y-%m-%d} .. {result.last_snapshot:%Y-%m-%d}",
            **{f"offline {name}": uri for name, uri in result.uris.items()},
            "registry": result.registry,
            "online store": result.online_store,
            "materialized up to": result.last_snapshot.isoformat(),
        },
    )


@app.command()
def lookup(
    user_id: int = typer.Option(..., help="User to look up."),
    ad_id: int = typer.Option(..., help="Ad to look up."),
) -> None:
    """Print one (user, ad) pair's online features; cold entities get the priors."""
    from feast.errors import FeastError
    from rich.table import Table

    from mlref.features.store import OnlineFeatureLookup
    from mlref.features.transform import build_spec, fill_defaults
    from mlref.settings import get_settings

    settings = get_settings()
    try:
        found = OnlineFeatureLookup(settings).lookup([user_id], [ad_id])
    except (ValueError, FeastError) as exc:
        raise fail(f"{exc}; run `mlref features build` first") from None
    filled, defaulted = fill_defaults(found, build_spec(settings.features))
    table = Table(title=f"user {user_id}, ad {ad_id}", title_justify="left")
    for column in ("feature", "value", "source"):
        table.add_column(column)
    for name in filled.columns:
        source = "default (prior)" if defaulted.at[0, name] else "online store"
        table.add_row(name, f"{filled.at[0, name]:.6g}", source)
    console.print(table)
    n = int(defaulted.iloc[0].sum())
    console.print(f"{n} of {len(filled.columns)} features defaulted" if n else "none defaulted")
