"""The settings ConfigMap is something mlref.settings accepts, in every rendered form: each
MLREF_ key names a real setting (pydantic-settings ignores a misspelt one), and the
services it points at are the ones the same form deploys."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from mlref.settings import Settings
from tests.k8s.conftest import find


def setting(settings: Settings, key: str):
    """The value ``MLREF_A__B`` sets, or a failure naming the key nothing reads."""
    node = settings
    for part in key.removeprefix("MLREF_").lower().split("__"):
        assert part in type(node).model_fields, f"{key}: no setting {part!r}: misspelt?"
        node = getattr(node, part)
    return node


def service_host(objects: list[dict], name: str) -> str:
    service = find(objects, "Service", name)
    return f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"


def test_configmap_settings_load(forms, monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for rendered in forms:
        data = find(rendered.objects, "ConfigMap", "mlref-settings")["data"]
        with monkeypatch.context() as env:
            for key, value in data.items():
                env.setenv(key, value)
            settings = Settings()
        for key, value in data.items():
            if key.startswith("MLREF_"):
                got = setting(settings, key)
                got = str(got).lower() if isinstance(got, bool) else str(got)
                assert got == value, (rendered.source, key)
        assert settings.mode == "cluster", rendered.source
        objects = rendered.objects
        redis = urlsplit(f"//{settings.features.redis_connection}")
        assert redis.hostname == service_host(objects, "redis"), rendered.source
        mlflow = urlsplit(settings.registry.tracking_uri)
        assert mlflow.hostname == service_host(objects, "mlflow"), rendered.source
        ports = [p["port"] for p in find(objects, "Service", "mlflow")["spec"]["ports"]]
        assert mlflow.port in ports, rendered.source
        gateway = urlsplit(settings.cluster.pushgateway_url)
        assert gateway.hostname == service_host(objects, "pushgateway"), rendered.source
        assert settings.storage.root.startswith("s3://"), rendered.source
