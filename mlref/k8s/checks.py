"""Structure and hardening rules that schemas cannot express.

Each rule returns ``(field path, message)`` pairs for one object, or for one rendered form
when the rule relates objects to each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlref.k8s.workloads import containers, pod_spec

Problem = tuple[str, str]
# APIs a cluster serves only with an add-on installed, and the add-on.
OPTIONAL_APIS = {"monitoring.coreos.com/v1": "the Prometheus Operator"}

REQUIRED_SECURITY = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
}
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
# Annotation values that mean Standard mode (RawDeployment: the name before KServe v0.15).
STANDARD_MODES = {"RawDeployment", "Standard"}


def image_problem(image: str | None) -> str | None:
    if not image:
        return "has no image"
    name = image.rsplit("/", 1)[-1]
    if "@sha256:" in image:
        return None
    if ":" not in name:
        return f"image {image!r} has no tag (pin an exact version)"
    if name.endswith(":latest"):
        return f"image {image!r} uses the 'latest' tag (pin an exact version)"
    return None


def container_problems(obj: dict[str, Any]) -> list[Problem]:
    """Resources, probes and the full restricted securityContext on every container."""
    problems: list[Problem] = []
    for container in containers(obj):
        path, spec = container.path, container.spec
        image = image_problem(spec.get("image"))
        if image:
            problems.append((f"{path}.image", image))
        resources = spec.get("resources") or {}
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (resources.get(section) or {}):
                    problems.append((f"{path}.resources.{section}.{resource}", "is not set"))
        if container.probes_apply:
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in spec:
                    problems.append((f"{path}.{probe}", "is not set"))
        context = spec.get("securityContext") or {}
        for key, wanted in REQUIRED_SECURITY.items():
            if context.get(key) is not wanted:
                problems.append((f"{path}.securityContext.{key}", f"must be {wanted}"))
        if context.get("privileged"):
            problems.append((f"{path}.securityContext.privileged", "must not be true"))
        if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
            problems.append((f"{path}.securityContext.capabilities.drop", "must include ALL"))
        if (context.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(
                (f"{path}.securityContext.seccompProfile.type", "must be RuntimeDefault")
            )
    return problems


def canary_problems(obj: dict[str, Any]) -> list[Problem]:
    """KServe v0.21's canary rules. Each deployment mode has its own canary API and KServe
    ignores the other one (canaryTrafficPercent: Knative revisions, ksvc_reconciler.go;
    spec.canary: Standard only); the webhook refuses autoscaling fields on a canary, which
    runs fixed replicas (inference_service_validation.go, validateCanarySpecs)."""
    from mlref.k8s.kserve import KNATIVE, STANDARD, KServeSpecError, deployment_mode

    if obj.get("kind") != "InferenceService":
        return []
    try:
        mode = deployment_mode(obj)
    except KServeSpecError as exc:
        return [(f"metadata.annotations.{DEPLOYMENT_MODE}", str(exc))]
    spec = obj.get("spec") or {}
    predictor = spec.get("predictor") or {}
    canaries = spec.get("canary") or []
    problems: list[Problem] = []
    if mode == STANDARD and "canaryTrafficPercent" in predictor:
        problems.append(
            (
                "spec.predictor.canaryTrafficPercent",
                f"is ignored by KServe in {STANDARD} mode: use spec.canary (trafficPercent) "
                f"in {STANDARD} mode, or {KNATIVE} mode",
            )
        )
    if mode == KNATIVE and canaries:
        problems.append(
            (
                "spec.canary",
                f"is {STANDARD} mode's canary API; the webhook refuses it in {KNATIVE} mode: "
                f"use spec.predictor.canaryTrafficPercent, or {STANDARD} mode",
            )
        )
    stable_min = predictor.get("minReplicas", 1)
    total = 0
    for i, canary in enumerate(canaries):
        path, candidate = f"spec.canary.{i}", canary.get("predictor") or {}
        total += canary.get("trafficPercent", 0)
        if not candidate.get("name") or candidate.get("name") == predictor.get("name"):
            problems.append((f"{path}.predictor.name", "must be set and differ from the stable's"))
        for key in ("maxReplicas", "scaleTarget", "scaleMetric", "autoScaling", "workerSpec"):
            if key in candidate:
                problems.append(
                    (
                        f"{path}.predictor.{key}",
                        "is refused by the webhook: canaries run fixed replicas",
                    )
                )
        if candidate.get("minReplicas", 0) > stable_min:
            problems.append(
                (f"{path}.predictor.minReplicas", f"exceeds the stable's minReplicas {stable_min}")
            )
    if total > 100:
        problems.append(("spec.canary", f"trafficPercent values sum to {total}, more than 100"))
    return problems


class CliArgsError(ValueError):
    """An argv the mlref command line refuses, as the container would at start."""


def parse_cli(argv: list[str], command: Any) -> tuple[str, dict[str, Any]]:
    """Parse ``argv`` with mlref's own command line, without running it.

    ``command`` is that command line's root (the click command of ``mlref.cli.app``, which
    `mlref manifests verify` passes as itself): the checks sit below the CLI, so it is
    handed in rather than imported. Returns the command path ("mlref serve transformer") and
    its parameters, or raises CliArgsError with the message the pod would print.
    Subcommands come first: a group's own options placed before them are refused here.
    """
    import typer

    if not argv or argv[0] != "mlref":
        raise CliArgsError(f"the container runs {argv[:1]}, not the mlref command")
    path, rest = ["mlref"], list(argv[1:])
    while isinstance(command, typer.core.TyperGroup):
        if not rest or rest[0] not in command.commands:
            raise CliArgsError(f"{' '.join(path)}: no subcommand {' '.join(rest[:1])!r}")
        path.append(rest[0])
        command, rest = command.commands[rest[0]], rest[1:]
    try:
        context = command.make_context(" ".join(path), rest)
    except typer.TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise CliArgsError(f"{' '.join(path)}: {message}") from None
    return " ".join(path), context.params


def launch_problems(
    objects: list[dict[str, Any]], default_model_name: str, command: Any
) -> dict[tuple[str, str], list[Problem]]:
    """Each serving container's final argv (ours plus what KServe appends, mlref/k8s/kserve.py)
    parses with our command line, listens where its Service and Knative send traffic, the
    transformer asks the predictor for the model name the predictor serves, and a predictor
    with a storageUri keeps the container name KServe's pod mutator looks for."""
    from mlref.k8s.kserve import CONTAINER, KNATIVE, KServeSpecError, launches

    found: dict[tuple[str, str], list[Problem]] = {}
    for isvc in objects:
        if isvc.get("kind") != "InferenceService":
            continue
        key = ("InferenceService", (isvc.get("metadata") or {}).get("name", "?"))
        problems = found.setdefault(key, [])
        served: dict[str, str] = {}
        try:
            started = launches(isvc, objects)
        except KServeSpecError as exc:
            problems.append(("spec", str(exc)))
            continue
        for launch in started:
            where = f"{launch.component} ({launch.mode})"
            if launch.storage_uri and launch.container != CONTAINER:
                problems.append(
                    (
                        where,
                        f"the container is named {launch.container!r} (its model.name), not "
                        f"{CONTAINER!r}: KServe's pod mutator finds no container to mount "
                        f"{launch.storage_uri} into and refuses the pod; set model.name to "
                        f"{CONTAINER}",
                    )
                )
            try:
                _, params = parse_cli(launch.argv, command)
            except CliArgsError as exc:
                problems.append((where, f"{' '.join(launch.argv)}: {exc}"))
                continue
            port = str((launch.ports[0] if launch.ports else {}).get("containerPort", ""))
            if "port" in params and str(params["port"]) != port:
                problems.append((where, f"listens on {params['port']}, container port is {port}"))
            if launch.mode == KNATIVE and launch.literal_env().get("PORT") != port:
                problems.append((where, f"Knative sets PORT={launch.literal_env().get('PORT')}"))
            served[launch.component] = params.get("model_name") or default_model_name
        if "transformer" in served and served["transformer"] != served.get("predictor"):
            problems.append(
                (
                    "transformer",
                    f"asks for model {served['transformer']!r} but the predictor serves "
                    f"{served.get('predictor')!r}: pass --model_name {{{{.Name}}}} in the runtime",
                )
            )
    return {key: value for key, value in found.items() if value}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against one label set."""
    if not _labels_match(selector.get("matchLabels") or {}, labels):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = set(expression.get("values") or [])
        present = key in labels
        matched = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not matched:
            return False
    return True


def service_monitor_problems(
    objects: list[dict[str, Any]],
) -> dict[tuple[str, str], list[Problem]]:
    """A ServiceMonitor naming an InferenceService scrapes each of its serving containers
    through exactly one Service, in Knative and in Standard mode alike (KServe and Knative
    label those Services differently: mlref/k8s/kserve.py ``services``)."""
    from mlref.k8s.kserve import KNATIVE, STANDARD, launches, services

    isvcs = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "InferenceService"}
    found: dict[tuple[str, str], list[Problem]] = {}
    for monitor in objects:
        if monitor.get("kind") != "ServiceMonitor":
            continue
        selector = (monitor.get("spec") or {}).get("selector") or {}
        isvc = isvcs.get(
            (selector.get("matchLabels") or {}).get("serving.kserve.io/inferenceservice")
        )
        if isvc is None:
            continue
        ports = {e.get("port") for e in monitor["spec"].get("endpoints") or []}
        problems = []
        for mode in (KNATIVE, STANDARD):
            annotations = {**(isvc["metadata"].get("annotations") or {}), DEPLOYMENT_MODE: mode}
            variant = {**isvc, "metadata": {**isvc["metadata"], "annotations": annotations}}
            if mode == KNATIVE:
                variant = {
                    **variant,
                    "spec": {k: v for k, v in isvc["spec"].items() if k != "canary"},
                }
            for started in launches(variant, objects):
                scraped = [
                    s
                    for s in services(variant, started)
                    if selects(selector, s["labels"]) and ports & set(s["ports"])
                ]
                if len(scraped) != 1:
                    problems.append(
                        (
                            "spec.selector",
                            f"scrapes {started.component} in {mode} mode through "
                            f"{len(scraped)} Services, not 1",
                        )
                    )
        if problems:
            found[("ServiceMonitor", monitor["metadata"]["name"])] = problems
    return found


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def selector_problems(objects: list[dict[str, Any]]) -> dict[tuple[str, str], list[Problem]]:
    """Workload selectors match their own pod labels; Service selectors match some pod."""
    found: dict[tuple[str, str], list[Problem]] = {}
    pod_labels: list[dict[str, str]] = []
    for obj in objects:
        if pod_spec(obj) is None or obj["kind"] in {"CronJob", "Pod"}:
            continue
        spec = obj["spec"]
        labels = (spec.get("template", {}).get("metadata") or {}).get("labels") or {}
        pod_labels.append(labels)
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        if obj["kind"] != "Job" and not _labels_match(selector, labels):
            found.setdefault((obj["kind"], obj["metadata"]["name"]), []).append(
                ("spec.selector.matchLabels", f"{selector} does not match pod labels {labels}")
            )
    for obj in objects:
        if obj["kind"] != "Service":
            continue
        selector = obj.get("spec", {}).get("selector") or {}
        if selector and not any(_labels_match(selector, labels) for labels in pod_labels):
            found.setdefault(("Service", obj["metadata"]["name"]), []).append(
                ("spec.selector", f"{selector} selects no pod template in this form")
            )
    return found


S3_ANNOTATION_PREFIX = "serving.kserve.io/s3-"
HELM_HOOK = "helm.sh/hook"


def s3_annotation_problems(obj: dict[str, Any]) -> list[Problem]:
    """KServe reads the S3 endpoint annotations from the Secret, not the ServiceAccount
    (kserve pkg/credentials/s3/s3_secret.go BuildSecretEnvs reads secret.Annotations)."""
    if obj.get("kind") != "ServiceAccount":
        return []
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return [
        (
            f"metadata.annotations.{key}",
            "is ignored on a ServiceAccount: KServe reads it from the Secret the account "
            "lists (kubectl annotate secret ...)",
        )
        for key in sorted(annotations)
        if key.startswith(S3_ANNOTATION_PREFIX)
    ]


HOST_HEADER_ENV = "MLREF_SERVING__PREDICTOR_HOST_HEADER"


def _container_env(launch: Any, objects: list[dict[str, Any]]) -> dict[str, str]:
    """A started container's literal env plus the data of the ConfigMaps it takes env from
    (its own entries win, as in a pod)."""
    maps = {
        o["metadata"].get("name"): o.get("data") or {}
        for o in objects
        if o.get("kind") == "ConfigMap"
    }
    env: dict[str, str] = {}
    for source in launch.env_from:
        env.update(maps.get((source.get("configMapRef") or {}).get("name"), {}))
    return {**env, **launch.literal_env()}


def gateway_problems(
    objects: list[dict[str, Any]], command: Any
) -> dict[tuple[str, str], list[Problem]]:
    """A Standard-mode canary's traffic is split only by the predictor's Gateway API
    HTTPRoute (KServe httproute_reconciler.go, applyCanaryWeights): a transformer that calls
    the predictor Service (the --predictor_host KServe appends) never reaches the canary, and
    one that calls the Gateway must send the route's host."""
    from mlref.k8s.gateway import predictor_route_host
    from mlref.k8s.kserve import STANDARD, KServeSpecError, launch, predictor_service_name

    found: dict[tuple[str, str], list[Problem]] = {}
    for isvc in objects:
        spec = isvc.get("spec") or {}
        if isvc.get("kind") != "InferenceService" or not spec.get("canary"):
            continue
        try:
            started = launch(isvc, "transformer")
            _, params = parse_cli(started.argv, command)
        except (KServeSpecError, CliArgsError):
            continue  # launch_problems reports it
        if started.mode != STANDARD:
            continue
        name = (isvc.get("metadata") or {}).get("name", "?")
        target = str(params.get("predictor_host") or "").split("://")[-1].split(":")[0]
        services = {predictor_service_name(name, spec["predictor"].get("name", ""))}
        services.add(predictor_service_name(name))
        route_host = predictor_route_host(isvc)
        problems: list[Problem] = []
        if target.split(".")[0] in services:
            problems.append(
                (
                    "spec.transformer",
                    f"--predictor_host {target} is the predictor Service, which bypasses the "
                    "canary's traffic split (only the Gateway's HTTPRoute splits it): set "
                    "serving.gateway.service (chart), or --predictor_host in the transformer's "
                    "args, to the Gateway's Service",
                )
            )
        if not _container_env(started, objects).get(HOST_HEADER_ENV):
            problems.append(
                (
                    "spec.transformer",
                    f"{HOST_HEADER_ENV} is not set: the Gateway routes the predictor by its "
                    f"HTTPRoute host (e.g. {route_host}); set serving.gateway.domain (chart) or "
                    "that variable in the transformer's env",
                )
            )
        if problems:
            found[("InferenceService", name)] = problems
    return found


