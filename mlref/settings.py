"""The one settings object.

Every field can be set three ways, highest precedence first: the ``MLREF_*`` environment
(nested sections with ``__``, e.g. ``MLREF_TRAIN__EPOCHS=3``), a YAML config file named by
``MLREF_CONFIG`` (or ``mlref.yaml`` in the working directory), and the defaults below.
Local mode needs no configuration at all: every path lives under ``work_dir``.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from mlref.schema import MAX_POSITION

MODELS_SCHEME = "models:/"  # MLflow registry URIs: models:/<name>@<alias>, models:/<name>/<n>

CONFIG_ENV = "MLREF_CONFIG"
DEFAULT_CONFIG_FILE = "mlref.yaml"


class Section(BaseModel):
    model_config = {"extra": "forbid"}


class StorageSettings(Section):
    """Where the data every step shares lives: work_dir locally, object storage in a cluster.

    Pipeline steps, CronJobs and servers run in separate pods with nothing on disk in common,
    so in cluster mode everything one of them writes for another goes under ``root``.
    """

    root: str = Field(
        "",
        description="Shared data root, any fsspec URI (cluster: s3://mlref). Empty: work_dir.",
    )
    raw_uri: str = Field(
        "", description="Raw click logs that retraining ingests; empty: <root>/data/raw."
    )


class DataSettings(Section):
    """The synthetic click-log generator."""

    seed: int = 7
    start_date: str = "2026-01-01"
    days: int = Field(
        8, ge=1, description="Baseline days; 8 fills the 7-day feature windows before testing."
    )
    rows_per_day: int = Field(20_000, ge=1)
    n_users: int = Field(1_000, ge=1)
    n_ads: int = Field(400, ge=1)
    n_advertisers: int = Field(60, ge=1)
    chunk_rows: int = Field(250_000, ge=1_000, description="Rows held in memory at once.")
    n_segments: int = Field(4, ge=1, description="Hidden user segments of the synthetic world.")
    target_ctr: float = Field(0.05, gt=0, lt=0.5, description="Overall CTR of a baseline day.")
    quality_bug_share: float = Field(
        0.2, gt=0, le=1, description="Share of rows the `quality` scenario corrupts."
    )
    coldstart_share: float = Field(
        0.3, gt=0, le=1, description="Share of impressions new ads take in `coldstart`."
    )
    treatment_lift: float = Field(
        0.0,
        ge=0,
        description="True relative CTR lift for users the experiment (`experiment.*`) "
        "assigns to B; 0: both variants equal (an A/A world).",
    )


class IngestSettings(Section):
    """Validation of raw click logs into curated Parquet."""

    clock_skew_seconds: float = Field(
        300.0, ge=0, description="How far in the future an event may be before it is rejected."
    )
    batch_rows: int = Field(250_000, ge=1_000, description="Rows validated in memory at once.")


class FeatureSettings(Section):
    """Feast feature computation and stores."""

    ctr_prior: float = Field(0.05, gt=0, lt=1, description="Prior CTR for cold entities.")
    prior_strength: float = Field(20.0, gt=0, description="Pseudo-impressions of the prior.")
    user_hash_buckets: int = Field(20_000, ge=16)
    ad_hash_buckets: int = Field(4_000, ge=16)
    advertiser_hash_buckets: int = Field(512, ge=16)
    project: str = "mlref"
    redis_connection: str = Field(
        "localhost:6379", description="Online store in cluster mode (host:port[,options])."
    )
    offline_uri: str = Field(
        "", description="Registry and offline data root in cluster mode; empty: <root>/features."
    )
    reference_position: int | None = Field(
        None,
        description="Slot every score is given at (1 = top): the model trains on the slot a row "
        "was shown in and scores as if each ad were in this one, so rankings follow relevance, "
        "not slot order (docs/position-bias.md). None: score at the request's slot.",
    )

    @model_validator(mode="after")
    def _reference_position_in_range(self) -> FeatureSettings:
        if self.reference_position is not None and not (
            1 <= self.reference_position <= MAX_POSITION
        ):
            raise ValueError(
                f"features.reference_position is {self.reference_position}, not a slot: set "
                f"MLREF_FEATURES__REFERENCE_POSITION to 1-{MAX_POSITION} (1 = top), or leave "
                "it unset to score at each request's slot"
            )
        return self


class TrainSettings(Section):
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(1024, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    lr_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Factor the learning rate falls by per epoch after the warm-up (smoothly, "
        "step by step): a smaller final step leaves the kept epoch's weights less noisy. "
        "1: constant.",
    )
    embedding_dim: int = Field(16, ge=1)
    cross_layers: int = Field(2, ge=0)
    cross_rank: int = Field(
        0, ge=0, description="0: full-rank cross weights; r > 0: low-rank U V^T of rank r."
    )
    hidden_units: list[int] = [128, 64]
    dropout: float = Field(0.1, ge=0, lt=1)
    patience: int = Field(2, ge=1, description="Epochs without val logloss gain before stopping.")
    seed: int = 7
    device: Literal["auto", "cpu", "cuda"] = "auto"
    use_gpu_in_cluster: bool = Field(
        False,
        description="Request nvidia.com/gpu for the training pod (compile time); a cluster "
        "without GPUs would leave it Pending, so only GPU clusters turn it on.",
    )
    cluster_image: str = Field(
        "", description="Image of the training pod; empty: `image`. GPU clusters: the CUDA build."
    )
    test_days: int = Field(1, ge=1)
    val_days: int = Field(1, ge=1)
    large_batch: Literal["auto", "on", "off"] = Field(
        "auto",
        description="The large-batch recipe (batch_size_gpu, lr_scaling, warmup_steps). auto: on "
        "CUDA only, where batches of batch_size leave the GPU idle; on: on the CPU too (to check "
        "its quality there); off: batch_size and learning_rate everywhere.",
    )
    batch_size_gpu: int = Field(
        65_536,
        ge=1,
        description="Large-batch recipe: the batch, capped so an epoch still takes "
        "min_steps_per_epoch steps and never below batch_size.",
    )
    min_steps_per_epoch: int = Field(
        128, ge=1, description="Large-batch recipe: an epoch of a handful of steps learns little."
    )
    lr_scaling: Literal["none", "sqrt", "linear"] = Field(
        "sqrt",
        description="Large-batch recipe: learning_rate (tuned at batch_size) times "
        "(batch / batch_size) ** 0.5 or ** 1. sqrt suits AdamW, whose step size does not grow "
        "with the gradient's scale as SGD's does.",
    )
    warmup_steps: int = Field(
        50,
        ge=0,
        description="Large-batch recipe: steps over which the rate ramps linearly from "
        "learning_rate to the scaled rate (the first steps' statistics are the noisiest).",
    )
    precision: Literal["float32", "tf32", "bfloat16"] = Field(
        "float32",
        description="CUDA math, chosen by measurement (bench/training.py prints all three): "
        "this model's layers are too narrow for bf16 autocast's casts to pay. The CPU always "
        "trains in float32.",
    )
    device_memory_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of free GPU memory the training set may take; a larger set streams "
        "from host memory in chunks (0: always stream).",
    )
    host_memory_bytes: int = Field(
        0,
        ge=0,
        description="Host memory the training set may take (frames and tensors); a larger set "
        "streams from its shards. 0: a quarter of what the process may use (cgroup or machine).",
    )
    shuffle_buffer_shards: int = Field(
        4, ge=1, description="Streamed training: shards whose rows are shuffled together."
    )
    prefetch_shards: int = Field(
        2,
        ge=1,
        description="Streamed reads in shard order (the statistics pass, evaluation): shards "
        "a background thread reads ahead. Training reads a shuffle buffer ahead.",
    )
    cache_encoded: bool = Field(
        True,
        description="Streamed training: keep each shard's encoded tensors in a temporary folder "
        "on local disk after its first read, so that every later read (each epoch, each "
        "evaluation) loads them instead of decoding and encoding the shard again; needs local "
        "disk for the set's tensors (about 124 bytes a row).",
    )
    distributed: Literal["none", "torchrun-local", "torchrun"] = Field(
        "none",
        description="Data-parallel training (DDP): none: one process; torchrun-local: the "
        "training step runs torchrun on its machine with procs_per_node ranks; torchrun: the "
        "platform runs it (locally as torchrun-local; in a cluster as a Kubeflow Trainer "
        "TrainJob of `nodes` pods, created and awaited by the step).",
    )
    nodes: int = Field(
        1, ge=1, description="A Kubeflow Trainer TrainJob's numNodes (mlref.training.trainjob)."
    )
    procs_per_node: str = Field(
        "auto",
        pattern=r"^([1-9][0-9]*|auto|cpu|gpu)$",
        description="Ranks per node: a number, or auto (torchrun: one per GPU, else per CPU; "
        "TrainJob: one per GPU, else per CPU of resourcesPerNode).",
    )
    node_resources: dict[str, dict[str, str]] = Field(
        {},
        description="A TrainJob's resourcesPerNode, e.g. {'limits': {'nvidia.com/gpu': '8'}}.",
    )
    trainjob_timeout_s: int = Field(
        6 * 3600,
        ge=1,
        description="A TrainJob's activeDeadlineSeconds, and how long the step awaits it.",
    )
    trainjob_poll_s: float = Field(5.0, gt=0, description="How often the step reads the TrainJob.")
    negative_rate: float = Field(
        1.0,
        description="Share w of negative rows training reads (all positives are kept), drawn "
        "from the seed; the exported model adds log(w) to its logit, so its probabilities are "
        "CTRs at the true base rate. 1: every row.",
    )
    negative_resample: bool = Field(
        True,
        description="With negative_rate < 1: a fresh sample of negatives every epoch, drawn "
        "from (seed, epoch), so each epoch shows the model other negatives at the same cost; "
        "false: one sample for the whole run.",
    )
    init: Literal["scratch", "champion"] = Field(
        "scratch",
        description="What training starts from: random weights on every training day "
        "(scratch), or the registry champion's weights on the last window_days (champion, "
        "a warm start; needs the champion's feature spec and architecture).",
    )
    window_days: int = Field(
        0,
        ge=0,
        description="Training days a warm start reads, the most recent before validation; "
        "0: all of them. A full retrain always reads every training day.",
    )
    incompatible_parent: Literal["refuse", "scratch"] = Field(
        "refuse",
        description="A warm start whose champion has another feature spec or architecture: "
        "fail naming the difference (refuse), or train from scratch and record why (scratch).",
    )
    cpu_threads: int = Field(
        0,
        ge=0,
        description="torch's intra-op threads when training on the CPU; 0: torch's default (one "
        "per core the process sees: a pod sees its node's, not its CPU limit's). Threads beyond "
        "the cores a process gets spin-wait, burning CPU without speeding anything up.",
    )

    @model_validator(mode="after")
    def _negative_rate_in_range(self) -> TrainSettings:
        if not 0 < self.negative_rate <= 1:
            raise ValueError(
                f"train.negative_rate is {self.negative_rate}, outside (0, 1]: set "
                "MLREF_TRAIN__NEGATIVE_RATE to the share of negatives to train on, e.g. 0.1, "
                "or 1 to train on all of them"
            )
        return self


class ParitySettings(Section):
    """Thresholds the int8 model must meet against fp32 before it is registered."""

    max_abs_diff: float = 0.05
    mean_abs_diff: float = 0.005
    max_auc_drop: float = 0.002
    max_logloss_increase: float = 0.002
    export_max_abs_diff: float = Field(
        1e-4, description="fp32 ONNX vs torch: anything larger is an export bug, not rounding."
    )


class RegistrySettings(Section):
    """MLflow tracking and the model registry's promotion rule."""

    tracking_uri: str = Field(
        "", description="Empty: SQLite under work_dir (local mode); cluster: the tracking server."
    )
    artifact_location: str = Field(
        "",
        description="Artifact root of a newly created experiment. Empty: the tracking server's "
        "default for an http(s) tracking URI, else work_dir/mlruns.",
    )
    experiment: str = "mlref-ctr"
    champion_min_auc_gain: float = Field(
        0.0,
        description="Challenger must beat champion AUC by at least this much to be promoted "
        "(0: a tie promotes the newer model, trained on fresher data).",
    )
    rollout: Literal["canary", "direct"] = Field(
        "canary",
        description="canary: a challenger that wins offline becomes champion only after a "
        "canary rollout promotes it; direct: the offline win promotes it at once.",
    )
    champion_max_logloss_increase: float = Field(
        0.001,
        ge=0,
        description="...and its logloss may be worse than the champion's by at most this.",
    )


