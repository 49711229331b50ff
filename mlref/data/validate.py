"""Row checks of raw click logs against the contract (:mod:`mlref.schema`), vectorized.

Every check yields a boolean mask named by the reason it reports (``"position: out of range
1..8"``), so a rejected row carries *all* its problems, not just the first one found, and
counts by reason are mask sums. Inputs may arrive with loose types (CSV gives strings,
pandas writes ints with nulls as floats): a value that casts losslessly is accepted.

A category value outside its vocabulary is no problem: the row is kept (the model reads the
value as out-of-vocabulary), and :attr:`Checked.unknown` counts it as vocabulary drift. So is
null in a nullable field (``mlref.schema.Field.nullable``): the value is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlref import schema
from mlref.schema import MAX_REQUEST_ID, MAX_TEXT, RAW_COLUMNS, RAW_SCHEMA, VOCABULARIES

# Inclusive bounds of the small integer columns: the contract's ordinals, and the label.
RANGES = {**schema.RANGES, schema.LABEL: (0, 1)}
MAX_LENGTHS = {name: MAX_TEXT for name in VOCABULARIES} | {"request_id": MAX_REQUEST_ID}
UNKNOWN_DATE = "unknown"  # partition of rows whose timestamp cannot be read
UNKNOWN_DAY = np.iinfo(np.int64).min
TIMESTAMP = RAW_SCHEMA.field("event_timestamp").type
# Integers as text, optionally with the ".0" that pandas adds to int columns holding nulls;
# 18 digits always fit in int64.
INTEGER_TEXT = r"^\s*[+-]?\d{1,18}(\.0*)?\s*$"
US_PER_DAY = 86_400 * 1_000_000


@dataclass
class Checked:
    """One batch after the checks: typed columns, per-reason masks and each row's day."""

    columns: dict[str, pa.Array] = field(default_factory=dict)  # RAW_SCHEMA types, null if bad
    problems: dict[str, np.ndarray] = field(default_factory=dict)  # reason -> rows having it
    unknown: dict[str, np.ndarray] = field(default_factory=dict)  # column -> not in vocabulary
    days: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))

    def add(self, reason: str, mask: np.ndarray) -> None:
        if mask.any():
            self.problems[reason] = self.problems.get(reason, False) | mask

    def kept_unknown(self, n: int) -> dict[str, int]:
        """Per category column, the rows kept (no problem) whose value is not in its vocabulary."""
        good = ~self.bad(n)
        return {name: int((mask & good).sum()) for name, mask in self.unknown.items()}

    def bad(self, n: int) -> np.ndarray:
        """Rows with at least one problem."""
        bad = np.zeros(n, dtype=bool)
        for mask in self.problems.values():
            bad |= mask
        return bad


def check(batch: pa.Table, now: datetime, clock_skew_seconds: float) -> Checked:
    """Cast and check every RAW_SCHEMA column of ``batch`` (which must have them all)."""
    checked = Checked()
    for name in RAW_COLUMNS:
        raw = _plain(batch.column(name).combine_chunks())
        if name == "event_timestamp":
            limit = pd.Timestamp(now) + pd.Timedelta(seconds=clock_skew_seconds)
            value = _check_timestamp(checked, name, raw, limit)
        elif RAW_SCHEMA.field(name).type == pa.string():
            value = _check_string(checked, name, raw)
        else:
            value = _check_integer(checked, name, raw)
        checked.columns[name] = value
    _check_hour(checked)
    ts = checked.columns["event_timestamp"]
    days = np.floor_divide(pc.fill_null(ts.cast(pa.int64()), 0).to_numpy(), US_PER_DAY)
    checked.days = np.where(as_mask(ts.is_valid()), days, UNKNOWN_DAY)
    return checked


def _check_timestamp(checked: Checked, name: str, raw: pa.Array, limit: pd.Timestamp) -> pa.Array:
    value = _to_timestamp(raw)
    checked.add(f"{name}: null", as_mask(raw.is_null()))
    checked.add(f"{name}: not a timestamp", as_mask(pc.and_(raw.is_valid(), value.is_null())))
    checked.add(f"{name}: in the future", as_mask(pc.greater(value, pa.scalar(limit, TIMESTAMP))))
    return value


def _check_string(checked: Checked, name: str, raw: pa.Array) -> pa.Array:
    value = _to_string(raw)
    _check_null(checked, name, value)
    limit = MAX_LENGTHS[name]
    checked.add(
        f"{name}: longer than {limit} characters",
        as_mask(pc.greater(pc.utf8_length(value), limit)),
    )
    if name in VOCABULARIES:
        known = pc.is_in(value, value_set=pa.array(VOCABULARIES[name]))
        checked.unknown[name] = as_mask(pc.and_(value.is_valid(), pc.invert(known)))
    return value


