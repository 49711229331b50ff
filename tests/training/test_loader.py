"""The device-resident training path: batches drawn on the device, the large-batch recipe, and
training that is reproducible and equivalent whether the set is resident or streamed.

Every test runs on the CPU and, where CUDA is present, on the GPU too.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch

from mlref.features.transform import FeatureSpec
from mlref.settings import TrainSettings
from mlref.training.loader import Batches, row_bytes
from mlref.training.train import (
    Recipe,
    TrainingSets,
    optimizer_and_schedule,
    recipe,
    train,
)

from .conftest import make_sets

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
ROWS, BATCH = 1_000, 64


def _columns() -> tuple[torch.Tensor, ...]:
    """Three columns shaped like the model's inputs; column 0 holds each row's own index."""
    rows = torch.arange(ROWS)
    return (
        torch.stack([rows, rows % 7], dim=1),
        torch.rand(ROWS, 5, generator=torch.Generator().manual_seed(0)),
        (rows % 3 == 0).float(),
    )


def _on_cpu(batches: Iterable[tuple[torch.Tensor, ...]]) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.cpu() for t in batch) for batch in batches]


def _order(epoch: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    return torch.cat([batch[0][:, 0] for batch in epoch])


@pytest.mark.parametrize("device", DEVICES)
def test_resident_batches_cover_every_row_once_per_epoch_in_a_new_order(device: str):
    columns = _columns()
    batches = Batches(columns, BATCH, torch.device(device), seed=3)
    assert batches.resident
    assert all(t.device.type == device for t in batches.tensors)  # copied once, not per batch
    first = list(batches)
    assert all(t.device.type == device for batch in first for t in batch)
    assert len(first) == len(batches) == -(-ROWS // BATCH)
    one, two = _order(_on_cpu(first)), _order(_on_cpu(batches))
    for order in (one, two):
        assert torch.equal(order.sort().values, torch.arange(ROWS))
    assert not torch.equal(one, two)
    for cat, num, labels in _on_cpu(first):  # rows stay whole: every column from the same row
        assert torch.equal(cat[:, 1], cat[:, 0] % 7)
        assert torch.equal(num, columns[1][cat[:, 0]])
        assert torch.equal(labels, (cat[:, 0] % 3 == 0).float())
    again = Batches(columns, BATCH, torch.device(device), seed=3)
    assert torch.equal(_order(_on_cpu(again)), one)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunked", [False, True])
def test_an_epochs_selection_is_read_once_each_whole_rows_and_nothing_else(device, chunked):
    columns = _columns()
    budget = 5 * BATCH * row_bytes(columns) + 1 if chunked else None  # five-batch chunks
    chosen = {epoch: torch.arange(epoch, ROWS, 3) for epoch in (1, 2)}  # other rows each epoch
    batches = Batches(columns, BATCH, torch.device(device), 3, budget, lambda e: chosen[e])
    assert batches.resident != chunked
    assert batches.rows == len(chosen[1]) and len(batches) == -(-len(chosen[1]) // BATCH)
    for epoch in (1, 2):
        got = _on_cpu(batches)
        assert batches.rows == len(chosen[epoch])
        assert torch.equal(_order(got).sort().values, chosen[epoch])
        assert all(torch.equal(num, columns[1][cat[:, 0]]) for cat, num, _ in got)


@pytest.mark.parametrize("device", DEVICES)
def test_a_set_over_the_budget_streams_in_chunks_of_whole_batches(device: str):
    """Streaming draws its order on the host, so it yields exactly the CPU's resident batches."""
    columns = _columns()
    budget = 5 * BATCH * row_bytes(columns) + 1  # room for five batches
    streamed = Batches(columns, BATCH, torch.device(device), seed=3, budget=budget)
    assert not streamed.resident
    assert streamed.chunk_rows == 5 * BATCH
    assert all(t.device.type == "cpu" for t in streamed.tensors)
    resident = Batches(columns, BATCH, torch.device("cpu"), seed=3)
    for _ in range(2):
        got = list(streamed)
        assert all(t.device.type == device for batch in got for t in batch)
        expected = _on_cpu(resident)
        assert len(got) == len(expected) == len(streamed)
        for a, b in zip(_on_cpu(got), expected, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("device", DEVICES)
def test_the_large_batch_recipe_scales_the_rate_and_warms_up(device: str):
    settings = TrainSettings(
        batch_size=256, learning_rate=1e-3, batch_size_gpu=4096, min_steps_per_epoch=10,
        warmup_steps=8,
    )  # fmt: skip
    auto = recipe(settings, torch.device(device), rows=100_000)
    if device == "cpu":  # the CPU keeps the default recipe unless asked
        assert (auto.batch_size, auto.learning_rate, auto.warmup_steps) == (256, 1e-3, 0)
    large = recipe(settings.model_copy(update={"large_batch": "on"}), torch.device(device), 100_000)
    assert (large.batch_size, large.warmup_steps) == (4096, 8)
    assert large.learning_rate == pytest.approx(1e-3 * 4)  # sqrt(4096 / 256)
    if device == "cuda":
        assert auto == large
    capped = recipe(settings.model_copy(update={"large_batch": "on"}), torch.device(device), 20_000)
    assert capped.batch_size == 2_000  # an epoch keeps min_steps_per_epoch steps
    linear = settings.model_copy(update={"large_batch": "on", "lr_scaling": "linear"})
    assert recipe(linear, torch.device(device), 100_000).learning_rate == pytest.approx(0.016)
    tiny = recipe(settings.model_copy(update={"large_batch": "on"}), torch.device(device), 500)
    assert (tiny.batch_size, tiny.learning_rate, tiny.warmup_steps) == (256, 1e-3, 0)

    model = torch.nn.Linear(3, 1).to(device)
    optimizer, schedule = optimizer_and_schedule(model, large, settings)
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(1e-3)  # starts at the rate tuned for batch_size
    assert rates[4] == pytest.approx(1e-3 + (4e-3 - 1e-3) * 4 / 8)
    assert rates[8:] == pytest.approx([4e-3] * 4)
    assert rates[:9] == sorted(rates[:9])


def test_the_rate_falls_by_lr_decay_per_epoch_after_the_warm_up():
    settings = TrainSettings(learning_rate=1e-3, lr_decay=0.5)
    plan = Recipe(batch_size=256, learning_rate=4e-3, warmup_steps=2)
    optimizer, schedule = optimizer_and_schedule(torch.nn.Linear(3, 1), plan, settings, 4)
    rates = []
    for _ in range(11):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:3] == pytest.approx([1e-3, 2.5e-3, 4e-3])  # the warm-up, then the peak
    assert rates[6] == pytest.approx(2e-3) and rates[10] == pytest.approx(1e-3)  # 4 steps: half
    assert rates[2:] == sorted(rates[2:], reverse=True)  # smoothly, step by step


