"""The domain contract: what an ad impression is, field by field. Everything else derives from it.

:data:`FIELDS` lists what a caller knows about an impression: its type, its vocabulary or
range, and how long its text may be. From it come the raw click-log schema ingestion checks
(:data:`RAW_SCHEMA`), the transformer's request validation (``mlref.serving.requests``), the
model's categorical inputs (``mlref.features.transform.build_spec``), the inference log's
Arrow schema (:data:`LOG_SCHEMA`), the quality checks and the drift columns
(``mlref.monitoring``), and the example rows tests and benchmarks start from
(:func:`examples`). Adding a request field is one entry here, plus the code that makes it
(the generator, ``mlref.data``); the model reads every field the contract lists.

One vocabulary policy for ingestion and serving: a category value outside its vocabulary is
kept, the model reads it as the out-of-vocabulary bucket, and the drift check reports the
share of such values per column (vocabulary drift: advertisers add a category, a client
ships a new device). A value that breaks the contract (null, outside a range, text longer
than its bound) is quarantined by ingestion and refused (400) by serving.

A field a request may leave out is either filled by the transformer (``hour``: the current
hour) or *nullable*: a caller may not know it (a new field old clients do not send yet), so
null in a request (the field left out), a raw log or the inference log is kept and the model
reads it as out-of-vocabulary; the quality checks report a column whose null share rises.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

DEVICE_TYPES = ("mobile", "desktop", "tablet", "ctv")
AD_CATEGORIES = (
    "retail",
    "travel",
    "finance",
    "gaming",
    "auto",
    "food",
    "health",
    "tech",
    "fashion",
    "entertainment",
)
SITE_CATEGORIES = ("news", "sports", "social", "video", "shopping", "blogs", "search")
OPERATING_SYSTEMS = ("android", "ios", "windows", "macos", "other")
MAX_POSITION = 8  # ad slot on the page, 1 = top
INT64_MAX = 2**63 - 1
MAX_TEXT = 64  # characters of a category value (real ones are a few words)
MAX_REQUEST_ID = 128


@dataclass(frozen=True)
class Field:
    """One request field. ``kind``: ``id`` (a non-negative int64, hashed by the model),
    ``category`` (text from an open vocabulary) or ``ordinal`` (an int in ``low..high``)."""

    name: str
    kind: Literal["id", "category", "ordinal"]
    vocabulary: tuple[str, ...] = ()
    low: int = 0
    high: int = INT64_MAX
    required: bool = True  # in a request
    # What the transformer sends for an optional field a request left out, from the time it
    # scores; None: nothing (the field is nullable, read as out-of-vocabulary).
    fill: Callable[[datetime], int | str] | None = None

    @property
    def nullable(self) -> bool:
        """Whether the value may be unknown (null) in a request, a raw log and the log."""
        return not self.required and self.fill is None

    @property
    def python_type(self) -> type:
        return str if self.kind == "category" else int

    @property
    def raw_type(self) -> pa.DataType:
        """Its type in the click log."""
        return {"id": pa.int64(), "category": pa.string(), "ordinal": pa.int8()}[self.kind]

    @property
    def log_type(self) -> pa.DataType:
        """Its type in the inference log."""
        return pa.string() if self.kind == "category" else pa.int64()

    @property
    def values(self) -> tuple[str | int, ...] | None:
        """The known values the model embeds one by one (None for hashed ids)."""
        if self.kind == "category":
            return self.vocabulary
        if self.kind == "ordinal":
            return tuple(range(self.low, self.high + 1))
        return None

    @property
    def description(self) -> str:
        """What a valid value is, for error messages."""
        if self.kind == "category":
            return f"a string of at most {MAX_TEXT} characters"
        if self.kind == "ordinal":
            return f"an integer {self.low}-{self.high}"
        return "an integer id"

    def sample(self, rng: np.random.Generator, n: int, max_id: int) -> np.ndarray:
        """``n`` valid values drawn uniformly: known categories, ordinals, ids 1..max_id."""
        if self.kind == "category":
            return rng.choice(np.array(self.vocabulary, dtype=object), n)
        if self.kind == "ordinal":
            return rng.integers(self.low, self.high + 1, n)
        return rng.integers(1, max_id + 1, n)


def _utc_hour(now: datetime) -> int:
    return now.hour


FIELDS: tuple[Field, ...] = (
    Field("user_id", "id"),
    Field("ad_id", "id"),
    Field("advertiser_id", "id"),
    Field("ad_category", "category", AD_CATEGORIES),
    Field("device_type", "category", DEVICE_TYPES),
    Field("site_category", "category", SITE_CATEGORIES),
    Field("os", "category", OPERATING_SYSTEMS, required=False),  # older clients leave it out
    Field("position", "ordinal", low=1, high=MAX_POSITION),
    Field("hour", "ordinal", low=0, high=23, required=False, fill=_utc_hour),  # UTC
)
BY_NAME = {field.name: field for field in FIELDS}
REQUEST_COLUMNS = tuple(field.name for field in FIELDS)
ID_COLUMNS = tuple(f.name for f in FIELDS if f.kind == "id")
CATEGORICAL_COLUMNS = tuple(f.name for f in FIELDS if f.kind == "category")
ORDINAL_COLUMNS = tuple(f.name for f in FIELDS if f.kind == "ordinal")
VOCABULARIES = {f.name: f.vocabulary for f in FIELDS if f.kind == "category"}
RANGES = {f.name: (f.low, f.high) for f in FIELDS if f.kind == "ordinal"}
NULLABLE_COLUMNS = tuple(f.name for f in FIELDS if f.nullable)


def examples(n: int = 1, seed: int = 0, max_id: int = 1_000) -> pd.DataFrame:
    """``n`` valid impressions, a column per request field in :data:`FIELDS` order: the rows
    tests and benchmarks start from, overriding only the columns they are about. Each field
    draws from its own stream, so a new field leaves the other columns as they were."""
    return pd.DataFrame(
        {
            f.name: f.sample(np.random.default_rng([seed, zlib.crc32(f.name.encode())]), n, max_id)
            for f in FIELDS
        }
    )


# Per-entity stats the feature store serves: counts and smoothed CTRs over two windows.
WINDOWS = ("1d", "7d")
USER_STATS = tuple(f"user_{kind}_{w}" for w in WINDOWS for kind in ("impressions", "clicks", "ctr"))
AD_STATS = tuple(f"ad_{kind}_{w}" for w in WINDOWS for kind in ("impressions", "clicks", "ctr"))
STAT_COLUMNS = USER_STATS + AD_STATS

LABEL = "clicked"
TIMESTAMP = "event_timestamp"  # when the impression was served
RAW_SCHEMA = pa.schema(
    [
        pa.field(TIMESTAMP, pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        *(pa.field(f.name, f.raw_type, nullable=f.nullable) for f in FIELDS),
        pa.field(LABEL, pa.int8(), nullable=False),
    ]
)
RAW_COLUMNS = tuple(RAW_SCHEMA.names)
# Curated data is the raw schema plus the partition column.
DATE_COLUMN = "date"

# One row per scored impression: the request, the stats as the model used them (after
# defaults), which stats were defaulted, the score and the model that gave it.
LOG_SCHEMA = pa.schema(
    [
        pa.field("timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("request_id", pa.string()),
        *(pa.field(f.name, f.log_type) for f in FIELDS),
        *(pa.field(name, pa.float64()) for name in STAT_COLUMNS),
        pa.field("defaulted", pa.list_(pa.string())),
        pa.field("probability", pa.float32()),
        pa.field("model_version", pa.string()),
        pa.field("variant", pa.string()),
        # The user-level experiment that assigned the row, and the variant (A / B) it chose
        # by user; null outside experiments.
        pa.field("experiment", pa.string()),
        pa.field("experiment_variant", pa.string()),
    ]
)
EXPERIMENT_COLUMNS = ("experiment", "experiment_variant")
# The variant of rows a shadow model scored: they answered no one, and only the shadow
# report reads them (readers of the log leave them out by default).
SHADOW_VARIANT = "shadow"
