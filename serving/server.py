"""Process start and stop: KServe's data plane and endpoints in a server we start ourselves.

The app is built from KServe's public parts: its :class:`DataPlane` and
:class:`ModelRepository`, the v1 and v2 endpoints it registers
(``register_v1_endpoints`` / ``register_v2_endpoints``), its ``/metrics`` handler and, when
asked, its gRPC server. What KServe's ``ModelServer`` would add and has no switch for is left
out or done here: it binds 0.0.0.0 (local mode binds 127.0.0.1), its handlers answer
``{"error": "..."}`` and FastAPI's ``{"detail": ...}`` (ours answer one error shape), its
timing middleware logs a line per request (``mlref_stage_seconds`` measures instead). Added:
an ``mlref_requests`` counter by status, model version and variant; model versions and the
feature spec in the v2 model metadata; JSON-only v2 bodies as ``tritonclient.http`` sends
them. ``tests/serving/test_kserve_api.py`` pins each KServe part used here.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import kserve
import orjson
import uvicorn
import uvloop
import yaml
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER, MAX_GRPC_MESSAGE_LENGTH
from kserve.errors import (
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerNotLive,
    ServerNotReady,
    UnsupportedProtocol,
)
from kserve.logging import configure_logging
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.infer_type import InferRequest
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import metrics_handler
from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints
from prometheus_client import Counter
from starlette.exceptions import HTTPException

from mlref.serving import metrics
from mlref.serving.requests import VARIANT_HEADER, VERSION_HEADER, RequestError, error_body
from mlref.settings import CONFIG_ENV, Settings

log = logging.getLogger(__name__)
# KServe's exception -> (status, code) in the one error shape.
KSERVE_ERRORS: dict[type[Exception], tuple[int, str]] = {
    InvalidInput: (400, "invalid_request"),
    ModelNotFound: (404, "model_not_found"),
    ModelNotReady: (503, "model_not_ready"),
    ServerNotLive: (503, "server_not_live"),
    ServerNotReady: (503, "server_not_ready"),
    UnsupportedProtocol: (501, "unsupported_protocol"),
    NotImplementedError: (501, "not_implemented"),
}
SCORING_PATHS = (":predict", "/infer")
GRACE_SECONDS = 30  # in-flight requests finish within it after SIGTERM, as KServe's default
KEEP_ALIVE_SECONDS = 65  # KServe's default: longer than the usual proxies' idle timeouts


def install_error_handlers(app: FastAPI) -> None:
    """Render every error, KServe's and FastAPI's included, as ``error_body``."""

    async def request_error(_, exc: RequestError):
        return ORJSONResponse(
            error_body(exc.code, exc.message, exc.field), exc.status, headers=exc.headers
        )

    def known(status: int, code: str):
        async def handler(_, exc: Exception):
            return ORJSONResponse(error_body(code, str(exc)), status)

        return handler

    async def validation_error(_, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
        message = f"invalid request body: {first.get('msg', 'validation failed')}"
        if where:
            message += f" at '{where}'"
        return ORJSONResponse(error_body("invalid_request", message, where), 400)

    async def http_error(_, exc: HTTPException):
        return ORJSONResponse(
            error_body(f"http_{exc.status_code}", str(exc.detail)), exc.status_code
        )

    async def unexpected(_, exc: Exception):
        log.exception("unexpected error")
        return ORJSONResponse(error_body("internal_error", f"{type(exc).__name__}: {exc}"), 500)

    app.add_exception_handler(RequestError, request_error)
    for kind, (status, code) in KSERVE_ERRORS.items():
        app.add_exception_handler(kind, known(status, code))
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


_VERSION_KEY, _VARIANT_KEY = VERSION_HEADER.encode(), VARIANT_HEADER.encode()


class RequestMetrics:
    """ASGI middleware: ``mlref_requests`` by status, model version and variant.

    The labels come from the response's :func:`label_headers` when it has them (the
    transformer's answer depends on the predictor it routed to), else from ``labels()``.
    """

    def __init__(self, app, server: str, labels: Callable[[], tuple[str, str]]):
        self.app = app
        self.server = server
        self.labels = labels
        self.counters: dict[tuple[int, str, str], Counter] = {}  # labels() costs per call

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith(SCORING_PATHS):
            return await self.app(scope, receive, send)
        status, named = 500, {}

        async def record_status(message):
            nonlocal status, named
            if message["type"] == "http.response.start":
                status = message["status"]
                named = {
                    key: value
                    for key, value in message.get("headers", ())
                    if key in (_VERSION_KEY, _VARIANT_KEY)
                }
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            version, variant = self.labels()
            version = named.get(_VERSION_KEY, b"").decode() or version
            variant = named.get(_VARIANT_KEY, b"").decode() or variant
            key = (status, version, variant)
            counter = self.counters.get(key)
            if counter is None:
                counter = self.counters[key] = metrics.REQUESTS.labels(
                    self.server, str(status), version, variant
                )
            counter.inc()


class MlrefDataPlane(DataPlane):
    """KServe's data plane, with malformed JSON named as such and JSON-only v2 bodies read."""

    def decode(self, body, headers, *args, **kwargs):
        try:
            return super().decode(body, headers, *args, **kwargs)
        except InvalidInput as exc:
            if isinstance(exc.__context__, orjson.JSONDecodeError):  # KServe's parse failed
                raise RequestError(
                    f"request body is not valid JSON: {exc.__context__}", code="malformed_json"
                ) from exc
            raise

    def decode_inference_request(self, body, headers: dict, model_name: str) -> InferRequest:
        """A v2 body without the binary extension's length header is all JSON: what
        ``tritonclient.http`` sends (no Content-Type either), which KServe refuses. A body
        that is JSON but not an inference request is the client's error (KServe: a 500)."""
        try:
            if isinstance(body, bytes) and INFERENCE_CONTENT_LENGTH_HEADER not in headers:
                return InferRequest.from_bytes(body, len(body), model_name)
            return super().decode_inference_request(body, headers, model_name)
        except InvalidInput:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise RequestError(
                f"not an Open Inference Protocol v2 request: {type(exc).__name__}: {exc}"
            ) from exc

    async def model_metadata(self, model_name: str) -> dict:
        metadata = await super().model_metadata(model_name)
        model = self.get_model_from_registry(model_name)
        version = getattr(model, "version", "")
        return {
            **metadata,
            "platform": "onnxruntime_onnx",
            "versions": [version] if version else [],
            "parameters": getattr(model, "parameters", {}),
        }


