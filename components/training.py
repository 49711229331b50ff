"""kfp components for the training half of the loop: training set, train, export, register.

Each body only parses its inputs and calls one plain function of
:mod:`mlref.training.workflow`; the heavy lifting is tested there, not here.
"""

from functools import partial
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from mlref.components.base import component
from mlref.settings import get_settings


@component
def training_set_op(
    sets: Output[dsl.Dataset],
    start_date: str = "",
    end_date: str = "",
    overrides: str = "",
) -> NamedTuple("TrainingSetOutputs", [("train_rows", int), ("feast_dropped", int)]):
    """Point-in-time join of curated impressions with Feast features, split by day."""
    from pathlib import Path

    from mlref.settings import load_settings
    from mlref.training import workflow

    report = workflow.make_training_set(
        load_settings(overrides), Path(sets.path), start_date, end_date
    )
    sets.metadata.update({"rows": report.rows, "data_version": report.data_version})
    return (report.rows["train"], report.feast_dropped)


# The training pod's image: the CUDA build where the cluster has GPUs.
@partial(component, image=get_settings().train.cluster_image)
def train_op(
    sets: Input[dsl.Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    epochs: int = 0,
    overrides: str = "",
) -> NamedTuple("TrainOutputs", [("val_auc", float), ("test_auc", float)]):
    """Train the CTR model (GPU when the pod has one); epochs 0 keeps the settings' value."""
    from pathlib import Path

    from mlref.platform import platform_for
    from mlref.settings import load_settings
    from mlref.training import workflow

    settings = load_settings(overrides)
    if epochs:
        settings.train.epochs = epochs
    launch = platform_for(settings).train_ranks  # train.distributed=torchrun: ranks, there
    result = workflow.fit(settings, Path(sets.path), Path(model.path), launch=launch)
    for name, value in result.items():
        metrics.log_metric(name, value)
    return (result["val_auc"], result["test_auc"])


@component
def export_op(
    sets: Input[dsl.Dataset],
    model: Input[Model],
    onnx_model: Output[Model],
    overrides: str = "",
) -> NamedTuple("ExportOutputs", [("int8_auc_drop", float), ("max_abs_diff", float)]):
    """Export to ONNX, quantize to int8 and fail the run unless the parity gate passes."""
    from pathlib import Path

    from mlref.settings import load_settings
    from mlref.training import workflow

    report = workflow.export_and_gate(
        load_settings(overrides), Path(model.path), Path(sets.path), Path(onnx_model.path)
    )
    return (report.auc_drop, report.max_abs_diff)


@component
def register_op(
    sets: Input[dsl.Dataset],
    model: Input[Model],
    onnx_model: Input[Model],
    overrides: str = "",
) -> NamedTuple("RegisterOutputs", [("version", str), ("champion", str), ("reason", str)]):
    """Log the run to MLflow, register the int8 model as challenger, promote if it wins."""
    from pathlib import Path

    from mlref.settings import load_settings
    from mlref.training import workflow

    decision = workflow.register(
        load_settings(overrides), Path(model.path), Path(onnx_model.path), Path(sets.path)
    )
    champion = decision.version if decision.promoted else decision.champion_before
    return (str(decision.version), str(champion), decision.reason)
