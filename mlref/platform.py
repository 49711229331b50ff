"""Where the loop runs: this machine or a Kubernetes cluster, decided once.

Every step runs the same code in both modes; what differs is what the step hands off to the
platform: starting a retraining (kfp's local runner, or a Kubeflow Pipelines run), where a
registered model is served from (the registry, or its published folder that KServe fetches),
putting a canary patch in force (local serving re-reads the file; a cluster server-side
applies it to the InferenceService and waits for Ready), the live traffic split, where
canary metrics come from (the local predictors, or Prometheus), where a data step's Spark
runs (in the step's process, or executor pods the step's pod drives), and where data-parallel
training runs its ranks (torchrun here, or a Kubeflow Trainer TrainJob). As kfp's local
runner keeps a validated runner config and picks the task handler for it in one place,
:func:`platform_for` is the one place that picks the platform for ``settings.mode``; each
platform checks at construction that the settings are its own.

Locations that differ by mode (the Feast registry and online store, shared storage) are
settings' (``mlref.settings``), which every layer reads; the feature store sits below the
pipeline a platform submits, so it takes them from there rather than from here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mlref.settings import Settings

if TYPE_CHECKING:
    from mlref.canary.sources import MetricSource
    from mlref.canary.state import CanaryState
    from mlref.experiment.assign import Experiment
    from mlref.shadow.state import Shadow


class Platform(ABC):
    """What a step hands off to where it runs; one subclass per ``settings.mode``."""

    mode: ClassVar[str]

    def __init__(self, settings: Settings):
        if settings.mode != self.mode:
            raise ValueError(
                f"{type(self).__name__} runs {self.mode} mode, not {settings.mode}: "
                "use platform_for(settings)"
            )
        self.settings = settings

    @abstractmethod
    def submit_retraining(self, settings: Settings, arguments: dict) -> str:
        """Start the training pipeline with ``arguments``; returns what identifies the run.
        A :data:`mlref.monitoring.trigger.Submitter`: the drift trigger is handed this one."""

    @abstractmethod
    def served_uri(self, version: str) -> str:
        """What a storageUri holds for registry version ``version``."""

    @abstractmethod
    def apply_canary(
        self, state: CanaryState, out: Path | None = None, api: Any = None
    ) -> tuple[Path, list[str]]:
        """Put ``state`` in force; returns where its patch was written and the live split."""

    @abstractmethod
    def apply_shadow(self, shadow: Shadow, apis: Any = None) -> list[str]:
        """Put the shadow's state in force where the transformer reads it; returns what was
        applied (lines)."""

    @abstractmethod
    def shadow_state(self, apis: Any = None) -> Shadow | None:
        """The last shadow started, as the transformer sees it; None if none ever was."""

    @abstractmethod
    def apply_experiment(self, experiment: Experiment, core: Any = None) -> list[str]:
        """Put the experiment's state in force where the transformer reads it; returns what
        was applied (lines)."""

    @abstractmethod
    def experiment_state(self, core: Any = None) -> Experiment | None:
        """The last experiment started, as the transformer sees it; None if none ever was."""

    @abstractmethod
    def live_split(self, api: Any = None) -> list[str]:
        """The traffic split as the platform reports it (``target: percent`` lines)."""

    @abstractmethod
    def metric_source(self) -> MetricSource:
        """Where canary analysis reads stable and canary metrics from."""

    @abstractmethod
    def spark_conf(self, python: str, env: Mapping[str, str]) -> dict[str, str]:
        """Where a data step's Spark runs (``engine.data=spark``): its master and what that
        master needs; ``python`` is the workers' interpreter, ``env`` the step's own."""

    @abstractmethod
    def train_ranks(self, sets_dir: Path, out_dir: Path, apis: tuple[Any, Any] | None = None):
        """Run data-parallel training (``train.distributed=torchrun``) on ``sets_dir``;
        rank 0's model folder lands in ``out_dir``. ``apis``: (CustomObjectsApi, CoreV1Api)."""


class LocalPlatform(Platform):
    """This machine: kfp's SubprocessRunner, models from the registry, local predictors."""

    mode = "local"

    def submit_retraining(self, settings: Settings, arguments: dict) -> str:
        from mlref.pipelines.runner import run_local

        result = run_local(settings, arguments)
        return f"local:{result.pipeline_root} (champion {result.champion})"

    def served_uri(self, version: str) -> str:
        return self.settings.registry_uri(version)

    def apply_canary(
        self, state: CanaryState, out: Path | None = None, api: Any = None
    ) -> tuple[Path, list[str]]:
        """Local serving picks the written patch up by itself."""
        from mlref.canary.state import write_state

        return write_state(self.settings, state, out), []

    def apply_shadow(self, shadow: Shadow, apis: Any = None) -> list[str]:
        """The local transformer watches the state file."""
        from mlref.shadow.state import write_shadow

        path = write_shadow(self.settings.shadow_state_path, shadow)
        return [f"wrote {path}"]

    def shadow_state(self, apis: Any = None) -> Shadow | None:
        from mlref.shadow.state import read_shadow

        return read_shadow(self.settings.shadow_state_path)

    def apply_experiment(self, experiment: Experiment, core: Any = None) -> list[str]:
        """The local transformer watches the state file."""
        from mlref.experiment.assign import write_experiment

        return [f"wrote {write_experiment(self.settings.experiment_state_path, experiment)}"]

    def experiment_state(self, core: Any = None) -> Experiment | None:
        from mlref.experiment.assign import read_experiment

        return read_experiment(self.settings.experiment_state_path)

    def live_split(self, api: Any = None) -> list[str]:
        return []  # the state file is all there is: local serving follows it

    def metric_source(self) -> MetricSource:
        """Prometheus when canary.prometheus_url is set, else the local predictors."""
        from mlref.canary.sources import LocalSource, PrometheusSource

        if self.settings.canary.prometheus_url:
            return PrometheusSource(self.settings)
        return LocalSource(self.settings)

    def spark_conf(self, python: str, env: Mapping[str, str]) -> dict[str, str]:
        """Spark inside the step's process, on every core unless engine.spark_master says."""
        return {"spark.master": self.settings.engine.spark_master or "local[*]"}

    def train_ranks(self, sets_dir: Path, out_dir: Path, apis: tuple[Any, Any] | None = None):
        """torchrun on this machine, ``train.procs_per_node`` ranks."""
        from mlref.training.trainjob import run_local

        run_local(self.settings, sets_dir, out_dir)


