"""kfp component for batch prediction; the work is :func:`mlref.batch_predict.predict_range`."""

from typing import NamedTuple

from mlref.components.base import component


@component
def batch_predict_op(
    model_uri: str = "",
    start_date: str = "",
    end_date: str = "",
    name: str = "",
    overrides: str = "",
) -> NamedTuple("BatchPredictOutputs", [("rows", int), ("model_version", str), ("output", str)]):
    """Score curated impressions a day at a time; one Parquet partition per day."""
    from mlref.batch_predict import predict_range
    from mlref.settings import load_settings

    report = predict_range(
        load_settings(overrides), model_uri, start_date or None, end_date or None, name
    )
    return (sum(report.rows.values()), report.model_version, report.output)