class ServingSettings(Section):
    host: str = "127.0.0.1"
    transformer_port: int = 8080
    predictor_port: int = 8085
    grpc: bool = False
    intra_op_threads: int = Field(1, ge=1)
    max_batch: int = Field(1024, ge=1)
    log_flush_rows: int = Field(5_000, ge=1)
    log_flush_seconds: float = Field(5.0, gt=0)
    log_uri: str = Field(
        "", description="Inference log target (fsspec URI, e.g. s3://...); empty: work_dir."
    )
    log_sink: Literal["storage", "http"] = Field(
        "storage",
        description="Where the transformer sends its inference log: storage writes Parquet to "
        "log_uri; http posts CloudEvents to log_sink_url (KServe's logger sink: a Knative "
        "broker, `mlref serve log-sink`, ...) and writes to log_uri what the sink refuses.",
    )
    log_sink_url: str = Field("", description="The logger sink's URL, for log_sink http.")
    log_sink_port: int = Field(8090, description="Port of `mlref serve log-sink`.")
    log_memory_rows: int = Field(
        50_000,
        ge=1,
        description="Inference-log rows held in memory while the sink is down (and again while "
        "the writer is busy); more go to the disk spool.",
    )
    log_spool_rows: int = Field(
        2_000_000,
        ge=0,
        description="Inference-log rows spooled to local disk while the sink is down; rows past "
        "this bound are dropped and counted (mlref_inference_log_dropped_rows_total).",
    )
    log_spool_dir: str = Field(
        "",
        description="Local directory of the inference-log spool (a volume that outlives the "
        "container); empty: work_dir/inference_log_spool.",
    )
    log_retry_max_seconds: float = Field(
        30.0, gt=0, description="Longest wait between two tries of an unavailable log sink."
    )
    variant: str = Field(
        "stable", description="A predictor's variant label: `stable`, or `canary` for a candidate."
    )
    predictor_timeout_seconds: float = Field(10.0, gt=0)
    predictor_host_header: str = Field(
        "",
        description="Host header of the transformer's predictor calls: with --predictor_host "
        "a Gateway, the host of the predictor's HTTPRoute (Standard-mode canary split).",
    )
    predictor_ready_timeout_seconds: float = Field(
        120.0, gt=0, description="How long the transformer waits at start for its predictors."
    )
    model_uri: str = Field("", description="Model to serve; empty: models:/<model_name>@champion.")
    feature_cache_rows: int = Field(
        100_000,
        ge=0,
        description="Entity rows per feature view the transformer keeps between "
        "materializations; 0: every request reads the online store.",
    )
    prediction_cache_size: int = Field(
        0,
        ge=0,
        description="Scores the predictor keeps, by model version and exact inputs (the least "
        "recently used dropped first); 0: no prediction cache.",
    )
    prediction_cache_ttl_seconds: float = Field(
        60.0, gt=0, description="How long a cached score is served after it was computed."
    )

    @model_validator(mode="after")
    def _sink_has_url(self) -> ServingSettings:
        if self.log_sink == "http" and not self.log_sink_url:
            raise ValueError(
                "serving.log_sink is http but serving.log_sink_url is empty: set "
                "MLREF_SERVING__LOG_SINK_URL to the logger sink, or log_sink to storage"
            )
        return self


