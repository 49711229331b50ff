"""The KFP pod emulator runs real kfp components as Kubeflow would, and keeps pods apart."""

# No `from __future__ import annotations`: kfp reads the components' annotations as types.

from pathlib import Path
from typing import NamedTuple

import pytest
from kfp import compiler, dsl, kubernetes
from kfp.dsl import Dataset, Input, Model, Output, OutputPath

from mlref.components.base import component
from tests.cluster.kfp_pods import PipelineRun, run_pipeline
from tests.cluster.pods import PROJECT_IMAGE, Cluster, PodFailed
from tests.conftest import S3Server

BUCKET = "pipelines"
ROOT = f"s3://{BUCKET}/pipeline-root"


@component
def make_rows(rows: int, data: Output[Dataset]) -> int:
    """Write ``rows`` lines to a Dataset; the count is an output parameter too."""
    with open(data.path, "w") as handle:
        handle.writelines(f"row {i}\n" for i in range(rows))
    data.metadata["rows"] = rows
    return rows * 10


@component
def fit(data: Input[Dataset], scale: int, model: Output[Model]) -> NamedTuple(
    "FitOutputs", [("summary", str), ("rows_seen", int)]
):
    """Read the Dataset downloaded into this pod, write a Model directory of two files."""
    import os

    with open(data.path) as handle:
        lines = handle.read().splitlines()
    os.makedirs(model.path, exist_ok=True)
    with open(os.path.join(model.path, "weights.txt"), "w") as handle:
        handle.write(str(len(lines) * scale))
    with open(os.path.join(model.path, "meta.txt"), "w") as handle:
        handle.write(data.uri)
    summary = (
        f"{len(lines)} rows, metadata {data.metadata['rows']}, scale {scale}, cwd {os.getcwd()}"
    )
    return (summary, len(lines))


@dsl.pipeline(name="emulator-two-steps")
def two_steps(rows: int = 3) -> str:
    made = make_rows(rows=rows)
    fitted = fit(data=made.outputs["data"], scale=made.outputs["Output"])
    return fitted.outputs["summary"]


@component
def write_local(name: str) -> str:
    """Hand a file to the next step through the local disk (what pods cannot do)."""
    from pathlib import Path

    path = Path(name).resolve()
    path.write_text("written upstream")
    return str(path)


@component
def read_local(path: str) -> str:
    from pathlib import Path

    return Path(path).read_text()


@dsl.pipeline(name="emulator-local-handoff")
def local_handoff() -> str:
    written = write_local(name="handoff.txt")
    return read_local(path=written.output).output


@component
def report_env() -> str:
    """The env the pod got, and a listing through the object store it names."""
    import json
    import os

    import boto3

    keys = [
        item["Key"]
        for item in boto3.client("s3")
        .list_objects_v2(Bucket=os.environ["PROBE_BUCKET"])
        .get("Contents", [])
    ]
    names = ("PROBE_BUCKET", "FROM_IR", "AWS_ENDPOINT_URL", "LEAK_MARKER", "HOME")
    return json.dumps({"env": {n: os.environ.get(n) for n in names}, "keys": keys})


@dsl.pipeline(name="emulator-env")
def env_pipeline() -> str:
    task = report_env()
    task.set_env_variable("FROM_IR", "ir-value")
    kubernetes.use_config_map_as_env(
        task,
        config_map_name="probe-settings",
        config_map_key_to_env={"bucket": "PROBE_BUCKET", "endpoint": "AWS_ENDPOINT_URL"},
    )
    kubernetes.use_secret_as_env(
        task,
        secret_name="probe-credentials",
        secret_key_to_env={
            "access-key": "AWS_ACCESS_KEY_ID",
            "secret-key": "AWS_SECRET_ACCESS_KEY",
            "region": "AWS_DEFAULT_REGION",
        },
    )
    return task.output


def compile_to(pipeline, tmp_path: Path) -> Path:
    path = tmp_path / f"{pipeline.name}.yaml"
    compiler.Compiler().compile(pipeline, str(path))
    return path


def run(pipeline, tmp_path: Path, s3: S3Server, cluster: Cluster, **arguments) -> PipelineRun:
    s3.create_bucket(BUCKET)
    return run_pipeline(
        compile_to(pipeline, tmp_path), arguments, cluster, s3, tmp_path / "pods", ROOT
    )


