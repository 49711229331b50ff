"""Seeded synthetic ad-impression logs, partitioned by day, with selectable drift scenarios.

A day's content depends only on the settings, its day number and the scenarios active on it:
its rows come from a counter-based random stream keyed by (seed, day), so any chunk of the day
is drawn without the rows before it. Generating days 1-6 and later 7-9 therefore equals
generating 1-9 at once, and the chunk size changes only how rows are split into files.
Arrival times are stratified over the day, so rows come out in time order.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlref import schema
from mlref.console import progress
from mlref.data.world import MICROS_PER_HOUR, ROW_DRAWS, U_CLICK, U_QUALITY, U_TIME, World
from mlref.experiment.assign import in_treatment, mix64
from mlref.settings import Settings

ScenarioKind = Literal["covariate", "concept", "quality", "coldstart"]
SCENARIO_KINDS: tuple[str, ...] = get_args(ScenarioKind)
# Upstream logs can carry nulls; ingestion validates them against the strict RAW_SCHEMA.
RAW_FILE_SCHEMA = pa.schema([field.with_nullable(True) for field in schema.RAW_SCHEMA])
_WINDOW = re.compile(r"^\s*(\w+)\s*:\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
_EPOCH = dt.date(1970, 1, 1)
_MICROS_PER_DAY = 24 * MICROS_PER_HOUR


@dataclass(frozen=True)
class ScenarioWindow:
    """A drift scenario active from ``first_day`` to ``last_day`` (inclusive, 1 = start_date)."""

    kind: ScenarioKind
    first_day: int
    last_day: int

    def __post_init__(self) -> None:
        if self.kind not in SCENARIO_KINDS:
            raise ValueError(f"unknown scenario {self.kind!r}; use one of {_kinds()}")
        if not 1 <= self.first_day <= self.last_day:
            raise ValueError(
                f"scenario {self.kind} days {self.first_day}-{self.last_day}: "
                "need 1 <= first day <= last day"
            )

    @classmethod
    def parse(cls, text: str) -> ScenarioWindow:
        """``KIND:FIRST-LAST`` or ``KIND:DAY``, e.g. ``concept:7-9``."""
        match = _WINDOW.match(text)
        if not match:
            raise ValueError(
                f"bad scenario {text!r}: write KIND:FIRST-LAST (e.g. concept:7-9) "
                f"with KIND one of {_kinds()}"
            )
        kind, first, last = match.groups()
        return cls(kind, int(first), int(last or first))  # type: ignore[arg-type]

    def covers(self, day: int) -> bool:
        return self.first_day <= day <= self.last_day

    def __str__(self) -> str:
        return f"{self.kind}:{self.first_day}-{self.last_day}"


def _kinds() -> str:
    return ", ".join(SCENARIO_KINDS)


@dataclass(frozen=True)
class DayResult:
    day: int
    date: dt.date
    rows: int
    clicks: int
    scenarios: tuple[str, ...]
    paths: tuple[Path, ...]

    @property
    def ctr(self) -> float:
        return self.clicks / self.rows


@dataclass(frozen=True)
class GenerateResult:
    out_dir: Path
    days: tuple[DayResult, ...]

    @property
    def rows(self) -> int:
        return sum(day.rows for day in self.days)

    @property
    def rows_per_day(self) -> dict[int, int]:
        return {day.day: day.rows for day in self.days}

    @property
    def ctr_per_day(self) -> dict[int, float]:
        return {day.day: day.ctr for day in self.days}

    @property
    def paths(self) -> list[Path]:
        return [path for day in self.days for path in day.paths]


def day_date(settings: Settings, day: int) -> dt.date:
    """The calendar date of day number ``day`` (1 = ``settings.data.start_date``)."""
    try:
        start = dt.date.fromisoformat(settings.data.start_date)
    except ValueError:
        raise ValueError(
            f"start date {settings.data.start_date!r} is not a date; write YYYY-MM-DD"
        ) from None
    return start + dt.timedelta(days=day - 1)


def partition_dir(out_dir: Path, date: dt.date) -> Path:
    """A day's hive-style partition, as ingestion and pyarrow datasets read it."""
    return out_dir / f"date={date.isoformat()}"


def generate(
    settings: Settings,
    days: Sequence[int] | None = None,
    scenarios: Sequence[ScenarioWindow] = (),
    out_dir: Path | None = None,
) -> GenerateResult:
    """Write the click logs of ``days`` (default 1..settings.data.days) under ``out_dir``.

    Each day replaces its ``date=YYYY-MM-DD`` partition whole; other days are left alone.
    """
    days = list(range(1, settings.data.days + 1) if days is None else days)
    if any(day < 1 for day in days):
        raise ValueError(f"days are numbered from 1; got {min(days)}")
    out_dir = settings.raw_dir if out_dir is None else out_dir
    world = World.from_settings(settings)
    dates = [day_date(settings, day) for day in days]
    results = []
    with progress() as bar:
        task = bar.add_task("generating click logs", total=len(days) * settings.data.rows_per_day)
        for day, date in zip(days, dates, strict=True):
            active = tuple(sorted({w.kind for w in scenarios if w.covers(day)}))
            clicks, paths = _write_day(
                settings, world, day, date, active, out_dir, lambda n: bar.advance(task, n)
            )
            results.append(DayResult(day, date, settings.data.rows_per_day, clicks, active, paths))
    return GenerateResult(out_dir, tuple(results))