class CanarySettings(Section):
    """Canary rollouts: the stages, the evidence a decision needs, and where state lives."""

    inference_service: str = Field("ctr", description="The InferenceService `mlref canary` drives.")
    deployment_mode: Literal["Serverless", "Standard"] = Field(
        "Serverless",
        description="KServe deployment mode: Serverless splits with canaryTrafficPercent, "
        "Standard with spec.canary.",
    )
    stages: list[int] = Field([10, 50, 100], description="Traffic percent of each stage.")
    bake_seconds: float = Field(300.0, ge=0, description="Time each stage serves before analysis.")
    poll_seconds: float = Field(5.0, gt=0)
    max_hold_seconds: float = Field(
        0.0,
        ge=0,
        description="How long a stage keeps serving after its bake while the analysis holds "
        "for lack of evidence, before rolling back; 0: one more bake_seconds.",
    )
    ready_timeout_seconds: float = Field(300.0, gt=0)
    min_requests: int = Field(200, ge=1, description="Requests per variant before any decision.")
    alpha: float = Field(0.01, gt=0, lt=1, description="Significance of the error-rate test.")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Canary error rate ceiling.")
    max_latency_ratio: float = Field(1.5, gt=0, description="Canary / stable p99 latency ceiling.")
    latency_slack_ms: float = Field(
        2.0, ge=0, description="p99 differences below this never fail the latency check."
    )
    max_score_psi: float = Field(0.25, ge=0, description="Prediction-score PSI ceiling.")
    max_logloss_increase: float = Field(
        0.02, ge=0, description="Labelled traffic: canary logloss minus stable, upper CI bound."
    )
    max_calibration_error: float = Field(
        0.5, ge=0, description="Labelled traffic: |predicted / observed CTR - 1| ceiling."
    )
    await_labels: bool = Field(
        False,
        description="Click labels arrive for canary traffic: a score shift waits for the "
        "labelled checks instead of rolling back on its own.",
    )
    prometheus_url: str = Field(
        "", description="Prometheus HTTP API for analysis in cluster mode; empty: local source."
    )
    split_seed: int | None = Field(
        None, description="Seed of the local split proxy's draws; unset: a fresh one each start."
    )
    candidate_port: int = Field(8086, description="Local mode: the candidate predictor's port.")
    proxy_port: int = Field(
        8087, description="Local mode: the split proxy in front of stable and candidate."
    )


