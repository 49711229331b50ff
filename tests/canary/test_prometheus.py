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
from tests.servers import Server, find_binary, free_port, wait_until

pytestmark = pytest.mark.slow
SCRAPE_SECONDS = 1
# The window spans several scrapes, so that increase()'s extrapolation at its two ends (at
# most 1.1 intervals each) stays a bounded share of what it counts.
WINDOW_SECONDS = 6 * SCRAPE_SECONDS


def start_prometheus(targets: list[str], base: Path) -> Server:
    binary = find_binary("prometheus", "prometheus")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "predictors", "static_configs": [{"targets": targets}]}],
    }
    (base / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    server = Server(
        [
            binary,
            f"--config.file={base / 'prometheus.yml'}",
            f"--storage.tsdb.path={base / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        port,
        base / "prometheus.log",
    )

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    server.wait_ready(timeout=60, check=ready)
    return server


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
    began = time.time()
    local.begin()
    remote.begin()
    with Traffic(serving, requests=600) as traffic:
        traffic.wait()
    # A window's length is what is measured here, not a state awaited: the traffic may end
    # sooner on a fast machine, so the window is held open to its set length.
    time.sleep(max(0.0, began + WINDOW_SECONDS - time.time()))
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
    # increase() extrapolates each series' change to the window's ends, by at most 1.1 scrape
    # intervals at each (Prometheus's extrapolatedRate): that is all it may add to the counts.
    span = (windows["prometheus"].end - windows["prometheus"].start).total_seconds()
    assert span >= WINDOW_SECONDS, span
    extrapolated = 2.2 * SCRAPE_SECONDS / (span - 2.2 * SCRAPE_SECONDS)
    for variant in ("stable", "canary"):
        exact, seen = (getattr(w, variant).requests for w in windows.values())
        assert exact > 0 and exact <= seen <= exact * (1 + extrapolated), (variant, exact, seen)