class ClusterPlatform(Platform):
    """A Kubernetes cluster: Kubeflow Pipelines, KServe fetching published models, Prometheus."""

    mode = "cluster"

    def submit_retraining(self, settings: Settings, arguments: dict) -> str:
        from mlref.pipelines.runner import submit

        return submit(settings, arguments)

    def served_uri(self, version: str) -> str:
        from mlref.training.publish import served_uri

        return served_uri(self.settings, version)

    def apply_canary(
        self, state: CanaryState, out: Path | None = None, api: Any = None
    ) -> tuple[Path, list[str]]:
        """Server-side apply, then wait for Ready. The live InferenceService is read first: its
        deployment mode must be the one the patch is written for, and in Standard mode its
        predictor lends the candidate its pod settings."""
        from mlref.canary import kube
        from mlref.canary.state import standard_mode, to_patch, write_state

        settings = self.settings
        api = api or kube.connect()
        live = kube.get_inference_service(api, settings)
        kube.check_deployment_mode(settings, live)
        stable = (live.get("spec") or {}).get("predictor")
        path = write_state(settings, state, out, stable)
        kube.apply_patch(api, settings, to_patch(settings, state, stable), live)
        ready = kube.wait_ready(api, settings)
        return path, kube.traffic_split(ready, standard_mode(settings))

    def apply_shadow(self, shadow: Shadow, apis: Any = None) -> list[str]:
        """The shadow InferenceService (when running: its model, then Ready), then the
        ConfigMap the transformer pods mount (mlref/shadow/kube.py)."""
        from mlref.shadow import kube

        return kube.apply(self.settings, shadow, apis)

    def shadow_state(self, apis: Any = None) -> Shadow | None:
        from mlref.shadow import kube

        return kube.read(self.settings, apis[1] if apis else None)

    def apply_experiment(self, experiment: Experiment, core: Any = None) -> list[str]:
        """The ConfigMap the transformer pods mount (mlref/experiment/kube.py); the routes
        to each variant's model are installed with the service."""
        from mlref.experiment import kube

        return kube.apply(self.settings, experiment, core)

    def experiment_state(self, core: Any = None) -> Experiment | None:
        from mlref.experiment import kube

        return kube.read(self.settings, core)

    def live_split(self, api: Any = None) -> list[str]:
        from mlref.canary import kube
        from mlref.canary.state import standard_mode

        live = kube.get_inference_service(api or kube.connect(), self.settings)
        return kube.traffic_split(live, standard_mode(self.settings))

    def metric_source(self) -> MetricSource:
        """Prometheus only: the predictors are pods behind a split, not ports on this machine,
        and scraping 127.0.0.1 would analyse whatever happens to listen there."""
        from mlref.canary.sources import PrometheusSource, SourceError

        if not self.settings.canary.prometheus_url:
            raise SourceError(
                "cluster mode needs Prometheus for canary analysis: set "
                "MLREF_CANARY__PROMETHEUS_URL (e.g. http://prometheus-operated.monitoring:9090)"
            )
        return PrometheusSource(self.settings)

    def spark_conf(self, python: str, env: Mapping[str, str]) -> dict[str, str]:
        """Spark's Kubernetes scheduler with the step's pod as the driver (docs/cluster.md);
        a ``local[...]`` engine.spark_master keeps Spark inside the step's pod."""
        from mlref.k8s.spark import KUBERNETES_MASTER, kubernetes_conf

        master = self.settings.engine.spark_master or KUBERNETES_MASTER
        if not master.startswith("k8s://"):
            return {"spark.master": master}
        return kubernetes_conf(self.settings, master, env, python)

    def train_ranks(self, sets_dir: Path, out_dir: Path, apis: tuple[Any, Any] | None = None):
        """A Kubeflow Trainer TrainJob of ``train.nodes`` pods, created and awaited here."""
        from mlref.training import trainjob_client

        return trainjob_client.run(self.settings, sets_dir, out_dir, *(apis or (None, None)))


PLATFORMS: dict[str, type[Platform]] = {"local": LocalPlatform, "cluster": ClusterPlatform}


def platform_for(settings: Settings) -> Platform:
    """The platform ``settings.mode`` names: the one place local and cluster part ways."""
    return PLATFORMS[settings.mode](settings)