class ExperimentSettings(Section):
    """User-level A/B experiments: who gets which variant, and how the test is judged."""

    name: str = Field("ab", description="The experiment; names its log rows and its salt.")
    salt: str = Field("", description="Salt of the user hash; empty: the experiment's name.")
    percent: int = Field(50, ge=1, le=99, description="Share of users assigned to B.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Two-sided significance of the test.")
    power: float = Field(0.8, gt=0, lt=1, description="Power the plan sizes the sample for.")
    mde: float = Field(
        0.05, gt=0, description="Minimum detectable effect: relative change of CTR per user."
    )
    route_header: str = Field(
        "Knative-Serving-Tag",
        description="Header the transformer names each call's variant with; the predictor "
        "route (Knative tag routing, the local split proxy) sends it to that variant's model.",
    )
    state_file: str = Field(
        "",
        description="The running experiment (written by `mlref experiment start`; in a cluster "
        "a ConfigMap mounted into the transformer); empty: <canary_dir>/experiment.yaml.",
    )
    config_map: str = Field(
        "ctr-experiment",
        description="Cluster mode: the ConfigMap `mlref experiment start|stop` applies, which the "
        "transformer pods mount at the directory of experiment.state_file.",
    )


class ShadowSettings(Section):
    """Shadow deployment: a second model scores every request off the response path."""

    port: int = Field(8088, description="Local mode: the shadow predictor's port.")
    predictor_url: str = Field(
        "",
        description="The shadow predictor the transformer mirrors requests to (in a cluster the "
        "shadow InferenceService's predictor); empty: http://<serving.host>:<shadow.port>.",
    )
    inference_service: str = Field(
        "ctr-shadow", description="Cluster mode: the InferenceService serving the shadow model."
    )
    model_name: str = Field(
        "",
        description="The model name the shadow predictor serves (KServe names it after its "
        "InferenceService, in a cluster <serving.name>-shadow); empty: the live model's name.",
    )
    state_file: str = Field(
        "",
        description="Whether a shadow runs, and which model (written by `mlref shadow start`; in "
        "a cluster a ConfigMap mounted into the transformer); empty: <canary_dir>/shadow.yaml.",
    )
    timeout_seconds: float = Field(
        1.0, gt=0, description="A shadow call still unanswered after this is dropped."
    )
    queue_batches: int = Field(
        64, ge=1, description="Batches waiting for the shadow; more are dropped, not queued."
    )
    concurrency: int = Field(4, ge=1, description="Shadow calls in flight at once.")
    decision_top_percent: float = Field(
        10.0,
        gt=0,
        lt=100,
        description="The ranking decision `mlref shadow report` compares: a request is chosen "
        "when its score is in the top this-% of its model's scores over the compared requests.",
    )
    linger_ms: float = Field(
        50.0,
        ge=0,
        description="How long the first row waiting for the shadow waits for more, so that the "
        "shadow gets few large calls rather than one per live batch (0: send what waits at once).",
    )
    max_batch_rows: int = Field(
        256,
        ge=1,
        description="Rows in one shadow call at most (and at most serving.max_batch); a live "
        "batch larger than this is sent alone, whole.",
    )