def _write_day(
    settings: Settings,
    world: World,
    day: int,
    date: dt.date,
    active: tuple[str, ...],
    out_dir: Path,
    advance: Callable[[int], object],
) -> tuple[int, tuple[Path, ...]]:
    """Write one day into a hidden sibling folder, then swap it in for the old partition."""
    final = partition_dir(out_dir, date)
    staging = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rows, chunk = settings.data.rows_per_day, settings.data.chunk_rows
    clicks, names = 0, []
    for part, start in enumerate(range(0, rows, chunk)):
        table = day_chunk(settings, world, day, date, active, start, min(chunk, rows - start))
        names.append(f"part-{part:05d}.parquet")
        pq.write_table(table, staging / names[-1])
        clicks += pc.sum(table["clicked"]).as_py()
        advance(table.num_rows)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return clicks, tuple(final / name for name in names)


def day_chunk(
    settings: Settings,
    world: World,
    day: int,
    date: dt.date,
    active: Sequence[str],
    start: int,
    n: int,
) -> pa.Table:
    """Rows ``start .. start+n-1`` of ``day`` with scenarios ``active``, as a raw-log table."""
    data = settings.data
    key = np.random.SeedSequence([data.seed, day]).generate_state(4, np.uint64)
    stream = np.random.Philox(key=key[:2])
    stream.advance(start * ROW_DRAWS // 4)  # one Philox counter yields 4 draws; 4 | ROW_DRAWS
    u = np.random.Generator(stream).random((n, ROW_DRAWS))
    row = np.arange(start, start + n, dtype=np.uint64)
    rows = world.draw(
        u,
        (row + u[:, U_TIME]) / data.rows_per_day,
        covariate="covariate" in active,
        concept="concept" in active,
        coldstart="coldstart" in active,
        coldstart_share=data.coldstart_share,
    )
    clicked = u[:, U_CLICK] < treated(settings, rows.user + 1, rows.probability)
    broken = u[:, U_QUALITY] < data.quality_bug_share if "quality" in active else np.zeros(n, bool)
    day_micros = (date - _EPOCH).days * _MICROS_PER_DAY
    columns = {
        "event_timestamp": pa.array(
            day_micros + rows.micros, schema.RAW_SCHEMA.field("event_timestamp").type
        ),
        "request_id": _request_ids(row, key[2], key[3]),
        "user_id": pa.array(rows.user + 1, pa.int64()),
        "ad_id": pa.array(rows.ad + 1, pa.int64()),
        "advertiser_id": pa.array(world.ad_advertiser[rows.ad], pa.int64()),
        "ad_category": _strings(world.ad_category[rows.ad], schema.AD_CATEGORIES),
        "device_type": _strings(rows.device, schema.DEVICE_TYPES, null=broken),
        "site_category": _strings(rows.site, schema.SITE_CATEGORIES),
        "os": _strings(rows.os, schema.OPERATING_SYSTEMS),
        "position": pa.array(rows.position, pa.int8()),
        "hour": pa.array(np.where(broken, 0, rows.hour), pa.int8()),
        "clicked": pa.array(clicked, pa.int8()),
    }
    return pa.table(columns, schema=RAW_FILE_SCHEMA)


def treated(settings: Settings, user_ids: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """Click probabilities with ``data.treatment_lift`` applied to the users the experiment
    (``settings.experiment``) assigns to B: the generator's world where B is truly better by
    that relative lift, for the experiment analysis to find (0: an A/A world)."""
    lift = settings.data.treatment_lift
    if not lift:
        return probability
    experiment = settings.experiment
    b = in_treatment(user_ids, experiment.salt or experiment.name, experiment.percent)
    return np.where(b, np.minimum(probability * (1 + lift), 1.0), probability)


def _strings(
    codes: np.ndarray, vocabulary: tuple[str, ...], null: np.ndarray | None = None
) -> pa.Array:
    """Vocabulary codes as strings, null where ``null`` is set, without a per-row loop."""
    indices = pa.array(codes.astype(np.int8), mask=null)
    return pa.DictionaryArray.from_arrays(indices, pa.array(vocabulary)).cast(pa.string())


def _request_ids(row: np.ndarray, salt_low: np.uint64, salt_high: np.uint64) -> pa.Array:
    """32 hex digits per row, unique: the low word is a bijection of the row number within
    the day, the high word a bijection of the low word salted per day."""
    with np.errstate(over="ignore"):
        low = mix64(row + salt_low)
    high = mix64(low ^ salt_high)
    digits = np.stack([high, low], axis=1).astype(">u8").tobytes().hex().encode("ascii")
    return pa.array(np.frombuffer(digits, dtype="S32")).cast(pa.string())
