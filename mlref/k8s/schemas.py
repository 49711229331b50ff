"""Schema validation of rendered objects, collecting every error rather than the first.

Core kinds use kubernetes-validate's strict schemas for one Kubernetes version; custom
kinds use the ``openAPIV3Schema`` of their real CRDs, made strict the way the API server
prunes: a field that is not declared is an error here instead of being silently dropped.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# CRD files are megabytes of YAML: the C loader reads them ~10x faster.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
CRD_HINT = (
    "pass --crd-dir (or set MLREF_CRDS_DIR) pointing at the CRD YAML files "
    "(the repo expects ../shared/crds)"
)
CRDS_DIR_ENV = "MLREF_CRDS_DIR"
# CRDs that ship with mlref: the Gateway API's HTTPRoute (the chart's experiment route in
# Standard mode), as scripts/kind-up.sh installs it.
BUNDLED_CRDS = Path(__file__).with_name("crds")


def default_crd_dir(root: Path) -> Path:
    """Where the CRDs are: ``$MLREF_CRDS_DIR``, else ``shared/crds`` beside the repo."""
    configured = os.environ.get(CRDS_DIR_ENV)
    return Path(configured) if configured else root.parent / "shared" / "crds"


class SchemaSetupError(RuntimeError):
    """Validation cannot even start: missing CRDs or an unsupported Kubernetes version."""


@dataclass(frozen=True)
class SchemaError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def strict(schema: Any) -> Any:
    """A copy of ``schema`` where every object listing properties forbids undeclared ones."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_crd_schemas(crd_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Strict schemas keyed by (apiVersion, kind) from every CRD file under ``crd_dir``."""
    if not crd_dir.is_dir():
        raise SchemaSetupError(f"CRD directory {crd_dir} does not exist: {CRD_HINT}")
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(crd_dir.rglob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                api_version = f"{spec['group']}/{version['name']}"
                schema = version["schema"]["openAPIV3Schema"]
                schemas[(api_version, spec["names"]["kind"])] = strict(schema)
    if not schemas:
        raise SchemaSetupError(f"no CustomResourceDefinition found under {crd_dir}: {CRD_HINT}")
    return schemas


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path)


def _leaf_errors(errors: Iterator[jsonschema.ValidationError]) -> list[SchemaError]:
    """Flatten oneOf/anyOf failures to the errors that name a field."""
    found: list[SchemaError] = []
    for error in errors:
        if error.context:
            found.extend(_leaf_errors(iter(error.context)))
        else:
            found.append(SchemaError(_path(error), error.message))
    return sorted(set(found), key=lambda e: (e.path, e.message))


class Validator:
    """Validates objects of any kind; a kind with no schema is itself an error."""

    def __init__(self, crd_dir: Path, kubernetes_version: str):
        self.crds = {**load_crd_schemas(BUNDLED_CRDS), **load_crd_schemas(crd_dir)}
        self.kubernetes_version = kubernetes_version.removeprefix("v")
        self._core: dict[tuple[str, str], jsonschema.protocols.Validator | None] = {}
        self._check_version()

    def _check_version(self) -> None:
        from kubernetes_validate import utils

        supported = utils.all_versions()
        minor = utils.major_minor(self.kubernetes_version)
        if minor not in {utils.major_minor(v) for v in supported}:
            raise SchemaSetupError(
                f"Kubernetes {self.kubernetes_version} has no schemas in kubernetes-validate; "
                f"use one of {', '.join(utils.major_minor(v) for v in supported)}"
            )

    def _core_validator(self, api_version: str, kind: str):
        """kubernetes-validate's strict schema for a core kind, or None when it has none."""
        key = (api_version, kind)
        if key not in self._core:
            from kubernetes_validate import utils
            from referencing import Registry, Resource

            version = next(
                v
                for v in utils.all_versions()
                if utils.major_minor(v) == utils.major_minor(self.kubernetes_version)
            )
            group = api_version.split("/")[0].split(".")[0] if "/" in api_version else ""
            suffix = f"{group}-{api_version.split('/')[-1]}" if group else api_version
            folder = f"kubernetes-json-schema/v{version}-local-strict"
            try:
                schema = utils.schema_contents(f"{folder}/{kind.lower()}-{suffix}.json", version)
            except FileNotFoundError:
                self._core[key] = None
                return None
            definitions = utils.schema_contents(f"{folder}/_definitions.json", version)
            registry = Resource.from_contents(definitions) @ (
                Resource.from_contents(schema) @ Registry()
            )
            self._core[key] = jsonschema.Draft202012Validator(schema, registry=registry)
        return self._core[key]

    def validate(self, obj: dict[str, Any]) -> list[SchemaError]:
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        if not api_version or not kind:
            return [SchemaError("", "object has no apiVersion or kind")]
        crd = self.crds.get((api_version, kind))
        if crd is not None:
            validator = jsonschema.Draft7Validator(crd)
            errors = _leaf_errors(validator.iter_errors(copy.deepcopy(obj)))
            return errors + _metadata_errors(obj)
        core = self._core_validator(api_version, kind)
        if core is None:
            return [
                SchemaError(
                    "",
                    f"no schema for {kind} ({api_version}): not a Kubernetes "
                    f"{self.kubernetes_version} kind and no CRD for it in the CRD directory",
                )
            ]
        return _leaf_errors(core.iter_errors(obj))


def _metadata_errors(obj: dict[str, Any]) -> list[SchemaError]:
    """CRD schemas declare metadata as a bare object; the name is still required."""
    name = (obj.get("metadata") or {}).get("name")
    return [] if name else [SchemaError("metadata.name", "a custom resource needs a name")]