class DriftSettings(Section):
    """The drift job: what counts as drift, what as broken data, and how often to retrain."""

    window_hours: float = Field(24.0, gt=0, description="Live inference log window compared.")
    reference_rows: int = Field(50_000, ge=100, description="Reference sample kept with a model.")
    sample_rows: int = Field(
        100_000, ge=1_000, description="Rows per side above which the comparison samples."
    )
    drift_share: float = Field(
        0.3, gt=0, le=1, description="Share of drifted columns that counts as dataset drift."
    )
    method: str = Field("psi", description="Evidently drift method of categorical columns.")
    threshold: float = Field(0.2, gt=0, description="Drift threshold of categorical columns.")
    numeric_method: str = Field(
        "wasserstein",
        description="Drift method of numeric columns (entity stats, the score): a distance, "
        "since stats of few entities take few distinct values that PSI bins overreact to.",
    )
    numeric_threshold: float = Field(0.1, gt=0, description="Drift threshold of numeric columns.")
    column_methods: dict[str, str] = Field(
        {}, description="Per-column Evidently drift method, e.g. {'hour': 'jensenshannon'}."
    )
    column_thresholds: dict[str, float] = Field({}, description="Per-column drift thresholds.")
    max_null_share: float = Field(0.05, ge=0, le=1, description="Data-quality: null share ceiling.")
    max_out_of_range_share: float = Field(0.05, ge=0, le=1)
    max_new_value_share: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Vocabulary drift: rise in the share of category values outside the "
        "contract's vocabulary (reported; extend the vocabulary, then retrain).",
    )
    max_cold_share_increase: float = Field(
        0.1, ge=0, le=1, description="Cold start: rise in the share of rows scored with priors."
    )
    max_ne_increase: float = Field(
        0.005,
        ge=0,
        description="Labelled traffic: tolerated rise of normalized entropy over the reference.",
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="Significance of that rise (one-sided z-test)."
    )
    cooldown_hours: float = Field(24.0, ge=0, description="Minimum time between retrainings.")
    retrain_init: Literal["scratch", "champion"] = Field(
        "scratch",
        description="train.init of the retrainings the trigger submits: a full retrain, or a "
        "warm start from the champion on train.window_days.",
    )
    label_maturity_hours: float = Field(
        1.0,
        ge=0,
        description="How long after serving a request without a click counts as no click.",
    )


