"""The training half of the loop as four plain steps, each reading and writing a folder.

The kfp components and ``mlref train run`` call the same functions; folders are what kfp
passes between pods as artifacts, so local and cluster runs exchange exactly the same files.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import torch

from mlref import onnx_model
from mlref.console import console
from mlref.features.transform import build_spec, transform
from mlref.settings import Settings
from mlref.training import reference, registry, tracking, trainjob, warm_start
from mlref.training.export import export_onnx, quantize_int8
from mlref.training.metrics import auc, logloss
from mlref.training.parity import ParityReport, check_parity
from mlref.training.ranks import Ranks
from mlref.training.registry import PromotionDecision
from mlref.training.shards import SPLITS, ShardSet
from mlref.training.train import encode, train
from mlref.training.windows import TrainingWindow, describe, require_out_of_sample

if TYPE_CHECKING:
    from mlref.training.dataset import DatasetReport

MODEL_FILE = "model.pt"
FP32_FILE = "model.fp32.onnx"
INT8_FILE = "model.onnx"
REPORT_FILE = "report.json"


class GateFailed(RuntimeError):
    """The int8 model failed the parity gate; it is not registered."""


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str))


def make_training_set(
    settings: Settings, out_dir: Path, start: str = "", end: str = ""
) -> DatasetReport:
    """Point-in-time training sets, written as Parquet shards (:mod:`mlref.training.shards`)
    with the dataset report beside them."""
    # Feast (and its import-time type instrumentation) costs seconds to import: the steps and
    # training ranks that never build a training set do not load it.
    from mlref.training import dataset

    report = dataset.write_training_sets(settings, str(out_dir), start or None, end or None)
    _write_json(out_dir / REPORT_FILE, asdict(report))
    console.print(
        f"training set: {report.rows} rows, {report.feast_dropped} rows without feature "
        "history (given the priors)"
    )
    return report


# Runs the data-parallel ranks on a training set, rank 0 writing the model to a folder.
Launcher = Callable[[Path, Path], object]


def fit(
    settings: Settings,
    sets_dir: Path | str,
    out_dir: Path,
    ranks: Ranks | None = None,
    launch: Launcher | None = None,
) -> dict[str, float]:
    """Train; save the model, per-split metrics and the two plots. Returns flat metrics.

    With ``ranks`` (data-parallel, :mod:`mlref.training.distributed`) every rank trains and rank
    0 alone writes: the same files, so export and registration cannot tell the runs apart.
    ``train.distributed=torchrun-local`` starts those ranks here, under torchrun;
    ``torchrun`` through ``launch``, the platform's (``platform_for(settings).train_ranks``:
    torchrun here, or a Kubeflow Trainer TrainJob in a cluster)."""
    mode = settings.train.distributed
    if ranks is None and mode != "none":
        if mode == "torchrun-local":
            trainjob.run_local(settings, Path(sets_dir), out_dir)
        elif launch is None:
            raise ValueError(
                "train.distributed=torchrun runs its ranks where the platform does: pass "
                "launch=platform_for(settings).train_ranks"
            )
        else:
            launch(Path(sets_dir), out_dir)
        return tracking.flatten_metrics(json.loads((out_dir / REPORT_FILE).read_text())["metrics"])
    spec = build_spec(settings.features)
    init, parent = warm_start.resolve(settings, spec)  # refuses before anything is written
    sets = ShardSet(str(sets_dir))
    if parent is not None and settings.train.window_days:
        sets = sets.recent("train", settings.train.window_days)
    init = replace(init, train_days=tuple(sets.days("train")))
    days = init.train_days
    console.print(f"{init.reason}; training on {len(days)} day(s), {days[0]} .. {days[-1]}")
    result = train(sets, spec, settings.train, ranks, parent)
    flat = tracking.flatten_metrics(result.metric_table())
    if ranks is not None and not ranks.main:
        return flat
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(result.model, out_dir / MODEL_FILE)
    from mlref.training import plots  # matplotlib: only the rank that writes loads it

    plots.reliability_diagram(result.metrics, out_dir / "reliability.png")
    plots.training_curve(result.history, out_dir / "training_curve.png")
    _write_json(
        out_dir / REPORT_FILE,
        {
            "metrics": result.metric_table(),
            "history": [asdict(record) for record in result.history],
            "best_epoch": result.best_epoch,
            "device": result.device,
            "precision": result.precision,
            "samples_per_s": result.samples_per_s,
            "samples_processed": result.samples_processed,
            "init": asdict(init),
            "checkpoint": warm_start.checkpoint(spec, settings.train),
        },
    )
    return flat


def export_and_gate(
    settings: Settings, model_dir: Path, sets_dir: Path, out_dir: Path
) -> ParityReport:
    """Export fp32 ONNX, quantize to int8 and compare all three on the test split (days
    outside the training window, which the report names)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    days = split_days(sets_dir)
    windows = {"the model": TrainingWindow.of_splits(days)}
    require_out_of_sample(days["test"], windows, "the parity gate", every=True)
    spec = build_spec(settings.features)
    model = torch.load(model_dir / MODEL_FILE, weights_only=False)
    fp32 = export_onnx(model, spec, out_dir / FP32_FILE)
    int8 = quantize_int8(fp32, out_dir / INT8_FILE)
    test = encode(ShardSet(str(sets_dir)).frame("test"), spec)  # the test days only
    report = check_parity(model, fp32, int8, test.cat, test.num, test.labels, settings.parity)
    compared = {"compared_on": days["test"], "training_window": describe(windows)}
    _write_json(
        out_dir / REPORT_FILE, {**report.scalars(), "reasons": list(report.reasons), **compared}
    )
    if not report.passed:
        raise GateFailed("int8 model failed the parity gate: " + "; ".join(report.reasons))
    return report


