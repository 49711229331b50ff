"""The command line and environment KServe's controller gives each serving container.

A transformer or predictor container runs what the rendered InferenceService says *plus*
what the controller adds, and in Knative mode what Knative adds. These functions compute
that final argv and env from a rendered InferenceService (and its ServingRuntime), so that
`mlref manifests verify` can check our CLI accepts it and local emulation can start each
process exactly the way a pod starts. Upstream, KServe v0.21 (kserve/kserve, read at commit
aaac4e29, the commit of the CRDs in ../shared/crds) and Knative Serving v1.21.1:

* transformer: ``pkg/apis/serving/v1beta1/transformer_custom.go`` (``GetContainer``) appends
  ``--model_name <isvc>``, ``--predictor_host <predictor service>.<namespace>``,
  ``--http_port 8080`` and, with ``containerConcurrency``, ``--workers N``, each unless an
  argument starting with that flag is already there (``pkg/utils/collections.go``
  ``IncludesArg``); the predictor service is ``constants.PredictorServiceName``
  (``pkg/constants/constants.go``), called from
  ``pkg/controller/v1beta1/inferenceservice/components/transformer.go``.
* predictor with ``model`` + ServingRuntime:
  ``pkg/controller/v1beta1/inferenceservice/components/predictor.go`` (``buildPodSpec``):
  the runtime's ``kserve-container`` merged with ``spec.predictor.model`` (args concatenated,
  env merged by name: ``utils.MergeRuntimeContainers``), then ``{{.Name}}``-style
  placeholders filled from the InferenceService's metadata (``ReplacePlaceholders``). No
  argument is appended: the runtime names its own.
* both: ``INFERENCE_SERVICE_NAME`` on every container (``AddEnvVarToPodSpec``).
* Standard-mode canary: ``buildCanaryPredictor`` in the same predictor.go, the stable
  predictor overridden by ``spec.canary[i].predictor`` (mergo ``WithOverride``: set fields
  win, lists are replaced), run under the same InferenceService name.
* container name: the merge (``pkg/utils/container_merge.go``, ``MergeContainerWithPatch``)
  keeps the runtime's ``kserve-container`` only when ``model.name`` is empty; a set
  ``model.name`` renames the container. The pod mutator
  (``pkg/webhook/admission/pod/storage_initializer_injector.go``) looks for
  ``kserve-container`` (else ``worker-container``) to mount a ``storageUri`` into, and
  refuses the pod without one (``config/webhook/manifests.yaml``: ``failurePolicy: Fail``).
  A canary's ``model.name`` is required by the CRD, so it must be ``kserve-container``.
* Knative mode: ``pkg/reconciler/revision/resources/deploy.go`` (``makeServingContainer``)
  and ``env_var.go``: ``PORT`` (the container port), ``K_REVISION``, ``K_CONFIGURATION``,
  ``K_SERVICE``; the revision is ``<configuration>-<generation:05d>``
  (``pkg/reconciler/configuration/resources/revision.go``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

KNATIVE = "Knative"
STANDARD = "Standard"
# Accepted by the webhook and rewritten by its defaulter (inference_service_defaults.go).
LEGACY_MODES = {"Serverless": KNATIVE, "RawDeployment": STANDARD}
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
# What kserve.yaml of v0.21 installs (config/configmap/inferenceservice.yaml: "Serverless").
DEFAULT_MODE = KNATIVE
CONTAINER = "kserve-container"
DEFAULT_HTTP_PORT = "8080"
ISVC_NAME_ENV = "INFERENCE_SERVICE_NAME"
RUNTIME_KINDS = {"ServingRuntime", "ClusterServingRuntime"}
# ModelSpec's own fields; the rest of spec.predictor.model is a container patch.
MODEL_FIELDS = {
    "modelFormat",
    "runtime",
    "runtimeVersion",
    "protocolVersion",
    "storageUri",
    "storage",
}
_PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")


class KServeSpecError(ValueError):
    """An InferenceService the controller could not turn into a container."""


@dataclass
class Launch:
    """One container as the pod runs it: argv (command + args) and env, in order."""

    component: str
    mode: str
    command: list[str]
    args: list[str]
    env: list[dict[str, Any]] = field(default_factory=list)
    env_from: list[dict[str, Any]] = field(default_factory=list)
    ports: list[dict[str, Any]] = field(default_factory=list)
    container: str = CONTAINER  # the container's final name in the pod
    storage_uri: str = ""  # the model the storage initializer fetches for it, if any
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    security_context: dict[str, Any] = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]

    def literal_env(self) -> dict[str, str]:
        """The env entries with a literal value (those from Secrets are left to the caller)."""
        return {e["name"]: str(e["value"]) for e in self.env if "value" in e}


def deployment_mode(isvc: dict[str, Any], default: str = DEFAULT_MODE) -> str:
    """``Knative`` or ``Standard``: the annotation with legacy names normalized, else default."""
    annotations = (isvc.get("metadata") or {}).get("annotations") or {}
    mode = annotations.get(DEPLOYMENT_MODE) or default
    mode = LEGACY_MODES.get(mode, mode)
    if mode not in {KNATIVE, STANDARD}:
        raise KServeSpecError(
            f"{DEPLOYMENT_MODE} {mode!r} is not a mode mlref deploys: use Knative or Standard"
        )
    return mode


def predictor_service_name(isvc_name: str, predictor_name: str = "") -> str:
    """``constants.PredictorServiceName``: ``<isvc>[-<predictor name>]-predictor``."""
    return f"{isvc_name}-{predictor_name}-predictor" if predictor_name else f"{isvc_name}-predictor"


def _includes_arg(args: list[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag) for arg in args)


def _merge_env(base: list[dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Strategic merge by name: an entry of ``extra`` replaces the same name in ``base``."""
    merged = [copy.deepcopy(e) for e in base]
    index = {e["name"]: i for i, e in enumerate(merged)}
    for entry in extra:
        if entry["name"] in index:
            merged[index[entry["name"]]] = copy.deepcopy(entry)
        else:
            index[entry["name"]] = len(merged)
            merged.append(copy.deepcopy(entry))
    return merged


