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

import mlflow
import torch

from mlref import onnx_model
from mlref.console import console
from mlref.features.transform import build_spec, transform
from mlref.settings import Settings
from mlref.training import dataset, plots, reference, registry, tracking, trainjob, warm_start
from mlref.training.export import export_onnx, quantize_int8
from mlref.training.metrics import auc, logloss
from mlref.training.parity import ParityReport, check_parity
from mlref.training.ranks import Ranks
from mlref.training.registry import PromotionDecision
from mlref.training.shards import ShardSet
from mlref.training.train import encode, train

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
) -> dataset.DatasetReport:
    """Point-in-time training sets, written as Parquet shards (:mod:`mlref.training.shards`)
    with the dataset report beside them."""
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
    """Export fp32 ONNX, quantize to int8 and compare all three on the test split."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = build_spec(settings.features)
    model = torch.load(model_dir / MODEL_FILE, weights_only=False)
    fp32 = export_onnx(model, spec, out_dir / FP32_FILE)
    int8 = quantize_int8(fp32, out_dir / INT8_FILE)
    test = encode(ShardSet(str(sets_dir)).frame("test"), spec)  # the test days only
    report = check_parity(model, fp32, int8, test.cat, test.num, test.labels, settings.parity)
    _write_json(out_dir / REPORT_FILE, {**report.scalars(), "reasons": list(report.reasons)})
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
        cat, num = transform(test, model.spec)
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
        version = registry.register_onnx(settings, run.info.run_id, export_dir / INT8_FILE)
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
    return registry.promote(settings, version.version, evaluate)


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
