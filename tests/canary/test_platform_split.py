"""`mlref canary run` through a platform traffic split, as each KServe deployment mode makes it.

Knative mode: one host (nginx, weighted by the canary percent, reloaded per stage) splits
requests between predictor revisions. Standard mode: nginx stands in for the Gateway,
configured from the predictor HTTPRoute KServe computes (mlref.k8s.gateway): the route's host
gets the weighted predictor Services, any other host 404; the transformer reaches the split
only through the Gateway with that host, as the chart configures it. In both, the
transformer is started with the arguments KServe (and the chart) give it, and cannot choose a
model. A good candidate must be promoted and a miscalibrated one rolled back, with no answer
refused by a version handshake, and every inference-log row must name the version and
variant of the predictor that scored it: each pod's scored-row counter equals the log rows
that name it. A slow candidate (the good one with a fixed delay before each model run, far
above what a shared CPU adds) is rolled back for latency, measured on the pods' own metrics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlref.canary.rollout import run_rollout
from mlref.canary.sources import LocalSource, parse_metrics
from mlref.k8s.checks import HOST_HEADER_ENV
from mlref.k8s.kserve import launch
from mlref.k8s.render import render_chart, repo_root
from mlref.monitoring.inference import read_inference_log
from mlref.serving.predictor import file_version
from mlref.settings import CanarySettings, Settings
from tests.canary import models
from tests.canary.e2e import Serving, Traffic
from tests.canary.platform import (
    WARM_UP,
    KnativeStandIn,
    Nginx,
    PlatformStandIn,
    StandardStandIn,
    base_objects,
    local_argv,
    start_pod,
)
from tests.servers import free_port
from tests.serving.conftest import KNOWN_ADS, KNOWN_USERS, build_features, serving_settings

pytestmark = pytest.mark.slow

DELAY_MS = 200.0  # the slow candidate's added time per model run
LATENCY_SLACK_MS = 100.0  # tail differences below this never fail: CPU noise is far smaller


class PodSource(LocalSource):
    """What a Prometheus pod scrape sees: every running predictor pod's /metrics."""

    def __init__(self, settings: Settings, platform: PlatformStandIn):
        super().__init__(settings, ["-"])
        self.platform = platform

    def scrape(self) -> dict:
        ports = [pod.port for pod in self.platform.pods.values()]
        self.urls = [f"http://127.0.0.1:{port}/metrics" for port in ports]
        return super().scrape()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Path]]:
    root = tmp_path_factory.mktemp("platform")
    settings = serving_settings(root, log_flush_seconds=0.3).model_copy(
        update={
            "canary": CanarySettings(
                stages=[20, 50, 100],
                bake_seconds=3.0,
                poll_seconds=0.5,
                max_hold_seconds=60.0,  # evidence accrues slower on a loaded machine
                min_requests=40,
                latency_slack_ms=LATENCY_SLACK_MS,
                await_labels=True,  # the labeller clicks every logged row
                ready_timeout_seconds=30.0,
            )
        }
    )
    build_features(settings, KNOWN_USERS, KNOWN_ADS)
    yield settings, models.stable_model(root / "stable" / "model.onnx", settings)


def standard_objects() -> tuple[dict, list[dict]]:
    """The InferenceService and ServingRuntime of the chart in Standard mode, as deployed."""
    rendered = render_chart(repo_root(), {"serving": {"deploymentMode": "Standard"}}, "standard")
    isvc = next(o for o in rendered.objects if o["kind"] == "InferenceService")
    return isvc, [o for o in rendered.objects if o["kind"] == "ServingRuntime"]


# Per mode: the deployed objects, the platform, and the host the transformer's
# --predictor_host names, which the emulated DNS resolves to nginx (Knative's route for the
# predictor Service; in Standard mode the Gateway's Service, never the predictor Service).
MODES = {
    "Serverless": (base_objects, KnativeStandIn, "ctr-predictor.mlref"),
    "Standard": (standard_objects, StandardStandIn, "kserve-ingress-gateway.envoy-gateway-system"),
}


