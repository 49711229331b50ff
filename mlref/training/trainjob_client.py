"""The training step's data-parallel run in a cluster: a Kubeflow Trainer ``TrainJob``,
created, awaited and read back through the Kubernetes API.

The step stages its training set on the storage root (every node pod reads its rows from
there), creates the TrainJob (:func:`mlref.training.trainjob.trainjob`) with the kubernetes
client's ``CustomObjectsApi``, reads it every ``train.trainjob_poll_s`` until its ``Complete``
or ``Failed`` condition (Trainer copies both from its JobSet) or ``train.trainjob_timeout_s``,
printing each change of its node Jobs' counts, then copies rank 0's model folder into the
step's output: the same files a one-process run writes, so export and registration are the
same. A failure names the TrainJob's condition and the earliest failed node pod's termination
message, which the failing rank writes (:mod:`mlref.training.distributed`); a timeout, or the
step itself being stopped (SIGTERM, Ctrl-C), deletes the TrainJob so that no pod keeps its
GPUs. A failed TrainJob is kept for ``kubectl logs``, a finished one deleted; the staged
files go either way.
"""

from __future__ import annotations

import math
import os
import posixpath
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from mlref import storage
from mlref.console import console
from mlref.k8s.client import api_client
from mlref.k8s.install import OBJECT_STORE_KEYS, OBJECT_STORE_SECRET
from mlref.settings import Settings
from mlref.training import trainjob

GROUP, VERSION = trainjob.API_VERSION.split("/")
PLURAL = "trainjobs"
# JobSet (which Trainer runs the TrainJob as, under the TrainJob's name) labels its pods so.
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
# The API calls made here: what the step's service account must be granted (the chart's Role).
API_ACCESS = {(GROUP, PLURAL): {"create", "get", "delete"}, ("", "pods"): {"list"}}
# The step pod's own storage settings that the node pods need too (values, not secrets).
PASSED_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


class TrainJobFailed(RuntimeError):
    """The TrainJob failed; the message names its condition and the failing rank's error."""


def connect() -> tuple[Any, Any]:
    """CustomObjectsApi and CoreV1Api from the pod's service account, else the kubeconfig."""
    from kubernetes import client

    api = api_client()
    return client.CustomObjectsApi(api), client.CoreV1Api(api)


def run(
    settings: Settings,
    sets_dir: Path,
    out_dir: Path,
    custom: Any = None,
    core: Any = None,
) -> str:
    """Train on ``sets_dir`` as a TrainJob; rank 0's model folder lands in ``out_dir``.
    Returns the TrainJob's name."""
    if custom is None or core is None:
        custom, core = connect()
    namespace = settings.pipeline.namespace
    name = f"mlref-train-{uuid.uuid4().hex[:10]}"
    staged = settings.shared(f"trainjobs/{name}")
    sets_uri, model_uri = f"{staged}/sets", f"{staged}/model"
    console.print(f"TrainJob {namespace}/{name}: staging the training set at {sets_uri}")
    storage.upload_tree(sets_dir, sets_uri)
    job = trainjob.trainjob(
        settings,
        name,
        sets_uri,
        model_uri,
        settings.train.cluster_image or settings.image,
        settings.train.node_resources or None,
        env={key: os.environ[key] for key in PASSED_ENV if os.environ.get(key)},
        secret_env={key: (OBJECT_STORE_SECRET, key) for key in OBJECT_STORE_KEYS},
        deadline_s=settings.train.trainjob_timeout_s,
    )
    try:
        with sigterm_as_exit():
            create(custom, job)
            wait(custom, core, settings, name)
        fetch_tree(model_uri, out_dir)
        delete(custom, namespace, name)
    except TrainJobFailed:
        raise  # the TrainJob is kept: its pods' logs tell the rest
    except BaseException:
        delete(custom, namespace, name)  # a timeout or a stopped step: free the nodes
        raise
    finally:
        fs, path = storage.filesystem(staged)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    return name


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (how Kubernetes stops the step's pod: a cancelled run, a deleted pod) raised
    as SystemExit meanwhile, so that the step deletes its TrainJob instead of leaving it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def create(custom: Any, job: dict) -> None:
    """Create ``job``; the API server's refusals become errors that name the fix."""
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job)
    except ApiException as exc:
        hint = {
            404: "is Kubeflow Trainer installed? (chart value trainer.enabled, "
            "scripts/kind-up.sh --trainer)",
            403: "the step's service account may not create TrainJobs here (chart value "
            "trainer.enabled grants it)",
        }.get(exc.status, "")
        raise TrainJobFailed(
            f"creating TrainJob {namespace}/{name} failed: {exc.status} {exc.reason}"
            + (f": {exc.body}" if exc.body else "")
            + (f"; {hint}" if hint else "")
        ) from None
    console.print(f"TrainJob {namespace}/{name} created ({trainjob.RUNTIME})")