def helm_wait_problems(objects: list[dict[str, Any]]) -> dict[tuple[str, str], list[Problem]]:
    """`helm install --wait` waits for each release PersistentVolumeClaim to be Bound (helm
    pkg/kube/ready.go in v3, kstatus in v4); WaitForFirstConsumer storage binds a claim only
    for a pod that mounts it, and a CronJob's pods start on schedule. Hooks are not waited on."""
    mounted: set[str] = set()
    for obj in objects:
        found = pod_spec(obj)
        if found is None or obj["kind"] == "CronJob":
            continue
        for volume in found[1].get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                mounted.add(claim)
    problems: dict[tuple[str, str], list[Problem]] = {}
    for obj in objects:
        metadata = obj.get("metadata") or {}
        if obj.get("kind") != "PersistentVolumeClaim" or HELM_HOOK in (
            metadata.get("annotations") or {}
        ):
            continue
        if metadata.get("name") not in mounted:
            problems[("PersistentVolumeClaim", metadata.get("name", "?"))] = [
                (
                    "metadata",
                    "no pod mounts it at install, so `helm install --wait` waits forever on "
                    "WaitForFirstConsumer storage: make it a pre-install hook",
                )
            ]
    return problems


def optional_api_problems(obj: dict[str, Any], available: set[str]) -> list[Problem]:
    """A chart rendered for a cluster without an optional API must not use it: Helm stops with
    'no matches for kind' (monitoring.coreos.com/v1 needs the Prometheus Operator)."""
    api = obj.get("apiVersion", "")
    if api in OPTIONAL_APIS and api not in available:
        return [
            (
                "apiVersion",
                f"{api} is not served by a cluster without {OPTIONAL_APIS[api]}: render it only "
                f'when .Capabilities.APIVersions.Has "{api}"',
            )
        ]
    return []


