"""kfp component: validate raw click logs into curated Parquet (see :mod:`mlref.data.ingest`)."""

from typing import NamedTuple

from kfp.dsl import Metrics, Output

from mlref.components.base import component


@component
def ingest_op(
    source: str,
    metrics: Output[Metrics],
    overrides: str = "",
) -> NamedTuple(
    "IngestOutputs",
    [("rows_in", int), ("rows_curated", int), ("rows_quarantined", int), ("curated_uri", str)],
):
    """Ingest ``source``; the counts are outputs too because local runs never save Metrics."""
    from mlref.data.ingest import ingest
    from mlref.settings import load_settings

    settings = load_settings(overrides)
    result = ingest(source, settings)
    counts = {
        "rows_in": result.rows_in,
        "rows_curated": result.rows_curated,
        "rows_quarantined": result.rows_quarantined,
    }
    for name, value in counts.items():
        metrics.log_metric(name, value)
    return (*counts.values(), settings.curated_uri)
