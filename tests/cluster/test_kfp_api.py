"""kfp.Client submits to the API stand-in; what it recorded runs in the pod emulator."""

import re
from pathlib import Path

import pytest
import yaml
from kfp import Client, compiler
from kfp_server_api.exceptions import ApiException

from mlref.pipelines.runner import COMPILED
from tests.cluster.kfp_api import KfpApiServer
from tests.cluster.kfp_pods import load_ir, run_pipeline
from tests.cluster.pods import PROJECT_IMAGE, Cluster, installed, run_pod
from tests.cluster.test_kfp_pods import BUCKET, ROOT, env_pipeline, probe_cluster, two_steps
from tests.cluster.test_pods import chart_cluster, probe_job
from tests.conftest import S3Server


def submit(kfp_api: KfpApiServer, pipeline, tmp_path: Path, **arguments) -> str:
    package = tmp_path / f"{pipeline.name}.yaml"
    compiler.Compiler().compile(pipeline, str(package))
    client = Client(host=f"http://{kfp_api.address}", namespace="kubeflow")
    return client.create_run_from_pipeline_package(
        str(package), arguments=arguments, experiment_name="mlref"
    ).run_id


def test_a_submitted_run_is_recorded_and_runs_as_submitted(
    kfp_api: KfpApiServer, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp/context.json
    run_id = submit(kfp_api, two_steps, tmp_path, rows=2)
    second = submit(kfp_api, env_pipeline, tmp_path)

    assert [run.run_id for run in kfp_api.runs] == [run_id, second]
    first = kfp_api.runs[0]
    assert first.parameters == {"rows": 2}
    assert len(kfp_api.api.experiments) == 1  # the second submission found the experiment
    assert "platform_spec" in kfp_api.runs[1].pipeline_spec  # kfp-kubernetes config travels

    s3_server.create_bucket(BUCKET)
    done = run_pipeline(
        first.pipeline_spec, first.parameters, Cluster(), s3_server, tmp_path / "a", ROOT
    )
    assert done.outputs["Output"].startswith("2 rows")
    env_run = kfp_api.runs[1]
    done = run_pipeline(
        env_run.pipeline_spec,
        env_run.parameters,
        probe_cluster(s3_server),
        s3_server,
        tmp_path / "b",
        ROOT,
    )
    assert '"FROM_IR": "ir-value"' in done.outputs["Output"]


def test_a_run_with_unknown_parameters_is_refused(
    kfp_api: KfpApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ApiException, match="unknown \\['colour'\\]"):
        submit(kfp_api, two_steps, tmp_path, colour="red")
    assert kfp_api.runs == []


def test_the_drift_cronjob_pod_can_submit_the_training_pipeline_to_kubeflow(
    kind_chart: list[dict], kfp_api: KfpApiServer, s3_server: S3Server, tmp_path: Path
) -> None:
    """The drift job's pod, as the chart renders it, reaches the Kubeflow API by its
    in-cluster address and submits the compiled pipeline with an ``s3://`` source."""
    cluster = chart_cluster(kind_chart, s3_server)
    kfp_host = cluster.lookup("ConfigMap", "mlref-settings", "mlref")["MLREF_PIPELINE__HOST"]
    cluster.services[kfp_host.removeprefix("http://")] = kfp_api.address
    kfp_api.api.install = cluster
    job = probe_job(kind_chart, "drift-check")
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["mlref"]
    claims = {"drift-state": tmp_path / "state"}
    claims["drift-state"].mkdir()
    for schedule in ([], ["--schedule", "0 3 * * *"]):
        container["args"] = [
            *("pipeline", "submit", "--source", "s3://mlref/data/raw"),
            *("--set", "train.epochs=1", *schedule),
        ]
        done = run_pod(job, cluster, tmp_path, claims=claims)
        assert done.returncode == 0, done.stdout[-3000:]

    once, nightly = kfp_api.runs
    assert once.parameters["source"] == "s3://mlref/data/raw"
    assert once.parameters["overrides"] == '{"train": {"epochs": 1}}'
    assert nightly.schedule == "0 0 3 * * *"
    spec, platform = load_ir(once.pipeline_spec)
    compiled_spec, compiled_platform = load_ir(COMPILED)
    assert spec["pipelineInfo"] == compiled_spec["pipelineInfo"]
    # Compiled in the pod, the steps run the image the cluster's settings name (kind.local).
    images = {e["container"].pop("image") for e in spec["deploymentSpec"]["executors"].values()}
    for executor in compiled_spec["deploymentSpec"]["executors"].values():
        executor["container"].pop("image")
    assert images == {cluster.lookup("ConfigMap", "mlref-settings", "mlref")["MLREF_IMAGE"]}
    assert spec["deploymentSpec"] == compiled_spec["deploymentSpec"]
    assert spec["root"] == compiled_spec["root"]  # each task's caching option as compiled
    assert platform == compiled_platform  # the ConfigMap/Secret env travels with the run


def _broken(ir: str, breakage: str) -> str:
    documents = list(yaml.safe_load_all(ir))
    spec, platform = documents[0], documents[1]["platforms"]["kubernetes"]
    executors = platform["deploymentSpec"]["executors"]
    if breakage == "secret":
        for entry in executors["exec-ingest-op"]["secretAsEnv"]:
            entry["secretName"] = "object-store"
            entry["secretNameParameter"]["runtimeValue"]["constant"] = "object-store"
    elif breakage == "image":
        spec["deploymentSpec"]["executors"]["exec-train-op"]["container"]["image"] = "python:3.11"
    return yaml.safe_dump_all(documents)


@pytest.mark.parametrize(
    ("breakage", "arguments", "refusal"),
    [
        ("secret", {}, "exec-ingest-op: Secret kubeflow/object-store not found"),
        ("image", {}, "exec-train-op: image 'python:3.11' is not the install's"),
        ("", {"epochs": 1.5}, "parameter 'epochs' requires type NUMBER_INTEGER"),
        ("", {"source": 3}, "parameter 'source' requires type STRING"),
    ],
)
def test_a_run_the_install_cannot_run_is_refused(
    breakage: str,
    arguments: dict,
    refusal: str,
    kind_chart: list[dict],
    kfp_api: KfpApiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cluster = installed(kind_chart)
    kfp_api.api.install = cluster
    image = cluster.lookup("ConfigMap", "mlref-settings", "kubeflow")["MLREF_IMAGE"]
    ir = COMPILED.read_text().replace(PROJECT_IMAGE, image)  # as compiled for this install
    client = Client(host=f"http://{kfp_api.address}", namespace="kubeflow")
    good = tmp_path / "good.yaml"
    good.write_text(ir)
    client.create_run_from_pipeline_package(
        str(good), arguments={"source": "s3://mlref/data/raw"}, experiment_name="mlref"
    )
    package = tmp_path / "broken.yaml"
    package.write_text(_broken(ir, breakage))
    with pytest.raises(ApiException, match=re.escape(refusal)):
        client.create_run_from_pipeline_package(
            str(package),
            arguments={"source": "s3://mlref/data/raw", **arguments},
            experiment_name="mlref",
        )
    assert len(kfp_api.runs) == 1  # the good one