def settings_image(objects: list[dict[str, Any]]) -> str | None:
    """The image a form's settings ConfigMap names (MLREF_IMAGE), if it has one."""
    for obj in objects:
        if obj.get("kind") == "ConfigMap" and obj["metadata"].get("name") == "mlref-settings":
            return (obj.get("data") or {}).get("MLREF_IMAGE")
    return None


def image_problems(obj: dict[str, Any], image: str, default: str = "") -> list[Problem]:
    """mlref's own containers run exactly ``image``, the one the form's settings name (and
    the pipelines submitted from them); ``default`` is the stock image it may replace."""
    repositories = {ref.rsplit(":", 1)[0] for ref in (image, default) if ref}
    problems: list[Problem] = []
    for container in containers(obj):
        used = container.spec.get("image") or ""
        if used.rsplit(":", 1)[0] in repositories and used != image:
            problems.append((f"{container.path}.image", f"{used} is not settings.image {image}"))
    return problems


def pipeline_images(pipelines_dir: Path) -> dict[str, set[str]]:
    """Container images named by each compiled kfp pipeline (pipelines/*.yaml)."""
    found: dict[str, set[str]] = {}
    for path in sorted(pipelines_dir.glob("*.yaml")):
        images: set[str] = set()
        for doc in yaml.safe_load_all(path.read_text()):
            _collect_images(doc, images)
        found[path.name] = images
    return found


