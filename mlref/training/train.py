"""The training loop: same code on CPU and CUDA, seeded, early-stopped on validation logloss.

Inputs are built with the shared :func:`mlref.features.transform.transform`, so the model
trains on exactly the tensors serving will feed it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from mlref.console import console, progress
from mlref.features.transform import FeatureSpec, transform
from mlref.settings import TrainSettings
from mlref.training.metrics import SplitMetrics, evaluate
from mlref.training.model import CTRModel

LABEL = "clicked"
EVAL_BATCH = 8192


@dataclass
class TrainingSets:
    """Time-ordered splits: request + filled stat columns, ``clicked`` and ``event_timestamp``."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame


@dataclass
class Tensors:
    """One split as model inputs (CPU tensors)."""

    cat: torch.Tensor
    num: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def encode(frame: pd.DataFrame, spec: FeatureSpec) -> Tensors:
    """Model inputs and labels of one split, through the shared transform."""
    if LABEL not in frame:
        raise ValueError(f"training frame has no '{LABEL}' column")
    cat, num = transform(frame, spec)
    labels = frame[LABEL].to_numpy(dtype=np.float32)
    return Tensors(torch.from_numpy(cat), torch.from_numpy(num), torch.from_numpy(labels))


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_logloss: float
    val_logloss: float
    val_auc: float
    samples_per_s: float


@dataclass
class TrainResult:
    """The best model (on CPU, eval mode) and how it got there."""

    model: CTRModel
    history: list[EpochRecord]
    best_epoch: int
    stopped_early: bool
    device: str
    precision: str
    metrics: dict[str, SplitMetrics] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        """Mean training throughput over the epochs run (evaluation excluded)."""
        return float(np.mean([record.samples_per_s for record in self.history]))

    def metric_table(self) -> dict[str, dict[str, float]]:
        """``{split: {metric: value}}``, the shape experiment tracking logs."""
        return {split: values.scalars() for split, values in self.metrics.items()}


def resolve_device(choice: str) -> torch.device:
    """``auto`` takes CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "train.device=cuda but no CUDA device is visible; set MLREF_TRAIN__DEVICE=auto or cpu"
        )
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where supported (no loss scaling needed), else fp16 with a GradScaler; CPU: fp32."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the duration of training only (CPU: same seed, same weights)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@torch.no_grad()
def predict(model: CTRModel, cat: torch.Tensor, num: torch.Tensor) -> np.ndarray:
    """Probabilities in fp32, batched, on the model's device; the model is left in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    parts = [
        model(cat[i : i + EVAL_BATCH].to(device), num[i : i + EVAL_BATCH].to(device)).float().cpu()
        for i in range(0, len(cat), EVAL_BATCH)
    ]
    return torch.cat(parts).numpy() if parts else np.empty(0, dtype=np.float32)


def train(sets: TrainingSets, spec: FeatureSpec, settings: TrainSettings) -> TrainResult:
    """Train a :class:`CTRModel` and evaluate it on every split."""
    device = resolve_device(settings.device)
    amp = autocast_dtype(device)
    data = {name: encode(getattr(sets, name), spec) for name in ("train", "val", "test")}
    for name, split in data.items():
        if len(split) == 0:
            raise ValueError(f"the {name} split is empty: generate or select more days")
    train_set = data["train"]
    torch.manual_seed(settings.seed)
    with _deterministic(device.type == "cpu"):
        num = train_set.num.double()
        model = CTRModel(
            spec,
            settings,
            num_mean=num.mean(0).numpy(),
            num_std=num.std(0).numpy(),
            base_rate=float(train_set.labels.mean()),
        ).to(device)
        history = _fit(model, train_set, data["val"], settings, device, amp)
        best = min(history, key=lambda record: record.val_logloss)
        metrics = {
            name: evaluate(split.labels.numpy(), predict(model, split.cat, split.num))
            for name, split in data.items()
        }
    return TrainResult(
        model=model.cpu().eval(),
        history=history,
        best_epoch=best.epoch,
        stopped_early=len(history) < settings.epochs,
        device=str(device),
        precision=str(amp).removeprefix("torch.") if amp else "float32",
        metrics=metrics,
    )


def _fit(
    model: CTRModel,
    train_set: Tensors,
    val: Tensors,
    settings: TrainSettings,
    device: torch.device,
    amp: torch.dtype | None,
) -> list[EpochRecord]:
    """Epochs until ``patience`` epochs bring no val logloss gain; leaves the best weights in."""
    dataset = TensorDataset(train_set.cat, train_set.num, train_set.labels)
    order = RandomSampler(dataset, generator=torch.Generator().manual_seed(settings.seed))
    # Whole batches are sliced from the tensors at once; per-row collation would dominate.
    loader = DataLoader(
        dataset,
        sampler=BatchSampler(order, settings.batch_size, drop_last=False),
        batch_size=None,
        pin_memory=device.type == "cuda",
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    loss_fn = nn.BCEWithLogitsLoss()
    history: list[EpochRecord] = []
    best_loss, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
    with progress() as bar:
        task = bar.add_task("training", total=settings.epochs * len(loader))
        for epoch in range(1, settings.epochs + 1):
            bar.update(task, description=f"epoch {epoch}/{settings.epochs}")
            model.train()
            total, started = torch.zeros((), device=device), time.perf_counter()
            for cat, num, labels in loader:
                cat = cat.to(device, non_blocking=True)
                num = num.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with torch.autocast(
                    device.type, dtype=amp or torch.float32, enabled=amp is not None
                ):
                    loss = loss_fn(model.logits(cat, num).float(), labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total += loss.detach() * len(labels)
                bar.advance(task)
            train_loss = float(total) / len(train_set)  # one device sync per epoch
            seconds = time.perf_counter() - started
            scores = evaluate(val.labels.numpy(), predict(model, val.cat, val.num))
            record = EpochRecord(
                epoch=epoch,
                train_logloss=train_loss,
                val_logloss=scores.logloss,
                val_auc=scores.auc,
                samples_per_s=len(train_set) / seconds,
            )
            history.append(record)
            console.print(
                f"epoch {epoch}: train logloss {record.train_logloss:.5f}  "
                f"val logloss {record.val_logloss:.5f}  val AUC {record.val_auc:.4f}  "
                f"{record.samples_per_s:,.0f} samples/s",
                soft_wrap=True,
            )
            if record.val_logloss < best_loss:
                best_loss, stale = record.val_logloss, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= settings.patience:
                    console.print(
                        f"early stop: no val logloss gain for {stale} epochs; "
                        f"keeping epoch {epoch - stale}"
                    )
                    break
    model.load_state_dict(best_state)
    return history
