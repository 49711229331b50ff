"""The settings ConfigMap is something mlref.settings accepts, in every rendered form."""

from __future__ import annotations

import pytest

from mlref.settings import Settings
from tests.k8s.conftest import find


def test_configmap_settings_load(forms, monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for rendered in forms:
        data = find(rendered.objects, "ConfigMap", "mlref-settings")["data"]
        with monkeypatch.context() as env:
            for key, value in data.items():
                env.setenv(key, value)
            settings = Settings()
        assert settings.mode == "cluster", rendered.source
        assert settings.image == data["MLREF_IMAGE"]
        assert settings.features.redis_connection.startswith("redis.")
