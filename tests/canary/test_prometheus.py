"""PrometheusSource and LocalSource reach the same decision on the same traffic, with a real
Prometheus server scraping the predictors every second."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mlref.canary.analysis import analyze
from mlref.canary.rollout import start
from mlref.canary.sources import LocalSource, PrometheusSource
from tests.canary import models
from tests.canary.e2e import Traffic, start_candidate
from tests.canary.test_e2e import stable  # noqa: F401  (module fixture)
from tests.servers import SCRAPE_SECONDS, scraped_since, start_prometheus, wait_until

pytestmark = pytest.mark.slow
WINDOW_SCRAPES = 5


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
    # On a loaded machine the window lasts until both variants could have min_requests.
    needed = 4 * settings.canary.min_requests
    with Traffic(serving) as traffic:
        wait_until(lambda: traffic.sent >= needed, 120, f"{needed} requests answered")
        enough = max(time.time(), flowing + WINDOW_SCRAPES * SCRAPE_SECONDS)
        wait_until(
            lambda: scraped_since(prometheus_url, enough),
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
    # The candidate answers only requests whose embedding rows are all finite, a subset chosen
    # by ids, so its scores may also shift from the stable's: "scores" may fail beside
    # "errors", on either source. Nothing else may (traffic, latency, calibration).
    for decision in decisions.values():
        failed = {c.name for c in decision.failed}
        assert "errors" in failed and failed <= {"errors", "scores"}, lines
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