def _check_integer(checked: Checked, name: str, raw: pa.Array) -> pa.Array:
    value = _to_int64(raw)
    _check_null(checked, name, raw)
    checked.add(f"{name}: not an integer", as_mask(pc.and_(raw.is_valid(), value.is_null())))
    if name in RANGES:
        low, high = RANGES[name]
        outside = pc.or_(pc.less(value, low), pc.greater(value, high))
        checked.add(f"{name}: out of range {low}..{high}", as_mask(outside))
    else:  # the ids
        checked.add(f"{name}: negative", as_mask(pc.less(value, 0)))
    return value


def _check_null(checked: Checked, name: str, value: pa.Array) -> None:
    """Null breaks the contract, except in a nullable field (read as out-of-vocabulary)."""
    if not RAW_SCHEMA.field(name).nullable:
        checked.add(f"{name}: null", as_mask(value.is_null()))


def _check_hour(checked: Checked) -> None:
    """``hour`` is derived data: it must agree with the timestamp it was derived from."""
    ts, hour = checked.columns["event_timestamp"], checked.columns["hour"]
    differs = pc.not_equal(pc.hour(ts), hour)
    in_range = pc.and_(pc.greater_equal(hour, 0), pc.less_equal(hour, 23))
    checked.add("hour: does not match event_timestamp", as_mask(pc.and_(differs, in_range)))


def partitions(days: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """("YYYY-MM-DD" or UNKNOWN_DATE, row indices) for each distinct day in ``days``."""
    return [
        (
            UNKNOWN_DATE if day == UNKNOWN_DAY else str(np.datetime64(int(day), "D")),
            np.flatnonzero(days == day),
        )
        for day in np.unique(days)
    ]


def as_mask(values: pa.Array) -> np.ndarray:
    """A boolean array as numpy, null counting as False."""
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False)


def _plain(arr: pa.Array) -> pa.Array:
    """Dictionary-decoded, with large strings as plain strings."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    return arr


def _to_string(arr: pa.Array) -> pa.Array:
    """Any scalar as text; empty or blank text counts as missing."""
    text = arr.cast(pa.string())
    blank = pc.equal(pc.utf8_trim_whitespace(text), "")
    return pc.if_else(blank, pa.scalar(None, pa.string()), text)


def _to_int64(arr: pa.Array) -> pa.Array:
    """Integers, and floats or text holding integers; anything else becomes null."""
    kind = arr.type
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_null(kind):
        return arr.cast(pa.int64())
    if pa.types.is_floating(kind):
        whole = pc.and_(pc.is_finite(arr), pc.equal(pc.floor(arr), arr))
        whole = pc.and_(whole, pc.less(pc.abs(arr), 2.0**62))
        return pc.if_else(whole, arr, None).cast(pa.int64())
    if pa.types.is_string(kind):
        digits = pc.match_substring_regex(arr, INTEGER_TEXT)
        trimmed = pc.replace_substring_regex(pc.utf8_trim_whitespace(arr), r"\.0*$", "")
        return pc.if_else(digits, trimmed, None).cast(pa.int64())
    return pa.nulls(len(arr), pa.int64())


def _to_timestamp(arr: pa.Array) -> pa.Array:
    """UTC microsecond timestamps; naive ones are taken as UTC, text must be ISO 8601."""
    kind = arr.type
    if pa.types.is_timestamp(kind) or pa.types.is_null(kind):
        return arr.cast(TIMESTAMP, safe=False)
    if pa.types.is_string(kind):
        parsed = pd.to_datetime(arr.to_pandas(), utc=True, errors="coerce", format="ISO8601")
        return pa.array(parsed, type=pa.timestamp("ns", tz="UTC")).cast(TIMESTAMP)
    return pa.nulls(len(arr), TIMESTAMP)


def reasons(problems: dict[str, np.ndarray], rows: np.ndarray) -> pa.Array:
    """``"a: x; b: y"`` for each of ``rows`` (indices), reasons in schema column order."""
    order = sorted(problems, key=lambda reason: RAW_COLUMNS.index(reason.split(":")[0]))
    text = np.full(len(rows), "", dtype=object)
    for reason in order:
        text = text + np.where(problems[reason][rows], reason + "; ", "")
    return pc.replace_substring_regex(pa.array(text, pa.string()), "; $", "")
