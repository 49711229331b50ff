"""Starting and stopping a shadow: which model scores live traffic without answering it.

The shadow's predictor runs beside the live one (locally ``mlref serve --shadow MODEL`` on
``shadow.port``; in a cluster its own InferenceService); the state written here tells the
transformer to mirror every scored batch to it, and the report which window to compare.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

from mlref.experiment.assign import stop_running
from mlref.platform import platform_for
from mlref.settings import Settings
from mlref.shadow.state import Shadow


class ShadowError(RuntimeError):
    """A step that cannot be taken as asked, in one line naming the fix."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat()  # to the microsecond, as the log's timestamps


def start(settings: Settings, model: str, live_model: str = "", apis: Any = None) -> Shadow:
    """Record the running shadow; the transformer starts mirroring within a second (locally)
    or once kubelet refreshes its ConfigMap (a cluster)."""
    if not model:
        raise ShadowError("name the shadow model: mlref shadow start --model URI")
    platform = platform_for(settings)
    running = platform.shadow_state(apis)
    if running is not None and running.running:
        raise ShadowError(
            f"shadow {running.model!r} is running since {running.started_at}; stop it first "
            "(mlref shadow stop)"
        )
    live = live_model or settings.serving.model_uri or settings.registry_uri()
    shadow = Shadow(model=model, live_model=live, started_at=now_iso())
    platform.apply_shadow(shadow, apis)
    return shadow


def stop(settings: Settings, apis: Any = None) -> Shadow:
    """Mark the shadow stopped: the transformer stops mirroring; its rows stay for the report."""
    platform = platform_for(settings)
    return stop_running(
        platform.shadow_state(apis),
        partial(platform.apply_shadow, apis=apis),
        now_iso(),
        ShadowError("no shadow is running (mlref shadow start --model URI)"),
    )


def current(settings: Settings, apis: Any = None) -> Shadow:
    """The last shadow started, running or stopped."""
    found = platform_for(settings).shadow_state(apis)
    if found is None:
        raise ShadowError(
            "no shadow ever ran here (no state at "
            f"{settings.shadow_state_path} or the cluster's ConfigMap "
            f"{settings.shadow.inference_service}); start one with mlref shadow start --model URI"
        )
    return found
