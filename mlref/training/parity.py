"""The parity gate: the int8 file is registered only if it predicts like the fp32 model.

Three predictions of the same rows are compared: fp32 torch (the reference), fp32 ONNX (catches
export bugs) and int8 ONNX (what serving runs). A failed gate names every broken threshold with
its numbers, so the pipeline log says why a model was refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mlref import onnx_model
from mlref.settings import ParitySettings
from mlref.training.metrics import auc, logloss
from mlref.training.model import CTRModel
from mlref.training.train import predict


@dataclass(frozen=True)
class ParityReport:
    rows: int
    export_max_abs_diff: float  # fp32 ONNX vs torch
    max_abs_diff: float  # int8 ONNX vs torch
    mean_abs_diff: float
    auc_fp32: float
    auc_int8: float
    logloss_fp32: float
    logloss_int8: float
    reasons: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def auc_drop(self) -> float:
        return self.auc_fp32 - self.auc_int8

    @property
    def logloss_increase(self) -> float:
        return self.logloss_int8 - self.logloss_fp32

    def scalars(self) -> dict[str, float]:
        """Numbers to log with the run (``passed`` as 0/1)."""
        values = {k: float(v) for k, v in asdict(self).items() if k != "reasons"}
        return values | {
            "auc_drop": self.auc_drop,
            "logloss_increase": self.logloss_increase,
            "passed": float(self.passed),
        }


def check_parity(
    model: CTRModel,
    fp32_path: str | Path,
    int8_path: str | Path,
    cat: np.ndarray | torch.Tensor,
    num: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    thresholds: ParitySettings,
) -> ParityReport:
    """Compare the three predictions on held-out rows against ``thresholds``."""
    cat, num = np.asarray(cat, dtype=np.int64), np.asarray(num, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.float64)
    if len(labels) == 0:
        raise ValueError("parity needs rows: pass the test split")
    reference = predict(model.cpu(), torch.from_numpy(cat), torch.from_numpy(num))
    fp32 = onnx_model.load(fp32_path).predict(cat, num)
    int8 = onnx_model.load(int8_path).predict(cat, num)
    diff = np.abs(int8.astype(np.float64) - reference)
    measured = ParityReport(
        rows=len(labels),
        export_max_abs_diff=float(np.max(np.abs(fp32.astype(np.float64) - reference))),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        auc_fp32=auc(labels, reference),
        auc_int8=auc(labels, int8),
        logloss_fp32=logloss(labels, reference),
        logloss_int8=logloss(labels, int8),
    )
    return ParityReport(**{**asdict(measured), "reasons": _failures(measured, thresholds)})


def _failures(report: ParityReport, limits: ParitySettings) -> tuple[str, ...]:
    checks = (
        ("fp32 ONNX vs torch max abs diff", report.export_max_abs_diff, limits.export_max_abs_diff),
        ("int8 vs fp32 max abs diff", report.max_abs_diff, limits.max_abs_diff),
        ("int8 vs fp32 mean abs diff", report.mean_abs_diff, limits.mean_abs_diff),
        ("AUC drop", report.auc_drop, limits.max_auc_drop),
        ("logloss increase", report.logloss_increase, limits.max_logloss_increase),
    )
    # NaN (a broken model's output) must fail, so test "not within" rather than "above".
    return tuple(
        f"{name} {value:.6g} exceeds {limit:g}"
        for name, value, limit in checks
        if not value <= limit
    )