def _set_env(env: list[dict[str, Any]], name: str, value: str) -> list[dict[str, Any]]:
    return _merge_env(env, [{"name": name, "value": value}])


def fill_template(text: str, metadata: dict[str, Any], **values: str) -> str:
    """Go-template placeholders over ObjectMeta: .Name, .Namespace, .Labels.k, .Annotations.k,
    and any top-level ``values`` (the ingress domain template's .IngressDomain)."""

    def value(match: re.Match[str]) -> str:
        expr = match.group(1)
        parts = expr.lstrip(".").split(".", 1)
        if expr in {".Name", ".Namespace"}:
            return str(metadata.get(expr[1:].lower(), ""))
        if expr.startswith(".") and expr[1:] in values:
            return values[expr[1:]]
        if len(parts) == 2 and parts[0] in {"Labels", "Annotations"}:
            return str((metadata.get(parts[0].lower()) or {}).get(parts[1], ""))
        raise KServeSpecError(f"placeholder {{{{{expr}}}}} is not one mlref can fill")

    return _PLACEHOLDER.sub(value, text)


def _override(stable: Any, canary: Any) -> Any:
    """mergo.Merge(WithOverride): set (non-empty) canary values win, maps merge, lists replace."""
    if isinstance(stable, dict) and isinstance(canary, dict):
        merged = copy.deepcopy(stable)
        for key, value in canary.items():
            merged[key] = _override(stable.get(key), value) if key in stable else value
        return merged
    return copy.deepcopy(canary) if canary not in (None, "", [], {}, 0, False) else stable


