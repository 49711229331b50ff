"""A user-level experiment's cluster form, run as KServe makes its pods.

The chart with the kind values, a Knative canary at 50 % and ``experiment.enabled``: two
revisions of ``ctr``'s predictor, the rolled-out one (the champion, tagged ``prev``) and the
latest (the candidate, tagged ``latest``), each filled by KServe's storage initializer from
the object store (:mod:`tests.cluster.kserve_pods`). Knative's route over them is a real
nginx (:class:`KnativeRoute`) configured from the rendered InferenceService and the Knative
config kind-up applies: untagged calls split by percent, a ``Knative-Serving-Tag`` naming a
revision's tag goes to that revision only, but only where KServe tags the revisions (the
chart's ``serving.kserve.io/enable-tag-routing``) and Knative's ``tag-header-based-routing``
is on. ``mlref experiment start`` applies the ConfigMap ``ctr-experiment`` in cluster mode;
the transformer pod mounts it as the chart mounts it, filled by kubelet's atomic writer
(:mod:`tests.cluster.kubelet_volume`). Then, with the same pod running, the ConfigMap is
stopped, replaced by another experiment, and deleted, each time as kubelet refreshes a
mounted ConfigMap (a new ``..data``): the transformer follows every change without a
restart. Every row of a B user is scored by the candidate's pod, of an A user by the
champion's, and the log on the object store names the experiment and the variant.
"""

from __future__ import annotations

import contextlib
import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlref.canary.state import TAG_ROUTING_ANNOTATION, CanaryState, write_state
from mlref.experiment import control
from mlref.experiment.assign import STATE_KEY, TREATMENT, Experiment
from mlref.k8s.knative import load_features
from mlref.k8s.kserve import KNATIVE
from mlref.k8s.render import chart_value_sets, render_chart, repo_root
from mlref.monitoring.inference import read_inference_log
from mlref.serving.predictor import resolve
from mlref.serving.requests import VARIANT_HEADER, VERSION_HEADER
from mlref.settings import Settings
from mlref.training.publish import publish, publish_champion, served_uri
from tests.canary.platform import Nginx
from tests.cluster import kubelet_volume
from tests.cluster.kserve_pods import predictor_pod, predictor_route, transformer_pod
from tests.cluster.network import service_map
from tests.cluster.pods import installed
from tests.conftest import S3Server
from tests.k8s.test_shadow import RecordedConfigMaps
from tests.servers import wait_until
from tests.serving.conftest import KNOWN_ADS, KNOWN_USERS, build_features
from tests.serving.model import build_model
from tests.serving.test_servers import business_rows

pytestmark = pytest.mark.slow
BUCKET = "mlref"  # values.yaml objectStore.bucket
USERS = list(KNOWN_USERS)
TAG_FEATURE = "tag-header-based-routing"


def kind_chart(candidate: str, canary: bool = True) -> list[dict]:
    """``helm install -f values-kind.yaml --set experiment.enabled=true`` (and the canary)."""
    values = copy.deepcopy(chart_value_sets(repo_root())["kind"])
    values["experiment"] = {"enabled": True}
    if canary:
        values["canary"] = {"enabled": True, "percent": 50, "modelUri": candidate}
    return render_chart(repo_root(), values, "kind").objects


def inference_service(objects: list[dict]) -> dict:
    return next(o for o in objects if o["kind"] == "InferenceService")


