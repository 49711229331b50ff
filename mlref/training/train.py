"""The training loop: same code on CPU and CUDA, seeded, early-stopped on validation logloss.

Inputs are built with the shared :func:`mlref.features.transform.transform`, so the model
trains on exactly the tensors serving will feed it. On CUDA the training set is resident on the
GPU (:mod:`mlref.training.loader`) and the large-batch recipe applies: batches of 1,024 rows
leave a GPU idle on this model, so the batch grows and the learning rate with it, after a
warm-up. The CPU keeps ``batch_size`` and ``learning_rate``.

Data-parallel (``ranks``, under torchrun): the same loop on every rank, each over its own rows
of the shards (:meth:`ShardSet.for_rank`), gradients all-reduced by DDP. The recipe's batch is the
global one (each rank takes its share), so a run on N ranks takes the steps one process would.
Every rank scores its share of a split and the scores are gathered: AUC needs all of them, and
every rank then takes the same early-stopping decision (a rank that stopped alone would leave the
others waiting in an all-reduce).
"""

from __future__ import annotations

import copy
import functools
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel

from mlref import storage
from mlref.console import console, progress
from mlref.features.transform import FeatureSpec, transform
from mlref.settings import TrainSettings
from mlref.training.loader import Batches, Prefetched, ShardBatches, host_budget, memory_budget
from mlref.training.metrics import SplitMetrics, evaluate
from mlref.training.model import CTRModel, Parent
from mlref.training.ranks import Ranks, combine_stats
from mlref.training.shards import SPLITS, ShardSet

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


TENSOR_FIELDS = [f.name for f in fields(Tensors)]


def encode(frame: pd.DataFrame, spec: FeatureSpec) -> Tensors:
    """Model inputs and labels of one split, through the shared transform, at the slot each
    row was shown in: its label is the click it got there."""
    if LABEL not in frame:
        raise ValueError(f"training frame has no '{LABEL}' column")
    cat, num = transform(frame, spec, logged_position=True)
    labels = frame[LABEL].to_numpy(dtype=np.float32)
    return Tensors(torch.from_numpy(cat), torch.from_numpy(num), torch.from_numpy(labels))


def encoded_columns(spec: FeatureSpec) -> list[str]:
    """The columns :func:`encode` reads: what a streamed shard needs read."""
    return [*spec.categorical_names, *spec.numeric, LABEL]


def negative_sample(labels: torch.Tensor, rate: float, seed: int | Sequence[int]) -> torch.Tensor:
    """Indices of every positive and of a share ``rate`` of the negatives, drawn from ``seed``
    (the same seed, the same rows). :class:`CTRModel` undoes the shift in odds this makes."""
    draw = np.random.default_rng(seed).random(len(labels))
    return torch.from_numpy(np.flatnonzero((labels.numpy() > 0.5) | (draw < rate)))


def _take(split: Tensors, index: torch.Tensor) -> Tensors:
    return Tensors(split.cat[index], split.num[index], split.labels[index])


def epoch_sample(
    labels: torch.Tensor, settings: TrainSettings, seed: Sequence[int]
) -> Callable[[int], torch.Tensor] | None:
    """The rows each epoch trains on (``epoch`` counts from 1), or None for every row: a fresh
    sample of negatives per epoch drawn from ``(*seed, epoch)`` with ``negative_resample``,
    else the one sample drawn from ``seed``. The last epoch's sample is kept: the split's
    statistics, the batches' row count and the epoch itself all ask for the first one."""
    rate = settings.negative_rate
    if rate >= 1:
        return None
    if settings.negative_resample:
        return functools.lru_cache(maxsize=1)(
            lambda epoch: negative_sample(labels, rate, [*seed, epoch])
        )
    rows = negative_sample(labels, rate, list(seed))
    return lambda epoch: rows


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_logloss: float
    val_logloss: float
    val_auc: float
    samples_per_s: float
    samples: int  # training rows read in the epoch, all ranks


@dataclass
class TrainResult:
    """The best model (on CPU, eval mode) and how it got there."""

    model: CTRModel
    history: list[EpochRecord]
    best_epoch: int
    stopped_early: bool
    device: str
    precision: str
    recipe: Recipe
    resident: bool
    metrics: dict[str, SplitMetrics] = field(default_factory=dict)

    @property
    def samples_processed(self) -> int:
        """Training rows read over all epochs: the cost negative downsampling cuts."""
        return sum(record.samples for record in self.history)

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


