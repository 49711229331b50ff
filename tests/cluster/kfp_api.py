"""A stand-in for the Kubeflow Pipelines API server: it records the runs submitted to it.

The real API server needs Kubernetes, Argo and MySQL, so here an HTTP server on 127.0.0.1
answers the v2beta1 REST calls that ``kfp.Client`` makes to submit a run
(``backend/api/v2beta1/{healthz,experiment,run,recurring_run}.proto`` of
kubeflow/pipelines 2.17.0, JSON as grpc-gateway writes it): ``GET /healthz``, list and
create experiments, create and get runs, create recurring runs. Each submitted pipeline
spec is parsed with kfp's own ``PipelineSpec``/``PlatformSpec`` protos, as the server
does, and its parameters checked against the spec's root inputs: names and types (a
parameter's protobuf ``Value`` kind against its ``parameterType``, as the driver's root DAG
checks them before any pod starts). Given the install (``KfpApi.install``, a
:class:`tests.cluster.pods.Cluster`), a run is also refused for what would fail its pods in
the pipelines namespace (:func:`check_against_install`): an executor image that is not the
install's, a container without a command, a placeholder naming no input or output of its
component, a platform-spec executor that does not exist, and a ``secretAsEnv`` or
``configMapAsEnv`` source or key missing from the namespace (the kubelet's
CreateContainerConfigError). The test then runs the recorded spec with
:func:`tests.cluster.kfp_pods.run_pipeline`. Runs are not scheduled, listed or authorised
here.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from tests.cluster.pods import Cluster

API = "/apis/v2beta1"
# A parameter's JSON value kinds (protobuf Value) by its declared type.
VALUE_KINDS: dict[str, tuple[type, ...]] = {
    "STRING": (str,),
    "NUMBER_INTEGER": (int, float),
    "NUMBER_DOUBLE": (int, float),
    "BOOLEAN": (bool,),
    "LIST": (list,),
    "STRUCT": (dict,),
}
PLACEHOLDER = re.compile(r"\{\{\$\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\]")


@dataclass
class SubmittedRun:
    """A run (or recurring run) as the API server received it."""

    run_id: str
    display_name: str
    experiment_id: str
    pipeline_spec: dict[str, Any]  # the IR; with a platform spec: {pipeline_spec, platform_spec}
    parameters: dict[str, Any]
    pipeline_root: str = ""
    schedule: str = ""  # a recurring run's cron expression
    service_account: str = ""  # the run's pods' ServiceAccount; empty: the namespace's default


class InvalidRun(ValueError):
    """A request the API server would refuse (400)."""


def check_spec(body: dict[str, Any]) -> None:
    """Parse the spec with kfp's protos and check the run's parameters against it."""
    spec = body.get("pipeline_spec")
    if not spec:
        raise InvalidRun("pipeline_spec is required (pipeline versions are not emulated)")
    pipeline = spec.get("pipeline_spec", spec)
    try:
        json_format.ParseDict(pipeline, pipeline_spec_pb2.PipelineSpec())
        if "platform_spec" in spec:
            json_format.ParseDict(spec["platform_spec"], pipeline_spec_pb2.PlatformSpec())
    except json_format.ParseError as exc:
        raise InvalidRun(f"invalid pipeline spec: {exc}") from exc
    inputs = pipeline["root"].get("inputDefinitions", {}).get("parameters", {})
    parameters = body.get("runtime_config", {}).get("parameters") or {}
    unknown = sorted(set(parameters) - set(inputs))
    missing = sorted(
        name
        for name, definition in inputs.items()
        if name not in parameters
        and "defaultValue" not in definition
        and not definition.get("isOptional")
    )
    if unknown or missing:
        raise InvalidRun(f"parameters: unknown {unknown}, missing {missing}")
    for name, value in parameters.items():
        check_type(name, value, inputs[name].get("parameterType", ""))


def check_type(name: str, value: Any, parameter_type: str) -> None:
    kinds = VALUE_KINDS.get(parameter_type, (object,))
    # JSON has one number kind; a bool is no number; an integer must be whole.
    wrong = not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
    if parameter_type == "NUMBER_INTEGER" and not wrong:
        wrong = not float(value).is_integer()
    if wrong:
        raise InvalidRun(
            f"parameter {name!r} requires type {parameter_type}, but got "
            f"{type(value).__name__} {value!r}"
        )


def check_against_install(spec: dict[str, Any], cluster: Cluster, namespace: str) -> None:
    """What the run's pods need from the install, checked before any pod starts."""
    pipeline = spec.get("pipeline_spec", spec)
    platform = (
        spec.get("platform_spec", {}).get("platforms", {}).get("kubernetes", {})
        if "pipeline_spec" in spec
        else {}
    )
    settings = cluster.lookup("ConfigMap", "mlref-settings", namespace) or {}
    image = settings.get("MLREF_IMAGE")
    executors = pipeline.get("deploymentSpec", {}).get("executors", {})
    components = {c.get("executorLabel"): c for c in pipeline.get("components", {}).values()}
    problems = []
    for label, executor in executors.items():
        container = executor.get("container")
        if container is None:
            continue  # importers and the like: no pod of their own
        if image is not None and container.get("image") != image:
            problems.append(
                f"{label}: image {container.get('image')!r} is not the install's {image}"
            )
        if not container.get("command") and not container.get("args"):
            problems.append(f"{label}: container without a command")
        component = components.get(label, {})
        for direction, kind, name in PLACEHOLDER.findall(
            json.dumps([*container.get("command", []), *container.get("args", [])])
        ):
            definitions = component.get(f"{direction[:-1]}Definitions", {})
            if name not in definitions.get(kind, {}):
                problems.append(
                    f"{label}: placeholder {direction}.{kind}[{name!r}] is not declared"
                )
    for label, config in platform.get("deploymentSpec", {}).get("executors", {}).items():
        if label not in executors:
            problems.append(f"platform spec: executor {label} is not in deploymentSpec")
        for kind, entries, key_field in (
            ("Secret", config.get("secretAsEnv", []), "secretKey"),
            ("ConfigMap", config.get("configMapAsEnv", []), "configMapKey"),
        ):
            for entry in entries:
                name = entry.get("secretName") or entry.get("configMapName")
                parameter = entry.get("secretNameParameter") or entry.get("configMapNameParameter")
                if parameter is not None:
                    name = parameter.get("runtimeValue", {}).get("constant", name)
                if entry.get("optional"):
                    continue
                data = cluster.lookup(kind, name, namespace)
                if data is None:
                    problems.append(f"{label}: {kind} {namespace}/{name} not found")
                    continue
                missing = [
                    p[key_field] for p in entry.get("keyToEnv", []) if p[key_field] not in data
                ]
                if missing:
                    problems.append(f"{label}: {kind} {namespace}/{name} has no key {missing}")
    if problems:
        raise InvalidRun("; ".join(problems))


