"""kfp.Client submits to the API stand-in; what it recorded runs in the pod emulator."""

from pathlib import Path

import pytest
from kfp import Client, compiler
from kfp_server_api.exceptions import ApiException

from tests.cluster.kfp_api import KfpApiServer
from tests.cluster.kfp_pods import run_pipeline
from tests.cluster.pods import Cluster
from tests.cluster.test_kfp_pods import BUCKET, ROOT, env_pipeline, probe_cluster, two_steps
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
