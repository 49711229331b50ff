"""The transformer's calls to the predictor host: v2 model metadata and inference (aiohttp).

The host may be one predictor, or a traffic split (a Knative route, a Gateway API HTTPRoute,
the local split proxy) over several models: every answer says which model scored it, so
nothing here assumes that two calls reach the same one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
import numpy as np
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER

from mlref.serving import v2
from mlref.serving.requests import (
    MODEL_CHANGED,
    VARIANT_HEADER,
    VERSION_HEADER,
    RequestError,
    label_headers,
)


@dataclass(frozen=True)
class Answer:
    """Scores and the model that produced them, as the predictor reported it."""

    scores: np.ndarray
    version: str
    variant: str
    spec: str  # fingerprint of the feature spec the inputs were scored with


class SpecRefused(RequestError):
    """The predictor that answered serves a model with a feature spec the request lacked."""

    def __init__(self, message: str, spec_json: str):
        super().__init__(message, status=502, code=MODEL_CHANGED)
        self.spec_json = spec_json


class PredictorClient:
    """Open Inference Protocol v2 over one keep-alive connection pool.

    ``host_header``: the Host to send when the URL is a gateway that routes by host (a
    Standard-mode canary's HTTPRoute). ``resend``: send a call again once when a pooled
    connection was closed under it (a shadow's calls are dropped instead).
    """

    def __init__(
        self,
        base_url: str,
        model_name: str,
        timeout: float,
        host_header: str = "",
        resend: bool = True,
    ):
        self.resend = resend
        self.model_url = f"{base_url.rstrip('/')}/v2/models/{model_name}"
        self.url = f"{self.model_url}/infer"
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.headers = {"host": host_header} if host_header else {}
        self.session: aiohttp.ClientSession | None = None

    def wait_for_metadata(self, timeout: float) -> dict:
        """The model metadata, retried until the predictor answers (it may still be loading).
        Called before the server's event loop runs."""
        return asyncio.run(self._wait_for_metadata(timeout))

    async def _wait_for_metadata(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=self.timeout, headers=self.headers) as session:
            while True:
                try:
                    async with session.get(self.model_url) as response:
                        if response.status == 200:
                            return await response.json()
                        text = await response.text()
                        problem = f"answered {response.status}: {text[:200]}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    problem = repr(exc)
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"predictor at {self.model_url} not ready after {timeout:.0f}s "
                        f"({problem}); start it first or raise "
                        "serving.predictor_ready_timeout_seconds"
                    )
                await asyncio.sleep(0.2)

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=60),
                timeout=self.timeout,
                headers=self.headers,
            )
        return self.session

    async def infer(
        self, inputs: Iterable[tuple[str, np.ndarray, np.ndarray]], route: dict | None = None
    ) -> Answer:
        """Scores for inputs built per feature spec: (fingerprint, cat, num) for each;
        ``route``: headers that choose a model behind the host (an experiment's variant)."""
        body, headers = v2.infer_request(inputs)
        headers = {**headers, **route} if route else headers
        for attempt in range(2):
            try:
                async with self._session().post(self.url, data=body, headers=headers) as response:
                    content = await response.read()
                    answered = response.headers
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A pooled connection the other side closed (a proxy reloading, a pod
                # draining) before answering: scoring has no side effect, send it again once.
                if attempt or not self.resend:
                    raise self.unreachable(exc) from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self.unreachable(exc) from exc
        if response.status != 200:
            text = content[:500].decode(errors="replace")
            message = f"predictor answered {response.status}: {text}"
            wanted = answered.get(v2.SPEC_JSON_HEADER)
            if response.status == 409 and wanted:
                raise SpecRefused(message, wanted)
            failed = RequestError(message, status=502, code="predictor_error")
            if VERSION_HEADER in answered:  # the model that failed, for the caller's metrics
                failed.headers = label_headers(answered[VERSION_HEADER], answered[VARIANT_HEADER])
            raise failed
        return Answer(
            v2.scores_of(content, answered.get(INFERENCE_CONTENT_LENGTH_HEADER)),
            answered.get(VERSION_HEADER, ""),
            answered.get(VARIANT_HEADER, ""),
            answered.get(v2.SPEC_HEADER, ""),
        )

    def unreachable(self, exc: Exception) -> RequestError:
        return RequestError(
            f"predictor at {self.url} unreachable: {exc!r}", status=502, code="predictor_error"
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
