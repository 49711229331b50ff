"""Rollout steps against a real MLflow registry: local state files, and cluster mode through
the recorded CustomObjectsApi (the only stand-in: no API server runs here)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
import yaml
from kubernetes.client import ApiClient, Configuration
from typer.testing import CliRunner

from mlref.canary import kube, rollout
from mlref.canary.analysis import VariantStats
from mlref.canary.sources import LocalSource, PrometheusSource, SourceError, Window
from mlref.canary.state import CanaryState, read_state, state_path
from mlref.cli import app
from mlref.platform import platform_for
from mlref.settings import CanarySettings, Settings, get_settings
from mlref.training import registry
from mlref.training.publish import served_uri
from tests.canary.fake_kube import RecordedCustomObjectsApi
from tests.canary.test_analysis import variant
from tests.training.test_registry import evaluate, register

CHALLENGER = "models:/ctr@challenger"


@pytest.fixture
def versions(settings: Settings) -> tuple[str, str]:
    """(champion, challenger) registered in this test's SQLite registry."""
    first = register(settings, 0.3)
    registry.promote(settings, first, evaluate)
    second = register(settings, 1.0)
    registry.promote(settings, second, evaluate)  # passes offline; awaits its canary
    return first, second


def champion(settings: Settings) -> str:
    return str(registry.model_version_of(settings, registry.CHAMPION).version)


def test_local_start_moves_split_then_promote_moves_champion(settings, versions):
    first, second = versions
    applied = rollout.start(settings, CHALLENGER, 10)
    state = read_state(state_path(settings))
    assert state == applied.state
    assert (state.candidate_model, state.stable_model) == (
        f"models:/ctr/{second}",
        f"models:/ctr/{first}",
    )
    assert (state.percent, state.candidate_version, state.phase) == (10, second, "canary")

    assert rollout.start(settings, CHALLENGER, 50).state.percent == 50
    with pytest.raises(rollout.RolloutError, match="in progress"):
        rollout.start(settings, f"models:/ctr/{first}", 10)

    promoted = rollout.promote(settings)
    assert promoted.state.percent == 100 and promoted.state.phase == "promoted"
    assert champion(settings) == second


def test_local_rollback_keeps_the_champion(settings, versions):
    first, _ = versions
    rollout.start(settings, CHALLENGER, 10)
    assert rollout.rollback(settings).state.phase == "rolled_back"
    assert read_state(state_path(settings)).percent == 0
    assert champion(settings) == first


class GivenSource:
    """Every stage's window holds the given samples: the rollout's latency verdict comes from
    known numbers, not from how busy this machine is."""

    def __init__(self, stable: VariantStats, canary: VariantStats):
        self.stable, self.canary = stable, canary

    def begin(self) -> None:
        self.start = datetime.now(UTC)

    def collect(self) -> Window:
        return Window(self.start, datetime.now(UTC), self.stable, self.canary)


@pytest.mark.parametrize(
    ("canary_ms", "outcome", "stages"), [(20.0, "rolled_back", [10]), (1.6, "promoted", [10, 50])]
)
def test_a_slow_canary_is_rolled_back_on_latency_and_a_similar_one_promoted(
    settings, versions, canary_ms, outcome, stages
):
    rules = CanarySettings(stages=[10, 50, 100], bake_seconds=0, max_hold_seconds=0)
    settings = settings.model_copy(update={"canary": rules})
    source = GivenSource(variant(latency_ms=1.5), variant(latency_ms=canary_ms, seed=3))
    result = rollout.run_rollout(settings, CHALLENGER, source, report=lambda _: None)
    assert result.outcome == outcome and [s.percent for s in result.stages] == stages
    latency = result.stages[-1].analysis.check("latency")
    assert latency.verdict == ("fail" if outcome == "rolled_back" else "pass")
    assert read_state(state_path(settings)).percent == (0 if outcome == "rolled_back" else 100)


def test_steps_without_a_rollout_fail_clearly(settings):
    with pytest.raises(rollout.RolloutError, match="mlref canary start"):
        rollout.promote(settings)


def test_candidate_equal_to_stable_is_refused(settings, versions):
    with pytest.raises(rollout.RolloutError, match="already the stable"):
        rollout.start(settings, "models:/ctr@champion", 10)


def cluster(settings: Settings, **canary) -> Settings:
    rules = {"poll_seconds": 0.01, "ready_timeout_seconds": 5.0, **canary}
    return settings.model_copy(update={"mode": "cluster", "canary": CanarySettings(**rules)})


