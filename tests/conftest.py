"""Shared fixtures: isolated settings under a temp work dir, and small generated data."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlref.settings import DataSettings, Settings


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose every path lives under this test's temp dir, with small data."""
    monkeypatch.chdir(tmp_path)
    return Settings(
        work_dir=tmp_path / ".mlref",
        data=DataSettings(days=3, rows_per_day=2_000, n_users=300, n_ads=60, n_advertisers=12),
    )
