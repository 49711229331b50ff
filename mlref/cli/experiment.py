"""`mlref experiment` commands: plan, start, stop and report a user-level A/B experiment."""

from __future__ import annotations

import typer

from mlref.console import console, one_line_errors

app = typer.Typer(no_args_is_help=True)


def _one_line_errors():
    """Expected failures end the command with their one line and exit code 1."""
    from mlref.canary.kube import KubeError
    from mlref.experiment.control import ExperimentError

    return one_line_errors(ExperimentError, KubeError, ValueError)


def _print(lines: list[str]) -> None:
    for line in lines:
        console.print(line, highlight=False)


@app.command()
def plan(
    baseline_ctr: float = typer.Option(None, help="Baseline CTR; default: measured."),
    user_variance: float = typer.Option(
        None, help="Per-user variance of (clicks - CTR x impressions) / mean impressions."
    ),
    users_per_day: float = typer.Option(None, help="New users a day; default: measured."),
    mde: float = typer.Option(None, help="Relative minimum detectable effect (experiment.mde)."),
    percent: int = typer.Option(None, help="Share of users in B (experiment.percent)."),
) -> None:
    """The users (and days) a test needs; what is not given is measured from the log."""
    from mlref.experiment.report import plan as make_plan
    from mlref.settings import get_settings

    with _one_line_errors():
        found = make_plan(get_settings(), baseline_ctr, user_variance, users_per_day, mde, percent)
    _print(found.lines())
    console.print(f"start it with: mlref experiment start --users {found.users}", highlight=False)


@app.command()
def start(
    name: str = typer.Option("", help="Experiment name (experiment.name)."),
    percent: int = typer.Option(None, help="Share of users in B, 1..99 (experiment.percent)."),
    salt: str = typer.Option("", help="Salt of the user hash; default: the name."),
    users: int = typer.Option(0, min=0, help="Planned sample (users); see `plan`."),
) -> None:
    """Assign users to A (stable) or B (candidate) by a hash of salt and user id."""
    from mlref.experiment.control import start as run_start
    from mlref.settings import get_settings

    with _one_line_errors():
        found = run_start(get_settings(), name, percent, salt, users)
    console.print(
        f"experiment {found.name} started: {100 - found.percent}% of users A "
        f"({found.control_model}), {found.percent}% B ({found.treatment_model}), salt "
        f"{found.salt!r}, planned users {found.planned_users or '-'}",
        highlight=False,
    )


@app.command()
def stop() -> None:
    """Stop assigning: every user follows the split again."""
    from mlref.experiment.control import stop as run_stop
    from mlref.settings import get_settings

    with _one_line_errors():
        found = run_stop(get_settings())
    console.print(f"experiment {found.name} stopped at {found.stopped_at}", highlight=False)


@app.command()
def status() -> None:
    """The last experiment started, running or stopped."""
    from mlref.experiment.control import current
    from mlref.settings import get_settings

    with _one_line_errors():
        found = current(get_settings())
    state = "running" if found.running else f"stopped {found.stopped_at}"
    console.print(
        f"experiment {found.name}: {state}, since {found.started_at}, B {found.percent}%, "
        f"salt {found.salt!r}",
        highlight=False,
    )


@app.command()
def report(
    name: str = typer.Option("", help="Experiment name; default: the last started."),
    bootstrap: int = typer.Option(0, min=0, help="Also a bootstrap over users (resamples)."),
) -> None:
    """Effect on CTR per user, CI, p-value and guardrails; exit 3 when a guardrail fails."""
    from mlref.experiment.report import report as make_report
    from mlref.settings import get_settings

    with _one_line_errors():
        found = make_report(get_settings(), name, bootstrap)
    _print(found.lines())
    raise typer.Exit(3 if found.failed else 0)
