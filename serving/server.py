"""Process start and stop: KServe's ModelServer bound where we say, answering errors our way.

:class:`ModelServer` is KServe's, with differences that KServe has no switch for: the bind
address (KServe hard-codes 0.0.0.0; local mode binds 127.0.0.1), the one error shape for
every error response (KServe's handlers answer ``{"error": "..."}``, FastAPI's
``{"detail": ...}``), an ``mlref_requests`` counter by status, model version and variant,
model versions and the feature spec in the v2 model metadata, and no per-request timing
middleware (KServe's logs a line per request; ``mlref_stage_seconds`` measures instead).
It runs one uvicorn process; gRPC only when asked.
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
import uvloop
import yaml
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING, INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import (
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerNotLive,
    ServerNotReady,
    UnsupportedProtocol,
)
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.infer_type import InferRequest
from kserve.protocol.rest.server import RESTServer
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
KSERVE_BAD_JSON = "Unrecognized request format"


def install_error_handlers(app: FastAPI) -> None:
    """Render every error, KServe's and FastAPI's included, as ``error_body``."""

    async def request_error(_, exc: RequestError):
        return ORJSONResponse(
            error_body(exc.code, exc.message, exc.field), exc.status, headers=exc.headers
        )

    def known(status: int, code: str):
        async def handler(_, exc: Exception):
            message = str(exc)
            if message.startswith(KSERVE_BAD_JSON):  # KServe's words for a JSON syntax error
                code_, message = (
                    "malformed_json",
                    "request body is not valid JSON" + message[len(KSERVE_BAD_JSON) :],
                )
                return ORJSONResponse(error_body(code_, message), status)
            return ORJSONResponse(error_body(code, message), status)

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


class _RESTServer(RESTServer):
    def __init__(self, *args, host: str, server: str, labels: Callable, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.host = host
        self.server_name = server
        self.labels = labels

    def _add_middlewares(self, app: FastAPI) -> None:
        app.add_middleware(RequestMetrics, server=self.server_name, labels=self.labels)

    def _register_endpoints(self, app: FastAPI) -> None:
        async def model_metadata(model_name: str) -> ORJSONResponse:
            return ORJSONResponse(await self.dataplane.model_metadata(model_name))

        # Registered first, so it answers before KServe's (whose response model drops
        # ``parameters``).
        app.add_api_route("/v2/models/{model_name}", model_metadata, methods=["GET"])
        super()._register_endpoints(app)

    def _add_exception_handlers(self, app: FastAPI) -> None:
        install_error_handlers(app)


class _DataPlane(DataPlane):
    def decode_inference_request(self, body, headers: dict, model_name: str) -> InferRequest:
        """A v2 body without the binary extension's length header is all JSON: what
        ``tritonclient.http`` sends (no Content-Type either), which KServe refuses."""
        if isinstance(body, bytes) and INFERENCE_CONTENT_LENGTH_HEADER not in headers:
            return InferRequest.from_bytes(body, len(body), model_name)
        return super().decode_inference_request(body, headers, model_name)

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


class ModelServer(kserve.ModelServer):
    """KServe's ModelServer on ``host`` (one process), with mlref errors and metrics.

    ``use_uvloop`` picks the event loop, measured per role with ``bench/serving.py``: the
    transformer, which awaits a predictor call per batch, gains throughput and tail latency
    on uvloop; the predictor, which answers in one step, has the same throughput on either
    but a p99 about 1 ms shorter at concurrency 8 on asyncio's own loop (KServe's default).
    """

    def __init__(
        self,
        host: str,
        http_port: int,
        server: str,
        labels: Callable[[], tuple[str, str]],
        grpc: bool = False,
        grpc_port: int = 8081,
        use_uvloop: bool = False,
    ):
        super().__init__(
            http_port=http_port,
            grpc_port=grpc_port,
            enable_grpc=grpc,
            workers=1,
            enable_latency_logging=False,
        )
        self.host = host
        self.server_name = server
        self.labels = labels
        self.use_uvloop = use_uvloop
        self.dataplane = _DataPlane(model_registry=self.registered_models)
        quiet_request_logs()

    def start(self, models: list[kserve.Model]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = _RESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            host=self.host,
            server=self.server_name,
            labels=self.labels,
            grace_period=self.grace_period,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            self._grpc_server = GRPCServer(
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs={},
                grace_period=self.grace_period,
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.register_signal_handler()
        # Everything loaded so far (model, Feast, KServe, pandas) lives as long as the process:
        # keeping it out of the collector's scans avoids full collections of a few hundred
        # thousand objects, which stall every request in flight for 100-200 ms.
        gc.collect()
        gc.freeze()
        loop_factory = uvloop.new_event_loop if self.use_uvloop else None
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            self.setup_event_loop_in(runner.get_loop())
            runner.run(self._serve())

    def setup_event_loop_in(self, loop: asyncio.AbstractEventLoop) -> None:
        """KServe's executor and exception handler, on the loop that actually runs."""
        asyncio.set_event_loop(loop)
        self.setup_event_loop()


def quiet_request_logs() -> None:
    """KServe and uvicorn log up to three lines per request; keep warnings only."""
    for name in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)


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

    model = OnnxPredictor(settings.serving.model_name, model_uri, settings)
    model.load()
    labels = (model.version, settings.serving.variant)
    server = ModelServer(host, port, "predictor", lambda: labels, grpc, grpc_port)
    server.start([model])


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
    model = CtrTransformer(
        settings.serving.model_name,
        settings,
        OnlineFeatureLookup(settings),
        predictor_url,
        inference_log,
        host_header,
    )
    server = ModelServer(host, port, "transformer", model.default_labels, use_uvloop=True)
    try:
        server.start([model])
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
    return settings.serving.model_uri or f"models:/{settings.serving.model_name}@champion"


def serve_local(
    settings: Settings, model_uri: str, candidate_uri: str | None = None, grpc: bool = False
) -> int:
    """Predictor(s) and transformer as local processes; SIGTERM / SIGINT stops all cleanly.

    With ``candidate_uri`` a second predictor serves it as the ``canary`` variant on
    ``canary.candidate_port``, and the transformer calls the local split proxy
    (``mlref.canary.proxy`` on ``canary.proxy_port``), which shares traffic between the two
    as the canary patch says: the transformer sees one host, as in the cluster.
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
