"""Click-log data: the synthetic generator and ingestion into curated Parquet."""
