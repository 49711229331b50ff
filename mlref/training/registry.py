"""The model registry: ONNX versions, champion/challenger aliases, and where servers get models.

Every registered version gets the alias ``challenger``. The first one also becomes
``champion``; later ones must win on the same test set (:func:`promote`), and then either
replace the champion at once (``registry.rollout: direct``) or wait for a canary rollout to
promote them on live traffic (``canary``, the default; :func:`set_champion`). Every decision is
written onto the version, so the registry itself says why a model is (or is not) serving.
Servers ask for ``models:/<name>@champion`` and get a local ONNX file (:func:`resolve_model`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import mlflow.onnx
import onnx
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import Schema, TensorSpec

from mlref import onnx_model
from mlref.settings import MODELS_SCHEME, Settings
from mlref.training.publish import publish, publish_champion
from mlref.training.tracking import client, using_store
from mlref.training.windows import WINDOW_TAG, TrainingWindow, describe, require_out_of_sample

CHAMPION = "champion"
CHALLENGER = "challenger"
SPEC_FINGERPRINT_TAG = "mlref.spec_fingerprint"
DECISION_TAG = "mlref.promotion"  # "first", "promoted", "canary" (passed, awaiting) or "rejected"
REASON_TAG = "mlref.promotion_reason"
COMPARED_WITH_TAG = "mlref.promotion_champion"  # the champion version it was compared with
REPLACED_BY_TAG = "mlref.replaced_by"  # on a champion: the version that took its place
REQUIRED_METRICS = ("auc", "logloss")

Evaluate = Callable[[Path], Mapping[str, float]]
"""Scores the ONNX file at the given path on the caller's test set: at least auc and logloss."""


@dataclass(frozen=True)
class PromotionDecision:
    """What :func:`promote` decided for ``version``, with the numbers it decided on."""

    version: str
    promoted: bool
    reason: str
    passed: bool = False  # won the offline comparison (promoted, or awaiting its canary)
    champion_before: str | None = None
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)


def model_signature(model: onnx.ModelProto) -> ModelSignature:
    """The graph's tensor contract as an MLflow signature (shown in the registry UI)."""

    def schema(values) -> Schema:
        return Schema(
            [
                TensorSpec(
                    onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type),
                    tuple(
                        dim.dim_value if dim.HasField("dim_value") else -1
                        for dim in value.type.tensor_type.shape.dim
                    ),
                    value.name,
                )
                for value in values
            ]
        )

    return ModelSignature(schema(model.graph.input), schema(model.graph.output))


@contextmanager
def _in_run(run_id: str) -> Iterator[None]:
    """Make ``run_id`` the active run (resuming it unless it already is).

    ``log_model`` files a model under the active run's experiment; with no active run it falls
    back to the default experiment, whose artifacts go to ``./mlruns``.
    """
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    with mlflow.start_run(run_id=run_id):
        yield


def register_onnx(
    settings: Settings,
    run_id: str,
    onnx_path: Path,
    input_example: Mapping | None = None,
    window: TrainingWindow | None = None,
) -> ModelVersion:
    """Log ``onnx_path`` with MLflow's ONNX flavor under ``run_id``, register a new version and
    publish its files where serving fetches them (:mod:`mlref.training.publish`). ``window``,
    the days it trained on, is kept on the version for every later comparison.

    The file must be a servable mlref model (checked with :func:`mlref.onnx_model.load`); it is
    stored self-contained (no external-data side file) because servers copy just that file.
    """
    served = onnx_model.load(onnx_path)
    proto = onnx.load(str(onnx_path))
    name = settings.model_name
    with using_store(settings), _in_run(run_id):
        info = mlflow.onnx.log_model(
            proto,
            name="model",
            registered_model_name=name,
            signature=model_signature(proto),
            input_example=dict(input_example) if input_example is not None else None,
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],  # as mlref.onnx_model serves it
            # Explicit requirements: inferring them imports the model in a subprocess (seconds).
            pip_requirements=mlflow.onnx.get_default_pip_requirements(),
        )
    mlflow_client = client(settings)
    version = str(info.registered_model_version)
    mlflow_client.set_model_version_tag(
        name, version, SPEC_FINGERPRINT_TAG, served.spec.fingerprint
    )
    if window is not None:
        mlflow_client.set_model_version_tag(name, version, WINDOW_TAG, str(window))
    publish(settings, version, onnx_path, run_id)
    return mlflow_client.get_model_version(name, version)


