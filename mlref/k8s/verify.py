"""Verify every rendered form: schemas, security, structure; collect all findings.

Nothing passes by omission: a kind without a schema, a missing CRD directory or a missing
checkov is reported as a failure, never skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlref.k8s import checks, spark
from mlref.k8s.checkov import scan
from mlref.k8s.knative import feature_problems
from mlref.k8s.render import Rendered
from mlref.k8s.schemas import Validator
from mlref.k8s.stages import stage_problems

# Forms that must deploy the same objects: (chart value set, overlay). A Helm release lives
# in a namespace that exists before it, so the chart leaves the Namespace object out.
NOT_IN_CHART = {"Namespace"}
SAME_OBJECTS = (
    ("chart:default", "overlay:base"),
    ("chart:kind", "overlay:kind"),
    ("chart:monitoring", "overlay:monitoring"),
    ("chart:spark", "overlay:spark"),
    ("chart:shadow", "overlay:shadow"),
    ("chart:experiment", "overlay:experiment"),
)


@dataclass(frozen=True)
class Finding:
    source: str
    kind: str
    name: str
    check: str  # "schema", "security" or "structure"
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.kind}/{self.name}: {self.message}"


@dataclass
class ObjectResult:
    source: str
    kind: str
    name: str
    schema: list[str] = field(default_factory=list)
    security: list[str] = field(default_factory=list)
    structure: list[str] = field(default_factory=list)


@dataclass
class Report:
    objects: list[ObjectResult]
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not self.findings


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj.get("kind", "?"), (obj.get("metadata") or {}).get("name", "?")


def verify(
    forms: list[Rendered],
    validator: Validator,
    image: str,
    pipelines_dir: Path | None = None,
    security_scan: bool = True,
    model_name: str = "ctr",
    knative_features: dict[str, str] | None = None,
    *,
    command: Any,
) -> Report:
    """Check every object of every form; ``security_scan`` False skips only checkov.

    ``model_name``: the name a server serves under when no ``--model_name`` is given
    (settings.model_name). ``knative_features``: the config-features data the
    cluster's Knative runs with (None: Knative's defaults). ``command``: the mlref command
    line's root (click), which each container's argv must parse with.
    """
    failed_checks = scan(forms) if security_scan else {}
    results: list[ObjectResult] = []
    findings: list[Finding] = []

    def add(result: ObjectResult, check: str, path: str, message: str) -> None:
        text = f"{path}: {message}" if path else message
        getattr(result, check).append(text)
        findings.append(Finding(result.source, result.kind, result.name, check, text))

    for form in forms:
        selectors = checks.selector_problems(form.objects)
        started = checks.launch_problems(form.objects, model_name, command)
        gateway = checks.gateway_problems(form.objects, command)
        form_image = checks.settings_image(form.objects) or image
        knative = feature_problems(form.objects, knative_features or {})
        chart = form.api_versions is not None
        waits = checks.helm_wait_problems(form.objects) if chart else {}
        monitors = checks.service_monitor_problems(form.objects)
        spark_roles = spark.role_problems(form.objects)
        shadow = checks.shadow_problems(form.objects)
        experiment = checks.experiment_problems(form.objects)
        for obj in form.objects:
            kind, name = _key(obj)
            result = ObjectResult(form.source, kind, name)
            results.append(result)
            for error in validator.validate(obj):
                add(result, "schema", error.path, error.message)
            for check_id in failed_checks.get(form.source, {}).get((kind, name), []):
                add(result, "security", "", check_id)
            for path, message in checks.container_problems(obj):
                add(result, "security", path, message)
            structure = (
                checks.canary_problems(obj)
                + checks.s3_annotation_problems(obj)
                + selectors.get((kind, name), [])
                + started.get((kind, name), [])
                + gateway.get((kind, name), [])
                + knative.get((kind, name), [])
                + waits.get((kind, name), [])
                + monitors.get((kind, name), [])
                + spark_roles.get((kind, name), [])
                + shadow.get((kind, name), [])
                + experiment.get((kind, name), [])
            )
            if chart:
                structure += checks.optional_api_problems(obj, set(form.api_versions or []))
            for path, message in structure + checks.image_problems(obj, form_image, image):
                add(result, "structure", path, message)
    findings.extend(_form_problems(forms, image, pipelines_dir))
    return Report(results, findings)


def _form_problems(forms: list[Rendered], image: str, pipelines_dir: Path | None) -> list[Finding]:
    by_source = {form.source: form for form in forms}
    found: list[Finding] = []
    for chart, overlay in SAME_OBJECTS:
        if chart not in by_source or overlay not in by_source:
            continue
        chart_keys = {_key(o) for o in by_source[chart].objects}
        overlay_keys = {
            _key(o) for o in by_source[overlay].objects if o.get("kind") not in NOT_IN_CHART
        }
        for kind, name in sorted(chart_keys ^ overlay_keys):
            where = chart if (kind, name) in chart_keys else overlay
            found.append(
                Finding(
                    where,
                    kind,
                    name,
                    "structure",
                    f"only in {where}, not in the other of {chart} / {overlay}",
                )
            )
    for form in forms:
        if form.directory is not None:
            for message in stage_problems(form.directory):
                found.append(Finding(form.source, "-", "-", "structure", message))
    if pipelines_dir is not None and pipelines_dir.is_dir():
        for pipeline, images in checks.pipeline_images(pipelines_dir).items():
            for other in sorted(images - {image}):
                found.append(
                    Finding(
                        f"pipelines/{pipeline}",
                        "-",
                        "-",
                        "structure",
                        f"image {other} is not the image the manifests deploy ({image})",
                    )
                )
    return found