@dataclass(frozen=True)
class Recipe:
    """The batch and learning-rate schedule one run trains with."""

    batch_size: int
    learning_rate: float  # the peak, reached after ``warmup_steps``
    warmup_steps: int


def recipe(settings: TrainSettings, device: torch.device, rows: int) -> Recipe:
    """``batch_size``/``learning_rate``, or the large-batch recipe (on CUDA unless set).

    Large batch: ``batch_size_gpu`` capped at ``rows / min_steps_per_epoch`` (an epoch of a
    handful of steps learns little), the rate scaled by ``lr_scaling`` from the one tuned at
    ``batch_size`` and reached by a linear warm-up from it.
    """
    large = settings.large_batch == "on" or (
        settings.large_batch == "auto" and device.type == "cuda"
    )
    batch = settings.batch_size
    if large:
        batch = max(batch, min(settings.batch_size_gpu, rows // settings.min_steps_per_epoch))
    if batch == settings.batch_size:
        return Recipe(batch, settings.learning_rate, 0)
    power = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}[settings.lr_scaling]
    peak = settings.learning_rate * (batch / settings.batch_size) ** power
    return Recipe(batch, peak, settings.warmup_steps)


def optimizer_and_schedule(
    model: nn.Module, plan: Recipe, settings: TrainSettings, steps_per_epoch: int = 1
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW at the recipe's peak rate, ramped linearly from ``settings.learning_rate`` over
    the warm-up steps, then times ``lr_decay`` per epoch of ``steps_per_epoch`` steps, smoothly
    (step the schedule once per batch)."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=plan.learning_rate, weight_decay=settings.weight_decay
    )
    start = settings.learning_rate / plan.learning_rate
    decay = settings.lr_decay ** (1 / max(1, steps_per_epoch))

    def factor(step: int) -> float:
        if step >= plan.warmup_steps:
            return decay ** (step - plan.warmup_steps)
        return start + (1 - start) * step / plan.warmup_steps

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@contextmanager
def precision_scope(device: torch.device, precision: str) -> Iterator[torch.dtype | None]:
    """Matmul precision for training only; yields the autocast dtype (None: plain fp32)."""
    if device.type != "cuda" or precision == "float32":
        yield None
        return
    if precision == "bfloat16":
        if not torch.cuda.is_bf16_supported():
            raise RuntimeError(
                "train.precision=bfloat16 but this GPU has no bf16; set MLREF_TRAIN__PRECISION="
                "float32"
            )
        yield torch.bfloat16
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 tensor cores for fp32 matmuls
    try:
        yield None
    finally:
        torch.set_float32_matmul_precision(previous)


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
        model(cat[i : i + EVAL_BATCH].to(device), num[i : i + EVAL_BATCH].to(device)).float()
        for i in range(0, len(cat), EVAL_BATCH)
    ]  # one device-to-host copy at the end, not one sync per batch
    return torch.cat(parts).cpu().numpy() if parts else np.empty(0, dtype=np.float32)


