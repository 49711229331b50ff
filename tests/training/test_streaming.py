"""Training from shards: every row once per epoch with a bounded buffer, the same quality as
the resident path, and the same reader against an S3 server."""

from __future__ import annotations

import tempfile
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from mlref.features.transform import FeatureSpec
from mlref.settings import TrainSettings
from mlref.training import shards
from mlref.training.loader import ShardBatches
from mlref.training.train import (
    TrainingSets,
    encode,
    encoded_columns,
    resident_bytes,
    train,
)

from .conftest import make_frame

SHARD_ROWS = [300, 250, 400, 100, 350, 300, 200, 150]
BATCH = 64


def _shard_loader(sizes: list[int], batches: list[ShardBatches], ahead: list[int]):
    """Shard ``i`` as (row index, label) tensors; records how far reads run ahead."""
    starts = np.cumsum([0, *sizes])
    loads = 0

    def load(i: int) -> tuple[torch.Tensor, ...]:
        nonlocal loads
        ahead.append(loads - batches[0].taken)  # loads done before this one, minus taken
        loads += 1
        rows = torch.arange(starts[i], starts[i + 1])
        return rows, (rows % 3 == 0).float()

    return load


def test_shard_batches_cover_every_row_once_per_epoch_with_a_bounded_buffer():
    holder: list[ShardBatches] = []
    ahead: list[int] = []
    batches = ShardBatches(
        _shard_loader(SHARD_ROWS, holder, ahead),
        SHARD_ROWS,
        BATCH,
        torch.device("cpu"),
        seed=5,
        buffer_shards=2,
    )
    holder.append(batches)
    epochs = [list(batches) for _ in range(2)]
    for epoch in epochs:
        order = torch.cat([batch[0] for batch in epoch])
        assert sorted(order.tolist()) == list(range(sum(SHARD_ROWS)))  # each row once
        assert len(epoch) == len(batches) == -(-sum(SHARD_ROWS) // BATCH)
        assert all(len(batch[0]) == BATCH for batch in epoch[:-1])  # only the last is partial
        assert all(torch.equal(batch[1], (batch[0] % 3 == 0).float()) for batch in epoch)
    first, second = (torch.cat([b[0] for b in epoch]) for epoch in epochs)
    assert not torch.equal(first, second)  # a new shard order and shuffle each epoch
    # Rows are mixed across shards, not read in shard order.
    assert not torch.equal(first[:BATCH].sort().values, first[:BATCH])
    # Host memory: a buffer joins at most 2 shards, and the reader runs at most a buffer ready
    # and one being read ahead of the buffer training takes. Before a load: 2 + 1 shards, plus
    # the 2 of a buffer handed over but not yet counted as taken; reading without a bound
    # would run 7 ahead.
    assert batches.max_buffered_rows <= sum(sorted(SHARD_ROWS)[-2:])
    assert max(ahead) <= 2 + 1 + 2
    # The host's share on CUDA alone: each buffer is its 2 shards joined, in the group's order.
    starts = np.cumsum([0, *SHARD_ROWS])
    groups = list(batches.buffers())
    assert sorted(i for group, _ in groups for i in group) == list(range(len(SHARD_ROWS)))
    for group, (rows, labels) in groups:
        assert len(group) <= 2
        assert torch.equal(rows, torch.cat([torch.arange(starts[i], starts[i + 1]) for i in group]))
        assert torch.equal(labels, (rows % 3 == 0).float())


def test_shard_batches_are_reproducible_and_surface_read_errors():
    def run(seed: int) -> torch.Tensor:
        holder: list[ShardBatches] = []
        batches = ShardBatches(
            _shard_loader(SHARD_ROWS, holder, []), SHARD_ROWS, BATCH, torch.device("cpu"), seed
        )
        holder.append(batches)
        return torch.cat([batch[0] for batch in batches])

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))

    def broken(i: int) -> tuple[torch.Tensor, ...]:
        raise OSError(f"shard {i} unreadable")

    with pytest.raises(OSError, match="unreadable"):
        list(ShardBatches(broken, SHARD_ROWS, BATCH, torch.device("cpu"), seed=1))


def _write(uri: str, spec: FeatureSpec) -> TrainingSets:
    """A set of 6 train days (one shard each), 2 val and 2 test days; returns it in memory."""
    days = {"train": range(1, 7), "val": range(7, 9), "test": range(9, 11)}
    writer = shards.ShardWriter(uri, spec)
    frames = {}
    for split, numbers in days.items():
        parts = []
        for n in numbers:
            day = f"2026-01-{n:02d}"
            frame = make_frame(1_200 if split == "train" else 1_000, n, spec, day)
            writer.write(split, day, frame)
            parts.append(frame)
        frames[split] = pd.concat(parts, ignore_index=True)
    writer.close()
    return TrainingSets(**frames)


