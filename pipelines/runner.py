"""Compile, run locally, or submit the pipelines (training; batch prediction)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlref.retraining import pipeline_arguments as pipeline_arguments  # the run's parameters
from mlref.settings import Settings

COMPILED = Path(__file__).with_name("training_pipeline.yaml")
TRAINING = "training"
BATCH_PREDICT = "batch-predict"
# The pipelines by name: their module and function; each compiles to <function>.yaml here.
PIPELINES = {
    TRAINING: ("mlref.pipelines.training", "training_pipeline"),
    BATCH_PREDICT: ("mlref.pipelines.batch_predict", "batch_predict_pipeline"),
}


def batch_arguments(
    model_uri: str = "",
    start_date: str = "",
    end_date: str = "",
    name: str = "",
    overrides: dict | None = None,
) -> dict:
    """The batch prediction run's parameters; ``overrides`` as in ``pipeline_arguments``."""
    return {
        "model_uri": model_uri,
        "start_date": start_date,
        "end_date": end_date,
        "name": name,
        "overrides": json.dumps(overrides) if overrides else "",
    }


class SubmitError(RuntimeError):
    """The pipeline could not be submitted (no host, endpoint unreachable, bad schedule)."""


def pipeline_function(name: str = TRAINING):
    """The ``@dsl.pipeline`` function of the pipeline called ``name``."""
    import importlib

    if name not in PIPELINES:
        raise SubmitError(f"unknown pipeline {name!r}: expected one of {', '.join(PIPELINES)}")
    module, function = PIPELINES[name]
    return getattr(importlib.import_module(module), function)


def compiled_path(name: str = TRAINING) -> Path:
    """Where the checked-in IR YAML of the pipeline called ``name`` lives."""
    return Path(__file__).with_name(f"{PIPELINES[name][1]}.yaml")


def compile_pipeline(path: Path = COMPILED, name: str = TRAINING) -> Path:
    """Write the IR YAML of the pipeline called ``name``."""
    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_function(name), str(path))
    return path


def parse_overrides(pairs: list[str]) -> dict:
    """``section.field=value`` pairs (as `--set` takes them) as nested settings fields."""
    overrides: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SubmitError(f"--set {pair!r}: expected section.field=value")
        *sections, field = key.split(".")
        target = overrides
        for section in sections:
            target = target.setdefault(section, {})
        target[field] = yaml.safe_load(value)
    Settings(**overrides)  # refuse unknown fields and bad values before submitting
    return overrides


@dataclass
class LocalRun:
    champion: str
    pipeline_root: Path
    state: str


def run_local(settings: Settings, arguments: dict, name: str = TRAINING) -> LocalRun:
    """Run every step with kfp's SubprocessRunner in this interpreter's environment; the
    steps get all of ``settings`` (over anything ``arguments`` overrides). ``champion`` is
    the pipeline's output: the champion trained, or the model version batch-scored with."""
    from kfp import local

    pipeline = pipeline_function(name)
    root = (settings.work_dir / "kfp").resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    task = pipeline(**{**arguments, "overrides": settings.model_dump_json()})
    return LocalRun(champion=str(task.output), pipeline_root=root, state="SUCCEEDED")


def kfp_cron(expression: str) -> str:
    """Kubeflow schedules take six cron fields (seconds first); accept the usual five."""
    fields = expression.split()
    if len(fields) == 5:
        return "0 " + expression
    if len(fields) == 6:
        return expression
    raise SubmitError(f"--schedule {expression!r}: expected a 5-field cron expression")


def run_service_account(settings: Settings) -> str | None:
    """The ServiceAccount a run's pods use: with ``engine.data=spark`` the one whose Role lets
    a step's pod create its Spark executors (the chart's ``spark.serviceAccount``); else
    Kubeflow's default for the namespace."""
    return settings.engine.spark_service_account if settings.engine.data == "spark" else None


def submit(
    settings: Settings,
    arguments: dict,
    host: str | None = None,
    schedule: str | None = None,
    experiment: str = "mlref",
    name: str = TRAINING,
) -> str:
    """Submit the pipeline called ``name`` to Kubeflow Pipelines; returns the run or
    schedule id."""
    import kfp

    host = host or settings.pipeline.host
    if not host:
        raise SubmitError("no Kubeflow Pipelines host: pass --host or set MLREF_PIPELINE__HOST")
    package = compile_pipeline(settings.work_dir / "kfp" / compiled_path(name).name, name)
    token = os.environ.get(settings.pipeline.existing_token_env) or None
    account = run_service_account(settings)
    try:
        client = kfp.Client(host=host, existing_token=token, namespace=settings.pipeline.namespace)
        if schedule:
            exp = client.create_experiment(experiment, namespace=settings.pipeline.namespace)
            job = client.create_recurring_run(
                experiment_id=exp.experiment_id,
                job_name=f"{experiment}-{name}",
                cron_expression=kfp_cron(schedule),
                pipeline_package_path=str(package),
                params=arguments,
                service_account=account,
            )
            return job.recurring_run_id
        run = client.create_run_from_pipeline_package(
            str(package), arguments=arguments, experiment_name=experiment, service_account=account
        )
        return run.run_id
    except SubmitError:
        raise
    except Exception as exc:  # kfp raises transport errors of many kinds
        raise SubmitError(f"{host}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
