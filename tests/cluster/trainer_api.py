"""A stand-in for the Kubernetes API with Kubeflow Trainer v2.3 installed, for TrainJobs.

No API server runs here, so the training step's TrainJob code talks to this one. It answers
the CustomObjectsApi and CoreV1Api calls the step makes as the API server, Trainer's webhook
and its controller (running the TrainJob as a JobSet) do:

* every call: 403 unless the install's Roles grant it to the step's service account
  (``pipeline-runner`` in the pipelines' namespace), as the API server's RBAC authorizer;
* create: 422 for an object the real TrainJob CRD's schema refuses
  (``tests/k8s/crds/trainer``, from kubeflow/trainer v2.3.0), 422 for ``PET_*`` variables in
  ``spec.trainer.env`` (the torch plugin's ``Validate``, pkg/runtime/framework/plugins/torch/
  torch.go), 409 for a name that exists, 404 for another group, version or plural;
* then it runs the TrainJob on the ``torch-distributed`` runtime
  (manifests/base/runtimes/torch_distributed.yaml): ``numNodes`` node pods, each the
  ``node`` container as the harness runs a pod (``tests/cluster/pods.py``: its own sandboxed
  process tree, the image's virtualenv, a private ``/tmp``, read-only elsewhere), running
  ``spec.trainer.command`` with the env the kubelet gives it: the image's ``ENV``, then
  ``spec.trainer.env`` (Secret keys resolved from the install's own Secrets), then what the
  torch plugin's ``EnforceMLPolicy`` adds (torch.go, pkg/constants/constants.go):
  ``PET_NNODES`` (numNodes), ``PET_NPROC_PER_NODE`` (numProcPerNode, else ``auto``),
  ``PET_NODE_RANK`` (the Job completion index), ``PET_MASTER_ADDR``
  (``<name>-node-0-0.<name>``) and ``PET_MASTER_PORT`` (29500). As the harness does for
  Service names, what only a cluster resolves is mapped to this machine: the master's name to
  127.0.0.1 and port 29500 to a free port (the pods share this machine's network), and the
  kubelet's ``/dev/termination-log`` to a file in the pod's own ``/tmp``;
* get: the TrainJob with the status Trainer copies from its JobSet (plugins/jobset/jobset.go
  ``Status``): ``jobsStatus`` of the ``node`` Job, then ``Complete`` (AllJobsCompleted) when
  every node exits 0, or ``Failed`` (FailedJobs) at the first node that fails, JobSet's
  default failure policy, which stops the other nodes;
* list pods: the node pods with JobSet's ``jobset.sigs.k8s.io/jobset-name`` label, their
  container's terminated state (exit code, time, termination message);
* delete: the TrainJob, its pods stopped.

Not emulated: scheduling, resources and GPUs, the Job's pod retries (backoffLimit), cluster
DNS and the headless Service, image pulls, and what tests/cluster/pods.py leaves out. The
runtime's pods have no ``readOnlyRootFilesystem``; here, as for every harness pod, only
``/tmp`` is writable, which the node command needs no more than that.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from mlref.k8s.schemas import Validator
from mlref.training import trainjob
from mlref.training.trainjob_client import GROUP, JOBSET_LABEL, PLURAL, VERSION
from tests.cluster.pods import (
    SANDBOX,
    UNSHARE,
    Cluster,
    declared_env,
    image_mounts,
    require_sandbox,
)
from tests.k8s.conftest import KUBERNETES_VERSION

CRDS = Path(__file__).resolve().parents[1] / "k8s" / "crds" / "trainer"
POD_TERMINATION_LOG = "/tmp/termination-log"  # the pod's own, in place of the kubelet's
STEP_ACCOUNT = "pipeline-runner"  # standalone Kubeflow Pipelines runs its steps' pods as
MASTER_PORT = "29500"  # constants.ContainerTrainerPort
NODE = "node"  # the runtime's replicated Job and container


@functools.cache
def validator() -> Validator:
    return Validator(CRDS, KUBERNETES_VERSION)


def granted(objects: list[dict], namespace: str, account: str) -> dict[tuple[str, str], set]:
    """(apiGroup, resource) -> verbs that ``account`` holds in ``namespace`` through Roles."""
    roles = {
        o["metadata"]["name"]: o
        for o in objects
        if o["kind"] == "Role" and o["metadata"].get("namespace") == namespace
    }
    found: dict[tuple[str, str], set] = {}
    for binding in objects:
        if binding["kind"] != "RoleBinding" or binding["metadata"].get("namespace") != namespace:
            continue
        subjects = {(s["name"], s.get("namespace")) for s in binding["subjects"]}
        role = roles.get(binding["roleRef"]["name"])
        if (account, namespace) not in subjects or role is None:
            continue
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    found.setdefault((group, resource), set()).update(rule["verbs"])
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class NodePod:
    name: str
    process: subprocess.Popen
    termination_log: Path
    finished_at: datetime | None = None
    exit_code: int | None = None


@dataclass
class Run:
    job: dict
    pods: list[NodePod] = field(default_factory=list)
    failed_at: str = ""


class TrainerApi:
    """CustomObjectsApi and CoreV1Api calls for TrainJobs, answered as described above."""

    def __init__(
        self, work: Path, cluster: Cluster, account: str = STEP_ACCOUNT, start: bool = True
    ):
        self.work = work
        self.cluster = cluster  # the install's objects: its Secrets and its RBAC
        self.account = account  # whose token the step's calls carry (its pod's)
        self.start = start  # False: pods stay Pending (never scheduled)
        self.runs: dict[tuple[str, str], Run] = {}
        self.deleted: list[str] = []
        self.calls: list[str] = []

    # --- CustomObjectsApi -------------------------------------------------------------

    def _authorize(self, verb: str, group: str, resource: str, namespace: str) -> None:
        """RBAC: only what the install's Roles grant the step's service account."""
        access = granted(self.cluster.objects, namespace, self.account)
        if verb not in access.get((group, resource), set()):
            raise ApiException(
                status=403,
                reason=f'Forbidden: User "system:serviceaccount:{namespace}:{self.account}" '
                f'cannot {verb} resource "{resource}" in API group "{group}" in the namespace '
                f'"{namespace}"',
            )

    def _check(self, group, version, plural, verb: str, namespace: str) -> None:
        self._authorize(verb, group, plural, namespace)
        if (group, version, plural) != (GROUP, VERSION, PLURAL):
            raise ApiException(status=404, reason="Not Found")

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append("create")
        self._check(group, version, plural, "create", namespace)
        errors = [str(e) for e in validator().validate(body)]
        env = (body.get("spec", {}).get("trainer") or {}).get("env") or []
        reserved = sorted({e["name"] for e in env} & trainjob.RESERVED_ENV)
        if reserved:
            errors.append(f"spec.trainer.env: must not have reserved envs: {reserved}")
        if errors:
            raise ApiException(status=422, reason="Unprocessable Entity: " + "; ".join(errors))
        meta = body["metadata"]
        if meta.get("namespace", namespace) != namespace:
            raise ApiException(status=400, reason="the namespace of the object does not match")
        key = (namespace, meta["name"])
        if key in self.runs:
            raise ApiException(status=409, reason="AlreadyExists")
        run = Run(copy.deepcopy(body))
        self.runs[key] = run
        if self.start:
            self._start(run, namespace)
        return copy.deepcopy(body)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append("get")
        self._check(group, version, plural, "get", namespace)
        run = self.runs.get((namespace, name))
        if run is None:
            raise ApiException(status=404, reason="Not Found")
        job = copy.deepcopy(run.job)
        job["status"] = self._status(run)
        errors = validator().validate(job)
        assert not errors, errors  # the stand-in answers only what the CRD allows
        return job

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self.calls.append("delete")
        self._check(group, version, plural, "delete", namespace)
        run = self.runs.pop((namespace, name), None)
        if run is None:
            raise ApiException(status=404, reason="Not Found")
        self._stop(run)
        self.deleted.append(name)

    # --- CoreV1Api --------------------------------------------------------------------

    def list_namespaced_pod(self, namespace, label_selector=""):
        self.calls.append("list pods")
        self._authorize("list", "", "pods", namespace)
        label, _, value = label_selector.partition("=")
        assert label == JOBSET_LABEL, label_selector
        run = self.runs.get((namespace, value))
        return client.V1PodList(items=[self._pod(p, value) for p in (run.pods if run else [])])

    # --- the controller ---------------------------------------------------------------

    def _start(self, run: Run, namespace: str) -> None:
        require_sandbox()
        name = run.job["metadata"]["name"]
        trainer = run.job["spec"]["trainer"]
        port = str(_free_port())
        self.cluster.services[f"{name}-{NODE}-0-0.{name}"] = "127.0.0.1"
        for index in range(trainer.get("numNodes", 1)):
            pod = f"{name}-{NODE}-0-{index}"
            container = {
                "name": NODE,
                "env": [
                    *(trainer.get("env") or []),
                    {"name": "PET_NNODES", "value": str(trainer.get("numNodes", 1))},
                    {
                        "name": "PET_NPROC_PER_NODE",
                        "value": str(trainer.get("numProcPerNode", "auto")),
                    },
                    {"name": "PET_NODE_RANK", "value": str(index)},  # the completion index
                    {"name": "PET_MASTER_ADDR", "value": f"{name}-{NODE}-0-0.{name}"},
                    {"name": "PET_MASTER_PORT", "value": MASTER_PORT},
                ],
            }
            declared = declared_env(container, self.cluster, namespace, pod)
            declared["PET_MASTER_PORT"] = port
            env = {
                k: self.cluster.resolve(v)
                for k, v in {**self.cluster.image_env, **declared}.items()
            }
            argv = [
                a.replace(trainjob.TERMINATION_LOG, POD_TERMINATION_LOG) for a in trainer["command"]
            ]
            home = self.work / pod
            (home / "tmp").mkdir(parents=True)
            log = home / "tmp" / POD_TERMINATION_LOG.removeprefix("/tmp/")
            log.touch()  # the kubelet mounts an empty file
            run.pods.append(NodePod(pod, self._sandboxed(argv, env, home), log))
        for node in run.pods:
            threading.Thread(target=self._reap, args=(run, node), daemon=True).start()

    def _sandboxed(self, argv: list[str], env: dict[str, str], home: Path) -> subprocess.Popen:
        """The pod's container, started as tests/cluster/pods.py runs one, without waiting."""
        image = image_mounts()
        (home / "root").mkdir()
        spec = {
            "root": str(home / "root"),
            "volumes": {"/tmp": str(home / "tmp")} | {k: str(v) for k, v in image.items()},
            "read_only": list(image),
            "workdir": self.cluster.image_workdir,
            "argv": argv,
            "env": env,
        }
        (home / "pod.json").write_text(json.dumps(spec))
        with (home / "output.log").open("wb") as output:
            return subprocess.Popen(
                [*UNSHARE, sys.executable, str(SANDBOX), str(home / "pod.json")],
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _reap(self, run: Run, pod: NodePod) -> None:
        pod.exit_code = pod.process.wait()
        pod.finished_at = datetime.now(UTC)
        if pod.exit_code and not run.failed_at:
            run.failed_at = pod.finished_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            self._stop(run)  # JobSet's default failure policy: the JobSet fails, pods stop

    @staticmethod
    def _stop(run: Run) -> None:
        for pod in run.pods:
            if pod.process.poll() is None:
                os.killpg(pod.process.pid, signal.SIGTERM)
        for pod in run.pods:
            try:
                pod.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(pod.process.pid, signal.SIGKILL)
                pod.process.wait()

    def _status(self, run: Run) -> dict:
        pods = run.pods
        done = [p for p in pods if p.finished_at is not None]
        complete = bool(pods) and all(p.exit_code == 0 for p in done) and len(done) == len(pods)
        failed = bool(run.failed_at)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status: dict = {
            "jobsStatus": [
                {
                    "name": NODE,
                    "active": int(not complete and not failed),  # pending pods too
                    "ready": int(bool(pods) and not done),
                    "succeeded": int(complete),
                    "failed": int(failed),
                    "suspended": 0,
                }
            ]
        }
        if complete:
            condition = ("Complete", "AllJobsCompleted", "jobset completed successfully", now)
        elif failed:
            message = "jobset failed due to one or more job failures"
            condition = ("Failed", "FailedJobs", message, run.failed_at)
        else:
            return status
        kind, reason, message, at = condition
        status["conditions"] = [
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": at,
            }
        ]
        return status

    def _pod(self, pod: NodePod, name: str) -> client.V1Pod:
        state = client.V1ContainerState(running=client.V1ContainerStateRunning())
        if pod.finished_at is not None:
            state = client.V1ContainerState(
                terminated=client.V1ContainerStateTerminated(
                    exit_code=pod.exit_code if pod.exit_code >= 0 else 128 - pod.exit_code,
                    finished_at=pod.finished_at,
                    message=pod.termination_log.read_text() or None,
                    reason="Completed" if pod.exit_code == 0 else "Error",
                )
            )
        return client.V1Pod(
            metadata=client.V1ObjectMeta(name=pod.name, labels={JOBSET_LABEL: name}),
            status=client.V1PodStatus(
                container_statuses=[
                    client.V1ContainerStatus(
                        name=NODE,
                        image="",
                        image_id="",
                        ready=pod.finished_at is None,
                        restart_count=0,
                        state=state,
                    )
                ]
            ),
        )

    def close(self) -> None:
        for run in self.runs.values():
            self._stop(run)
