"""Run a compiled KFP v2 pipeline (IR YAML) the way Kubeflow's driver and launcher run it.

Read from kubeflow/pipelines at tag ``2.17.0`` (the kfp SDK here is 2.17.0):

Emulated, as in upstream:

- **Output provisioning** (``backend/src/v2/driver/driver.go`` ``provisionOutputs``; the run
  root from ``backend/src/v2/metadata/client.go`` ``GetPipeline``/``GenerateOutputURI``):
  each output artifact's URI is ``<pipeline root>/<pipeline name>/<run id>/<task>/<uuid>/
  <output name>``; each output parameter is written to ``/tmp/kfp/outputs/<name>``; the
  executor output file is ``output_metadata.json`` in the task root's local path.
- **Input resolution** (``backend/src/v2/driver/resolve.go``): parameters from the
  pipeline's arguments (root defaults filled in), upstream output parameters and constants;
  artifacts from upstream outputs (URI, type and the metadata the producer wrote).
- **Local paths** (``backend/src/v2/component/launcher_v2.go`` ``LocalPathForURI``):
  ``s3://b/k`` is ``/s3/b/k``, ``minio://`` is ``/minio/``, ``gs://`` is ``/gcs/``; the kfp
  SDK derives the same paths from the URIs (``kfp/dsl/types/artifact_types.py``).
- **Pod layout** (``backend/src/v2/compiler/argocompiler/container.go``): the executor pod
  gets emptyDirs at ``/gcs``, ``/s3``, ``/minio``, ``/.local``, ``/.cache``, ``/.config``
  and env ``KFP_POD_NAME`` / ``KFP_POD_UID``; the image's ``ENV`` and WORKDIR apply.
- **Env from the platform spec** (``backend/src/v2/driver/driver.go`` ``initPodSpecPatch``,
  ``backend/src/v2/driver/k8s.go`` ``extendPodSpecPatch``): the IR container's ``env``, then
  ``secretAsEnv``, then ``configMapAsEnv`` (kfp-kubernetes ``use_secret_as_env`` /
  ``use_config_map_as_env``), each key read from the Secret/ConfigMap in the pod's
  namespace; a missing non-optional key fails the pod, as the kubelet does; then
  ``fieldPathAsEnv`` (``use_field_path_as_env``): the pod's name, namespace and IP.
- **Launcher** (``launcher_v2.go`` ``executeV2``, ``compileCmdAndArgs``, ``getPlaceholders``,
  ``downloadArtifacts``, ``prepareOutputFolders``, ``collectOutputParameters``,
  ``uploadOutputArtifacts``; ``backend/src/v2/objectstore/object_store.go``
  ``DownloadBlob``/``UploadBlob``): defaults are added for ``{{$}}``, which becomes the
  executor input JSON; ``{{$.inputs.parameters[...]}}``, artifact ``.uri``/``.path`` and
  output ``.output_file`` placeholders are substituted (not in the first command word, as
  upstream); input artifacts are downloaded (a single object or every key under the prefix)
  into the pod's own ``/s3``; the container's command runs with ``python3`` from the
  image's virtualenv at ``/opt/mlref`` (:func:`tests.cluster.pods.image_mounts`); output
  parameters come from the executor output file, else from their output files; output
  artifacts (file or directory) are uploaded from the pod's local path to their URIs, a
  missing one skipped.

- **Caching** (``backend/src/v2/driver/cache.go`` ``getFingerPrint``,
  ``backend/src/v2/cacheutils/cache.go`` ``GenerateCacheKey``/``GenerateFingerPrint``/
  ``GetExecutionCache``): a task whose ``cachingOptions.enableCache`` is set is keyed by its
  input parameter values, its input artifacts' names (MLMD artifact ids, so a new upstream
  execution means a new key), its output artifacts' name, type and metadata (URIs wiped),
  its output parameters' types, the container's command + args as written in the IR and its
  image; env and the data a step reads are not in the key. The key is looked up per pipeline
  name and namespace in the cluster's task cache (:attr:`Cluster.executions`, which outlives
  a run as the API server's does); a hit reuses the earlier execution's output parameters and
  artifacts (same ids and URIs) without starting a pod; a successful execution is recorded.

Each pod is a sandboxed process (:mod:`tests.cluster.pods`): a read-only root, its own empty
``/tmp`` (the image's WORKDIR, so its cwd) and scratch dirs, nothing from any other pod.
In-cluster Service addresses in its env and arguments (the executor input included) are
rewritten to the test servers' addresses, in place of cluster DNS, for a pod in the pipelines
namespace with the executor label Argo gives it, under the rendered NetworkPolicies.

Use: ``run_pipeline(ir, arguments, cluster, store, work_dir, "s3://bucket/root")`` with the
compiled YAML's path (or a spec recorded by :mod:`tests.cluster.kfp_api`), the pipeline's
arguments, a :class:`tests.cluster.pods.Cluster` (ConfigMaps and Secrets in the pipelines
namespace, Service addresses mapped to the test servers) and the S3 server holding the
pipeline root; it returns every task's outputs and the pipeline's, or raises
:class:`tests.cluster.pods.PodFailed` with the failed task's log tail.

Not emulated: the cache's staleness limit and custom cache keys, retries, MLMD, the
executor-logs artifact, ``dsl.If`` conditions,
``ParallelFor``, nested DAGs and exit handlers (``dsl.ExitHandler``), importer and
Kubernetes-platform-only tasks, ``IfPresent``/``Concat`` placeholders, PVC, volume, node and
pod-metadata settings of the platform spec, accelerators and resource limits (a GPU request
is recorded in ``TaskRun.resources`` but the step runs on CPU), images other than the
project's, the launcher's own object-store configuration (``kfp-launcher`` ConfigMap: here
the launcher uses the test S3 server's endpoint and keys), pipeline roots other than
``s3://``, and task parallelism (tasks run one at a time in dependency order, which any
parallel schedule must also allow). Unsupported constructs raise NotImplementedError.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.network import Endpoint, PodNetwork
from tests.cluster.pods import Cluster, PodFailed, run_in_sandbox
from tests.conftest import S3Server

ARTIFACT_IDS = itertools.count(1)  # MLMD artifact ids: a recorded output's runtime name
WIPED_URI = ("name", "type", "metadata")  # an output artifact in the cache key: no URI
SCRATCH = ("/gcs", "/s3", "/minio", "/.local", "/.cache", "/.config")
LOCAL_PREFIXES = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}
# The label the Argo compiler puts in every workflow's podMetadata (argocompiler).
EXECUTOR_LABELS = {"pipelines.kubeflow.org/v2_component": "true"}


@dataclass
class TaskRun:
    """One executed task: its resolved output parameters and artifacts, and its log."""

    name: str
    pod_dir: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    log: str = ""
    cached: bool = False  # outputs reused from an earlier execution; no pod ran


@dataclass
class PipelineRun:
    run_id: str
    root: str  # this run's artifact root: <pipeline root>/<pipeline name>/<run id>
    tasks: dict[str, TaskRun]
    outputs: dict[str, Any]  # the pipeline's own output parameters


def load_ir(ir: Path | Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pipeline spec and its Kubernetes platform spec, from a compiled YAML file (the
    platform spec is a second document) or from a submitted run's ``pipeline_spec`` (the
    spec alone, or ``{pipeline_spec, platform_spec}`` as ``kfp.Client`` sends it)."""
    if isinstance(ir, Path):
        documents = [doc for doc in yaml.safe_load_all(ir.read_text()) if doc]
    elif "pipeline_spec" in ir:
        documents = [ir["pipeline_spec"], ir.get("platform_spec", {})]
    else:
        documents = [dict(ir)]
    platform: dict[str, Any] = {}
    for doc in documents[1:]:
        platform = doc.get("platforms", {}).get("kubernetes", platform)
    return copy.deepcopy(documents[0]), copy.deepcopy(platform)