def build_app(dataplane: DataPlane, server: str, labels: Callable[[], tuple[str, str]]) -> FastAPI:
    """KServe's endpoints (liveness, metrics, v1, v2, model repository) with our errors and
    request metrics."""
    app = FastAPI(docs_url=None, redoc_url=None, default_response_class=ORJSONResponse)
    app.add_middleware(RequestMetrics, server=server, labels=labels)

    async def model_metadata(model_name: str) -> ORJSONResponse:
        return ORJSONResponse(await dataplane.model_metadata(model_name))

    app.add_api_route("/", dataplane.live)
    app.add_api_route("/metrics", metrics_handler, methods=["GET"])
    # Before KServe's, which answers first otherwise and whose response model drops
    # ``parameters``.
    app.add_api_route("/v2/models/{model_name}", model_metadata, methods=["GET"])
    extension = ModelRepositoryExtension(model_registry=dataplane.model_registry)
    register_v1_endpoints(app, dataplane, extension)
    register_v2_endpoints(app, dataplane, extension)
    install_error_handlers(app)
    return app


def serve(
    models: list[kserve.Model],
    host: str,
    http_port: int,
    server: str,
    labels: Callable[[], tuple[str, str]],
    grpc_port: int | None = None,
    use_uvloop: bool = False,
) -> None:
    """Serve loaded ``models`` on ``host`` until SIGTERM / SIGINT, then stop them.

    One uvicorn process, which drains in-flight requests on SIGTERM (as a pod is stopped);
    gRPC only with ``grpc_port``. ``use_uvloop`` picks the event loop, measured per role with
    ``bench/serving.py``: the transformer, which awaits a predictor call per batch, gains
    throughput and tail latency on uvloop; the predictor, which answers in one step, has the
    same throughput on either but a p99 about 1 ms shorter at concurrency 8 on asyncio's
    own loop.
    """
    registry = ModelRepository()
    for model in models:
        if not model.ready:
            raise RuntimeError(f"model {model.name} is not ready: load it before serving")
        model.start()
        registry.update(model)
    dataplane = MlrefDataPlane(model_registry=registry)
    configure_logging()
    config = uvicorn.Config(
        build_app(dataplane, server, labels),
        host=host,
        port=http_port,
        log_config=None,  # configured by KServe's configure_logging
        access_log=False,  # a line per request; mlref_requests counts them
        timeout_graceful_shutdown=GRACE_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    rest = uvicorn.Server(config)
    grpc = None
    if grpc_port is not None:
        extension = ModelRepositoryExtension(model_registry=registry)
        limits = {  # KServe's defaults; GRPCServer reads them from its kwargs
            f"grpc_max_{way}_message_length": MAX_GRPC_MESSAGE_LENGTH for way in ("send", "receive")
        }
        grpc = GRPCServer(grpc_port, dataplane, extension, limits, GRACE_SECONDS)

    def stop_serving(task: asyncio.Task) -> None:  # a gRPC server that fails (its port
        if not task.cancelled() and task.exception():  # taken) ends the process, as a
            rest.should_exit = True  # container whose server crashed

    async def run() -> None:
        serving = [asyncio.create_task(grpc.start(max_workers=4))] if grpc else []
        for task in serving:
            task.add_done_callback(stop_serving)
        try:
            await rest.serve()  # returns once a signal has stopped it
        finally:
            if grpc:
                await grpc.stop()
            await asyncio.gather(*serving)  # a gRPC server that failed fails the process
            for name in list(registry.get_models()):
                registry.unload(name)

    # uvicorn re-raises the signal that stopped it once it is done: ignored here, since the
    # process ends on its own when serving returns.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    # Everything loaded so far (model, Feast, KServe, pandas) lives as long as the process:
    # keeping it out of the collector's scans avoids full collections of a few hundred
    # thousand objects, which stall every request in flight for 100-200 ms.
    gc.collect()
    gc.freeze()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if use_uvloop else None) as runner:
        runner.run(run())