def delete(custom: Any, namespace: str, name: str) -> None:
    """Delete the TrainJob and, in the background, its JobSet and pods."""
    try:
        custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background"
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


def wait(custom: Any, core: Any, settings: Settings, name: str) -> dict:
    """Read the TrainJob until it completes (returned), fails (:class:`TrainJobFailed`) or
    outlives ``train.trainjob_timeout_s`` (:class:`TimeoutError`)."""
    namespace = settings.pipeline.namespace
    timeout = settings.train.trainjob_timeout_s
    started = time.monotonic()
    shown = ""
    while True:
        job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = job.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        if _true(conditions.get("Complete")):
            console.print(f"TrainJob {namespace}/{name}: complete")
            return job
        failed = conditions.get("Failed")
        if _true(failed):
            cause = rank_error(core, namespace, name)
            raise TrainJobFailed(
                f"TrainJob {namespace}/{name} failed ({failed.get('reason', '')}: "
                f"{failed.get('message', '')})"
                + (
                    f"; {cause}"
                    if cause
                    else f"; see kubectl -n {namespace} logs -l {JOBSET_LABEL}={name}"
                )
            )
        progress = nodes_progress(status)
        elapsed = time.monotonic() - started
        if progress != shown:
            console.print(f"TrainJob {namespace}/{name}: {progress} ({elapsed:.0f} s)")
            shown = progress
        if elapsed > timeout:
            raise TimeoutError(
                f"TrainJob {namespace}/{name} did not finish in {timeout} s "
                f"(train.trainjob_timeout_s; last: {progress}); it is deleted"
            )
        time.sleep(settings.train.trainjob_poll_s)


def _true(condition: dict | None) -> bool:
    return bool(condition) and condition.get("status") == "True"


def nodes_progress(status: dict) -> str:
    """The node Jobs' counts, as ``status.jobsStatus`` reports them."""
    jobs = status.get("jobsStatus") or []
    if not jobs:
        return "waiting for its pods"
    fields = ("active", "ready", "succeeded", "failed")
    return "; ".join(
        f"{job['name']}: " + ", ".join(f"{job.get(f, 0)} {f}" for f in fields) for job in jobs
    )


def rank_error(core: Any, namespace: str, name: str) -> str:
    """The termination message of the TrainJob's earliest failed container, with its pod."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"{JOBSET_LABEL}={name}")
    failures = []
    for pod in pods.items:
        for container in (pod.status and pod.status.container_statuses) or []:
            ended = container.state and container.state.terminated
            if ended and ended.exit_code:
                message = (ended.message or "").strip() or f"exit code {ended.exit_code}"
                at = ended.finished_at.timestamp() if ended.finished_at else math.inf
                failures.append((at, pod.metadata.name, message))
    if not failures:
        return ""
    _, pod, message = min(failures)
    return f"pod {pod}: {message}"


def fetch_tree(uri: str, local: Path) -> None:
    """Copy every file under ``uri`` into the folder ``local``, keeping relative paths."""
    fs, root = storage.filesystem(uri)
    files = [path for path in fs.find(root) if not fs.isdir(path)]
    if not files:
        raise TrainJobFailed(f"the TrainJob completed but wrote no model under {uri}")
    for path in files:
        target = local / posixpath.relpath(path, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(target))
