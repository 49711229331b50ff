"""Warm starts: a retraining that begins from the champion's weights, and its lineage.

Every registered run logs its weights (``weights/state_dict.pt``) with what they fit: the feature
spec, the architecture and the negative rate (``weights/checkpoint.json``). With
``train.init=champion`` the training step resolves the registry's champion, checks that its spec
and architecture are this run's (the same hashed-embedding sizes, features and layers: weights
of another shape or meaning cannot be reused), and trains from its weights on the last
``train.window_days`` training days. An incompatible champion fails the step before it writes
anything, naming the difference and the fix, or (``train.incompatible_parent=scratch``) trains
from scratch and says so. The run records what it started from (:class:`Init`) as MLflow params
and tags, and the registered version names its parent.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch

from mlref.features.transform import FeatureSpec
from mlref.settings import Settings, TrainSettings
from mlref.training import registry
from mlref.training.model import CTRModel, Parent
from mlref.training.tracking import client

WEIGHTS = "weights"  # the run's artifact folder
STATE_FILE = "state_dict.pt"
CHECKPOINT_FILE = "checkpoint.json"
ARCHITECTURE = ("embedding_dim", "cross_layers", "cross_rank", "hidden_units")
INIT_TAG = "mlref.init"  # "scratch" or "champion": what the run started from
INIT_REASON_TAG = "mlref.init_reason"
PARENT_VERSION_TAG = "mlref.parent_version"  # on the run and on its registered version
PARENT_RUN_TAG = "mlref.parent_run_id"


class IncompatibleParent(ValueError):
    """The champion's weights do not fit this run's feature spec or architecture."""


@dataclass(frozen=True)
class Init:
    """What a training run starts from, and why: the lineage MLflow records."""

    requested: str  # train.init
    mode: str  # what ran: "scratch" or "champion"
    reason: str
    parent_version: str = ""
    parent_run_id: str = ""
    train_days: tuple[str, ...] = ()  # the training days read; empty until the set is known

    def params(self) -> dict[str, str]:
        return {"init_mode": self.mode, "parent_version": self.parent_version or "none"}

    def tags(self) -> dict[str, str]:
        tags = {INIT_TAG: self.mode, INIT_REASON_TAG: self.reason}
        if self.parent_version:
            tags |= {PARENT_VERSION_TAG: self.parent_version, PARENT_RUN_TAG: self.parent_run_id}
        return tags


def checkpoint(spec: FeatureSpec, train: TrainSettings) -> dict:
    """What a model's weights fit: the spec, the layers' shapes and the negative rate."""
    return {
        "spec": json.loads(spec.to_json()),
        "architecture": {name: getattr(train, name) for name in ARCHITECTURE},
        "negative_rate": train.negative_rate,
    }


def differences(parent: dict, spec: FeatureSpec, train: TrainSettings) -> list[str]:
    """Why weights saved with ``parent`` (a :func:`checkpoint`) cannot start this run, each
    with its fix; empty when they can."""
    before = FeatureSpec.from_json(json.dumps(parent["spec"]))
    found = []
    old = {f.name: f for f in before.categorical}
    new = {f.name: f for f in spec.categorical}
    for kind, was, now in (
        ("categorical", list(old), list(new)),
        ("numeric", list(before.numeric), list(spec.numeric)),
    ):
        added = [name for name in now if name not in was]
        removed = [name for name in was if name not in now]
        if added:
            found.append(f"{kind} feature(s) {', '.join(added)} added since the parent")
        if removed:
            found.append(f"{kind} feature(s) {', '.join(removed)} removed since the parent")
        if not added and not removed and was != now:
            found.append(f"{kind} features reordered since the parent")
    for name in [name for name in old if name in new]:
        a, b = old[name], new[name]
        if a.vocab is not None or b.vocab is not None:
            if a.vocab != b.vocab:
                found.append(f"{name}: its vocabulary changed since the parent")
        elif a.size != b.size:
            setting = f"MLREF_FEATURES__{name.removesuffix('_id').upper()}_HASH_BUCKETS"
            found.append(
                f"{name}: {a.size:,} hashed-embedding rows in the parent, {b.size:,} now "
                f"({setting}={a.size} restores the parent's)"
            )
    if dict(before.defaults) != dict(spec.defaults):
        found.append("the stats' priors changed since the parent (features.ctr_prior)")
    for name, value in parent["architecture"].items():
        if getattr(train, name) != value:
            found.append(
                f"train.{name} is {getattr(train, name)}, the parent's {value} "
                f"(MLREF_TRAIN__{name.upper()}={json.dumps(value)} restores it)"
            )
    return found


def resolve(settings: Settings, spec: FeatureSpec) -> tuple[Init, Parent | None]:
    """What this run starts from: nothing (``train.init=scratch``, or no champion yet), or the
    champion's weights; an incompatible champion raises :class:`IncompatibleParent` unless
    ``train.incompatible_parent=scratch``."""
    train = settings.train
    if train.init == "scratch":
        return Init("scratch", "scratch", "train.init=scratch: a full retrain"), None
    champion = registry.model_version_of(settings, registry.CHAMPION)
    if champion is None:
        reason = "train.init=champion but the registry has no champion yet: trained from scratch"
        return Init("champion", "scratch", reason), None
    version, run_id = str(champion.version), champion.run_id
    with tempfile.TemporaryDirectory() as scratch:
        mlflow_client = client(settings)
        logged = {Path(a.path).name for a in mlflow_client.list_artifacts(run_id, WEIGHTS)}
        if {STATE_FILE, CHECKPOINT_FILE} <= logged:
            local = Path(mlflow_client.download_artifacts(run_id, WEIGHTS, scratch))
            saved = json.loads((local / CHECKPOINT_FILE).read_text())
            problems = differences(saved, spec, train)
            if not problems:
                state = torch.load(local / STATE_FILE, weights_only=True)
                reason = f"train.init=champion: warm start from champion version {version}"
                init = Init("champion", "champion", reason, version, run_id)
                return init, Parent(state, float(saved["negative_rate"]))
        else:
            problems = [f"its run {run_id} logged no {WEIGHTS}/ (registered before warm starts)"]
    refusal = (
        f"cannot warm-start from champion version {version} ({settings.model_name}): "
        + "; ".join(problems)
    )
    if train.incompatible_parent == "scratch":
        reason = f"{refusal}; train.incompatible_parent=scratch: trained from scratch instead"
        return Init("champion", "scratch", reason), None  # no parent: nothing was reused
    raise IncompatibleParent(
        f"{refusal}. Fix: restore the parent's settings as named, or retrain from scratch "
        "(MLREF_TRAIN__INIT=scratch; MLREF_TRAIN__INCOMPATIBLE_PARENT=scratch does so by itself "
        "when the champion does not fit)"
    )


def log_weights(model: CTRModel, saved: dict) -> None:
    """Log the model's weights and their :func:`checkpoint` to the active run, where a later
    warm start finds them."""
    with tempfile.TemporaryDirectory() as scratch:
        torch.save(model.state_dict(), Path(scratch) / STATE_FILE)
        (Path(scratch) / CHECKPOINT_FILE).write_text(json.dumps(saved, indent=2))
        mlflow.log_artifacts(scratch, artifact_path=WEIGHTS)


def from_report(report: dict) -> Init:
    """The :class:`Init` a training report recorded."""
    raw = report["init"]
    return Init(**{**raw, "train_days": tuple(raw["train_days"])})
