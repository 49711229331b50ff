"""Training windows: which days a model learned from, so comparisons use only days it did not.

A model scored on rows it was trained (or early-stopped) on looks better than it is, so every
comparison of models (the registry's champion gate, which is also the canary's offline check,
the demo report, the benchmarks) says which days were inside each model's window and compares
on the days outside all of them. The window is the train and validation days of its training
set; test days stay outside. The registry keeps it on each model version
(:data:`WINDOW_TAG`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

WINDOW_TAG = "mlref.training_window"  # on a model version: "FIRST..LAST" (ISO dates)


class InSampleComparison(ValueError):
    """A comparison was asked for on days some model trained on only."""


@dataclass(frozen=True)
class TrainingWindow:
    """The days ``first`` to ``last`` (ISO dates, inclusive) a model trained on."""

    first: str
    last: str

    @classmethod
    def of_days(cls, days: Iterable[str]) -> TrainingWindow:
        ordered = sorted(str(day) for day in days)
        if not ordered:
            raise ValueError("a training window needs at least one day")
        return cls(ordered[0], ordered[-1])

    @classmethod
    def of_splits(cls, splits: Mapping[str, Iterable[str]]) -> TrainingWindow:
        """The window of a training set's days per split (train and val; test stays out)."""
        return cls.of_days([*splits["train"], *splits.get("val", ())])

    @classmethod
    def parse(cls, text: str) -> TrainingWindow:
        first, sep, last = text.partition("..")
        if not sep or not first or not last:
            raise ValueError(f"training window {text!r}: expected FIRST..LAST (ISO dates)")
        return cls(first, last)

    def covers(self, day: str) -> bool:
        return self.first <= str(day) <= self.last

    def __str__(self) -> str:
        return f"{self.first}..{self.last}"


def describe(windows: Mapping[str, TrainingWindow | None]) -> str:
    """Each model's window in words, for reports and decision reasons."""
    return "; ".join(
        f"{name} trained on {window or 'days not recorded'}" for name, window in windows.items()
    )


def out_of_sample(
    days: Iterable[str], windows: Mapping[str, TrainingWindow | None]
) -> tuple[list[str], list[str]]:
    """``days`` split into those outside every known window and those inside one."""
    outside, inside = [], []
    for day in days:
        known = (w for w in windows.values() if w is not None)
        (inside if any(w.covers(day) for w in known) else outside).append(day)
    return outside, inside


def require_out_of_sample(
    days: Iterable[str],
    windows: Mapping[str, TrainingWindow | None],
    what: str,
    *,
    every: bool = False,
) -> list[str]:
    """The days of ``days`` no model trained on; an error naming the windows if none is left,
    or with ``every`` if any day is inside a window (a comparison that cannot leave days out).

    ``what`` names the comparison in the error (e.g. "the champion gate").
    """
    days = list(days)
    outside, inside = out_of_sample(days, windows)
    if not outside or (every and inside):
        which = "every day" if not outside else "some days"
        raise InSampleComparison(
            f"{what}: {which} to compare on ({', '.join(map(str, inside)) or 'none'}) inside "
            f"a model's training window ({describe(windows)}); compare on days after every "
            "window (generate or ingest later days), or train on a window that ends before them"
        )
    return outside


def compared_on(
    splits: Mapping[str, Iterable[str]], models: Iterable[str] = ("every model",)
) -> str:
    """A line for benchmarks whose ``models`` all trained on one training set's splits: the
    window and the test days they are compared on, which must lie outside it (or it refuses)."""
    windows = {name: TrainingWindow.of_splits(splits) for name in models}
    test = require_out_of_sample(splits["test"], windows, "this comparison", every=True)
    return f"{describe(windows)}; compared on test day(s) {', '.join(test)}, out of sample"