class DemoSettings(Section):
    """`mlref demo`: how much of the loop to replay, sized to finish in minutes on a laptop."""

    scenario: str = Field("concept", description="Drift scenario of the days after the baseline.")
    drift_days: int = Field(
        4, ge=3, description="Days of drift before retraining (train, validation, test)."
    )
    replay_rows: int = Field(
        20_000,
        ge=100,
        description="Impressions replayed per day of traffic: enough labels to see an NE rise.",
    )
    replay_batch: int = Field(
        20, ge=1, description="Impressions per request when replaying a window."
    )
    canary_bake_seconds: float = Field(8.0, gt=0, description="Bake time of each canary stage.")
    canary_passes: int = Field(
        5,
        ge=1,
        description="Most passes the canary's traffic makes over the live day: it flows until "
        "the rollout decides, bounded in count.",
    )
    canary_max_seconds: float = Field(
        900.0,
        gt=0,
        description="Safety bound on the canary rollout: a stage still short of evidence then "
        "stops the demo with an error; the verdict itself never rests on the clock.",
    )


class PipelineSettings(Section):
    host: str = Field("", description="Kubeflow Pipelines endpoint for `pipeline submit`.")
    namespace: str = "kubeflow"
    existing_token_env: str = Field(
        "KF_PIPELINES_TOKEN", description="Environment variable holding a bearer token."
    )


