"""PrometheusSource and LocalSource reach the same decision on the same traffic, with a real
Prometheus server scraping the predictors every second."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from mlref.canary.analysis import analyze
from mlref.canary.rollout import start
from mlref.canary.sources import LocalSource, PrometheusSource
from tests.canary import models
from tests.canary.e2e import Traffic, start_candidate
from tests.canary.test_e2e import stable  # noqa: F401  (module fixture)
from tests.servers import Server, find_binary, serve, wait_until

pytestmark = pytest.mark.slow
SCRAPE_SECONDS = 1
WINDOW_SCRAPES = 5


def start_prometheus(targets: list[str], base: Path) -> Server:
    binary = find_binary("prometheus", "prometheus")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "predictors", "static_configs": [{"targets": targets}]}],
    }
    (base / "prometheus.yml").write_text(yaml.safe_dump(config))

    def ready(port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    return serve(
        lambda port: [
            binary,
            f"--config.file={base / 'prometheus.yml'}",
            f"--storage.tsdb.path={base / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        lambda _: base / "prometheus.log",
        timeout=60,
        ready=ready,
    )


@pytest.fixture
def nan_candidate(stable, tmp_path) -> Iterator:  # noqa: F811
    settings, model, stable_url = stable
    candidate = models.nan_model(model, tmp_path / "nan.onnx", 0.3)
    serving = start_candidate(settings, stable_url, candidate, tmp_path)
    start(settings, str(candidate), 50, stable_uri=str(model))
    try:
        prometheus = start_prometheus(
            [url.removeprefix("http://") for url in (stable_url, serving.candidate_url)], tmp_path
        )
    except Exception:
        serving.stop()
        raise
    yield settings, serving, f"http://127.0.0.1:{prometheus.port}"
    prometheus.stop()
    serving.stop()


def scraped_since(prometheus_url: str, moment: float) -> bool:
    """Whether Prometheus has scraped every target (successfully) after ``moment``."""
    targets = httpx.get(f"{prometheus_url}/api/v1/targets").json()["data"]["activeTargets"]
    return bool(targets) and all(
        t["health"] == "up" and pd.Timestamp(t["lastScrape"]).timestamp() > moment for t in targets
    )


def test_prometheus_and_local_sources_agree(nan_candidate):
    settings, serving, prometheus_url = nan_candidate
    local = LocalSource(settings, serving.metrics_urls)
    remote = PrometheusSource(settings, prometheus_url)
    # Every series has a sample taken after the warm-up, a second before the window, so the
    # window's first samples hold the counts before its traffic...
    settled = time.time() + 1.0
    wait_until(lambda: scraped_since(prometheus_url, settled), 30, "a scrape before the window")
    local.begin()
    remote.begin()
    # Traffic flows at an even rate across several scrapes, as increase()'s extrapolation to
    # the window's ends assumes, until Prometheus has scraped it WINDOW_SCRAPES times.
    flowing = time.time()
    with Traffic(serving):
        wait_until(
            lambda: scraped_since(prometheus_url, flowing + WINDOW_SCRAPES * SCRAPE_SECONDS),
            60,
            f"{WINDOW_SCRAPES} scrapes of the traffic",
        )
    stopped = time.time()
    local_window = local.collect()
    # ...and its last ones the counts after it.
    wait_until(lambda: scraped_since(prometheus_url, stopped), 30, "a scrape after the window")
    windows = {"local": local_window, "prometheus": remote.collect()}
    decisions = {
        name: analyze(w.stable, w.canary, settings.canary, w.outcomes)
        for name, w in windows.items()
    }
    lines = {name: d.lines() for name, d in decisions.items()}
    assert decisions["local"].action == decisions["prometheus"].action == "rollback", lines
    assert [c.name for c in decisions["prometheus"].failed] == ["errors"], lines
    local_errors = decisions["local"].check("errors").values
    remote_errors = decisions["prometheus"].check("errors").values
    assert remote_errors["canary_rate"] == pytest.approx(local_errors["canary_rate"], abs=0.1)
    # increase() sees the change between the first and last samples inside the window and
    # extrapolates it to the window's ends, by at most 1.1 scrape intervals at each
    # (Prometheus's extrapolatedRate): at an even rate it can be off by that share either way.
    span = (windows["prometheus"].end - windows["prometheus"].start).total_seconds()
    assert span >= WINDOW_SCRAPES * SCRAPE_SECONDS, span
    share = 2.2 * SCRAPE_SECONDS / (span - 2.2 * SCRAPE_SECONDS)
    for variant in ("stable", "canary"):
        exact, seen = (getattr(w, variant).requests for w in windows.values())
        assert exact > 0, variant
        assert exact * (1 - share) <= seen <= exact * (1 + share), (variant, exact, seen)
