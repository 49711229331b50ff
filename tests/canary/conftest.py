"""The real CRD validator and the repo root, shared with the manifest tests."""

from tests.k8s.conftest import crd_dir, root, validator

__all__ = ["crd_dir", "root", "validator"]