class ClusterSettings(Section):
    """Cluster mode: where mlref is deployed and what its manifests are validated against."""

    namespace: str = "mlref"
    kubernetes_version: str = Field(
        "1.33", description="Kubernetes minor version the manifests are validated against."
    )
    pushgateway_url: str = Field(
        "", description="Prometheus Pushgateway the drift job pushes its gauges to."
    )


class EngineSettings(Section):
    """Which engine runs the data steps: one process (local) or Spark, for inputs that
    outgrow one pod. Both give the same results from the same code (``mlref.data``)."""

    data: Literal["local", "spark"] = Field(
        "local",
        description="local: the step's own process; spark: Spark's executors run the same "
        "per-batch code (needs Java; MLREF_ENGINE__DATA=spark).",
    )
    spark_master: str = Field(
        "",
        description="Spark master; empty: the platform's (local[*], the step's process on "
        "every core; in a cluster k8s://https://kubernetes.default.svc, see docs/cluster.md).",
    )
    spark_python: str = Field(
        "", description="Python of Spark's workers (PYSPARK_PYTHON); empty: this interpreter."
    )
    spark_conf: dict[str, str] = Field(
        {}, description="Further Spark settings, e.g. {'spark.executor.instances': '4'}."
    )
    # Spark on Kubernetes (a k8s:// master): the step's pod is the driver.
    spark_executors: int = Field(2, ge=1, description="Executor pods (spark.executor.instances).")
    spark_executor_cores: int = Field(1, ge=1, description="Cores of each executor pod.")
    spark_executor_memory: str = Field("2g", description="JVM heap of each executor pod.")
    spark_service_account: str = Field(
        "mlref-spark",
        description="ServiceAccount the pipeline runs as when data is spark: its Role lets "
        "the driver create and delete executor pods in the pipelines' namespace.",
    )
    spark_driver_port: int = Field(7078, description="Driver RPC port executors connect to.")
    spark_block_manager_port: int = Field(
        7079, description="Block manager port of the driver and of every executor."
    )


