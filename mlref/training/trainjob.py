"""Data-parallel training launched by torchrun: on this machine, or as a Kubeflow Trainer
``TrainJob`` whose ``torch-distributed`` runtime runs torchrun in every node's pod.

Both run the same command (:func:`rank_command`). Kubeflow Trainer's torch plugin gives each
node's container ``PET_NNODES`` (numNodes), ``PET_NPROC_PER_NODE`` (numProcPerNode, or derived
from resourcesPerNode), ``PET_NODE_RANK`` (the Job's completion index),
``PET_MASTER_ADDR`` (``<trainjob>-node-0-0.<trainjob>``, node 0's pod behind the headless
service) and ``PET_MASTER_PORT`` (29500); torchrun reads ``PET_<OPTION>`` as its
``--<option>``, so the command carries no rendezvous arguments. Settings travel as
``MLREF_TRAIN``/``MLREF_FEATURES`` JSON, so every rank trains with the launcher's settings.
The training step creates and awaits the TrainJob (:mod:`mlref.training.trainjob_client`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mlref.settings import Settings

# The Kubeflow Trainer release whose TrainJob API and torch plugin this follows (the one
# scripts/kind-up.sh --trainer installs, and whose CRD the tests validate against).
TRAINER_VERSION = "v2.3.0"
API_VERSION = "trainer.kubeflow.org/v1alpha1"
RUNTIME = "torch-distributed"
# Kubeflow Trainer rejects a TrainJob that sets these itself: the torch plugin owns them.
RESERVED_ENV = frozenset(
    {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
)
# Where the kubelet takes a container's termination message from (the pod's default
# terminationMessagePath): a failing rank writes its error there, for the step to report.
TERMINATION_LOG = "/dev/termination-log"


def rank_command(
    sets: str, out: str, python: str = "python", termination_log: str = ""
) -> list[str]:
    """torchrun running :mod:`mlref.training.distributed` (torchrun's options from the env)."""
    command = [
        python, "-m", "torch.distributed.run",
        "-m", "mlref.training.distributed", "--sets", sets, "--out", out,
    ]  # fmt: skip
    return command + (["--termination-log", termination_log] if termination_log else [])


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings every rank must share, as the environment pydantic-settings reads."""
    train = settings.train.model_dump(mode="json") | {"distributed": "none"}
    return {
        "MLREF_TRAIN": json.dumps(train),
        "MLREF_FEATURES": json.dumps(settings.features.model_dump(mode="json")),
    }


def run_local(settings: Settings, sets_dir: Path, out_dir: Path) -> None:
    """torchrun on this machine, ``procs_per_node`` ranks; its error (the failing rank's, as
    torchrun reports it) becomes this step's."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MLREF_TRAIN__", "MLREF_FEATURES__"))
    }
    env.update(settings_env(settings))
    procs = settings.train.procs_per_node
    command = rank_command(str(sets_dir), str(out_dir), sys.executable)
    command[3:3] = ["--standalone", "--nproc_per_node", procs]
    run = subprocess.run(command, env=env, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(run.stderr)
    if run.returncode != 0:
        cause = run.stderr.split("Root Cause (first observed failure):")[-1].strip()
        raise RuntimeError(f"distributed training failed (torchrun exit {run.returncode}): {cause}")


def trainjob(
    settings: Settings,
    name: str,
    sets: str,
    out: str,
    image: str,
    resources: dict[str, dict[str, str]] | None = None,
    env: dict[str, str] | None = None,
    secret_env: dict[str, tuple[str, str]] | None = None,
    deadline_s: int | None = None,
) -> dict:
    """The TrainJob running the training step on ``settings.train.nodes`` pods of ``image``.

    ``sets`` and ``out`` must be reachable from every node (the storage root, or a shared
    volume); ``resources`` is each node's ``{"requests": ..., "limits": ...}``; ``env`` adds
    variables to each node's container, ``secret_env`` variables taken from Secret keys
    (``name -> (secret, key)``: credentials by reference, never by value); ``deadline_s`` is
    the TrainJob's ``activeDeadlineSeconds``.
    """
    variables = settings_env(settings) | (env or {})
    reserved = sorted(RESERVED_ENV & (variables.keys() | (secret_env or {}).keys()))
    if reserved:
        raise ValueError(f"{', '.join(reserved)} are set by Kubeflow Trainer; remove them")
    procs = settings.train.procs_per_node
    if procs in {"cpu", "gpu"}:
        raise ValueError(
            f"train.procs_per_node={procs}: a TrainJob's numProcPerNode is a number or auto "
            "(Kubeflow Trainer v2.3: auto is one per GPU, else one per CPU of node_resources)"
        )
    listed = [{"name": key, "value": value} for key, value in sorted(variables.items())]
    listed += [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": item}}}
        for key, (secret, item) in sorted((secret_env or {}).items())
    ]
    trainer: dict = {
        "image": image,
        "command": rank_command(sets, out, termination_log=TERMINATION_LOG),
        "numNodes": settings.train.nodes,
        "env": listed,
    }
    if procs.isdigit():  # auto is Trainer's default
        trainer["numProcPerNode"] = int(procs)
    if resources:
        trainer["resourcesPerNode"] = resources
    spec: dict = {
        "runtimeRef": {
            "name": RUNTIME,
            "apiGroup": "trainer.kubeflow.org",
            "kind": "ClusterTrainingRuntime",
        },
        "trainer": trainer,
    }
    if deadline_s:
        spec["activeDeadlineSeconds"] = deadline_s
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainJob",
        "metadata": {
            "name": name,
            "namespace": settings.pipeline.namespace,  # the training step's own
            "labels": {
                "app.kubernetes.io/part-of": "mlref",
                "app.kubernetes.io/component": "train",
            },
        },
        "spec": spec,
    }