def _collect_images(node: Any, images: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                images.add(value)
            else:
                _collect_images(value, images)
    elif isinstance(node, list):
        for item in node:
            _collect_images(item, images)


SHADOW_URL_KEY = "MLREF_SHADOW__PREDICTOR_URL"
SHADOW_STATE_KEY = "MLREF_SHADOW__STATE_FILE"
SHADOW_MODEL_KEY = "MLREF_SHADOW__MODEL_NAME"
ISVC_LABEL = "serving.kserve.io/inferenceservice"


def _variant(predictor: dict[str, Any]) -> str:
    env = (predictor.get("model") or {}).get("env") or []
    return next((e.get("value", "") for e in env if e.get("name") == "MLREF_SERVING__VARIANT"), "")


def _settings_setting(objects: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The rendered settings ConfigMap (``mlref-settings``) when it sets ``key``."""
    return next(
        (
            o
            for o in objects
            if o.get("kind") == "ConfigMap"
            and o["metadata"].get("name") == "mlref-settings"
            and key in (o.get("data") or {})
        ),
        None,
    )


def _state_mount_problems(
    transformer: dict[str, Any], state_dir: str, config_map: str, setting: str, command: str
) -> list[Problem]:
    """The transformer mounts ConfigMap ``config_map`` at ``state_dir`` (the directory of the
    state file ``setting`` names), optional: `mlref <command> start` creates it, and no
    transformer pod could start before."""
    volumes = {v.get("name"): v for v in transformer.get("volumes") or []}
    mounted = [
        volumes.get(m.get("name")) or {}
        for c in transformer.get("containers") or []
        for m in c.get("volumeMounts") or []
        if state_dir and m.get("mountPath") == state_dir
    ]
    source = (mounted[0].get("configMap") or {}) if mounted else {}
    if source.get("name") != config_map:
        return [
            (
                "spec.transformer",
                f"mounts no ConfigMap {config_map} at {state_dir or '?'} ({setting}): the "
                f"transformer cannot see a{'n' if command[0] in 'aeiou' else ''} {command} "
                "started",
            )
        ]
    if not source.get("optional"):
        return [
            (
                "spec.transformer.volumes",
                f"ConfigMap {config_map} is not optional: no transformer pod starts before "
                f"`mlref {command} start` creates it",
            )
        ]
    return []


def shadow_problems(objects: list[dict[str, Any]]) -> dict[tuple[str, str], list[Problem]]:
    """A shadow is wired end to end: the transformer's settings name the predictor Service
    of a rendered InferenceService serving variant ``shadow``, the transformer mounts the
    directory of the shadow's state file (its ConfigMap, optional), the rollout identity may
    apply that ConfigMap, and a NetworkPolicy lets the transformer in; and a shadow
    InferenceService is one the transformer mirrors to."""
    problems: dict[tuple[str, str], list[Problem]] = {}
    services = [o for o in objects if o.get("kind") == "InferenceService"]
    shadows = {
        o["metadata"]["name"]: o
        for o in services
        if _variant((o.get("spec") or {}).get("predictor") or {}) == "shadow"
    }
    settings = _settings_setting(objects, SHADOW_URL_KEY)
    if settings is None:
        for name in shadows:
            problems.setdefault(("InferenceService", name), []).append(
                ("spec.predictor", f"serves variant shadow, but no settings set {SHADOW_URL_KEY}")
            )
        return problems
    data = settings["data"]
    key = ("ConfigMap", settings["metadata"]["name"])
    host = data[SHADOW_URL_KEY].split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    service, _, namespace = host.partition(".")
    target = service.removesuffix("-predictor")
    if not service.endswith("-predictor") or target not in shadows:
        problems.setdefault(key, []).append(
            (
                f"data.{SHADOW_URL_KEY}",
                f"{host} is not the predictor Service of a rendered InferenceService serving "
                f"variant shadow ({sorted(shadows) or 'none'})",
            )
        )
        return problems
    if data.get(SHADOW_MODEL_KEY) != target:
        problems.setdefault(key, []).append(
            (
                f"data.{SHADOW_MODEL_KEY}",
                f"is {data.get(SHADOW_MODEL_KEY)!r}: KServe names the model {target} serves "
                f"{target!r}, so the transformer's mirrored calls would find no model",
            )
        )
    namespace = namespace.split(".", 1)[0] or shadows[target]["metadata"].get("namespace", "")
    state_dir = data.get(SHADOW_STATE_KEY, "").rsplit("/", 1)[0]
    for live in (o for o in services if (o.get("spec") or {}).get("transformer")):
        name = live["metadata"]["name"]
        transformer = live["spec"]["transformer"]
        mount = _state_mount_problems(transformer, state_dir, target, SHADOW_STATE_KEY, "shadow")
        if mount:
            problems.setdefault(("InferenceService", name), []).extend(mount)
        source = {ISVC_LABEL: name, "component": "transformer"}
        shadow_pods = {ISVC_LABEL: target, "component": "predictor"}
        admitted = any(
            p.get("kind") == "NetworkPolicy"
            and p["metadata"].get("namespace", namespace) == namespace
            and selects((p.get("spec") or {}).get("podSelector") or {}, shadow_pods)
            and any(
                "podSelector" in peer
                and "namespaceSelector" not in peer
                and selects(peer["podSelector"], source)
                for rule in (p.get("spec") or {}).get("ingress") or []
                for peer in rule.get("from") or []
            )
            for p in objects
        )
        if not admitted:
            problems.setdefault(("InferenceService", target), []).append(
                ("metadata", f"no NetworkPolicy lets the transformer of {name} reach its pods")
            )
    problems.update(_role_problems(objects, target, "shadow"))
    return problems


EXPERIMENT_STATE_KEY = "MLREF_EXPERIMENT__STATE_FILE"
EXPERIMENT_MAP_KEY = "MLREF_EXPERIMENT__CONFIG_MAP"
EXPERIMENT_HEADER_KEY = "MLREF_EXPERIMENT__ROUTE_HEADER"


def _role_problems(
    objects: list[dict[str, Any]], config_map: str, command: str
) -> dict[tuple[str, str], list[Problem]]:
    """The rollout identity (Role ``mlref-canary``) may get and patch ``config_map``, which
    `mlref <command> start|stop` applies."""
    role = "mlref-canary"
    if any(
        o.get("kind") == "Role"
        and o["metadata"].get("name") == role
        and any(
            "configmaps" in (rule.get("resources") or [])
            and config_map in (rule.get("resourceNames") or [config_map])
            and {"get", "patch"} <= set(rule.get("verbs") or [])
            for rule in o.get("rules") or []
        )
        for o in objects
    ):
        return {}
    why = f"may not get and patch ConfigMap {config_map}: `mlref {command} start` fails"
    return {("Role", role): [("rules", why)]}


def experiment_problems(objects: list[dict[str, Any]]) -> dict[tuple[str, str], list[Problem]]:
    """A user-level experiment is wired end to end, once the settings name its state file:
    each transformer mounts the experiment's ConfigMap (optional: none exists before `mlref
    experiment start`) at the file's directory, the rollout identity may apply it, and each
    variant's tagged calls reach its model: in Knative mode KServe tags the revisions
    (enable-tag-routing), in Standard mode an HTTPRoute sends each tag to its variant's
    predictor Service as KServe's own route would (:func:`mlref.k8s.gateway.experiment_route`)."""
    from mlref.canary.state import CANARY_NAME, TAG_ROUTING_ANNOTATION
    from mlref.experiment.assign import CONTROL, ROUTE_TAGS, TREATMENT
    from mlref.k8s.gateway import experiment_route, experiment_route_name
    from mlref.k8s.kserve import STANDARD, KServeSpecError, launch, predictor_service_name
    from mlref.settings import ExperimentSettings

    found = _settings_setting(objects, EXPERIMENT_STATE_KEY)
    if found is None:
        return {}
    settings = found["data"]
    defaults = ExperimentSettings()
    config_map = settings.get(EXPERIMENT_MAP_KEY, defaults.config_map)
    header = settings.get(EXPERIMENT_HEADER_KEY, defaults.route_header)
    state_dir = settings[EXPERIMENT_STATE_KEY].rsplit("/", 1)[0]
    problems: dict[tuple[str, str], list[Problem]] = {}
    routes = {o["metadata"].get("name"): o for o in objects if o.get("kind") == "HTTPRoute"}
    for isvc in objects:
        spec = isvc.get("spec") or {}
        if isvc.get("kind") != "InferenceService" or not spec.get("transformer"):
            continue
        name = isvc["metadata"]["name"]
        found = problems.setdefault(("InferenceService", name), [])
        found.extend(
            _state_mount_problems(
                spec["transformer"], state_dir, config_map, EXPERIMENT_STATE_KEY, "experiment"
            )
        )
        try:
            started = launch(isvc, "transformer")
        except KServeSpecError:
            continue  # launch_problems reports it
        annotations = isvc["metadata"].get("annotations") or {}
        if started.mode != STANDARD:
            if annotations.get(TAG_ROUTING_ANNOTATION) != "true":
                found.append(
                    (
                        "metadata.annotations",
                        f'{TAG_ROUTING_ANNOTATION} is not "true": KServe gives the revisions no '
                        f"tags, and Knative splits the experiment's tagged calls by weight",
                    )
                )
            continue
        predictor = spec.get("predictor") or {}
        tags = {
            ROUTE_TAGS[CONTROL]: predictor_service_name(name, predictor.get("name", "")),
            ROUTE_TAGS[TREATMENT]: predictor_service_name(name, CANARY_NAME),
        }
        host = _container_env(started, objects).get(HOST_HEADER_ENV, "")
        expected = experiment_route(isvc, header, host, tags)
        if expected is None:
            continue  # KServe makes no predictor route: nothing splits by weight either
        route_name = experiment_route_name(name)
        route = routes.get(route_name)
        if route is None:
            found.append(
                (
                    "spec",
                    f"Standard mode: no HTTPRoute {route_name} sends the experiment's tagged "
                    "calls to each variant's predictor Service (KServe's route splits by weight "
                    "only); set experiment.enabled (chart)",
                )
            )
            continue
        wrong = [
            field
            for field in ("hostnames", "parentRefs", "rules")
            if _sorted_rules(route["spec"].get(field)) != _sorted_rules(expected["spec"][field])
        ]
        if wrong:
            problems.setdefault(("HTTPRoute", route_name), []).append(
                (
                    f"spec.{', spec.'.join(wrong)}",
                    f"differs from KServe's route for {name} plus one {header} match per variant "
                    f"({tags}) on host {host or '?'}: expected {expected['spec']}",
                )
            )
    problems.update(_role_problems(objects, config_map, "experiment"))
    return {key: found for key, found in problems.items() if found}


def _sorted_rules(value: Any) -> Any:
    """Rules (or any list of objects) in a stable order: the Gateway ranks rules by their
    matches, not their place, once their header matches differ."""
    if isinstance(value, list):
        return sorted(value, key=lambda item: yaml.safe_dump(item, sort_keys=True))
    return value