def _component_spec(isvc: dict[str, Any], component: str, canary: str) -> dict[str, Any]:
    spec = isvc.get("spec") or {}
    if component == "transformer":
        if "transformer" not in spec:
            raise KServeSpecError(f"InferenceService {_name(isvc)} has no spec.transformer")
        return spec["transformer"]
    if component != "predictor":
        raise KServeSpecError(f"component {component!r}: use transformer or predictor")
    predictor = spec.get("predictor") or {}
    if not canary:
        return predictor
    for entry in spec.get("canary") or []:
        if (entry.get("predictor") or {}).get("name") == canary:
            return _override(predictor, entry["predictor"])
    raise KServeSpecError(f"InferenceService {_name(isvc)} has no spec.canary named {canary!r}")


def _name(isvc: dict[str, Any]) -> str:
    return (isvc.get("metadata") or {}).get("name", "")


def _first_container(spec: dict[str, Any], where: str) -> dict[str, Any]:
    containers = spec.get("containers") or []
    if not containers:
        raise KServeSpecError(f"{where} has no containers")
    return copy.deepcopy(containers[0])


def _transformer_container(isvc: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """transformer_custom.go GetContainer: KServe's flags appended unless already given."""
    metadata = isvc.get("metadata") or {}
    container = _first_container(spec, "spec.transformer")
    args = list(container.get("args") or [])
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    service = predictor_service_name(_name(isvc), predictor.get("name", ""))
    host = f"{service}.{metadata.get('namespace', '')}"
    appended = (
        ("--model_name", _name(isvc)),
        ("--predictor_host", host),
        ("--http_port", DEFAULT_HTTP_PORT),
    )
    for flag, value in appended:
        if not _includes_arg(args, flag):
            args += [flag, value]
    concurrency = spec.get("containerConcurrency")
    if concurrency is not None and not _includes_arg(args, "--workers"):
        args += ["--workers", str(concurrency)]
    container["args"] = args
    return container


def _runtime(runtimes: Iterable[dict[str, Any]], name: str) -> dict[str, Any]:
    for runtime in runtimes:
        if runtime.get("kind") in RUNTIME_KINDS and _name(runtime) == name:
            return runtime
    raise KServeSpecError(f"no ServingRuntime named {name!r} among the rendered objects")


def _predictor_container(
    isvc: dict[str, Any], spec: dict[str, Any], runtimes: Iterable[dict[str, Any]]
) -> dict[str, Any]:
    """predictor.go buildPodSpec: runtime container + model container, placeholders filled."""
    model = spec.get("model")
    if model is None:
        return _first_container(spec, "spec.predictor")
    runtime_name = model.get("runtime")
    if not runtime_name:
        raise KServeSpecError("spec.predictor.model.runtime is not set: name the ServingRuntime")
    runtime = _runtime(runtimes, runtime_name)
    base = next(
        (
            c
            for c in (runtime.get("spec") or {}).get("containers") or []
            if c.get("name") == CONTAINER
        ),
        None,
    )
    if base is None:
        raise KServeSpecError(f"ServingRuntime {runtime_name} has no container named {CONTAINER}")
    container = copy.deepcopy(base)
    for key, value in model.items():
        if key not in MODEL_FIELDS and key not in {"args", "env"}:
            container[key] = copy.deepcopy(value)
    container["name"] = model.get("name") or base.get("name")  # MergeContainerWithPatch
    container["args"] = list(base.get("args") or []) + list(model.get("args") or [])
    container["env"] = _merge_env(base.get("env") or [], model.get("env") or [])
    metadata = isvc.get("metadata") or {}
    container["args"] = [fill_template(arg, metadata) for arg in container["args"]]
    container["command"] = [
        fill_template(part, metadata) for part in container.get("command") or []
    ]
    for entry in container["env"]:
        if "value" in entry:
            entry["value"] = fill_template(str(entry["value"]), metadata)
    return container


def launch(
    isvc: dict[str, Any],
    component: str,
    runtimes: Iterable[dict[str, Any]] = (),
    canary: str = "",
    generation: int = 1,
    default_mode: str = DEFAULT_MODE,
) -> Launch:
    """The container ``component`` (transformer or predictor; ``canary`` names a Standard-mode
    canary predictor) of ``isvc`` runs: argv and env as the pod gets them."""
    mode = deployment_mode(isvc, default_mode)
    if canary and mode != STANDARD:
        raise KServeSpecError("spec.canary is Standard mode's API; Knative splits revisions")
    spec = _component_spec(isvc, component, canary)
    if component == "transformer":
        container = _transformer_container(isvc, spec)
        service = f"{_name(isvc)}-transformer"
    else:
        container = _predictor_container(isvc, spec, runtimes)
        service = predictor_service_name(_name(isvc), spec.get("name", ""))
    env = _set_env(container.get("env") or [], ISVC_NAME_ENV, _name(isvc))
    ports = container.get("ports") or []
    if mode == KNATIVE:
        port = str((ports[0] if ports else {}).get("containerPort", DEFAULT_HTTP_PORT))
        env = _merge_env(
            env,
            [
                {"name": "PORT", "value": port},
                {"name": "K_REVISION", "value": f"{service}-{generation:05d}"},
                {"name": "K_CONFIGURATION", "value": service},
                {"name": "K_SERVICE", "value": service},
            ],
        )
    label = f"{component}:{canary}" if canary else component
    model = (spec.get("model") or {}) if component == "predictor" else {}
    return Launch(
        label,
        mode,
        list(container.get("command") or []),
        list(container.get("args") or []),
        env,
        list(container.get("envFrom") or []),
        list(ports),
        container.get("name", ""),
        model.get("storageUri", ""),
        list(container.get("volumeMounts") or []),
        dict(container.get("securityContext") or {}),
    )


def launches(
    isvc: dict[str, Any], runtimes: Iterable[dict[str, Any]] = (), default_mode: str = DEFAULT_MODE
) -> list[Launch]:
    """Every container of one InferenceService: transformer, predictor, Standard canaries."""
    spec = isvc.get("spec") or {}
    runtimes = list(runtimes)
    found = (
        [launch(isvc, "transformer", default_mode=default_mode)] if "transformer" in spec else []
    )
    found.append(launch(isvc, "predictor", runtimes, default_mode=default_mode))
    for entry in spec.get("canary") or []:
        name = (entry.get("predictor") or {}).get("name", "")
        found.append(launch(isvc, "predictor", runtimes, name, default_mode=default_mode))
    return found


KNATIVE_SERVICE_TYPE = "networking.internal.knative.dev/serviceType"


def services(isvc: dict[str, Any], started: Launch) -> list[dict[str, Any]]:
    """The Services in front of one started container, with the labels and port names that a
    ServiceMonitor selects on. Standard: one per component, labelled like the component and
    named ports after the container's first port (KServe
    pkg/controller/v1beta1/inferenceservice/reconcilers/service/service_reconciler.go,
    createDefaultSvc). Knative: per revision a public and a private Service labelled like the
    revision, port "http" (knative/serving pkg/reconciler/serverlessservice/resources/
    services.go; knative.dev/networking ServicePortNameHTTP1)."""
    component = started.component.split(":")[0]
    labels = {
        **((isvc.get("metadata") or {}).get("labels") or {}),
        "serving.kserve.io/inferenceservice": _name(isvc),
        "component": component,
    }
    if started.mode == STANDARD:
        port = (started.ports[0] if started.ports else {}).get("name", "")
        return [{"labels": labels, "ports": [port]}]
    return [
        {"labels": {**labels, KNATIVE_SERVICE_TYPE: kind}, "ports": ["http"]}
        for kind in ("Public", "Private")
    ]
