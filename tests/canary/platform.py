"""The cluster's serving pods, emulated with real parts: a platform traffic split.

Each pod is its own process started with exactly the argv and env KServe's controller (and
Knative) give its container (:mod:`mlref.k8s.kserve` over ``manifests/base``); they share
the settings' storage (the object store's stand-in). Only the network is emulated: bind
127.0.0.1 and a free port instead of 0.0.0.0:8080, the predictor Service's DNS name resolved
to the proxy, ``/mnt/models`` filled the way the storage initializer fills it.

Knative's revision split is stood in for by a real nginx: weighted upstreams over the
revisions, rewritten and reloaded each time an InferenceService patch is applied (the
recorded API server's apply plays Knative's route reconciler), after a new revision's
predictor is Ready, as Knative routes only to Ready revisions.
"""

from __future__ import annotations

import copy
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from mlref.k8s.gateway import backend_weights, predictor_route
from mlref.k8s.kserve import launch, predictor_service_name
from mlref.settings import Settings
from tests.canary.e2e import warm_up
from tests.canary.fake_kube import RecordedCustomObjectsApi, canary_statuses
from tests.servers import Server, find_binary, free_port
from tests.serving.conftest import REPO, config_env, model_ready, predict_delay_env

MLREF = str(Path(sys.executable).with_name("mlref"))  # the container's `mlref` command
WARM_UP = 50  # requests each new revision gets straight away, before any traffic
ACCESS = re.compile(r"^(?P<upstream>\S+) (?P<status>\d{3})$")


def base_objects() -> tuple[dict, list[dict]]:
    """The InferenceService and ServingRuntimes of manifests/base, as deployed."""
    docs = [d for d in yaml.safe_load_all((REPO / "manifests/base/serving.yaml").read_text()) if d]
    isvc = next(d for d in docs if d["kind"] == "InferenceService")
    return isvc, [d for d in docs if d["kind"] in {"ServingRuntime", "ClusterServingRuntime"}]


def local_argv(argv: list[str], **values: str) -> list[str]:
    """``argv`` with the values of the given ``--flag``s replaced (the network emulation)."""
    out = list(argv)
    out[0] = MLREF if out[0] == "mlref" else out[0]
    for flag, value in values.items():
        where = out.index(f"--{flag}")
        out[where + 1] = value
    return out


def start_pod(
    settings: Settings, argv: list[str], env: dict[str, str], pod_dir: Path, port: int
) -> Server:
    """One container as a process, ready when its model is."""
    pod_dir.mkdir(parents=True, exist_ok=True)
    full = {**config_env(settings), **env}
    server = Server(argv, port, pod_dir / "container.log", env=full)
    server.wait_ready(timeout=90, check=lambda: model_ready(port, settings.model_name))
    return server