def local_path(uri: str) -> str:
    """``LocalPathForURI``: where the launcher and the SDK put an artifact in the pod."""
    for prefix, mount in LOCAL_PREFIXES.items():
        if uri.startswith(prefix):
            return mount + uri[len(prefix) :]
    raise PodFailed(f"artifact URI {uri}: unsupported storage scheme")


def typed(value: Any, parameter_type: str) -> Any:
    """A parameter value as the API server stores it (a protobuf Value)."""
    if parameter_type == "NUMBER_INTEGER":
        return int(value)
    if parameter_type == "NUMBER_DOUBLE":
        return float(value)
    if parameter_type == "BOOLEAN":
        return value if isinstance(value, bool) else str(value).lower() == "true"
    if parameter_type == "STRING":
        return str(value)
    return value  # LIST / STRUCT


def text_to_value(text: str, parameter_type: str) -> Any:
    """``metadata.TextToPbValue``: an output parameter file's text as a typed value."""
    if parameter_type == "STRING":
        return text
    if parameter_type in ("NUMBER_INTEGER", "NUMBER_DOUBLE"):
        return typed(float(text), parameter_type) if "." in text else typed(text, parameter_type)
    if parameter_type == "BOOLEAN":
        return text.strip() == "true"
    return json.loads(text)