def run_predictor(
    settings: Settings,
    model_uri: str,
    host: str,
    port: int,
    grpc: bool = False,
    grpc_port: int = 8081,
) -> None:
    """Load the model and serve it until SIGTERM / SIGINT."""
    from mlref.serving.predictor import OnnxPredictor

    model = OnnxPredictor(settings.model_name, model_uri, settings)
    model.load()
    labels = (model.version, settings.serving.variant)
    serve([model], host, port, "predictor", lambda: labels, grpc_port if grpc else None)


def run_transformer(
    settings: Settings, host: str, port: int, predictor_url: str, host_header: str = ""
) -> None:
    """Serve the transformer until SIGTERM / SIGINT, then flush the inference log.

    ``predictor_url`` may be a traffic split over several predictors; ``host_header`` is
    the Host to send when it is a gateway that routes by host.
    """
    from mlref.features.store import OnlineFeatureLookup
    from mlref.serving.inference_log import open_log
    from mlref.serving.transformer import CtrTransformer

    inference_log = open_log(settings)
    try:  # the log's threads stop too when the predictor never answers
        model = CtrTransformer(
            settings.model_name,
            settings,
            OnlineFeatureLookup(settings, cache_rows=settings.serving.feature_cache_rows),
            predictor_url,
            inference_log,
            host_header,
        )
        serve([model], host, port, "transformer", model.default_labels, use_uvloop=True)
    finally:
        inference_log.close()


# Feast's import sets these for its own pre-forked workers. Inherited by a server, they would
# switch prometheus_client to multiprocess mode: every metric update a write to a shared file.
FEAST_METRICS_ENV = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")


def server_env(**extra: str) -> dict[str, str]:
    """The environment for a server process: this one's, less Feast's metrics directory."""
    return {
        **{k: v for k, v in os.environ.items() if k not in FEAST_METRICS_ENV},
        **extra,
    }


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a server process that must see exactly ``settings``.

    The settings go into a config file under ``work_dir`` named by ``MLREF_CONFIG``; inherited
    ``MLREF_*`` variables are left out, since they would override the file.
    """
    text = yaml.safe_dump(settings.model_dump(mode="json"))
    path = settings.work_dir / f"mlref-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    inherited = {k: v for k, v in server_env().items() if not k.startswith("MLREF_")}
    return {**inherited, CONFIG_ENV: str(path), **extra}


def default_model_uri(settings: Settings) -> str:
    return settings.serving.model_uri or settings.registry_uri()


def serve_local(
    settings: Settings,
    model_uri: str,
    candidate_uri: str | None = None,
    grpc: bool = False,
    shadow_uri: str | None = None,
) -> int:
    """Predictor(s) and transformer as local processes; SIGTERM / SIGINT stops all cleanly.

    With ``candidate_uri`` a second predictor serves it as the ``canary`` variant on
    ``canary.candidate_port``, and the transformer calls the local split proxy
    (``mlref.canary.proxy`` on ``canary.proxy_port``), which shares traffic between the two
    as the canary patch says: the transformer sees one host, as in the cluster. With
    ``shadow_uri`` a predictor serves it as the ``shadow`` variant on ``shadow.port``.
    """
    serving = settings.serving
    cli = [sys.executable, "-m", "mlref.cli", "serve"]
    common = ["--host", serving.host]

    def predictor(uri: str, port: int, *extra: str, **env: str) -> subprocess.Popen:
        argv = [*cli, "predictor", *common, "--port", str(port), "--model", uri, *extra]
        return subprocess.Popen(argv, env=server_env(**env))

    # gRPC on the stable predictor only: both would bind the same default gRPC port.
    predictors = [predictor(model_uri, serving.predictor_port, *(["--with-grpc"] if grpc else []))]
    target = f"{serving.host}:{serving.predictor_port}"
    if candidate_uri:
        port = settings.canary.candidate_port
        predictors.append(predictor(candidate_uri, port, MLREF_SERVING__VARIANT="canary"))
        split = [sys.executable, "-m", "mlref.canary.proxy", "--host", serving.host]
        split += ["--port", str(settings.canary.proxy_port), "--stable", f"http://{target}"]
        split += ["--candidate", f"http://{serving.host}:{port}"]
        predictors.append(subprocess.Popen(split, env=server_env()))
        target = f"{serving.host}:{settings.canary.proxy_port}"
    if shadow_uri:
        shadow_port = settings.shadow.port
        predictors.append(predictor(shadow_uri, shadow_port, MLREF_SERVING__VARIANT="shadow"))
    own = ["--port", str(serving.transformer_port), "--predictor-host", target]
    transformer = subprocess.Popen(
        [*cli, "transformer", *common, *own],
        env=server_env(),
    )
    children = (transformer, *predictors)  # stop order: the transformer drains first
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=60)
    return max(abs(child.returncode or 0) for child in children) if not stopping else 0