class Nginx:
    """nginx with its own prefix under ``root``; :meth:`route` rewrites and reloads it."""

    def __init__(self, root: Path):
        self.binary = find_binary("nginx", "nginx-light", ["/usr/sbin"])
        self.root = root
        for sub in ("logs", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = root / "nginx.conf"
        self.process: subprocess.Popen | None = None

    def route(
        self,
        weights: dict[int, int],
        hosts: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Send traffic to 127.0.0.1:port by weight (percent); zero weights get none. With
        ``hosts`` (a Gateway's listener for one HTTPRoute) only requests for those hosts are
        routed, with ``headers`` set; any other host gets 404, as from a Gateway without a
        matching route."""
        servers = "\n".join(
            f"    server 127.0.0.1:{port} weight={weight};"
            for port, weight in weights.items()
            if weight > 0
        )
        names = f"server_name {' '.join(hosts)};" if hosts else ""
        sets = "".join(f"\n      proxy_set_header {k} {v};" for k, v in (headers or {}).items())
        others = (
            f"""
  server {{
    listen 127.0.0.1:{self.port} default_server;
    return 404;
  }}"""
            if hosts
            else ""
        )
        self.conf.write_text(
            f"""{self.preamble()}
  upstream revisions {{
{servers}
    keepalive 16;
  }}
  server {{
    listen 127.0.0.1:{self.port};
    {names}
    location / {{
      proxy_pass http://revisions;
      proxy_http_version 1.1;
      proxy_set_header Connection "";{sets}
      proxy_next_upstream off;
    }}
  }}{others}
}}
"""
        )
        self.apply()

    def preamble(self) -> str:
        """The config's opening up to the ``http`` block's own directives: this prefix's
        files, and an access log of which upstream answered each request and how."""
        return f"""worker_processes 1;
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
  access_log {self.root}/logs/access.log split;"""

    def apply(self) -> None:
        """Start nginx on the written config, or reload it gracefully."""
        if self.process is None:
            argv = [self.binary, "-p", str(self.root), "-c", str(self.conf)]
            self.process = subprocess.Popen(
                [*argv, "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=(self.root / "logs/stderr.log").open("wb"),
            )
            self._wait()
        else:
            check = subprocess.run(
                [self.binary, "-t", "-p", str(self.root), "-c", str(self.conf)],
                capture_output=True,
                text=True,
            )
            assert check.returncode == 0, check.stderr
            self.process.send_signal(signal.SIGHUP)  # graceful reload, as `nginx -s reload`

    def _wait(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError((self.root / "logs/error.log").read_text())

    def answers(self) -> list[tuple[str, int]]:
        """(upstream, status) of every request nginx passed on."""
        lines = (self.root / "logs/access.log").read_text().splitlines()
        return [(m["upstream"], int(m["status"])) for m in map(ACCESS.match, lines) if m]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful shutdown
            self.process.wait(timeout=30)


VARIANT_ENV = "MLREF_SERVING__VARIANT"


def revision_key(predictor: dict) -> tuple[str, str]:
    """What makes a new predictor pod here: the model and the variant label in its env."""
    model = predictor["model"]
    env = {e["name"]: e.get("value") for e in model.get("env") or []}
    return model["storageUri"], env.get(VARIANT_ENV) or "stable"


class PlatformStandIn(RecordedCustomObjectsApi):
    """The API server plus what the platform does with an applied patch: predictor pods
    started with the argv and env of the applied spec (one per model and variant, kept once
    started), and nginx rerouted over them by :meth:`reconcile`. ``delays`` (storageUri ->
    ms) makes the pods serving those models that much slower per model run (a slow node's
    worth of latency, known exactly: tests/predict_delay)."""

    def __init__(
        self,
        isvc: dict,
        runtimes: list[dict],
        settings: Settings,
        root: Path,
        nginx: Nginx,
        delays: dict[str, float] | None = None,
    ):
        super().__init__(copy.deepcopy(isvc), ready_after=0)
        self.runtimes = runtimes
        self.settings = settings
        self.root = root
        self.nginx = nginx
        self.delays = delays or {}
        self.pods: dict[tuple[str, str], Server] = {}  # (storageUri, variant) -> pod
        self.generation = 0

    def start_predictor(self, isvc: dict, canary: str = "") -> tuple[str, str]:
        """The predictor pod (``canary``: that Standard-mode canary's) of ``isvc``'s current
        spec, its storageUri a local file, warm before it gets traffic; reused if running."""
        spec = isvc["spec"]
        predictor = next(
            (c["predictor"] for c in spec.get("canary") or [] if c["predictor"]["name"] == canary),
            spec["predictor"],
        )
        key = revision_key(predictor)
        if key in self.pods:
            return key
        self.generation += 1
        started = launch(isvc, "predictor", self.runtimes, canary, generation=self.generation)
        pod = self.root / f"predictor-{self.generation:05d}"
        models = pod / "mnt/models"
        models.mkdir(parents=True)
        shutil.copy(key[0], models / "model.onnx")  # the storage initializer's copy
        port = free_port()
        argv = local_argv(
            started.argv, model_dir=str(models), host="127.0.0.1", http_port=str(port)
        )
        env = started.literal_env()
        if key[0] in self.delays:
            env.update(predict_delay_env(self.delays[key[0]]))
        self.pods[key] = start_pod(self.settings, argv, env, pod, port)
        warm_up(f"http://127.0.0.1:{port}", Path(key[0]), WARM_UP)
        return key

    def reconcile(self, applied: dict) -> None:
        raise NotImplementedError

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body, **kw):
        applied = super().patch_namespaced_custom_object(
            group, version, namespace, plural, name, body, **kw
        )
        self.reconcile(applied)
        return applied

    def stop(self) -> None:
        for server in self.pods.values():
            server.stop()


class KnativeStandIn(PlatformStandIn):
    """Knative Serving: a new revision of the predictor when the spec changed, then
    ``canaryTrafficPercent`` to it and the rest to the last rolled-out revision, all behind
    one host (ksvc_reconciler.go: ``LatestRevision`` takes the canary percent,
    ``lastRolledoutRevision`` the remainder; no canaryTrafficPercent: the latest takes all and
    becomes rolled out)."""

    def __init__(self, isvc, runtimes, settings, root, nginx, delays=None):
        super().__init__(isvc, runtimes, settings, root, nginx, delays)
        self.rolled_out = self.start_predictor(self.isvc)
        nginx.route({self.pods[self.rolled_out].port: 100})

    def reconcile(self, applied: dict) -> None:
        latest = self.pods[self.start_predictor(applied)].port
        percent = applied["spec"]["predictor"].get("canaryTrafficPercent")
        if percent is None:
            self.rolled_out = revision_key(applied["spec"]["predictor"])
            self.nginx.route({latest: 100})
        else:
            self.nginx.route({latest: percent, self.pods[self.rolled_out].port: 100 - percent})


class StandardStandIn(PlatformStandIn):
    """KServe's Standard-mode controller and a Gateway: one Deployment per predictor Service
    (``spec.predictor`` behind ``<isvc>-predictor``, each ``spec.canary`` behind
    ``<isvc>-<name>-predictor``), then the predictor HTTPRoute as KServe computes it from the
    applied object and its ``canaryStatuses`` (:func:`mlref.k8s.gateway.predictor_route`), and
    nginx configured from that route alone: its host gets the weighted backends, each Service
    resolved to its pod; any other host gets 404."""

    def __init__(self, isvc, runtimes, settings, root, nginx, delays=None):
        super().__init__(isvc, runtimes, settings, root, nginx, delays)
        self.services: dict[str, tuple[str, str]] = {}
        self.route: dict = {}
        self.reconcile(self.isvc)

    def reconcile(self, applied: dict) -> None:
        name, spec = applied["metadata"]["name"], applied["spec"]
        self.services[predictor_service_name(name, spec["predictor"].get("name", ""))] = (
            self.start_predictor(applied)
        )
        for canary in spec.get("canary") or []:
            canary_name = canary["predictor"]["name"]
            self.services[predictor_service_name(name, canary_name)] = self.start_predictor(
                applied, canary_name
            )
        # Every canary pod is started and warm above: the controller reports it Ready.
        self.route = predictor_route(
            {**applied, "status": {"canaryStatuses": canary_statuses(spec)}}
        )
        (rule,) = self.route["spec"]["rules"]
        (modifier,) = rule["filters"]
        self.nginx.route(
            {
                self.pods[self.services[service]].port: weight
                for service, weight in backend_weights(self.route).items()
            },
            hosts=self.route["spec"]["hostnames"],
            headers={h["name"]: h["value"] for h in modifier["requestHeaderModifier"]["set"]},
        )
