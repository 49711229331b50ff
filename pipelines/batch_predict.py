"""The batch prediction pipeline: one step that scores a date range of curated impressions.

Compiled to ``batch_predict_pipeline.yaml`` beside this file (kept in git; a test fails when
it is stale). The step reads the curated log, Feast's offline store and the registry, none
of which its cache key names, so it never takes the cache; it gets its settings and
object-store credentials from the cluster as the training steps do.
"""

from kfp import dsl

from mlref.components.batch import batch_predict_op
from mlref.pipelines.training import fresh, from_cluster

PIPELINE_NAME = "mlref-batch-predict"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Score curated impressions with a registered model, a Parquet partition a day.",
)
def batch_predict_pipeline(
    model_uri: str = "",
    start_date: str = "",
    end_date: str = "",
    name: str = "",
    overrides: str = "",
) -> str:
    """``model_uri``: a ``models:/`` URI (empty: the champion); empty dates mean all days;
    ``name``: the output under ``<root>/predictions/`` (empty: the model's name)."""
    task = fresh(
        from_cluster(
            batch_predict_op(
                model_uri=model_uri,
                start_date=start_date,
                end_date=end_date,
                name=name,
                overrides=overrides,
            )
        )
    )
    return task.outputs["model_version"]
