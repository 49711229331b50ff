"""Session fixtures: render every form once, load the real CRDs once."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from mlref.cli import app
from mlref.k8s.checkov import CheckovMissing, checkov_binary
from mlref.k8s.knative import load_features
from mlref.k8s.render import Rendered, render_all, repo_root
from mlref.k8s.schemas import CRDS_DIR_ENV, Validator, default_crd_dir
from tests.servers import require

KUBERNETES_VERSION = "1.33"
COMMAND = typer.main.get_command(app)  # the command line every container's argv must parse with


@pytest.fixture(scope="session")
def root() -> Path:
    return repo_root()


@pytest.fixture(scope="session")
def crd_dir(root: Path) -> Path:
    return find_crd_dir(root)


def find_crd_dir(root: Path) -> Path:
    """The real CRDs, from ``$MLREF_CRDS_DIR`` or ../shared/crds; skip (strict: fail) without."""
    path = default_crd_dir(root)
    require(
        path.is_dir(),
        f"CRDs not found at {path}: set {CRDS_DIR_ENV} to the directory of the KServe and "
        "Prometheus Operator CRD YAML (the repo expects ../shared/crds)",
    )
    return path


@pytest.fixture(scope="session")
def validator(crd_dir: Path) -> Validator:
    return Validator(crd_dir, KUBERNETES_VERSION)


@pytest.fixture(scope="session")
def knative_features(root: Path) -> dict[str, str]:
    """The Knative config-features scripts/kind-up.sh applies."""
    return load_features(root / "manifests" / "cluster" / "knative-serving.yaml")


@pytest.fixture(scope="session")
def forms(root: Path) -> list[Rendered]:
    return render_all(root)


@pytest.fixture(scope="session")
def checkov() -> str:
    try:
        return checkov_binary()
    except CheckovMissing as exc:
        require(False, str(exc))
        raise


def form(forms: list[Rendered], source: str) -> Rendered:
    return next(f for f in forms if f.source == source)


def find(objects: list[dict], kind: str, name: str, namespace: str = "mlref") -> dict:
    """The object of ``kind`` and ``name`` in ``namespace`` (cluster-scoped ones have none)."""
    return next(
        o
        for o in objects
        if o["kind"] == kind
        and o["metadata"]["name"] == name
        and o["metadata"].get("namespace", namespace) == namespace
    )
