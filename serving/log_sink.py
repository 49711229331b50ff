"""``mlref serve log-sink``: a logger sink that stores inference-log events as Parquet.

With ``serving.log_sink: http`` the transformer posts its inference log as CloudEvents
(:class:`mlref.serving.inference_log.HttpSink`) to KServe's logger sink. This is one such
sink: point a Knative trigger (or the transformer itself) at it, and every event is written to
``serving.log_uri`` as the same date-partitioned Parquet the drift job and the canary analysis
read. It answers 202 only after the rows are stored, so a sender retries anything not stored,
and names each part by the event's id, so a resent event is stored once; events of another
type (KServe's own request / response payloads) get a 400 that says so.
"""

from __future__ import annotations

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlref.serving.inference_log import EVENT_TYPE, Sink, StorageSink, event_key, rows_table
from mlref.settings import Settings


def app(sink: Sink) -> Starlette:
    """The receiver: POST / with a binary-mode CloudEvent whose data is a JSON list of rows."""

    def refuse(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": {"code": "invalid_event", "message": message}}, status)

    async def receive(request: Request) -> JSONResponse:
        kind = request.headers.get("ce-type", "")
        if kind != EVENT_TYPE:
            return refuse(f"ce-type must be {EVENT_TYPE!r} (mlref inference log), got {kind!r}")
        try:
            rows = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return refuse(f"event data is not valid JSON: {exc}")
        if not isinstance(rows, list) or not rows:
            return refuse("event data must be a non-empty JSON list of inference-log rows")
        try:
            table = await run_in_threadpool(rows_table, rows)
        except (ValueError, TypeError) as exc:  # Arrow's ArrowInvalid / ArrowTypeError too
            return refuse(f"rows do not match the inference-log schema: {exc}"[:500])
        key = event_key(request.headers.get("ce-source", ""), request.headers.get("ce-id", ""))
        try:
            await run_in_threadpool(sink.write, table, key)
        except Exception as exc:  # storage down: the sender keeps the event and retries
            return refuse(f"could not store the rows ({exc!r}); send the event again"[:500], 503)
        return JSONResponse({"stored": table.num_rows}, 202)

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/", receive, methods=["POST"]), Route("/healthz", health)])


def run_log_sink(settings: Settings, host: str, port: int) -> None:
    """Serve the sink until SIGTERM / SIGINT, storing under ``settings.inference_log_uri``."""
    sink = StorageSink(settings.inference_log_uri)
    uvicorn.run(app(sink), host=host, port=port, log_level="warning")