def keys(s3: S3Server, prefix: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_artifacts_and_parameters_cross_pods_through_the_pipeline_root(
    s3_server: S3Server, tmp_path: Path
) -> None:
    result = run(two_steps, tmp_path, s3_server, Cluster(), rows=4)

    assert result.outputs == {"Output": "4 rows, metadata 4, scale 40, cwd /tmp"}
    made, fitted = result.tasks["make-rows"], result.tasks["fit"]
    assert made.parameters == {"Output": 40}
    assert fitted.parameters["rows_seen"] == 4
    data_uri = made.artifacts["data"]["uri"]
    model_uri = fitted.artifacts["model"]["uri"]
    run_prefix = f"pipeline-root/emulator-two-steps/{result.run_id}"
    assert data_uri.startswith(f"{ROOT}/emulator-two-steps/{result.run_id}/make-rows/")
    assert data_uri.endswith("/data") and made.artifacts["data"]["metadata"] == {"rows": 4}
    data_key = data_uri.removeprefix(f"s3://{BUCKET}/")
    model_key = model_uri.removeprefix(f"s3://{BUCKET}/")
    assert keys(s3_server, run_prefix) == sorted(
        [data_key, f"{model_key}/meta.txt", f"{model_key}/weights.txt"]
    )
    body = s3_server.client().get_object(Bucket=BUCKET, Key=f"{model_key}/meta.txt")["Body"]
    assert body.read().decode() == data_uri  # the consumer saw the producer's s3:// URI


@dsl.pipeline(name="emulator-fresh-rows")
def fresh_rows(rows: int = 3) -> str:
    made = make_rows(rows=rows).set_caching_options(False)
    return fit(data=made.outputs["data"], scale=made.outputs["Output"]).outputs["summary"]


def test_the_task_cache_reuses_identical_executions_across_runs_and_nothing_else(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """Kubeflow's cache key: same parameters, command and image reuse the outputs (no pod);
    a new parameter value, or an input artifact from a new execution, does not."""
    cluster = Cluster()
    first = run(two_steps, tmp_path, s3_server, cluster, rows=2)
    again = run(two_steps, tmp_path, s3_server, cluster, rows=2)
    assert [task.cached for task in again.tasks.values()] == [True, True]
    assert again.tasks["fit"].artifacts == first.tasks["fit"].artifacts  # same id and URI
    assert again.outputs == first.outputs
    other = run(two_steps, tmp_path, s3_server, cluster, rows=3)
    assert [task.cached for task in other.tasks.values()] == [False, False]

    fresh_first = run(fresh_rows, tmp_path, s3_server, cluster, rows=2)
    fresh_again = run(fresh_rows, tmp_path, s3_server, cluster, rows=2)
    assert not fresh_first.tasks["fit"].cached
    # make-rows ran again, so fit's input is a new artifact: a cache miss, though equal data.
    assert [task.cached for task in fresh_again.tasks.values()] == [False, False]


def test_a_local_file_handed_to_the_next_step_is_not_there_in_a_pod(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kfp import local

    # kfp's local runner shares one disk between steps, so the handoff works there ...
    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "lr"))
    assert local_handoff().output == "written upstream"

    # ... and fails where each step is a pod with its own disk.
    with pytest.raises(PodFailed, match=r"(?s)task read-local failed.*FileNotFoundError"):
        run(local_handoff, tmp_path, s3_server, Cluster())


def probe_cluster(s3: S3Server) -> Cluster:
    in_cluster = "seaweedfs.mlref.svc.cluster.local:8333"
    return Cluster(
        objects=[
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "probe-settings", "namespace": "kubeflow"},
                "data": {"bucket": BUCKET, "endpoint": f"http://{in_cluster}"},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "probe-credentials", "namespace": "kubeflow"},
                "stringData": {
                    "access-key": s3.access_key,
                    "secret-key": s3.secret_key,
                    "region": s3.region,
                },
            },
        ],
        services={in_cluster: s3.endpoint.removeprefix("http://")},
    )


def test_env_from_configmap_and_secret_reaches_the_component_and_nothing_else_does(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.setenv("LEAK_MARKER", "from the test process")
    s3_server.create_bucket(BUCKET)
    s3_server.client().put_object(Bucket=BUCKET, Key="probe/seen-from-the-pod", Body=b"1")
    pipeline = compile_to(env_pipeline, tmp_path)  # run() would empty the bucket
    result = run_pipeline(
        pipeline, {}, probe_cluster(s3_server), s3_server, tmp_path / "pods", ROOT
    )

    report = json.loads(result.outputs["Output"])
    assert report["env"] == {
        "PROBE_BUCKET": BUCKET,
        "FROM_IR": "ir-value",
        "AWS_ENDPOINT_URL": s3_server.endpoint,  # the service address, rewritten
        "LEAK_MARKER": None,
        "HOME": "/tmp",  # the image's ENV
    }
    # The credentials and the endpoint the pod got were enough to reach the object store.
    assert "probe/seen-from-the-pod" in report["keys"]


def test_a_missing_configmap_fails_the_pod_as_the_kubelet_does(
    s3_server: S3Server, tmp_path: Path
) -> None:
    cluster = probe_cluster(s3_server)
    for obj in cluster.objects:
        obj["metadata"]["namespace"] = "mlref"  # applied where the KFP pods cannot see it
    with pytest.raises(PodFailed, match="kubeflow/probe-credentials not found"):
        run(env_pipeline, tmp_path, s3_server, cluster)


@dsl.component(base_image="python:3.11-slim")
def foreign() -> str:
    return "ran"


@dsl.pipeline(name="emulator-foreign-image")
def foreign_image() -> str:
    return foreign().output


def test_only_the_project_image_is_emulated(s3_server: S3Server, tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError, match=r"image python:3\.11-slim"):
        run(foreign_image, tmp_path, s3_server, Cluster())


@dsl.container_component
def shout(word: str, loud: OutputPath(str), echo: Output[Dataset]):
    """A container component: placeholders in its args, outputs written by the shell."""
    return dsl.ContainerSpec(
        image=PROJECT_IMAGE,
        command=["sh", "-c", 'printf "%s!" "$0" > "$1" && printf "%s" "$0" > "$2"'],
        args=[word, loud, echo.path],
    )


@component
def upper(value: str) -> str:
    return value.upper()


@dsl.pipeline(name="emulator-container")
def container_pipeline(word: str = "hey") -> str:
    said = shout(word=word)
    return upper(value=said.outputs["loud"]).output


def test_container_placeholders_and_output_files(s3_server: S3Server, tmp_path: Path) -> None:
    result = run(container_pipeline, tmp_path, s3_server, Cluster(), word="hello")
    shouted = result.tasks["shout"]
    assert shouted.parameters == {"loud": "hello!"}
    echo_key = shouted.artifacts["echo"]["uri"].removeprefix(f"s3://{BUCKET}/")
    body = s3_server.client().get_object(Bucket=BUCKET, Key=echo_key)["Body"].read()
    assert body == b"hello"
    assert result.outputs == {"Output": "HELLO!"}  # the value, read from the output file
