"""The training pipeline: ingest -> features -> training set -> train -> export -> register.

Compiled to ``training_pipeline.yaml`` beside this file (kept in git; a test fails when it
is stale), run locally by kfp's SubprocessRunner, or submitted to Kubeflow Pipelines.
"""

from kfp import dsl

from mlref.components.features import features_op
from mlref.components.ingest import ingest_op
from mlref.components.training import export_op, register_op, train_op, training_set_op
from mlref.settings import get_settings

PIPELINE_NAME = "mlref-training"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Ingest click logs, build Feast features, train, quantize, gate and register.",
)
def training_pipeline(
    source: str,
    start_date: str = "",
    end_date: str = "",
    epochs: int = 0,
    settings_json: str = "",
) -> str:
    """``source`` is the raw log location (path or fsspec URI); empty dates mean all data."""
    ingest = ingest_op(source=source, settings_json=settings_json)
    features = features_op(settings_json=settings_json).after(ingest)
    sets = training_set_op(
        start_date=start_date, end_date=end_date, settings_json=settings_json
    ).after(features)
    train = train_op(sets=sets.outputs["sets"], epochs=epochs, settings_json=settings_json)
    if get_settings().train.use_gpu_in_cluster:
        train.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    export = export_op(
        sets=sets.outputs["sets"], model=train.outputs["model"], settings_json=settings_json
    )
    register = register_op(
        sets=sets.outputs["sets"],
        model=train.outputs["model"],
        onnx_model=export.outputs["onnx_model"],
        settings_json=settings_json,
    )
    return register.outputs["champion"]