class KnativeRoute(Nginx):
    """Knative's route to the predictor, as the gateway applies it: untagged calls split by
    the latest revision's ``canaryTrafficPercent``; with the revisions tagged (KServe's
    enable-tag-routing: the rolled-out one ``prev``, the latest ``latest``) and Knative's
    tag-header-based-routing enabled, a call whose ``Knative-Serving-Tag`` names a tag goes to
    that revision alone; an unknown tag falls back to the split."""

    def route_revisions(self, isvc: dict, ports: dict[str, int], features: dict) -> None:
        percent = int(isvc["spec"]["predictor"].get("canaryTrafficPercent", 100))
        annotations = isvc["metadata"].get("annotations") or {}
        tagged = (
            annotations.get(TAG_ROUTING_ANNOTATION) == "true"
            and features.get(TAG_FEATURE) == "enabled"
        )
        tags = "".join(f"\n    {tag} tag_{tag};" for tag in ports) if tagged else ""
        upstreams = "".join(
            f"\n  upstream tag_{tag} {{ server 127.0.0.1:{port}; keepalive 8; }}"
            for tag, port in ports.items()
        )
        weights = {ports["latest"]: percent, ports["prev"]: 100 - percent}
        split = "".join(
            f"\n    server 127.0.0.1:{port} weight={weight};"
            for port, weight in weights.items()
            if weight
        )
        self.conf.write_text(
            f"""worker_processes 1;
pid {self.root}/nginx.pid;
error_log {self.root}/logs/error.log warn;
events {{ worker_connections 512; }}
http {{
  client_body_temp_path {self.root}/tmp/body;
  proxy_temp_path {self.root}/tmp/proxy;
  fastcgi_temp_path {self.root}/tmp/fastcgi;
  uwsgi_temp_path {self.root}/tmp/uwsgi;
  scgi_temp_path {self.root}/tmp/scgi;
  log_format split '$upstream_addr $status';
  access_log {self.root}/logs/access.log split;
  map $http_knative_serving_tag $revision {{
    default split;{tags}
  }}
  upstream split {{{split}
    keepalive 8;
  }}{upstreams}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass http://$revision;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream off;
    }}
  }}
}}
"""
        )
        self.apply()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_each_user_is_scored_by_their_variants_pod_as_the_config_map_changes(
    s3_env: S3Server, redis_server: str, tmp_path: Path
) -> None:
    s3 = s3_env
    s3.create_bucket(BUCKET)
    # The laptop: cluster settings as the ConfigMap gives them; it publishes both models and
    # computes the online features, as the pipeline's pods would.
    laptop = Settings(
        mode="cluster",
        work_dir=tmp_path / "laptop",
        storage={"root": f"s3://{BUCKET}"},
        features={"redis_connection": redis_server},
    )
    build_features(laptop, KNOWN_USERS, KNOWN_ADS)
    publish(laptop, "1", build_model(tmp_path / "v1" / "model.onnx", laptop, seed=0), "stable")
    publish_champion(laptop, "1")
    candidate = publish(
        laptop, "2", build_model(tmp_path / "v2" / "model.onnx", laptop, seed=1), "candidate"
    )
    objects = kind_chart(candidate)
    isvc = inference_service(objects)  # its predictor: the latest revision, the candidate
    rolled_out = inference_service(kind_chart(candidate, canary=False))  # before the canary
    runtimes = [o for o in objects if o["kind"] == "ServingRuntime"]
    services = service_map(objects, {"seaweedfs": s3.endpoint, "redis": redis_server})
    cluster = installed(objects, services, store=s3)
    features = load_features(repo_root() / "manifests" / "cluster" / "knative-serving.yaml")

    # `mlref canary start` left its state on the laptop; `mlref experiment start` applies the
    # ConfigMap the transformer mounts.
    write_state(laptop, CanaryState(candidate, served_uri(laptop, "champion"), 50))
    core = RecordedConfigMaps()
    first = control.start(laptop, "ab-one", 50, core=core)
    config_map = core.maps[("mlref", "ctr-experiment")]
    cluster.objects.append(config_map)

    since = datetime.now(UTC) - timedelta(minutes=5)
    client = httpx.Client(timeout=60)
    rows = business_rows(len(USERS), seed=7)
    for row, user in zip(rows, USERS, strict=True):
        row["user_id"] = user

    def single(url: str, tag: str, row: dict) -> httpx.Response:
        answer = client.post(
            f"{url}/v1/models/ctr:predict",
            json={"instances": [{**row, "request_id": f"{tag}-{row['user_id']}"}]},
        )
        assert answer.status_code == 200, answer.text[-2000:]
        return answer

    def scored_by_variant(url: str, tag: str, experiment: Experiment) -> None:
        """Each user's row alone: named with the user's variant and answered by its model."""
        b = experiment.variants(USERS) == TREATMENT
        assert 0 < b.sum() < len(USERS)
        for row, in_b in zip(rows, b.tolist(), strict=True):
            answer = single(url, tag, row)
            (prediction,) = answer.json()["predictions"]
            assert prediction["experiment_variant"] == ("B" if in_b else "A")
            assert answer.headers[VARIANT_HEADER] == ("canary" if in_b else "stable")
            assert answer.headers[VERSION_HEADER] == ("2" if in_b else "1")

    def unassigned(url: str) -> bool:
        return "experiment_variant" not in single(url, "probe", rows[0]).json()["predictions"][0]

    def refreshed(volume: Path, data: dict[str, str] | None) -> None:
        """kubelet's sync of the mounted ConfigMap: a new ``..data``, the path never written."""
        before = kubelet_volume.current(volume)
        kubelet_volume.write(volume, data or {})
        assert kubelet_volume.current(volume) != before

    route = KnativeRoute(tmp_path / "route")
    base = tmp_path / "serving"
    second = None
    try:
        with contextlib.ExitStack() as pods:
            prev, prev_models, _ = pods.enter_context(
                predictor_pod(cluster, rolled_out, runtimes, base / "prev")
            )
            latest, latest_models, _ = pods.enter_context(
                predictor_pod(cluster, isvc, runtimes, base / "latest")
            )
            # Each storage initializer fetched its own revision's model.
            assert resolve(laptop, str(prev_models)).version == "1"
            assert resolve(laptop, str(latest_models)).version == "2"
            route.route_revisions(
                isvc, {"prev": port_of(prev), "latest": port_of(latest)}, features
            )
            cluster.routes.update(
                predictor_route(isvc, runtimes, KNATIVE, f"127.0.0.1:{route.port}")
            )
            with transformer_pod(cluster, isvc, runtimes, base / "transformer") as (url, _):
                (volume,) = (base / "transformer").glob("*/volumes/experiment")
                assert (volume / STATE_KEY).is_symlink()  # through kubelet's ..data

                # 1. The experiment the pod started with: single rows, then one mixed batch.
                scored_by_variant(url, "one", first)
                mixed = [{**r, "request_id": f"batch-{i}"} for i, r in enumerate(rows)]
                batch = client.post(f"{url}/v1/models/ctr:predict", json={"instances": mixed})
                assert batch.status_code == 200, batch.text[-2000:]
                assert [p["experiment_variant"] for p in batch.json()["predictions"]] == [
                    "B" if b else "A" for b in (first.variants(USERS) == TREATMENT).tolist()
                ]

                # 2. `mlref experiment stop`: the ConfigMap says stopped; kubelet refreshes it.
                control.stop(laptop, core=core)
                refreshed(volume, core.maps[("mlref", "ctr-experiment")]["data"])
                wait_until(lambda: unassigned(url), 30.0, "the transformer to see the stop")

                # 3. Another experiment, another salt and split: the pod follows it.
                second = control.start(laptop, "ab-two", 30, salt="other", core=core)
                refreshed(volume, core.maps[("mlref", "ctr-experiment")]["data"])
                wait_until(lambda: not unassigned(url), 30.0, "the transformer to see ab-two")
                scored_by_variant(url, "two", second)

                # 4. The ConfigMap deleted: the optional volume loses its key.
                refreshed(volume, None)
                wait_until(lambda: unassigned(url), 30.0, "the transformer to see no experiment")
                assert not (volume / STATE_KEY).exists()
    finally:
        route.stop()

    assert cluster.refused == []
    # The transformer flushed its log on stop: each experiment's rows, by user.
    until = datetime.now(UTC) + timedelta(minutes=5)
    log = read_inference_log(laptop, since, until)
    for tag, experiment in (("one", first), ("two", second)):
        ours = log[log["request_id"].str.startswith(f"{tag}-")].sort_values("user_id")
        assert ours["user_id"].tolist() == USERS  # each row once
        in_b = experiment.variants(ours["user_id"].to_numpy()) == TREATMENT
        assert (ours["experiment"] == experiment.name).all()
        assert (ours["experiment_variant"] == np.where(in_b, "B", "A")).all()
        assert (ours["variant"] == np.where(in_b, "canary", "stable")).all()
        assert (ours["model_version"] == np.where(in_b, "2", "1")).all()
    batch = log[log["request_id"].str.startswith("batch-")]
    assert len(batch) == len(USERS) and (batch["experiment"] == first.name).all()
    in_b = first.variants(batch["user_id"].to_numpy()) == TREATMENT
    assert (batch["model_version"] == np.where(in_b, "2", "1")).all()