def live_isvc(mode: str = "Serverless") -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "ctr",
            "namespace": "mlref",
            "generation": 1,
            "annotations": {"serving.kserve.io/deploymentMode": mode},
        },
        "spec": {
            "predictor": {
                "serviceAccountName": "mlref-serving",
                "model": {
                    "modelFormat": {"name": "mlref-onnx"},
                    "runtime": "mlref-onnx",
                    "storageUri": "s3://old",
                },
            }
        },
    }


def test_cluster_start_applies_server_side_waits_and_reports_split(settings, versions):
    _, second = versions
    settings = cluster(settings)
    api = RecordedCustomObjectsApi(live_isvc(), ready_after=3)

    applied = rollout.start(settings, CHALLENGER, 10, api=api)

    patches = [call for call in api.calls if call[0] == "patch"]
    assert len(patches) == 1
    (group, version, namespace, plural, name, body), kwargs = patches[0][1:]
    assert (group, version, namespace, plural, name) == (
        "serving.kserve.io",
        "v1beta1",
        "mlref",
        "inferenceservices",
        "ctr",
    )
    assert kwargs == {"field_manager": "mlref", "force": True}
    storage = body["spec"]["predictor"]["model"]["storageUri"]
    assert storage == served_uri(settings, second)  # the version's published folder
    assert not storage.startswith("models:/")
    assert body["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert sum(call[0] == "get" for call in api.calls) >= 4  # waited through 3 stale reads
    assert applied.traffic == ["ctr-predictor-00002 (latest): 10%", "ctr-predictor-00001: 90%"]

    promoted = rollout.promote(settings, api=api)
    assert promoted.traffic == ["ctr-predictor-00002 (latest): 100%"]
    assert "canaryTrafficPercent" not in api.isvc["spec"]["predictor"]
    assert champion(settings) == second


@pytest.mark.parametrize(
    ("api", "message"),
    [
        (RecordedCustomObjectsApi(None), "not found (404)"),
        (RecordedCustomObjectsApi(live_isvc(), error_status=403), "forbidden (403)"),
        (RecordedCustomObjectsApi(live_isvc(), ready_after=10**9), "not Ready after"),
        (
            RecordedCustomObjectsApi(live_isvc("RawDeployment")),
            "runs in RawDeployment mode but canary.deployment_mode is Serverless: "
            "set MLREF_CANARY__DEPLOYMENT_MODE=Standard",
        ),
    ],
)
def test_cluster_failures_are_one_clear_line(settings, versions, api, message):
    settings = cluster(settings, ready_timeout_seconds=0.05)
    with pytest.raises(kube.KubeError, match=re.escape(message)) as caught:
        rollout.start(settings, CHALLENGER, 10, api=api)
    assert "\n" not in str(caught.value)
    if "MLREF_CANARY__DEPLOYMENT_MODE" in message:
        assert not [c for c in api.calls if c[0] == "patch"]


def test_cluster_standard_mode_canary_rollback_restart_promote(settings, versions):
    _, second = versions
    settings = cluster(settings, deployment_mode="Standard")
    api = RecordedCustomObjectsApi(live_isvc("Standard"))
    candidate = served_uri(settings, second)

    applied = rollout.start(settings, CHALLENGER, 10, api=api)
    ((_, args, _),) = [call for call in api.calls if call[0] == "patch"]
    body = args[-1]
    assert body == yaml.safe_load(state_path(settings).read_text())
    assert "canaryTrafficPercent" not in body["spec"]["predictor"]
    (canary,) = body["spec"]["canary"]
    assert canary["trafficPercent"] == 10
    assert canary["predictor"]["serviceAccountName"] == "mlref-serving"  # from the live one
    assert canary["predictor"]["model"]["storageUri"] == candidate
    assert applied.traffic == ["ctr-predictor (stable): 90%", "ctr-candidate-predictor: 10%"]
    assert rollout.status(settings, api).traffic == applied.traffic

    assert rollout.rollback(settings, api=api).traffic == ["ctr-predictor (stable): 100%"]
    assert "canary" not in api.isvc["spec"]
    assert read_state(state_path(settings)) == CanaryState(
        candidate, applied.state.stable_model, 0, second
    )

    rollout.start(settings, CHALLENGER, 50, api=api)
    assert api.isvc["spec"]["canary"][0]["trafficPercent"] == 50
    promoted = rollout.promote(settings, api=api)
    assert promoted.traffic == ["ctr-predictor (stable): 100%"]
    assert "canary" not in api.isvc["spec"]
    assert api.isvc["spec"]["predictor"]["model"]["storageUri"] == candidate
    assert champion(settings) == second


def test_standard_setting_on_a_serverless_service_is_refused(settings):
    settings = cluster(settings, deployment_mode="Standard")
    api = RecordedCustomObjectsApi(live_isvc("Serverless"))
    with pytest.raises(kube.KubeError) as caught:
        rollout.start(settings, "s3://models/new", 10, stable_uri="s3://models/old", api=api)
    assert str(caught.value) == (
        "InferenceService mlref/ctr runs in Serverless mode but canary.deployment_mode is "
        "Standard: set MLREF_CANARY__DEPLOYMENT_MODE=Serverless"
    )
    assert not [c for c in api.calls if c[0] == "patch"]
    assert not state_path(settings).exists()


def test_standard_traffic_is_read_from_spec_until_reported():
    isvc = live_isvc("Standard")
    isvc["spec"]["canary"] = [{"trafficPercent": 30, "predictor": {"name": "candidate"}}]
    assert kube.traffic_split(isvc, standard=True) == [
        "ctr-predictor (stable): 70% (spec, not yet reported)",
        "ctr-candidate-predictor: 30% (spec, not yet reported)",
    ]
    isvc["status"] = {
        "canaryStatuses": [{"name": "candidate", "ready": False, "trafficPercent": 30}]
    }
    assert kube.traffic_split(isvc, standard=True)[1] == "ctr-candidate-predictor: 30% (not ready)"
    del isvc["spec"]["canary"], isvc["status"]
    assert kube.traffic_split(isvc, standard=True) == ["ctr-predictor (stable): 100%"]


def test_write_only_in_cluster_mode_touches_no_cluster(settings, tmp_path):
    api = RecordedCustomObjectsApi(live_isvc())
    out = tmp_path / "overlay" / "inferenceservice.yaml"
    applied = rollout.start(
        cluster(settings),
        "s3://models/new",
        10,
        stable_uri="s3://models/old",
        write_only=True,
        out=out,
        api=api,
    )
    assert applied.path == out and read_state(out).percent == 10
    assert api.calls == []


def test_apply_client_sends_apply_patch():
    api = kube.apply_api(ApiClient(Configuration()))
    assert api.api_client.default_headers["Content-Type"] == "application/apply-patch+yaml"


def test_no_kubeconfig_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(kube.KubeError, match=r"no cluster.*KUBECONFIG"):
        kube.connect()


def test_cli_start_status_rollback(cli_env, versions, tmp_path):
    runner = CliRunner()
    out = tmp_path / "review.yaml"
    result = runner.invoke(
        app,
        [
            "canary",
            "start",
            "--model",
            CHALLENGER,
            "--percent",
            "10",
            "--write-only",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert read_state(out).percent == 10 and not state_path(cli_env).exists()

    assert runner.invoke(app, ["canary", "start", "--model", CHALLENGER]).exit_code == 0
    status = runner.invoke(app, ["canary", "status"])
    assert status.exit_code == 0 and "canary: candidate models:/ctr/" in status.output
    assert "takes 10%" in status.output
    assert runner.invoke(app, ["canary", "rollback"]).exit_code == 0
    assert read_state(state_path(cli_env)).percent == 0


def test_cli_error_is_one_line_and_nonzero(cli_env):
    result = CliRunner().invoke(app, ["canary", "promote"])
    assert result.exit_code == 1
    assert "no rollout started" in result.output


@pytest.mark.parametrize(
    ("mode", "exit_code", "line"),
    [
        ("Standard", 0, "traffic ctr-candidate-predictor: 10%"),
        ("Serverless", 1, "set MLREF_CANARY__DEPLOYMENT_MODE=Serverless"),
    ],
)
def test_cli_start_in_standard_mode(cli_env, versions, monkeypatch, mode, exit_code, line):
    """The live service's mode decides: Standard runs, Serverless names the setting to fix."""
    api = RecordedCustomObjectsApi(live_isvc(mode))
    monkeypatch.setattr(kube, "connect", lambda: api)  # the recorded API server
    monkeypatch.setenv("MLREF_MODE", "cluster")
    monkeypatch.setenv("MLREF_STORAGE__ROOT", str(cli_env.work_dir / "object-store"))
    monkeypatch.setenv("MLREF_CANARY__DEPLOYMENT_MODE", "Standard")
    monkeypatch.setenv("MLREF_CANARY__POLL_SECONDS", "0.01")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["canary", "start", "--model", CHALLENGER])
    assert result.exit_code == exit_code, result.output
    assert line in result.output
    assert bool(api.isvc["spec"].get("canary")) is (exit_code == 0)


def test_cluster_analysis_without_prometheus_names_the_setting(tmp_path):
    """The predictors are pods, not local ports: no silent scrape of 127.0.0.1."""
    cluster = Settings(work_dir=tmp_path, mode="cluster", storage={"root": str(tmp_path / "store")})
    with pytest.raises(SourceError, match="MLREF_CANARY__PROMETHEUS_URL"):
        platform_for(cluster).metric_source()
    assert isinstance(platform_for(Settings(work_dir=tmp_path)).metric_source(), LocalSource)
    with_url = cluster.model_copy(
        update={"canary": cluster.canary.model_copy(update={"prometheus_url": "http://p:9090"})}
    )
    assert isinstance(platform_for(with_url).metric_source(), PrometheusSource)


# --- kubectl and mlref on one InferenceService: field ownership as the API server keeps it ---


def overlay_isvc(stage: str) -> dict:
    from mlref.k8s.render import render_overlay, repo_root
    from tests.k8s.conftest import find

    return find(render_overlay(repo_root(), stage).objects, "InferenceService", "ctr")


def owners(api: RecordedCustomObjectsApi, path: tuple[str, ...]) -> list[str]:
    """Every manager that owns ``path`` in the stored object's managedFields."""
    found = []
    for entry in api.isvc["metadata"]["managedFields"]:
        node = entry["fieldsV1"]
        for key in path:
            node = node.get(f"f:{key}") if node is not None else None
        if node is not None:
            found.append(entry["manager"])
    return sorted(found)


PERCENT = ("spec", "predictor", "canaryTrafficPercent")


@pytest.mark.parametrize("server_side", [False, True], ids=["kubectl-apply", "server-side"])
def test_promote_after_a_kubectl_canary_takes_all_traffic(settings, versions, server_side):
    """`kubectl apply -k overlays/canary` sets the split; `mlref canary start` and `promote`
    follow. The split kubectl set must go: a promote that only leaves it out keeps 10%."""
    _, second = versions
    settings = cluster(settings)
    api = RecordedCustomObjectsApi(None)
    api.kubectl_apply(overlay_isvc("base"), server_side)
    api.kubectl_apply(overlay_isvc("canary"), server_side)
    kubectl = "kubectl" if server_side else "kubectl-client-side-apply"
    assert api.isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert owners(api, PERCENT) == [kubectl]

    rollout.start(settings, CHALLENGER, 10, api=api)
    assert owners(api, PERCENT) == [kubectl, "mlref"]  # same value: shared

    promoted = rollout.promote(settings, api=api)
    predictor = api.isvc["spec"]["predictor"]
    assert "canaryTrafficPercent" not in predictor
    assert predictor["model"]["storageUri"] == served_uri(settings, second)
    assert promoted.traffic == ["ctr-predictor-00002 (latest): 100%"]
    assert owners(api, PERCENT) == []


def test_promote_after_a_helm_standard_canary_drops_it(settings, versions):
    """helm installs the chart with a Standard canary; `mlref canary` takes it over and its
    promote leaves no spec.canary behind."""
    from mlref.k8s.render import render_chart, repo_root
    from tests.k8s.conftest import find

    _, second = versions
    root = repo_root()
    values = yaml.safe_load((root / "helm/mlref/ci/standard-canary-values.yaml").read_text())
    chart = find(render_chart(root, values, "standard-canary").objects, "InferenceService", "ctr")
    settings = cluster(settings, deployment_mode="Standard")
    api = RecordedCustomObjectsApi(None)
    api.update(chart, "helm")
    percent = chart["spec"]["canary"][0]["trafficPercent"]

    # the rollout's state file, written for review (`mlref canary start --write-only`)
    rollout.start(settings, CHALLENGER, percent, api=api, write_only=True)
    assert kube.other_owners(api.isvc, ("spec", "canary")) == ["helm"]
    rollout.promote(settings, api=api)
    assert "canary" not in api.isvc["spec"]
    assert api.isvc["spec"]["predictor"]["model"]["storageUri"] == served_uri(settings, second)
    assert kube.other_owners(api.isvc, ("spec", "canary")) == []


def test_takeover_only_for_fields_other_managers_own():
    live = overlay_isvc("canary")
    patch = {"spec": {"predictor": {"model": {"storageUri": "s3://new"}}}}
    assert kube.takeover_patch(live, patch) is None  # nobody owns anything
    live["metadata"]["managedFields"] = [
        {
            "manager": "kubectl",
            "operation": "Apply",
            "fieldsV1": {"f:spec": {"f:predictor": {"f:canaryTrafficPercent": {}}}},
        }
    ]
    taken = kube.takeover_patch(live, patch)
    assert taken["spec"]["predictor"] == {
        "model": {"storageUri": "s3://new"},
        "canaryTrafficPercent": 100,
    }
    assert patch == {"spec": {"predictor": {"model": {"storageUri": "s3://new"}}}}