def placeholder_text(value: Any) -> str:
    """``getPlaceholders``' rendering of an input parameter."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


class Launcher:
    """Moves artifacts between the pipeline root and one pod's local paths."""

    def __init__(self, store: S3Server, pipeline_root: str):
        if not pipeline_root.startswith("s3://"):
            raise PodFailed(f"pipeline root {pipeline_root}: only s3:// is emulated")
        self.client = store.client()

    @staticmethod
    def split(uri: str) -> tuple[str, str]:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return bucket, key.strip("/")

    def download(self, uri: str, pod_dir: Path) -> None:
        """``DownloadBlob``: the object itself, or every object under ``<key>/``; nothing
        when there is none (the component then finds no file, as upstream)."""
        bucket, key = self.split(uri)
        target = pod_dir / local_path(uri).lstrip("/")
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        for page in pages:
            for item in page.get("Contents", []):
                name = item["Key"]
                if name != key and not name.startswith(key + "/"):
                    continue
                path = target / name[len(key) :].lstrip("/") if name != key else target
                path.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(bucket, name, str(path))

    def upload(self, uri: str, pod_dir: Path) -> bool:
        """``UploadBlob``: a file, or a directory's files under ``<key>/``; False if absent."""
        bucket, key = self.split(uri)
        source = pod_dir / local_path(uri).lstrip("/")
        if source.is_file():
            self.client.upload_file(str(source), bucket, key)
            return True
        if not source.is_dir():
            return False
        for path in sorted(source.rglob("*")):
            if path.is_file():
                self.client.upload_file(
                    str(path), bucket, f"{key}/{path.relative_to(source).as_posix()}"
                )
        return True


def task_order(dag: Mapping[str, Any]) -> list[str]:
    """Tasks in an order that respects ``dependentTasks`` and data dependencies."""
    graph: dict[str, set[str]] = {}
    for name, task in dag["tasks"].items():
        needs = set(task.get("dependentTasks", []))
        inputs = task.get("inputs", {})
        for spec in inputs.get("parameters", {}).values():
            if "taskOutputParameter" in spec:
                needs.add(spec["taskOutputParameter"]["producerTask"])
        for spec in inputs.get("artifacts", {}).values():
            if "taskOutputArtifact" in spec:
                needs.add(spec["taskOutputArtifact"]["producerTask"])
        graph[name] = needs
    return list(TopologicalSorter(graph).static_order())