@pytest.fixture(scope="module")
def tiny_sets(spec: FeatureSpec) -> TrainingSets:
    return make_sets(spec, train_rows=2_000, eval_rows=1_000, seed=11)


@pytest.mark.parametrize("device", DEVICES)
def test_large_batch_training_on_the_device_repeats_and_streaming_matches_it(
    device: str, tiny_sets: TrainingSets, spec: FeatureSpec, small_train: TrainSettings
):
    settings = small_train.model_copy(
        update={
            "device": device, "epochs": 3, "large_batch": "on", "batch_size_gpu": 1024,
            "min_steps_per_epoch": 4, "warmup_steps": 3,
        }
    )  # fmt: skip
    first, second = train(tiny_sets, spec, settings), train(tiny_sets, spec, settings)
    assert first.device.startswith(device) and first.resident
    assert first.recipe.batch_size == 500 and first.recipe.warmup_steps == 3
    exact = device == "cpu"  # CUDA's atomic adds may reorder float sums
    for split in ("val", "test"):
        a, b = first.metrics[split], second.metrics[split]
        assert a.logloss == (b.logloss if exact else pytest.approx(b.logloss, abs=1e-4))
    assert first.metrics["test"].auc > 0.6  # it learned
    streamed = train(tiny_sets, spec, settings.model_copy(update={"device_memory_fraction": 0.0}))
    assert streamed.resident == (device == "cpu")  # host memory already holds a CPU's set
    # CPU: the same batches, so the same model; CUDA: a host-drawn order instead of the GPU's
    assert streamed.metrics["val"].logloss == pytest.approx(
        first.metrics["val"].logloss, abs=0 if exact else 0.01
    )