def _settings(**values) -> TrainSettings:
    """The tests' small model (as ``small_train``), two epochs."""
    return TrainSettings(
        **{"epochs": 2, "device": "cpu", "batch_size": 256, "embedding_dim": 8, **values},
        hidden_units=[32, 16],
    )


def test_streamed_training_matches_the_resident_quality(spec: FeatureSpec, tmp_path):
    sets = _write(str(tmp_path / "sets"), spec)
    stored = shards.ShardSet(str(tmp_path / "sets"))
    assert resident_bytes(stored, spec) > stored.memory_bytes() > 0

    resident = train(sets, spec, _settings())
    from_shards = train(stored, spec, _settings())  # fits the default budget: resident
    streamed = train(stored, spec, _settings(host_memory_bytes=1, shuffle_buffer_shards=2))

    assert from_shards.metric_table() == resident.metric_table()  # same path, same weights
    for split in ("val", "test"):
        a, b = resident.metrics[split], streamed.metrics[split]
        assert b.auc == pytest.approx(a.auc, abs=0.01)
        assert b.logloss == pytest.approx(a.logloss, rel=0.02)
    assert streamed.metrics["test"].auc > 0.6  # it learned the signal


def test_streamed_training_encodes_each_shard_once_and_leaves_no_cache(
    spec: FeatureSpec, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """With ``cache_encoded`` every shard is read and encoded once per call: later epochs and
    evaluations load its tensors from the cache, train to the same weights as without it,
    and the cache is gone when the call returns."""
    _write(str(tmp_path / "sets"), spec)
    stored = shards.ShardSet(str(tmp_path / "sets"))
    reads: Counter[str] = Counter()
    inputs = shards.ShardSet.inputs

    def counted(self: shards.ShardSet, shard: shards.Shard, columns: list[str]) -> pd.DataFrame:
        reads[shard.day] += 1
        return inputs(self, shard, columns)

    monkeypatch.setattr(shards.ShardSet, "inputs", counted)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    streamed = _settings(epochs=3, host_memory_bytes=1, negative_rate=0.5)

    cached = train(stored, spec, streamed)
    assert list(reads.values()) == [1] * 10  # 6 train, 2 val and 2 test days, once each
    assert not list((tmp_path / "tmp").glob("mlref-encoded-*"))
    reads.clear()
    uncached = train(stored, spec, streamed.model_copy(update={"cache_encoded": False}))
    assert max(reads.values()) == 5  # a train day: statistics, 3 epochs, final evaluation
    assert cached.metric_table() == uncached.metric_table()


def test_shards_stream_from_s3(s3_env, spec: FeatureSpec):
    bucket = s3_env.create_bucket("training-sets")
    sets = _write(f"{bucket}/run-1/sets", spec)
    stored = shards.ShardSet(f"{bucket}/run-1/sets")
    assert [s.day for s in stored.shards("val")] == ["2026-01-07", "2026-01-08"]
    pd.testing.assert_frame_equal(stored.frame("test"), sets.test)
    result = train(stored, spec, _settings(epochs=1, host_memory_bytes=1))
    assert result.metrics["test"].auc > 0.6


def test_streamed_reads_encode_as_whole_shard_reads(spec: FeatureSpec, tmp_path):
    """Streaming reads only the encoded columns, strings as categoricals: the same tensors as a
    whole-shard read, unknown and missing categories included."""
    frame = make_frame(500, 3, spec)
    frame.loc[:9, "device_type"] = "toaster"  # not in the vocabulary: bucket 0
    frame.loc[10:19, "ad_category"] = None  # missing: bucket 0
    writer = shards.ShardWriter(str(tmp_path / "sets"), spec)
    writer.write("train", "2026-01-01", frame)
    writer.close()
    stored = shards.ShardSet(str(tmp_path / "sets"))
    shard = stored.shards("train")[0]
    columns = encoded_columns(spec)

    read = stored.inputs(shard, columns)
    assert set(read.columns) == set(columns)  # no request ids or timestamps decoded
    assert isinstance(read["device_type"].dtype, pd.CategoricalDtype)
    whole, streamed = encode(stored.read(shard), spec), encode(read, spec)
    assert torch.equal(streamed.cat, whole.cat)
    assert torch.equal(streamed.num, whole.num)
    assert torch.equal(streamed.labels, whole.labels)
    device, category = (spec.categorical_names.index(n) for n in ("device_type", "ad_category"))
    assert (whole.cat[:10, device] == 0).all() and (whole.cat[10:20, category] == 0).all()
    assert (whole.cat[20:, [device, category]] > 0).all()
