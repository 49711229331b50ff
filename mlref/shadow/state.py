"""Whether a shadow runs, and which model: one YAML file the transformer watches.

``mlref shadow start|stop`` writes it (``settings.shadow_state_path``: ``<canary_dir>/
shadow.yaml`` locally; in a cluster the file of a ConfigMap mounted into the transformer),
and the transformer re-reads it when it changes (:class:`mlref.experiment.assign.Watched`):
while it says running, every scored batch is mirrored to the shadow predictor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from mlref import storage
from mlref.schema import SHADOW_VARIANT

SHADOW = SHADOW_VARIANT  # the label of the shadow's predictor, metrics and log rows
STATE_KEY = "shadow.yaml"  # the file's name, and its key in the cluster's ConfigMap


@dataclass(frozen=True)
class Shadow:
    """The shadow model and when it ran."""

    model: str
    live_model: str = ""
    started_at: str = ""  # ISO 8601 UTC
    stopped_at: str = ""  # empty while running

    @property
    def running(self) -> bool:
        return bool(self.started_at) and not self.stopped_at


def to_yaml(shadow: Shadow) -> str:
    return yaml.safe_dump(asdict(shadow), sort_keys=False)


def write_shadow(path: Path, shadow: Shadow) -> Path:
    """Write atomically: the transformer never reads half a file."""
    storage.write_atomically(str(path), lambda staging: staging.write_text(to_yaml(shadow)))
    return path


def from_yaml(text: str) -> Shadow:
    document = yaml.safe_load(text) or {}
    known = set(Shadow.__dataclass_fields__)
    return Shadow(**{k: v for k, v in document.items() if k in known})


def read_shadow(path: Path) -> Shadow | None:
    """The shadow in ``path``, or None when none was ever started."""
    return from_yaml(path.read_text()) if path.is_file() else None
