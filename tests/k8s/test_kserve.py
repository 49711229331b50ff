"""What KServe's controller starts: final argv and env per component, accepted by our CLI.

The expected values are those of KServe v0.21's transformer_custom.go / predictor.go and
Knative v1.21's revision deploy.go (see mlref/k8s/kserve.py for the files).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlref.cli import app
from mlref.cli.serve import _settings
from mlref.k8s.checks import CliArgsError, launch_problems, parse_cli
from mlref.k8s.kserve import KServeSpecError, deployment_mode, launch, launches
from tests.k8s.conftest import COMMAND, find, form
from tests.servers import Server, free_port
from tests.serving.conftest import config_env, model_ready, serving_settings
from tests.serving.model import build_model

runner = CliRunner()


def _isvc(forms, source):
    objects = form(forms, source).objects
    return find(objects, "InferenceService", "ctr"), objects


def test_transformer_gets_kserves_flags_appended(forms):
    isvc, objects = _isvc(forms, "overlay:base")
    started = launch(isvc, "transformer", objects)
    assert started.mode == "Knative"
    assert started.argv == [
        "mlref", "serve", "transformer", "--host", "0.0.0.0", "--http_port", "8080",
        "--model_name", "ctr", "--predictor_host", "ctr-predictor.mlref",
    ]  # fmt: skip
    assert started.literal_env() == {
        "INFERENCE_SERVICE_NAME": "ctr",
        "PORT": "8080",
        "K_REVISION": "ctr-transformer-00001",
        "K_CONFIGURATION": "ctr-transformer",
        "K_SERVICE": "ctr-transformer",
    }
    command, params = parse_cli(started.argv, COMMAND)
    assert command == "mlref serve transformer"
    assert params["model_name"] == "ctr" and params["predictor_host"] == "ctr-predictor.mlref"
    assert params["port"] == 8080


def test_predictor_runtime_placeholders_are_filled(forms):
    isvc, objects = _isvc(forms, "chart:default")
    started = launch(isvc, "predictor", objects)
    assert started.argv == [
        "mlref", "serve", "predictor", "--model_dir", "/mnt/models", "--model_name", "ctr",
        "--host", "0.0.0.0", "--http_port", "8080",
    ]  # fmt: skip
    assert parse_cli(started.argv, COMMAND)[1]["model"] == "/mnt/models"
    assert {"name": "INFERENCE_SERVICE_NAME", "value": "ctr"} in started.env


def test_flags_already_given_are_not_appended(forms):
    isvc, _ = _isvc(forms, "overlay:base")
    isvc = copy.deepcopy(isvc)
    container = isvc["spec"]["transformer"]["containers"][0]
    container["args"] += ["--model_name=other", "--predictor_host", "elsewhere:80"]
    isvc["spec"]["transformer"]["containerConcurrency"] = 4
    args = launch(isvc, "transformer").args
    assert args.count("--predictor_host") == 1 and "--model_name" not in args
    assert args[-2:] == ["--workers", "4"]


def test_our_cli_refuses_more_than_one_worker():
    result = runner.invoke(app, ["serve", "transformer", "--workers", "4"])
    assert result.exit_code == 2
    assert "containerConcurrency" in result.output


def test_model_name_is_the_served_name():
    assert _settings("fraud", 1).model_name == "fraud"
    assert _settings("", 0).model_name == _settings("", 1).model_name


def test_standard_mode_canary_predictor(forms):
    isvc, objects = _isvc(forms, "chart:standard-canary")
    assert deployment_mode(isvc) == "Standard"
    started = {launch.component: launch for launch in launches(isvc, objects)}
    assert set(started) == {"transformer", "predictor", "predictor:candidate"}
    canary = started["predictor:candidate"]
    assert "PORT" not in canary.literal_env() and "K_SERVICE" not in canary.literal_env()
    assert canary.literal_env()["MLREF_SERVING__VARIANT"] == "canary"
    assert "MLREF_SERVING__VARIANT" not in started["predictor"].literal_env()
    # The chart names the Gateway (the split), so KServe appends no --predictor_host.
    args = started["transformer"].args
    assert args[args.index("--predictor_host") + 1] == "kserve-ingress-gateway.envoy-gateway-system"
    assert args.count("--predictor_host") == 1
    for each in started.values():
        parse_cli(each.argv, COMMAND)
        assert each.container == "kserve-container"


def test_a_renamed_canary_container_is_refused(forms):
    """KServe names the merged predictor container after model.name; its pod mutator mounts
    the model only into kserve-container and refuses the pod otherwise."""
    isvc, objects = _isvc(forms, "chart:standard-canary")
    isvc = copy.deepcopy(isvc)
    isvc["spec"]["canary"][0]["predictor"]["model"]["name"] = "candidate"
    assert launch(isvc, "predictor", objects, "candidate").container == "candidate"
    assert launch(isvc, "predictor", objects).container == "kserve-container"
    others = [o for o in objects if o.get("kind") != "InferenceService"]
    found = launch_problems([isvc, *others], "ctr", COMMAND)
    ((where, message),) = found[("InferenceService", "ctr")]
    assert where.startswith("predictor:candidate")
    assert "'candidate'" in message and "set model.name to kserve-container" in message


@pytest.mark.parametrize(
    ("annotation", "mode"),
    [("Serverless", "Knative"), ("RawDeployment", "Standard"), ("Knative", "Knative")],
)
def test_legacy_mode_names_normalize_like_the_defaulter(annotation, mode):
    isvc = {"metadata": {"annotations": {"serving.kserve.io/deploymentMode": annotation}}}
    assert deployment_mode(isvc) == mode


def test_unknown_mode_and_placeholder_are_errors(forms):
    with pytest.raises(KServeSpecError, match="ModelMesh"):
        deployment_mode(
            {"metadata": {"annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}}}
        )
    isvc, objects = _isvc(forms, "overlay:base")
    objects = copy.deepcopy(objects)
    runtime = find(objects, "ServingRuntime", "mlref-onnx")
    runtime["spec"]["containers"][0]["args"].append("{{.Spec.Predictor}}")
    with pytest.raises(KServeSpecError, match="placeholder"):
        launch(isvc, "predictor", objects)


def test_parse_cli_refuses_what_the_pod_would():
    with pytest.raises(CliArgsError, match="--model-nme"):
        parse_cli(["mlref", "serve", "transformer", "--model-nme", "x"], COMMAND)
    with pytest.raises(CliArgsError, match="not the mlref command"):
        parse_cli(["python", "-m", "mlref"], COMMAND)


def test_launch_problems_name_mismatch_and_port(forms):
    objects = copy.deepcopy(form(forms, "overlay:kind").objects)
    assert launch_problems(objects, "ctr", COMMAND) == {}
    runtime = find(objects, "ServingRuntime", "mlref-onnx")
    args = runtime["spec"]["containers"][0]["args"]
    del args[args.index("--model_name") : args.index("--model_name") + 2]
    find(objects, "InferenceService", "ctr")["metadata"]["name"] = "ads"
    transformer = find(objects, "InferenceService", "ads")["spec"]["transformer"]
    transformer["containers"][0]["ports"][0]["containerPort"] = 9000
    messages = [m for _, m in launch_problems(objects, "ctr", COMMAND)[("InferenceService", "ads")]]
    assert any("asks for model 'ads' but the predictor serves 'ctr'" in m for m in messages)
    assert any("listens on 8080, container port is 9000" in m for m in messages)


def _as_pod_here(argv: list[str], port: int, model_dir: Path) -> list[str]:
    """The pod's argv with only what this machine cannot give changed: bind 127.0.0.1 on a
    free port, and the storage initializer's /mnt/models is a local directory."""
    swap = {"0.0.0.0": "127.0.0.1", "8080": str(port), "/mnt/models": str(model_dir)}
    return [str(Path(sys.executable).parent / argv[0]), *(swap.get(a, a) for a in argv[1:])]


@pytest.mark.slow
def test_predictor_starts_with_what_kserve_gives_it(forms, tmp_path):
    """`mlref serve predictor` with the runtime's args after KServe filled them and Knative's
    env: it serves the model under the InferenceService's name."""
    isvc, objects = _isvc(forms, "chart:kind")
    isvc = copy.deepcopy(isvc)
    isvc["metadata"]["name"] = "ads"  # so the served name can only come from --model_name
    started = launch(isvc, "predictor", objects)
    settings = serving_settings(tmp_path)
    build_model(tmp_path / "mnt" / "model.onnx", settings)
    port = free_port()
    env = {**config_env(settings), **started.literal_env(), "PORT": str(port)}
    argv = _as_pod_here(started.argv, port, tmp_path / "mnt")
    server = Server(argv, port, tmp_path / "predictor.log", env=env)
    try:
        server.wait_ready(timeout=60, check=lambda: model_ready(port, "ads"))
        assert not model_ready(port, settings.model_name)
    finally:
        server.stop()