def register(
    settings: Settings, model_dir: Path, export_dir: Path, sets_dir: Path
) -> PromotionDecision:
    """Log the run to MLflow, register the int8 model and let the champion gate decide."""
    data_report = json.loads((sets_dir / REPORT_FILE).read_text())
    train_report = json.loads((model_dir / REPORT_FILE).read_text())
    parity = json.loads((export_dir / REPORT_FILE).read_text())
    test = ShardSet(str(sets_dir)).frame("test")

    def evaluate(path: Path) -> dict[str, float]:
        model = onnx_model.load(path)
        cat, num = transform(test, model.spec, logged_position=True)  # where clicks happened
        probability = model.predict(cat, num)
        labels = test["clicked"].to_numpy()
        return {"auc": auc(labels, probability), "logloss": logloss(labels, probability)}

    init = warm_start.from_report(train_report)
    with tracking.tracking_run(settings, run_name="train") as run:
        tracking.log_training(
            params={
                **settings.train.model_dump(),
                **init.params(),
                "device": train_report["device"],
                "best_epoch": train_report["best_epoch"],
                "reference_position": settings.features.reference_position,
            },
            metrics={**train_report["metrics"], "parity": parity_scalars(parity)},
            artifacts=[
                model_dir / "reliability.png",
                model_dir / "training_curve.png",
                sets_dir / REPORT_FILE,
                export_dir / REPORT_FILE,
            ],
            data_version=data_report["data_version"],
            feature_version=data_report["feature_version"],
        )
        mlflow.set_tags(init.tags())
        model = torch.load(model_dir / MODEL_FILE, weights_only=False)
        warm_start.log_weights(model, train_report["checkpoint"])
        window = _training_window(settings, split_days(sets_dir), init)
        version = registry.register_onnx(
            settings, run.info.run_id, export_dir / INT8_FILE, window=window
        )
        if init.parent_version:  # lineage in the registry too
            tracking.client(settings).set_model_version_tag(
                settings.model_name,
                str(version.version),
                warm_start.PARENT_VERSION_TAG,
                init.parent_version,
            )
        with tempfile.TemporaryDirectory() as scratch:  # inputs may be read-only artifacts
            drift_reference = reference.save_reference(
                settings, test, export_dir / INT8_FILE, Path(scratch), str(version.version)
            )
            reference.log_reference(drift_reference)
    return registry.promote(settings, version.version, evaluate, split_days(sets_dir)["test"])


def split_days(sets_dir: Path) -> dict[str, list[str]]:
    """The days of each split of the training set under ``sets_dir``."""
    sets = ShardSet(str(sets_dir))
    return {split: sets.days(split) for split in SPLITS}


def _training_window(
    settings: Settings, days: dict[str, list[str]], init: warm_start.Init
) -> TrainingWindow:
    """The days the model learned from: the train days it read (a warm start's recent window)
    and the validation days, and, when warm-started, every day its parent learned from."""
    train_days = list(init.train_days) or days["train"]
    own = TrainingWindow.of_splits({"train": train_days, "val": days.get("val", [])})
    if not init.parent_version:
        return own
    parent = registry.training_window(
        tracking.client(settings).get_model_version(settings.model_name, init.parent_version)
    )
    return (
        own
        if parent is None
        else TrainingWindow.of_days([*vars(own).values(), *vars(parent).values()])
    )


def parity_scalars(parity: dict) -> dict[str, float]:
    return {key: value for key, value in parity.items() if isinstance(value, int | float)}


def run_all(
    settings: Settings,
    work: Path,
    start: str = "",
    end: str = "",
    launch: Launcher | None = None,
) -> PromotionDecision:
    """Every step in this process (``mlref train run``, the demo); ``launch`` as in
    :func:`fit`."""
    sets_dir, model_dir, export_dir = work / "sets", work / "model", work / "onnx"
    make_training_set(settings, sets_dir, start, end)
    fit(settings, sets_dir, model_dir, launch=launch)
    export_and_gate(settings, model_dir, sets_dir, export_dir)
    return register(settings, model_dir, export_dir, sets_dir)