def check_supported(name: str, task: Mapping[str, Any], component: Mapping[str, Any]) -> None:
    unsupported = [
        key for key in ("triggerPolicy", "parameterIterator", "artifactIterator") if key in task
    ]
    if "dag" in component:
        unsupported.append("nested DAG (dsl.ExitHandler, dsl.If, ParallelFor)")
    if "executorLabel" not in component:
        unsupported.append("component without an executor")
    if unsupported:
        raise NotImplementedError(f"task {name}: {', '.join(unsupported)} not emulated")


def pod_env(
    container: Mapping[str, Any],
    k8s: Mapping[str, Any],
    cluster: Cluster,
    namespace: str,
    pod_name: str,
    network: PodNetwork,
) -> dict[str, str]:
    """The executor container's env: image ENV, Argo's, the IR's, Secrets', ConfigMaps';
    in-cluster addresses resolved by the pod's ``network``."""
    env = dict(cluster.image_env)
    env["KFP_POD_NAME"] = pod_name
    env["KFP_POD_UID"] = str(uuid.uuid5(uuid.NAMESPACE_DNS, pod_name))
    env.update({var["name"]: var.get("value", "") for var in container.get("env", [])})
    for kind, entries, key_field in (
        ("Secret", k8s.get("secretAsEnv", []), "secretKey"),
        ("ConfigMap", k8s.get("configMapAsEnv", []), "configMapKey"),
    ):
        for entry in entries:
            name = entry.get("secretName") or entry.get("configMapName")
            parameter = entry.get("secretNameParameter") or entry.get("configMapNameParameter")
            if parameter is not None:
                if "runtimeValue" not in parameter:
                    raise NotImplementedError(f"{kind} name from a pipeline input: not emulated")
                name = parameter["runtimeValue"]["constant"]
            for pair in entry.get("keyToEnv", []):
                value = cluster.key(
                    kind, name, pair[key_field], namespace, entry.get("optional", False)
                )
                if value is not None:
                    env[pair["envVar"]] = value
    for entry in k8s.get("fieldPathAsEnv", []):  # kfp-kubernetes use_field_path_as_env
        env[entry["name"]] = field_path(entry["fieldPath"], pod_name, namespace)
    return {name: network.resolve(value) for name, value in env.items()}


# The downward API fields a pod here has: its name, its namespace, and its IP, which is the
# loopback address every pod of this harness listens on.
POD_FIELDS = {"metadata.name", "metadata.namespace", "status.podIP"}


def field_path(path: str, pod_name: str, namespace: str) -> str:
    """A downward API ``fieldRef`` of the executor pod (``extendPodSpecPatch`` copies the
    platform spec's ``fieldPathAsEnv`` into the container's env as such)."""
    if path not in POD_FIELDS:
        raise NotImplementedError(f"fieldPath {path}: not emulated")
    return {"metadata.name": pod_name, "metadata.namespace": namespace}.get(path, "127.0.0.1")


def compile_args(argv: list[str], executor_input: dict[str, Any]) -> list[str]:
    """``compileCmdAndArgs``: ``{{$}}`` everywhere, other placeholders after the first word."""
    placeholders: dict[str, str] = {}
    for name, value in executor_input["inputs"].get("parameterValues", {}).items():
        placeholders[f"{{{{$.inputs.parameters['{name}']}}}}"] = placeholder_text(value)
    for direction in ("inputs", "outputs"):
        for name, listing in executor_input[direction].get("artifacts", {}).items():
            artifact = listing["artifacts"][0]
            placeholders[f"{{{{$.{direction}.artifacts['{name}'].uri}}}}"] = artifact["uri"]
            placeholders[f"{{{{$.{direction}.artifacts['{name}'].path}}}}"] = local_path(
                artifact["uri"]
            )
    for name, parameter in executor_input["outputs"].get("parameters", {}).items():
        placeholders[f"{{{{$.outputs.parameters['{name}'].output_file}}}}"] = parameter[
            "outputFile"
        ]
    whole = json.dumps(executor_input, separators=(",", ":"))
    compiled = [argv[0].replace("{{$}}", whole)]
    for arg in argv[1:]:
        if arg.startswith(('{"IfPresent"', '{"Concat"')):
            raise NotImplementedError(f"placeholder {arg[:30]}: not emulated")
        arg = arg.replace("{{$}}", whole)
        for placeholder, replacement in placeholders.items():
            arg = arg.replace(placeholder, replacement)
        compiled.append(arg)
    return compiled


