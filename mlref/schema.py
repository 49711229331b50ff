"""The click-log contract: columns, types and the closed vocabularies of the use case.

The generator writes it, ingestion validates against it, features and serving read it.
"""

from __future__ import annotations

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
MAX_POSITION = 8  # ad slot on the page, 1 = top

ID_COLUMNS = ("user_id", "ad_id", "advertiser_id")
CATEGORICAL_COLUMNS = ("ad_category", "device_type", "site_category")

RAW_SCHEMA = pa.schema(
    [
        pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("ad_id", pa.int64(), nullable=False),
        pa.field("advertiser_id", pa.int64(), nullable=False),
        pa.field("ad_category", pa.string(), nullable=False),
        pa.field("device_type", pa.string(), nullable=False),
        pa.field("site_category", pa.string(), nullable=False),
        pa.field("position", pa.int8(), nullable=False),
        pa.field("hour", pa.int8(), nullable=False),
        pa.field("clicked", pa.int8(), nullable=False),
    ]
)
RAW_COLUMNS = tuple(RAW_SCHEMA.names)
# Curated data is the raw schema plus the partition column.
DATE_COLUMN = "date"
