"""The training pipeline: ingest -> features -> training set -> train -> export -> register.

Compiled to ``training_pipeline.yaml`` beside this file (kept in git; a test fails when it
is stale), run locally by kfp's SubprocessRunner, or submitted to Kubeflow Pipelines.

Steps share data only through what a cluster shares: the curated log, Feast's stores and
MLflow (locations from settings), and kfp artifacts, which Kubeflow keeps in the pipeline
root on object storage. Every pod takes its settings and object-store credentials from the
cluster: ConfigMap ``mlref-settings`` and Secret ``mlref-object-store`` in the pipeline's
namespace (``kfp-kubernetes``; kfp's local runner ignores this platform config).

Caching: Kubeflow reuses a task's outputs when its cache key (parameter values, input
artifact ids, outputs spec, command, args and image; not env, not the data a step reads)
matches an earlier execution. Steps that read locations whose content changes between runs
(the raw logs, the curated log, Feast's stores, the registry's aliases) never take the cache;
train and export are functions of their input artifacts and parameters, so a run that reuses
the same training-set artifact may reuse their outputs.
"""

from kfp import dsl, kubernetes

from mlref.components.features import features_op
from mlref.components.ingest import ingest_op
from mlref.components.training import export_op, register_op, train_op, training_set_op
from mlref.k8s import spark
from mlref.settings import get_settings

PIPELINE_NAME = "mlref-training"
SETTINGS_CONFIG_MAP = "mlref-settings"
OBJECT_STORE_SECRET = "mlref-object-store"
# What a step needs to find the shared services; the ConfigMap must hold every key.
POD_SETTINGS = (
    "MLREF_MODE",
    "MLREF_WORK_DIR",
    "MLREF_IMAGE",
    "MLREF_STORAGE__ROOT",
    "MLREF_FEATURES__REDIS_CONNECTION",
    "MLREF_REGISTRY__TRACKING_URI",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "MLFLOW_S3_ENDPOINT_URL",
)
POD_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def data_step(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """A step that runs Spark when compiled with ``engine.data=spark``: in a cluster its pod is
    the driver of executor pods (mlref.k8s.spark), so it also maps the chart's Spark settings,
    gets its pod's IP and namespace from the downward API, and the driver's labels (which the
    chart's NetworkPolicies select). The run's ServiceAccount,
    allowed to create the executors, is given at submission (pipelines/runner.py)."""
    if get_settings().engine.data == "spark":
        kubernetes.use_config_map_as_env(
            task, SETTINGS_CONFIG_MAP, {k: k for k in spark.SETTINGS_KEYS}
        )
        for name, field_path in spark.POD_FIELDS.items():
            kubernetes.use_field_path_as_env(task, name, field_path)
        for label, value in spark.DRIVER_LABELS.items():
            kubernetes.add_pod_label(task, label, value)
    return task


def fresh(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Never reuse a cached execution of ``task``: it reads data its cache key does not name."""
    return task.set_caching_options(False)


def from_cluster(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Give ``task``'s pod the cluster's settings and object-store credentials as env."""
    kubernetes.use_config_map_as_env(task, SETTINGS_CONFIG_MAP, {k: k for k in POD_SETTINGS})
    kubernetes.use_secret_as_env(task, OBJECT_STORE_SECRET, {k: k for k in POD_SECRETS})
    return task


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Ingest click logs, build Feast features, train, quantize, gate and register.",
)
def training_pipeline(
    source: str,
    start_date: str = "",
    end_date: str = "",
    epochs: int = 0,
    overrides: str = "",
) -> str:
    """``source`` is the raw log location (path or fsspec URI); empty dates mean all data;
    ``overrides`` is JSON of settings fields that replace the pods' own."""
    ingest = fresh(data_step(from_cluster(ingest_op(source=source, overrides=overrides))))
    features = fresh(data_step(from_cluster(features_op(overrides=overrides).after(ingest))))
    sets = fresh(
        data_step(
            from_cluster(
                training_set_op(
                    start_date=start_date, end_date=end_date, overrides=overrides
                ).after(features)
            )
        )
    )
    train = from_cluster(train_op(sets=sets.outputs["sets"], epochs=epochs, overrides=overrides))
    if get_settings().train.use_gpu_in_cluster:
        train.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    export = from_cluster(
        export_op(sets=sets.outputs["sets"], model=train.outputs["model"], overrides=overrides)
    )
    register = fresh(
        from_cluster(
            register_op(
                sets=sets.outputs["sets"],
                model=train.outputs["model"],
                onnx_model=export.outputs["onnx_model"],
                overrides=overrides,
            )
        )
    )
    return register.outputs["champion"]
