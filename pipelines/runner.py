"""Compile, run locally, or submit the training pipeline."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlref.retraining import pipeline_arguments as pipeline_arguments  # the run's parameters
from mlref.settings import Settings

COMPILED = Path(__file__).with_name("training_pipeline.yaml")


class SubmitError(RuntimeError):
    """The pipeline could not be submitted (no host, endpoint unreachable, bad schedule)."""


def compile_pipeline(path: Path = COMPILED) -> Path:
    """Write the pipeline's IR YAML."""
    from kfp import compiler

    from mlref.pipelines.training import training_pipeline

    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(training_pipeline, str(path))
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


def run_local(settings: Settings, arguments: dict) -> LocalRun:
    """Run every step with kfp's SubprocessRunner in this interpreter's environment; the
    steps get all of ``settings`` (over anything ``arguments`` overrides)."""
    from kfp import local

    from mlref.pipelines.training import training_pipeline

    root = (settings.work_dir / "kfp").resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    task = training_pipeline(**{**arguments, "overrides": settings.model_dump_json()})
    return LocalRun(champion=str(task.output), pipeline_root=root, state="SUCCEEDED")


def kfp_cron(expression: str) -> str:
    """Kubeflow schedules take six cron fields (seconds first); accept the usual five."""
    fields = expression.split()
    if len(fields) == 5:
        return "0 " + expression
    if len(fields) == 6:
        return expression
    raise SubmitError(f"--schedule {expression!r}: expected a 5-field cron expression")


def submit(
    settings: Settings,
    arguments: dict,
    host: str | None = None,
    schedule: str | None = None,
    experiment: str = "mlref",
) -> str:
    """Submit the compiled pipeline to Kubeflow Pipelines; returns the run or schedule id."""
    import kfp

    host = host or settings.pipeline.host
    if not host:
        raise SubmitError("no Kubeflow Pipelines host: pass --host or set MLREF_PIPELINE__HOST")
    package = compile_pipeline(settings.work_dir / "kfp" / "training_pipeline.yaml")
    token = os.environ.get(settings.pipeline.existing_token_env) or None
    try:
        client = kfp.Client(host=host, existing_token=token, namespace=settings.pipeline.namespace)
        if schedule:
            exp = client.create_experiment(experiment, namespace=settings.pipeline.namespace)
            job = client.create_recurring_run(
                experiment_id=exp.experiment_id,
                job_name=f"{experiment}-training",
                cron_expression=kfp_cron(schedule),
                pipeline_package_path=str(package),
                params=arguments,
            )
            return job.recurring_run_id
        run = client.create_run_from_pipeline_package(
            str(package), arguments=arguments, experiment_name=experiment
        )
        return run.run_id
    except SubmitError:
        raise
    except Exception as exc:  # kfp raises transport errors of many kinds
        raise SubmitError(f"{host}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