@dataclass
class KfpApi:
    """The recorded state: experiments by id and every submitted run, in order."""

    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[SubmittedRun] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The install the runs' pods would find (None: the spec alone is checked).
    install: Cluster | None = None
    namespace: str = "kubeflow"

    def handle(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        now = datetime.now(UTC).isoformat()
        if method == "GET" and path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if path == f"{API}/experiments":
            if method == "GET":
                return 200, self.list_experiments(query)
            experiment = {**body, "experiment_id": str(uuid.uuid4()), "created_at": now}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if method == "GET" and path.startswith(f"{API}/experiments/"):
            experiment = self.experiments.get(path.rsplit("/", 1)[-1])
            return (200, experiment) if experiment else (404, {"error": "not found"})
        if method == "POST" and path in (f"{API}/runs", f"{API}/recurringruns"):
            return 200, self.create_run(body, recurring=path.endswith("recurringruns"), now=now)
        if method == "GET" and path.startswith(f"{API}/runs/"):
            run_id = path.rsplit("/", 1)[-1]
            found = [run for run in self.runs if run.run_id == run_id]
            if not found:
                return 404, {"error": f"run {run_id} not found"}
            return 200, {
                "run_id": run_id,
                "display_name": found[0].display_name,
                "state": "PENDING",
            }
        return 404, {"error": f"{method} {path}: not emulated"}

    def list_experiments(self, query: dict) -> dict:
        experiments = list(self.experiments.values())
        for predicate in json.loads(query.get("filter", ["{}"])[0]).get("predicates", []):
            key, value = predicate["key"], predicate.get("stringValue")
            experiments = [e for e in experiments if e.get(key) == value]
        return {"experiments": experiments} if experiments else {}

    def create_run(self, body: dict, recurring: bool, now: str) -> dict:
        check_spec(body)
        if self.install is not None:
            check_against_install(body["pipeline_spec"], self.install, self.namespace)
        if body.get("experiment_id") and body["experiment_id"] not in self.experiments:
            raise InvalidRun(f"experiment {body['experiment_id']} not found")
        config = body.get("runtime_config", {})
        run = SubmittedRun(
            run_id=str(uuid.uuid4()),
            display_name=body.get("display_name", ""),
            experiment_id=body.get("experiment_id", ""),
            pipeline_spec=body["pipeline_spec"],
            parameters=config.get("parameters") or {},
            pipeline_root=config.get("pipeline_root") or "",
            schedule=body.get("trigger", {}).get("cron_schedule", {}).get("cron", ""),
            service_account=body.get("service_account") or "",
        )
        self.runs.append(run)
        key = "recurring_run_id" if recurring else "run_id"
        return {key: run.run_id, "display_name": run.display_name, "created_at": now}


class KfpApiServer:
    """The stand-in on 127.0.0.1, served from a thread of this process."""

    def __init__(self) -> None:
        self.api = KfpApi()
        api = self.api

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                try:
                    with api.lock:
                        status, answer = api.handle(
                            self.command, url.path, parse_qs(url.query), body
                        )
                except InvalidRun as exc:
                    status, answer = 400, {"error": str(exc), "code": 3}
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    @property
    def runs(self) -> list[SubmittedRun]:
        return self.api.runs

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