def without_gateway(isvc: dict) -> None:
    """The transformer as KServe alone configures it: no --predictor_host of the chart's (KServe
    appends the predictor Service's) and no route host."""
    container = isvc["spec"]["transformer"]["containers"][0]
    container["args"] = container["args"][: container["args"].index("--predictor_host")]
    container["env"] = [e for e in container["env"] if e["name"] != HOST_HEADER_ENV]


def rollout_through_nginx(
    settings: Settings,
    stable: Path,
    candidate: Path,
    root: Path,
    mode: str,
    bypass: bool = False,
    delay_ms: float = 0.0,
):
    """Everything a rollout runs in ``mode``, then the evidence: (result, traffic, nginx
    answers, log rows, rows each predictor pod scored). ``bypass`` (Standard mode): the
    transformer calls the predictor Service, whose DNS name resolves to the stable pod.
    ``delay_ms``: the candidate's pods take that much longer per model run."""
    objects, platform_type, split_host = MODES[mode]
    settings = settings.model_copy(
        update={"canary": settings.canary.model_copy(update={"deployment_mode": mode})}
    )
    isvc, runtimes = objects()
    if bypass:
        without_gateway(isvc)
        split_host = "ctr-predictor.mlref"
    isvc["spec"]["predictor"]["model"]["storageUri"] = str(stable)
    isvc["metadata"]["generation"] = 1
    nginx = Nginx(root / "nginx")
    platform = None
    transformer = None
    try:
        delays = {str(candidate): delay_ms} if delay_ms else {}
        platform = platform_type(isvc, runtimes, settings, root / "pods", nginx, delays)
        started = launch(isvc, "transformer")
        port = free_port()
        assert started.argv[started.argv.index("--predictor_host") + 1] == split_host
        # The emulated DNS: split_host resolves to the split, the predictor Service to its pod.
        target = nginx.port
        if bypass:
            target = platform.pods[platform.services["ctr-predictor"]].port
        argv = local_argv(
            started.argv,
            host="127.0.0.1",
            http_port=str(port),
            predictor_host=f"127.0.0.1:{target}",
        )
        assert "--model_name" in argv
        transformer = start_pod(settings, argv, started.literal_env(), root / "transformer", port)
        serving = Serving(settings, "", "", f"http://127.0.0.1:{port}")
        cluster = settings.model_copy(update={"mode": "cluster"})
        with Traffic(serving, truth=stable) as traffic:
            result = run_rollout(
                cluster,
                str(candidate),
                PodSource(settings, platform),
                stable_uri=str(stable),
                api=platform,
            )
        scored = {key: scored_rows(pod.port) - WARM_UP for key, pod in platform.pods.items()}
        transformer.stop()  # flushes the inference log
        transformer = None
        answers = nginx.answers()
        if mode == "Standard":
            check_gateway_routes_by_host(nginx.port, platform.route)
    finally:
        for server in (transformer, platform):
            if server is not None:
                server.stop()
        nginx.stop()
    log = read_inference_log(settings, traffic.started)
    return result, traffic, answers, log, scored


def check_gateway_routes_by_host(port: int, route: dict) -> None:
    """Only the predictor route's host reaches a predictor: a transformer calling the Gateway
    without it, or with the predictor Service's name, gets 404 and scores nothing."""
    (route_host,) = route["spec"]["hostnames"]
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    assert httpx.get(url, headers={"host": route_host}).status_code == 200
    for host in ("ctr-predictor.mlref", "kserve-ingress-gateway.envoy-gateway-system"):
        assert httpx.get(url, headers={"host": host}).status_code == 404, host