class ResidentSplit:
    """A split held in memory as one set of tensors (every set that fits the host budget).

    ``select(epoch)``: the rows an epoch trains on (:func:`epoch_sample`); ``tensors`` are
    the first epoch's (statistics and the split's metrics)."""

    def __init__(self, tensors: Tensors, select: Callable[[int], torch.Tensor] | None = None):
        self.all, self.select = tensors, select
        if select is not None:
            tensors = _take(tensors, select(1))
        self.tensors, self.rows = tensors, len(tensors)

    def input_stats(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Numeric inputs' mean and std, and the positive rate (the model's initialization)."""
        num = self.tensors.num.double()
        return num.mean(0).numpy(), num.std(0).numpy(), float(self.tensors.labels.mean())

    def scores(self, model: CTRModel) -> tuple[np.ndarray, np.ndarray]:
        """(labels, predicted probabilities) of every row."""
        split = self.tensors
        return split.labels.numpy(), predict(model, split.cat, split.num)

    def batches(self, plan: Recipe, device: torch.device, settings: TrainSettings) -> Batches:
        split = self.all
        return Batches(
            (split.cat, split.num, split.labels),
            plan.batch_size,
            device,
            settings.seed,
            memory_budget(device, settings.device_memory_fraction),
            self.select,
        )


class StreamedSplit:
    """A split read shard by shard from its :class:`ShardSet`, a few shards ahead."""

    def __init__(
        self,
        sets: ShardSet,
        name: str,
        spec: FeatureSpec,
        prefetch: int,
        sampled: TrainSettings | None = None,
        seed: int = 0,
        cache: Path | None = None,
    ):
        """``sampled``: the settings of the train split's sample of negatives, per shard ``i``
        and epoch (:func:`epoch_sample` of ``(seed, i)``); None: every row. ``cache``: a local
        folder where each shard's tensors are kept once encoded (``train.cache_encoded``):
        reading them back costs a small share of decoding and encoding the shard again."""
        self.shards = sets.shards(name)
        # Known exactly once read when negatives are sampled: input_stats, the first pass, counts.
        self.shard_rows = [shard.rows for shard in self.shards]
        self.rows = sum(self.shard_rows)
        self.prefetch = prefetch
        columns = encoded_columns(spec)

        def encoded(i: int) -> Tensors:
            if cache is None:
                return encode(sets.inputs(self.shards[i], columns), spec)
            # The tensors one after another as .npy records: each is read back with a single
            # read into its array (an .npz, a zip, costs four times the CPU to read).
            path = cache / f"{name}-{i}.npy"
            if path.exists():
                with path.open("rb") as records:
                    return Tensors(*(torch.from_numpy(np.load(records)) for _ in TENSOR_FIELDS))
            split = encode(sets.inputs(self.shards[i], columns), spec)

            def write(staging: Path) -> None:  # a failed write leaves no shard behind
                with staging.open("wb") as out:
                    for field in TENSOR_FIELDS:
                        np.save(out, getattr(split, field).numpy())

            storage.write_atomically(str(path), write)
            return split

        def load(i: int, epoch: int) -> Tensors:
            split = encoded(i)
            select = epoch_sample(split.labels, sampled, [seed, i]) if sampled else None
            return split if select is None else _take(split, select(epoch))

        self.load = load

    def chunks(self) -> Iterator[Tensors]:
        """The shards as the first epoch reads them."""
        return iter(Prefetched(lambda i: self.load(i, 1), range(len(self.shards)), self.prefetch))

    def input_stats(self) -> tuple[np.ndarray, np.ndarray, float]:
        """As :meth:`ResidentSplit.input_stats`, in one pass (Chan et al.'s pairwise update)."""
        count, mean, m2, positives = 0, 0.0, 0.0, 0.0
        for i, chunk in enumerate(self.chunks()):
            self.shard_rows[i] = len(chunk)
            num = chunk.num.double()
            n, chunk_mean = len(num), num.mean(0)
            delta = chunk_mean - mean
            m2 = m2 + ((num - chunk_mean) ** 2).sum(0) + delta**2 * count * n / (count + n)
            mean, count = mean + delta * n / (count + n), count + n
            positives += float(chunk.labels.double().sum())
        self.rows = count
        return mean.numpy(), (m2 / (count - 1)).sqrt().numpy(), positives / count

    def scores(self, model: CTRModel) -> tuple[np.ndarray, np.ndarray]:
        labels, probabilities = [], []
        for chunk in self.chunks():
            labels.append(chunk.labels.numpy())
            probabilities.append(predict(model, chunk.cat, chunk.num))
        return np.concatenate(labels), np.concatenate(probabilities)

    def batches(self, plan: Recipe, device: torch.device, settings: TrainSettings) -> ShardBatches:
        def load(i: int) -> tuple[torch.Tensor, ...]:
            split = self.load(i, batches.epoch)
            return split.cat, split.num, split.labels

        batches = ShardBatches(
            load,
            self.shard_rows,
            plan.batch_size,
            device,
            settings.seed,
            settings.shuffle_buffer_shards,
        )
        return batches


def resident_bytes(sets: ShardSet, spec: FeatureSpec) -> int:
    """Host bytes training holds for ``sets`` in memory: its frames and their tensors."""
    row = 8 * len(spec.categorical) + 4 * len(spec.numeric) + 4
    return sets.memory_bytes() + row * sum(sets.rows(name) for name in SPLITS)


def _splits(
    sets: TrainingSets | ShardSet,
    spec: FeatureSpec,
    settings: TrainSettings,
    sharers: int = 1,
    seed: int = 0,
    cache: Path | None = None,
) -> dict[str, ResidentSplit | StreamedSplit]:
    """Each split resident when the whole set fits ``host_memory_bytes`` (shared by
    ``sharers`` processes on the host), else streamed, its encoded shards kept in ``cache``
    when ``train.cache_encoded``. The train split trains each epoch on its sample of negatives
    (:func:`epoch_sample`), drawn from ``seed`` (per shard when streamed)."""
    if isinstance(sets, ShardSet):
        if resident_bytes(sets, spec) > host_budget(settings.host_memory_bytes) // sharers:
            return {
                name: StreamedSplit(
                    sets,
                    name,
                    spec,
                    settings.prefetch_shards,
                    settings if name == "train" else None,
                    seed,
                    cache if settings.cache_encoded else None,
                )
                for name in SPLITS
            }
        sets = TrainingSets(**{name: sets.frame(name) for name in SPLITS})
    data = {name: encode(getattr(sets, name), spec) for name in SPLITS}
    select = epoch_sample(data["train"].labels, settings, [seed])
    return {name: ResidentSplit(data[name], select if name == "train" else None) for name in SPLITS}


def _scores(
    split: ResidentSplit | StreamedSplit, model: CTRModel, ranks: Ranks | None
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of the split's rows, across all ranks when there are several."""
    scores = split.scores(model)
    return ranks.concat(*scores) if ranks else scores


def _rows(data: dict[str, ResidentSplit | StreamedSplit], ranks: Ranks | None) -> dict[str, int]:
    """Rows of each split over all ranks; an empty split (or rank) is an error on every rank."""
    rows = {}
    for name, split in data.items():
        counts = ranks.gather(split.rows) if ranks else [split.rows]
        if sum(counts) == 0:
            raise ValueError(f"the {name} split is empty: generate or select more days")
        if min(counts) == 0:
            raise ValueError(
                f"the {name} split has {sum(counts)} rows, fewer than {len(counts)} ranks"
            )
        rows[name] = sum(counts)
    return rows


def train(
    sets: TrainingSets | ShardSet,
    spec: FeatureSpec,
    settings: TrainSettings,
    ranks: Ranks | None = None,
    parent: Parent | None = None,
) -> TrainResult:
    """Train a :class:`CTRModel` and evaluate it on every split.

    With ``parent`` (a warm start) the model begins as the parent: its weights and its input
    normalization, not the statistics of ``sets``.

    A :class:`ShardSet` larger than the host budget is streamed from its shards: training
    batches through :class:`ShardBatches`, evaluation a shard at a time. With ``ranks`` (a
    joined process group) this process trains on its rows of a :class:`ShardSet` under DDP;
    every rank returns the same result.
    """
    # Streamed shards' tensors, kept for the call (train.cache_encoded) and removed after it.
    with tempfile.TemporaryDirectory(prefix="mlref-encoded-") as cache:
        return _train(sets, spec, settings, ranks, parent, Path(cache))


def _train(
    sets: TrainingSets | ShardSet,
    spec: FeatureSpec,
    settings: TrainSettings,
    ranks: Ranks | None,
    parent: Parent | None,
    cache: Path,
) -> TrainResult:
    device = resolve_device(settings.device)
    if settings.cpu_threads and device.type == "cpu":
        torch.set_num_threads(settings.cpu_threads)
    if ranks is not None:
        if not isinstance(sets, ShardSet):
            raise TypeError("distributed training reads a ShardSet (each rank its own rows)")
        sets = sets.for_rank(ranks.rank, ranks.world)
    rank_settings = settings  # each rank its own shuffle and its own sample of negatives
    if ranks is not None:
        rank_settings = settings.model_copy(update={"seed": settings.seed + ranks.rank})
    sharers = ranks.local_world if ranks else 1
    data = _splits(sets, spec, settings, sharers, rank_settings.seed, cache)
    train_set = data["train"]
    _rows(data, ranks)  # every split has rows on every rank
    torch.manual_seed(settings.seed)
    with _deterministic(device.type == "cpu"), precision_scope(device, settings.precision) as amp:
        num_mean, num_std, base_rate = train_set.input_stats()  # counts sampled rows too
        train_rows = train_set.rows
        if ranks is not None:
            parts = ranks.gather((train_set.rows, num_mean, num_std, base_rate))
            num_mean, num_std, base_rate = combine_stats(parts)
            train_rows = sum(part[0] for part in parts)
        plan = recipe(settings, device, train_rows)
        rank_plan = plan  # with ranks, the global batch split over them
        if ranks is not None:
            rank_plan = replace(plan, batch_size=math.ceil(plan.batch_size / ranks.world))
        model = CTRModel(spec, settings, num_mean=num_mean, num_std=num_std, base_rate=base_rate)
        if parent is not None:
            model.start_from(parent)
        model = model.to(device)
        if ranks is not None:
            torch.manual_seed(rank_settings.seed)  # dropout masks differ across ranks
        batches = train_set.batches(rank_plan, device, rank_settings)
        where = (
            f"streamed from {len(train_set.shards)} shards"
            if isinstance(train_set, StreamedSplit)
            else "resident"
            if batches.resident
            else "streamed in chunks"
        )
        if ranks is not None:
            where += f", {ranks.world} rank(s) of {rank_plan.batch_size:,} rows a batch"
        console.print(
            f"training on {device}: batch {plan.batch_size:,}, learning rate "
            f"{plan.learning_rate:.3g} (warm-up {plan.warmup_steps} steps), training set {where}"
        )
        history = _fit(model, batches, data["val"], plan, settings, amp, ranks)
        best = min(history, key=lambda record: record.val_logloss)
        metrics = {name: evaluate(*_scores(split, model, ranks)) for name, split in data.items()}
    return TrainResult(
        model=model.cpu().eval(),
        history=history,
        best_epoch=best.epoch,
        stopped_early=len(history) < settings.epochs,
        device=str(device),
        precision=settings.precision if device.type == "cuda" else "float32",
        recipe=plan,
        resident=batches.resident,
        metrics=metrics,
    )


class _Logits(nn.Module):
    """The model's logits as ``forward``: DDP syncs gradients for what runs through its
    ``forward``, and training differentiates logits, not probabilities."""

    def __init__(self, model: CTRModel):
        super().__init__()
        self.model = model

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        return self.model.logits(cat, num)


def step(
    logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    amp: torch.dtype | None,
) -> torch.Tensor:
    """One optimizer step on ``(cat, num, labels)``; returns the batch's mean loss, on the
    device (reading it would sync the GPU every step)."""
    cat, num, labels = batch
    with torch.autocast(cat.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        loss = nn.functional.binary_cross_entropy_with_logits(logits(cat, num).float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    return loss.detach()


def _fit(
    model: CTRModel,
    batches: Batches | ShardBatches,
    val: ResidentSplit | StreamedSplit,
    plan: Recipe,
    settings: TrainSettings,
    amp: torch.dtype | None,
    ranks: Ranks | None = None,
) -> list[EpochRecord]:
    """Epochs until ``patience`` epochs bring no val logloss gain; leaves the best weights in.

    With ``ranks``: DDP all-reduces gradients, and :class:`Join` lets a rank whose share ends a
    batch early shadow the others' all-reduces instead of leaving them waiting."""
    device = batches.device
    logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = model.logits
    joined: Callable[[], object] = nullcontext
    if ranks is not None:
        ddp = DistributedDataParallel(
            _Logits(model), device_ids=[device.index or 0] if device.type == "cuda" else None
        )
        logits, joined = ddp, lambda: Join([ddp])
    optimizer, schedule = optimizer_and_schedule(model, plan, settings, len(batches))
    history: list[EpochRecord] = []
    best_loss, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
    with progress() as bar:
        task = bar.add_task("training", total=settings.epochs * len(batches))
        for epoch in range(1, settings.epochs + 1):
            bar.update(task, description=f"epoch {epoch}/{settings.epochs}")
            model.train()
            total, started = torch.zeros((), device=device), time.perf_counter()
            with joined():
                for batch in batches:
                    total += step(logits, batch, optimizer, schedule, amp) * len(batch[-1])
                    bar.advance(task)
            loss, rows = float(total), batches.rows  # one device sync per epoch
            seconds = time.perf_counter() - started
            if ranks is not None:  # all rows over the slowest rank's time
                parts = ranks.gather((loss, rows, seconds))
                loss, rows = sum(p[0] for p in parts), sum(p[1] for p in parts)
                seconds = max(p[2] for p in parts)
            scores = evaluate(*_scores(val, model, ranks))
            record = EpochRecord(
                epoch=epoch,
                train_logloss=loss / rows,
                val_logloss=scores.logloss,
                val_auc=scores.auc,
                samples_per_s=rows / seconds,
                samples=rows,
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
