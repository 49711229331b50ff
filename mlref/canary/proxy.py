"""The local traffic split: a reverse proxy in front of the stable and candidate predictors.

In the cluster one host splits traffic (a Knative route across revisions, a Gateway API
HTTPRoute across the predictor Services); locally this proxy plays that part, so the
transformer calls one host in both and takes the answering model from each answer. The
share comes from the same InferenceService patch ``mlref canary`` writes (re-read when the
file changes); each request goes to the candidate with that probability, as Knative's
weighted routing does. ``GET /-/split`` answers the share in force (the patch is re-read
every :attr:`Split.interval` seconds), so a caller can wait until a change applies.

A request that names a revision's tag in the route header (``experiment.route_header``,
``Knative-Serving-Tag`` by default) goes to that revision, whatever the split, as Knative's
tag-header routing does: ``prev`` to the stable model, ``latest`` to the candidate. A
user-level experiment uses it to send each user's rows to the model of their variant.

``python -m mlref.canary.proxy --stable URL --candidate URL [--host H] [--port P]``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from mlref.canary.state import read_state, state_path

log = logging.getLogger(__name__)
SPLIT_PATH = "/-/split"
TAGS = {"prev": "stable", "latest": "candidate"}  # KServe's revision tags
HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class Split:
    """The candidate's share from the patch file; checked every ``interval`` seconds. Draws
    come from ``rng`` (setting ``canary.split_seed``), so a seeded proxy splits reproducibly."""

    interval = 0.5

    def __init__(self, path: Path, rng: random.Random | None = None):
        self.path = path
        self.rng = rng or random.Random()
        self.percent = 0
        self._seen: tuple[int, int] | None = None
        self.refresh()

    def refresh(self) -> None:
        try:
            stat = self.path.stat()
            seen = (stat.st_mtime_ns, stat.st_ino)
        except FileNotFoundError:
            seen = None
        if seen == self._seen:
            return
        state = read_state(self.path) if seen else None
        self.percent = state.percent if state else 0
        self._seen = seen

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.refresh()
            except (OSError, ValueError, yaml.YAMLError) as exc:
                log.warning("canary patch %s unreadable, keeping %d%%", self.path, self.percent)
                log.debug("unreadable patch: %s", exc)

    def candidate(self) -> bool:
        return self.rng.random() * 100 < self.percent


def proxy_app(
    split: Split, stable: str, candidate: str, route_header: str = "Knative-Serving-Tag"
) -> web.Application:
    """Forward every request, unchanged, to the target its tag names or else the split draws."""
    session: aiohttp.ClientSession | None = None
    targets = {"stable": stable, "candidate": candidate}

    async def forward(request: web.Request) -> web.Response:
        tagged = targets.get(TAGS.get(request.headers.get(route_header, ""), ""))
        target = tagged or (candidate if split.candidate() else stable)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            async with session.request(
                request.method,
                f"{target}{request.rel_url}",
                headers=headers,
                data=await request.read(),
            ) as answer:
                body = await answer.read()
                kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
                return web.Response(status=answer.status, body=body, headers=kept)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.json_response(
                {"error": {"code": "upstream_unreachable", "message": f"{target}: {exc!r}"}},
                status=502,
            )

    async def share(request: web.Request) -> web.Response:
        return web.json_response({"percent": split.percent})

    async def lifecycle(app: web.Application):
        nonlocal session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        watcher = asyncio.create_task(split.watch())
        yield
        watcher.cancel()
        await session.close()

    app = web.Application()
    app.cleanup_ctx.append(lifecycle)
    app.router.add_get(SPLIT_PATH, share)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> None:
    from mlref.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m mlref.canary.proxy", description=__doc__)
    parser.add_argument("--stable", required=True, help="URL of the stable predictor")
    parser.add_argument("--candidate", required=True, help="URL of the candidate predictor")
    parser.add_argument("--host", default="")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    settings = get_settings()
    split = Split(state_path(settings), random.Random(settings.canary.split_seed))
    app = proxy_app(
        split,
        args.stable.rstrip("/"),
        args.candidate.rstrip("/"),
        settings.experiment.route_header,
    )
    web.run_app(
        app,
        host=args.host or settings.serving.host,
        port=args.port or settings.canary.proxy_port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