@dataclass
class Run:
    """One pipeline run in progress: what the driver and launcher of each task consult."""

    spec: dict[str, Any]
    k8s_executors: dict[str, Any]  # the IR's Kubernetes platform config, per executor
    run_root: str
    cluster: Cluster
    launcher: Launcher
    work_dir: Path
    namespace: str
    timeout: float
    inputs: dict[str, Any] = field(default_factory=dict)  # the root DAG's parameters
    tasks: dict[str, TaskRun] = field(default_factory=dict)  # finished tasks


def run_pipeline(
    ir: Path | Mapping[str, Any],
    arguments: Mapping[str, Any],
    cluster: Cluster,
    store: S3Server,
    work_dir: Path,
    pipeline_root: str,
    namespace: str = "kubeflow",
    timeout: float = 900,
) -> PipelineRun:
    """Run every task of the compiled pipeline as its own pod; raise PodFailed on a failure.

    ``store`` is the object store holding ``pipeline_root`` (``s3://bucket/prefix``), which
    the launcher reaches with its own credentials; pods get only what ``cluster`` and the
    IR give them, in ``namespace`` (the ConfigMaps and Secrets they use must live there).
    ``work_dir`` holds each pod's host-side directories; ``timeout`` bounds each pod.
    """
    spec, platform = load_ir(ir)
    run_id = str(uuid.uuid4())
    run = Run(
        spec=spec,
        k8s_executors=platform.get("deploymentSpec", {}).get("executors", {}),
        run_root=f"{pipeline_root.rstrip('/')}/{spec['pipelineInfo']['name']}/{run_id}",
        cluster=cluster,
        launcher=Launcher(store, pipeline_root),
        work_dir=work_dir,
        namespace=namespace,
        timeout=timeout,
    )
    root = spec["root"]
    for name, definition in root.get("inputDefinitions", {}).get("parameters", {}).items():
        if name in arguments:
            run.inputs[name] = typed(arguments[name], definition["parameterType"])
        elif "defaultValue" in definition:
            run.inputs[name] = typed(definition["defaultValue"], definition["parameterType"])
        elif not definition.get("isOptional"):
            raise PodFailed(f"pipeline input {name!r} is required")
    unknown = set(arguments) - set(run.inputs)
    if unknown:
        raise PodFailed(f"unknown pipeline arguments: {sorted(unknown)}")

    dag = root["dag"]
    for name in task_order(dag):
        run.tasks[name] = run_task(run, name, dag["tasks"][name])

    outputs = {}
    for name, selector in dag.get("outputs", {}).get("parameters", {}).items():
        source = selector["valueFromParameter"]
        producer = run.tasks[source["producerSubtask"]]
        outputs[name] = producer.parameters[source["outputParameterKey"]]
    return PipelineRun(run_id, run.run_root, run.tasks, outputs)


