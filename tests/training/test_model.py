from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlref.features.transform import FeatureSpec, transform
from mlref.settings import TrainSettings
from mlref.training.model import CTRModel
from mlref.training.train import TrainingSets


def _model(spec: FeatureSpec, settings: TrainSettings, base_rate: float = 0.1) -> CTRModel:
    torch.manual_seed(0)
    m = len(spec.numeric)
    return CTRModel(spec, settings, np.zeros(m), np.ones(m), base_rate).eval()


def test_forward_gives_one_probability_per_row(spec: FeatureSpec, sets: TrainingSets):
    model = _model(spec, TrainSettings())
    cat, num = transform(sets.val.head(37), spec)
    with torch.no_grad():
        probability = model(torch.from_numpy(cat), torch.from_numpy(num))
    assert probability.shape == (37,)
    assert probability.dtype == torch.float32
    assert torch.all((probability > 0) & (probability < 1))


def test_untrained_model_predicts_the_base_rate(spec: FeatureSpec, sets: TrainingSets):
    """The output bias starts at the base-rate logit, so training starts calibrated."""
    model = _model(spec, TrainSettings(), base_rate=0.03)
    assert model.head.bias.item() == pytest.approx(math.log(0.03 / 0.97))
    cat, num = transform(sets.val, spec)
    with torch.no_grad():
        mean = model(torch.from_numpy(cat), torch.from_numpy(num)).mean().item()
    assert mean == pytest.approx(0.03, rel=0.3)


def test_unknown_values_fall_into_the_oov_bucket(spec: FeatureSpec, sets: TrainingSets):
    model = _model(spec, TrainSettings())
    frame = sets.val.head(4).copy()
    frame["user_id"] = [10**15, -3, 123_456_789, 5]
    frame["ad_category"] = ["no-such-category", None, "retail", "retail"]
    frame["device_type"] = ["toaster", "mobile", None, "mobile"]
    frame["hour"] = [99, -1, 3, 3]
    cat, num = transform(frame, spec)
    column = spec.categorical_names.index
    assert cat[1, column("user_id")] == 0
    assert cat[0, column("ad_category")] == 0 and cat[0, column("hour")] == 0
    raw = torch.from_numpy(cat)
    # Bypassing transform entirely: every code outside its table, below or far above it.
    raw[0] = torch.tensor([-1 if j % 2 else f.size * 2**30 for j, f in enumerate(spec.categorical)])
    with torch.no_grad():
        probability = model(raw, torch.from_numpy(num))
        oov = model(torch.zeros_like(raw[:1]), torch.from_numpy(num[:1]))
    assert torch.isfinite(probability).all()
    assert probability[0].item() == pytest.approx(oov.item())


def test_numeric_normalization_lives_in_the_model(spec: FeatureSpec):
    m = len(spec.numeric)
    mean, std = np.arange(m, dtype=np.float64), np.full(m, 2.0)
    std[0] = 0.0  # a constant column must not divide by zero
    model = CTRModel(spec, TrainSettings(), mean, std, 0.1)
    buffers = dict(model.named_buffers())
    assert torch.equal(buffers["num_mean"], torch.arange(m, dtype=torch.float32))
    assert buffers["num_std"][0] == 1.0 and buffers["num_std"][1] == 2.0


def test_low_rank_cross_has_fewer_weights(spec: FeatureSpec):
    def cross_weights(rank: int) -> int:
        model = _model(spec, TrainSettings(cross_layers=2, cross_rank=rank))
        return sum(p.numel() for p in model.cross.parameters())

    width = 16 * len(spec.categorical) + len(spec.numeric)
    assert cross_weights(0) == 2 * (width * width + width)
    assert cross_weights(8) == 2 * (2 * width * 8 + width)