def scored_rows(port: int) -> int:
    samples = parse_metrics(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    return int(
        sum(
            value
            for (name, labels), value in samples.items()
            if name == "mlref_prediction_score_count" and ("server", "predictor") in labels
        )
    )


def check_handshake_and_log(traffic, answers, log, scored, versions: dict[str, str]) -> None:
    assert traffic.sent > 0 and set(traffic.statuses) == {200}, traffic.statuses
    statuses = Counter(status for _, status in answers)
    assert statuses[409] == 0 and sum(n for s, n in statuses.items() if s >= 500) == 0, statuses
    assert len({upstream for upstream, _ in answers}) >= 2  # nginx really split
    # Every row names the predictor that scored it: per (model, variant) the log holds
    # exactly as many rows as that revision counted scoring.
    logged = Counter(zip(log["model_version"], log["variant"], strict=True))
    expected = {(versions[uri], variant): rows for (uri, variant), rows in scored.items() if rows}
    assert dict(logged) == expected
    assert {variant for _, variant in logged} == {"stable", "canary"}


@pytest.mark.parametrize("mode", list(MODES))
def test_good_candidate_is_promoted_through_the_platform_split(world, tmp_path, mode):
    settings, stable = world
    candidate = models.shifted_bias(stable, tmp_path / "good" / "model.onnx", 0.05)
    result, traffic, answers, log, scored = rollout_through_nginx(
        settings, stable, candidate, tmp_path, mode
    )
    lines = [line for s in result.stages for line in s.analysis.lines()]
    assert result.promoted, lines
    assert [s.percent for s in result.stages] == [20, 50]
    versions = {str(stable): file_version(stable), str(candidate): file_version(candidate)}
    check_handshake_and_log(traffic, answers, log, scored, versions)


def test_miscalibrated_candidate_is_rolled_back_through_the_platform_split(world, tmp_path):
    """Standard mode (the slow candidate's test rolls back in Knative mode: each mode promotes
    and rolls back once)."""
    settings, stable = world
    candidate = models.shifted_bias(stable, tmp_path / "bad" / "model.onnx", 2.0)
    result, traffic, answers, log, scored = rollout_through_nginx(
        settings, stable, candidate, tmp_path, "Standard"
    )
    assert result.outcome == "rolled_back"
    analysis = result.stages[-1].analysis
    # Only rows logged as `canary` can show the candidate's miscalibration.
    assert {"logloss", "calibration"} & {c.name for c in analysis.failed}, analysis.lines()
    versions = {str(stable): file_version(stable), str(candidate): file_version(candidate)}
    check_handshake_and_log(traffic, answers, log, scored, versions)


def test_slow_candidate_is_rolled_back_through_the_platform_split(world, tmp_path):
    """The good candidate, its pod DELAY_MS slower per model run: rolled back at the first
    stage for latency alone, with every answer still served and logged (Knative mode; the
    miscalibrated candidate's test rolls back in Standard mode)."""
    settings, stable = world
    candidate = models.shifted_bias(stable, tmp_path / "slow" / "model.onnx", 0.05)
    result, traffic, answers, log, scored = rollout_through_nginx(
        settings, stable, candidate, tmp_path, "Serverless", delay_ms=DELAY_MS
    )
    first = settings.canary.stages[0]
    assert (result.outcome, result.reason) == ("rolled_back", f"stage {first}%: latency")
    analysis = result.stages[0].analysis
    assert [c.name for c in analysis.failed] == ["latency"], analysis.lines()
    versions = {str(stable): file_version(stable), str(candidate): file_version(candidate)}
    check_handshake_and_log(traffic, answers, log, scored, versions)


def test_transformer_calling_the_predictor_service_never_reaches_a_standard_canary(world, tmp_path):
    """What the chart's Gateway settings fix: with KServe's own --predictor_host (the stable
    predictor's Service) the split on the HTTPRoute is never used, so the candidate scores no
    row and even a good one cannot be promoted."""
    settings, stable = world
    candidate = models.shifted_bias(stable, tmp_path / "good" / "model.onnx", 0.05)
    result, traffic, answers, log, scored = rollout_through_nginx(
        settings, stable, candidate, tmp_path, "Standard", bypass=True
    )
    assert traffic.sent > 0 and set(traffic.statuses) == {200}, traffic.statuses
    assert not result.promoted
    assert {upstream for upstream, _ in answers} == {"-"}  # no request reached a predictor
    assert set(log["variant"]) == {"stable"}
    assert {variant: rows for (_, variant), rows in scored.items() if rows} == {"stable": len(log)}