def resolve_inputs(
    run: Run, name: str, task: Mapping[str, Any], component: Mapping[str, Any]
) -> dict[str, Any]:
    """The executor input's ``inputs``: parameter values and input artifacts."""
    values: dict[str, Any] = {}
    for key, source in task.get("inputs", {}).get("parameters", {}).items():
        if "componentInputParameter" in source:
            if source["componentInputParameter"] in run.inputs:
                values[key] = run.inputs[source["componentInputParameter"]]
        elif "taskOutputParameter" in source:
            producer = source["taskOutputParameter"]
            upstream = run.tasks[producer["producerTask"]]
            values[key] = upstream.parameters[producer["outputParameterKey"]]
        elif "runtimeValue" in source:
            values[key] = source["runtimeValue"]["constant"]
        else:
            raise NotImplementedError(f"task {name}: input {key} {list(source)} not emulated")
    artifacts: dict[str, Any] = {}
    for key, source in task.get("inputs", {}).get("artifacts", {}).items():
        if "taskOutputArtifact" not in source:
            raise NotImplementedError(f"task {name}: artifact {key} {list(source)} not emulated")
        producer = source["taskOutputArtifact"]
        upstream = run.tasks[producer["producerTask"]]
        artifacts[key] = {
            "artifacts": [copy.deepcopy(upstream.artifacts[producer["outputArtifactKey"]])]
        }
    declared = component.get("inputDefinitions", {}).get("parameters", {})
    values = {
        key: typed(value, declared[key]["parameterType"]) if key in declared else value
        for key, value in values.items()
    }
    return {"parameterValues": values, "artifacts": artifacts}