def model_version_of(settings: Settings, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, or None when the model or the alias does not exist."""
    mlflow_client = client(settings)
    name = settings.model_name
    try:
        registered = mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = registered.aliases.get(alias)
    return None if version is None else mlflow_client.get_model_version(name, version)


def _scores(evaluate: Evaluate, path: Path) -> dict[str, float]:
    scores = {key: float(value) for key, value in evaluate(path).items()}
    missing = [key for key in REQUIRED_METRICS if key not in scores]
    if missing:
        raise ValueError(f"evaluate() returned {sorted(scores)}; promotion also needs {missing}")
    return scores


def _compare(
    settings: Settings, champion: dict[str, float], challenger: dict[str, float]
) -> tuple[bool, str]:
    """The promotion rule: a large enough AUC gain, without paying for it in calibration."""
    rules = settings.registry
    gain = challenger["auc"] - champion["auc"]
    worse = challenger["logloss"] - champion["logloss"]
    numbers = (
        f"AUC {challenger['auc']:.4f} vs {champion['auc']:.4f} ({gain:+.4f}), "
        f"logloss {challenger['logloss']:.4f} vs {champion['logloss']:.4f} ({worse:+.4f})"
    )
    if gain < rules.champion_min_auc_gain:
        return False, f"{numbers}: AUC gain below the required {rules.champion_min_auc_gain}"
    if worse > rules.champion_max_logloss_increase:
        return False, f"{numbers}: logloss worse by more than {rules.champion_max_logloss_increase}"
    return True, f"{numbers}: beats the champion"


def training_window(version: ModelVersion) -> TrainingWindow | None:
    """The days ``version`` trained on, None for a version registered without them."""
    text = version.tags.get(WINDOW_TAG)
    return None if text is None else TrainingWindow.parse(text)


def promote(
    settings: Settings, version: str | int, evaluate: Evaluate, test_days: Sequence[str] = ()
) -> PromotionDecision:
    """Make ``version`` the challenger, and the champion if there is none or it wins.

    ``evaluate`` is called with the local ONNX file of the champion and of the challenger, so
    both are scored by the same code on the same data: ``test_days``, which must lie outside
    both models' training windows (a model scored on rows it trained on would look better
    than it is); the decision's reason names the windows.
    """
    mlflow_client = client(settings)
    name = settings.model_name
    version = str(version)
    challenger = mlflow_client.get_model_version(name, version)  # fails on an unknown one
    champion = model_version_of(settings, CHAMPION)
    champion_before = None if champion is None else str(champion.version)
    if champion_before == version:
        return PromotionDecision(version, False, f"version {version} is already the champion")
    windows = {
        f"champion v{champion_before}": None if champion is None else training_window(champion),
        f"challenger v{version}": training_window(challenger),
    }
    if champion is not None and test_days:  # refused before anything is written
        require_out_of_sample(test_days, windows, "the champion gate", every=True)

    mlflow_client.set_registered_model_alias(name, CHALLENGER, version)
    if champion is None:
        decision = PromotionDecision(
            version, True, "no champion yet: the first model serves", passed=True
        )
        tags = {DECISION_TAG: "first", REASON_TAG: decision.reason}
    else:
        champion_scores = _scores(evaluate, resolve_model(settings, _uri(name, champion_before)))
        challenger_scores = _scores(evaluate, resolve_model(settings, _uri(name, version)))
        passed, reason = _compare(settings, champion_scores, challenger_scores)
        on = f"test days {', '.join(test_days)}" if test_days else "the caller's test set"
        reason = f"on {on} ({describe(windows)}): {reason}"
        promoted = passed and settings.registry.rollout == "direct"
        if passed and not promoted:
            reason += "; goes out as a canary before it becomes champion"
        decision = PromotionDecision(
            version, promoted, reason, passed, champion_before, challenger_scores, champion_scores
        )
        outcome = "promoted" if promoted else "canary" if passed else "rejected"
        tags = {
            DECISION_TAG: outcome,
            REASON_TAG: reason,
            COMPARED_WITH_TAG: champion_before,
            **{f"mlref.challenger_{k}": f"{v:.6f}" for k, v in challenger_scores.items()},
            **{f"mlref.champion_{k}": f"{v:.6f}" for k, v in champion_scores.items()},
        }
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, value)
    if decision.promoted:
        _make_champion(settings, version, champion_before)
    return decision


def set_champion(settings: Settings, version: str | int, reason: str) -> str | None:
    """Make ``version`` the champion after its canary won; returns the champion it replaced."""
    version = str(version)
    before = model_version_of(settings, CHAMPION)
    before_version = None if before is None else str(before.version)
    if before_version == version:
        return before_version
    mlflow_client = client(settings)
    name = settings.model_name
    mlflow_client.set_model_version_tag(name, version, DECISION_TAG, "promoted")
    mlflow_client.set_model_version_tag(name, version, REASON_TAG, reason)
    _make_champion(settings, version, before_version)
    return before_version


def _make_champion(settings: Settings, version: str, before: str | None) -> None:
    mlflow_client = client(settings)
    name = settings.model_name
    publish_champion(settings, version)
    mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    if before is not None:
        mlflow_client.set_model_version_tag(name, before, REPLACED_BY_TAG, version)


def _uri(name: str, version: str) -> str:
    return f"{MODELS_SCHEME}{name}/{version}"


def registered_version(settings: Settings, uri: str) -> ModelVersion:
    """The version a ``models:/name@alias`` or ``models:/name/version`` URI names."""
    mlflow_client = client(settings)
    reference = uri.removeprefix(MODELS_SCHEME)
    name, at, alias = reference.partition("@")
    if not at:
        name, _, alias = reference.rpartition("/")
    if not name or not alias or (not at and not alias.isdigit()):
        raise ValueError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    try:
        if at:
            return mlflow_client.get_model_version_by_alias(name, alias)
        return mlflow_client.get_model_version(name, alias)
    except MlflowException as exc:
        raise LookupError(
            f"{uri}: not in the registry at {settings.tracking_uri} ({exc.message}); "
            "register and promote a model first (`mlref train run`)"
        ) from exc


def resolve_model(settings: Settings, uri: str | Path) -> Path:
    """A local ONNX file for a registry URI, an ONNX file, or a directory holding one.

    Registry versions are immutable, so each is downloaded once to
    ``artifacts_dir/registry/<name>/<version>``; an alias is resolved to its version first,
    so a moved alias fetches the new version.
    """
    text = str(uri)
    if not text.startswith(MODELS_SCHEME):
        return onnx_file(Path(text))
    version = registered_version(settings, text)
    target = settings.artifacts_dir / "registry" / version.name / str(version.version)
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        try:
            # Not download_artifacts(tracking_uri=...): the models:/ repository reads the
            # global URIs for part of its lookups.
            with using_store(settings):
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=_uri(version.name, str(version.version)), dst_path=str(staging)
                )
            Path(local).rename(target)  # a partial download never looks complete
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return onnx_file(target)


def onnx_file(path: Path) -> Path:
    """The ONNX file at ``path``: the file itself, an MLflow model's onnx flavor data, or the
    single ``*.onnx`` file under a directory."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: no such file or directory; give a models:/ URI, an .onnx file, "
            "or a directory holding model.onnx"
        )
    mlmodel = path / "MLmodel"
    if mlmodel.is_file():
        flavors = Model.load(str(mlmodel)).flavors
        if "onnx" not in flavors:
            raise ValueError(f"{path}: MLflow model without an onnx flavor ({sorted(flavors)})")
        return path / flavors["onnx"]["data"]
    found = sorted(path.rglob("*.onnx"))
    if len(found) != 1:
        raise FileNotFoundError(f"{path}: expected exactly one .onnx file, found {len(found)}")
    return found[0]