class Settings(BaseSettings):
    """All of mlref's configuration, validated at construction."""

    model_config = SettingsConfigDict(
        env_prefix="MLREF_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    mode: Literal["local", "cluster"] = "local"
    model_name: str = Field(
        "ctr",
        description="The model's one name: its MLflow registered model, the name it is served "
        "under (KServe passes the InferenceService's as --model_name), the published folder.",
    )
    work_dir: Path = Field(Path(".mlref"), description="Everything local mode writes.")
    image: str = Field(
        "ghcr.io/mlref/mlref:0.1.0", description="The one image every component and server runs."
    )
    storage: StorageSettings = StorageSettings()
    data: DataSettings = DataSettings()
    ingest: IngestSettings = IngestSettings()
    features: FeatureSettings = FeatureSettings()
    train: TrainSettings = TrainSettings()
    parity: ParitySettings = ParitySettings()
    registry: RegistrySettings = RegistrySettings()
    serving: ServingSettings = ServingSettings()
    canary: CanarySettings = CanarySettings()
    experiment: ExperimentSettings = ExperimentSettings()
    shadow: ShadowSettings = ShadowSettings()
    drift: DriftSettings = DriftSettings()
    demo: DemoSettings = DemoSettings()
    pipeline: PipelineSettings = PipelineSettings()
    cluster: ClusterSettings = ClusterSettings()
    engine: EngineSettings = EngineSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=config_file()),
        )

    @model_validator(mode="after")
    def _cluster_has_storage(self) -> Settings:
        if self.mode == "cluster" and not self.storage.root:
            raise ValueError(
                "mode is cluster but storage.root is empty: pods share no disk, so set "
                "MLREF_STORAGE__ROOT to the object store (e.g. s3://mlref)"
            )
        return self

    def registry_uri(self, version: str | int = "", alias: str = "champion") -> str:
        """The model in MLflow's registry: ``models:/<name>/<version>``, else ``@<alias>``."""
        return f"{MODELS_SCHEME}{self.model_name}" + (f"/{version}" if version else f"@{alias}")

    # Derived locations: one place decides where each artefact lives. The *_dir paths are
    # this process's own disk; the *_uri locations are shared with other steps and pods.
    @property
    def data_root(self) -> str:
        return self.storage.root.rstrip("/") or str(self.work_dir.resolve())

    def shared(self, relative: str) -> str:
        """The shared location ``relative`` under the data root (a path or an fsspec URI)."""
        return f"{self.data_root}/{relative}"

    @property
    def raw_uri(self) -> str:
        return self.storage.raw_uri or self.shared("data/raw")

    @property
    def curated_uri(self) -> str:
        return self.shared("data/curated")

    @property
    def quarantine_uri(self) -> str:
        return self.shared("data/quarantine")

    @property
    def labels_uri(self) -> str:
        return self.shared("labels")

    @property
    def feature_store_uri(self) -> str:
        """Feast's registry and offline data: feature_dir locally, shared storage in a cluster."""
        if self.mode == "cluster":
            return self.features.offline_uri.rstrip("/") or self.shared("features")
        return str(self.feature_dir.resolve())

    @property
    def feature_online_store(self) -> dict:
        """Feast's online store config: Redis in a cluster, SQLite beside the local registry."""
        if self.mode == "cluster":
            return {"type": "redis", "connection_string": self.features.redis_connection}
        return {"type": "sqlite", "path": str(self.feature_dir.resolve() / "online.db")}

    @property
    def models_uri(self) -> str:
        """Served model files, ``<models_uri>/<name>/<version>/``: what storageUri points at."""
        return self.shared("models")

    @property
    def raw_dir(self) -> Path:
        return self.work_dir / "data" / "raw"

    @property
    def curated_dir(self) -> Path:
        return self.work_dir / "data" / "curated"

    @property
    def quarantine_dir(self) -> Path:
        return self.work_dir / "data" / "quarantine"

    @property
    def feature_dir(self) -> Path:
        return self.work_dir / "features"

    @property
    def artifacts_dir(self) -> Path:
        return self.work_dir / "artifacts"

    @property
    def inference_log_dir(self) -> Path:
        return self.work_dir / "inference_log"

    @property
    def inference_log_spool_dir(self) -> Path:
        return Path(self.serving.log_spool_dir or self.work_dir / "inference_log_spool")

    @property
    def inference_log_uri(self) -> str:
        """Where the transformer logs and the drift job and canary analysis read."""
        return self.serving.log_uri or self.shared("inference_log")

    @property
    def canary_dir(self) -> Path:
        return self.work_dir / "canary"

    @property
    def shadow_state_path(self) -> Path:
        named = self.shadow.state_file
        return Path(named) if named else self.canary_dir / "shadow.yaml"

    @property
    def experiment_state_path(self) -> Path:
        named = self.experiment.state_file
        return Path(named) if named else self.canary_dir / "experiment.yaml"

    @property
    def shadow_url(self) -> str:
        return self.shadow.predictor_url or f"http://{self.serving.host}:{self.shadow.port}"

    @property
    def drift_dir(self) -> Path:
        return self.work_dir / "drift"

    @property
    def tracking_uri(self) -> str:
        if self.registry.tracking_uri:
            return self.registry.tracking_uri
        return f"sqlite:///{(self.work_dir / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifact_root(self) -> Path:
        return (self.work_dir / "mlruns").resolve()


def config_file() -> Path | None:
    """The YAML config file in force, if any; a named file that is missing is an error."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise FileNotFoundError(f"{CONFIG_ENV}={named}: no such file; unset it or fix the path")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own ``Settings`` instead)."""
    return Settings()


def load_settings(overrides: str = "") -> Settings:
    """A kfp component's settings: its pod's own (from the environment, which the cluster's
    ConfigMap and Secret fill), with the run's ``overrides`` (JSON, any subset of the fields)
    on top. A local run passes every field of its settings; a cluster run only what the
    submitter set on purpose, so the cluster, not a laptop, says where things live."""
    if not overrides:
        return get_settings()
    return Settings(**json.loads(overrides))