def run_task(run: Run, name: str, task: Mapping[str, Any]) -> TaskRun:
    """Driver, then launcher, for one container task."""
    component = run.spec["components"][task["componentRef"]["name"]]
    check_supported(name, task, component)
    label = component["executorLabel"]
    container = run.spec["deploymentSpec"]["executors"][label]["container"]
    run.cluster.check_image(container["image"])
    # Driver: resolve inputs, provision outputs under <run root>/<task>/<uuid>.
    task_root = f"{run.run_root}/{name}/{uuid.uuid4()}"
    outputs_spec = component.get("outputDefinitions", {})
    executor_input = {
        "inputs": resolve_inputs(run, name, task, component),
        "outputs": {
            "artifacts": {
                key: {
                    "artifacts": [
                        {
                            "name": key,
                            "type": definition["artifactType"],
                            "uri": f"{task_root}/{key}",
                            **(
                                {"metadata": definition["metadata"]}
                                if "metadata" in definition
                                else {}
                            ),
                        }
                    ]
                }
                for key, definition in outputs_spec.get("artifacts", {}).items()
            },
            "parameters": {
                key: {"outputFile": f"/tmp/kfp/outputs/{key}"}
                for key in outputs_spec.get("parameters", {})
            },
            "outputFile": local_path(task_root) + "/output_metadata.json",
        },
    }
    fingerprint = ""
    if task.get("cachingOptions", {}).get("enableCache"):
        fingerprint = cache_fingerprint(run, executor_input, component, container)
        earlier = run.cluster.executions.get(fingerprint)
        if earlier is not None:
            return TaskRun(
                name,
                earlier.pod_dir,
                parameters=copy.deepcopy(earlier.parameters),
                artifacts=copy.deepcopy(earlier.artifacts),
                resources=dict(earlier.resources),
                cached=True,
            )
    pod_name = f"{run.run_root.rsplit('/', 1)[-1][:8]}-{name}"
    pod_dir = run.work_dir / pod_name
    volumes = {path: pod_dir / "volumes" / path.strip("/") for path in ("/tmp", *SCRATCH)}
    for directory in volumes.values():
        directory.mkdir(parents=True, exist_ok=True)
    k8s = run.k8s_executors.get(label, {})
    labels = {**EXECUTOR_LABELS, **k8s.get("podMetadata", {}).get("labels", {})}
    network = run.cluster.network(Endpoint(run.namespace, labels))
    env = pod_env(container, k8s, run.cluster, run.namespace, pod_name, network)

    # Launcher: defaults for {{$}}, placeholders, inputs in, run, outputs out.
    with_defaults = copy.deepcopy(executor_input)
    for key, definition in component.get("inputDefinitions", {}).get("parameters", {}).items():
        if key not in with_defaults["inputs"]["parameterValues"] and "defaultValue" in definition:
            with_defaults["inputs"]["parameterValues"][key] = definition["defaultValue"]
    argv = compile_args([*container.get("command", []), *container.get("args", [])], with_defaults)
    argv = [network.resolve(arg) for arg in argv]  # cluster DNS, as in run_pod
    for listing in executor_input["inputs"]["artifacts"].values():
        run.launcher.download(listing["artifacts"][0]["uri"], pod_dir / "volumes")
    for path in [
        *(p["outputFile"] for p in executor_input["outputs"]["parameters"].values()),
        *(
            local_path(listing["artifacts"][0]["uri"])
            for listing in executor_input["outputs"]["artifacts"].values()
        ),
    ]:
        (pod_dir / "volumes" / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    try:
        done_process = run_in_sandbox(
            argv, env, pod_dir, volumes, workdir=run.cluster.image_workdir, timeout=run.timeout
        )
    finally:
        refused = run.cluster.record_refusals(network)
    if done_process.returncode != 0:
        raise PodFailed(
            f"task {name} failed (exit {done_process.returncode}); log tail:\n"
            f"{done_process.stdout[-6000:]}"
            + "".join(f"\nNetworkPolicy refused {gap}" for gap in refused)
        )
    output_file = pod_dir / "volumes" / executor_input["outputs"]["outputFile"].lstrip("/")
    executor_output = json.loads(output_file.read_text()) if output_file.is_file() else {}

    result = TaskRun(name, pod_dir, log=done_process.stdout)
    result.resources = dict(container.get("resources", {}))
    declared = outputs_spec.get("parameters", {})
    for key, parameter in executor_input["outputs"]["parameters"].items():
        if key in executor_output.get("parameterValues", {}):
            result.parameters[key] = executor_output["parameterValues"][key]
            continue
        path = pod_dir / "volumes" / parameter["outputFile"].lstrip("/")
        if not path.is_file():
            raise PodFailed(f"task {name}: failed to read output parameter {key!r} at {path}")
        result.parameters[key] = text_to_value(path.read_text(), declared[key]["parameterType"])
    for key, listing in executor_input["outputs"]["artifacts"].items():
        artifact = listing["artifacts"][0]
        written = executor_output.get("artifacts", {}).get(key, {}).get("artifacts", [])
        if written:
            artifact["uri"] = written[0].get("uri") or artifact["uri"]
            artifact.setdefault("metadata", {}).update(written[0].get("metadata", {}))
        run.launcher.upload(artifact["uri"], pod_dir / "volumes")
        # Recorded in MLMD: downstream tasks see the artifact by its id.
        result.artifacts[key] = {**artifact, "name": str(next(ARTIFACT_IDS))}
    if fingerprint:
        run.cluster.executions[fingerprint] = result
    return result


def cache_fingerprint(
    run: Run,
    executor_input: Mapping[str, Any],
    component: Mapping[str, Any],
    container: Mapping[str, Any],
) -> str:
    """``getFingerPrint``: the sha256 of the cache key's JSON, scoped to the pipeline's name
    and namespace as ``GetExecutionCache`` filters."""
    inputs, outputs = executor_input["inputs"], executor_input["outputs"]
    declared = component.get("outputDefinitions", {}).get("parameters", {})
    key = {
        "inputArtifactNames": {
            name: {"artifactNames": [a["name"] for a in listing["artifacts"]]}
            for name, listing in inputs.get("artifacts", {}).items()
        },
        "inputParameterValues": inputs.get("parameterValues", {}),
        "outputArtifactsSpec": {
            name: {k: v for k, v in listing["artifacts"][0].items() if k in WIPED_URI}
            for name, listing in outputs.get("artifacts", {}).items()
        },
        "outputParametersSpec": {
            name: declared[name]["parameterType"] for name in outputs.get("parameters", {})
        },
        "containerSpec": {
            "image": container["image"],
            "cmdArgs": [*container.get("command", []), *container.get("args", [])],
        },
    }
    scope = {"pipelineName": f"pipeline/{run.spec['pipelineInfo']['name']}", "ns": run.namespace}
    text = json.dumps({"key": key, **scope}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
