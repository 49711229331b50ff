"""Progress bars and end-of-work summaries, one look for every long command."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)


@contextmanager
def progress() -> Iterator[Progress]:
    """A progress display on stderr; quiet when stderr is not a terminal."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
    with bar:
        yield bar


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as the command's one error line; return the exit to raise.

    Printed as plain text (brackets in a path or an upstream error are not rich markup) and
    unwrapped, so a path or a URL in it can be copied whole."""
    console.print(Text(message, style="red"), highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def one_line_errors(*expected: type[Exception]) -> Iterator[None]:
    """The ``expected`` failures end the command with their one line and exit code 1."""
    try:
        yield
    except expected as exc:
        raise fail(str(exc)) from None


def summary(title: str, rows: Mapping[str, Any]) -> None:
    """Print what was written where, as a two-column table."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, str(value))
    Console().print(table)
