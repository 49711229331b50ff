from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from mlref.features.transform import FeatureSpec
from mlref.settings import TrainSettings
from mlref.training import metrics, plots
from mlref.training.train import TrainingSets, TrainResult, encode, predict, resolve_device, train

from .conftest import make_sets


@pytest.fixture(scope="module")
def tiny_sets(spec: FeatureSpec) -> TrainingSets:
    return make_sets(spec, train_rows=2_000, eval_rows=1_000, seed=11)


def test_same_seed_gives_identical_weights_and_metrics(
    tiny_sets: TrainingSets, spec: FeatureSpec, small_train: TrainSettings
):
    settings = small_train.model_copy(update={"epochs": 2})
    first, second = train(tiny_sets, spec, settings), train(tiny_sets, spec, settings)
    assert first.metric_table() == second.metric_table()
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    other = train(tiny_sets, spec, settings.model_copy(update={"seed": 8}))
    assert other.metric_table() != first.metric_table()


def test_cpu_threads_sizes_torchs_thread_pool_and_zero_keeps_it(
    tiny_sets: TrainingSets, spec: FeatureSpec, small_train: TrainSettings
):
    before = torch.get_num_threads()
    settings = small_train.model_copy(update={"epochs": 1})
    try:
        train(tiny_sets, spec, settings)  # cpu_threads 0: torch's own choice, untouched
        assert torch.get_num_threads() == before
        train(tiny_sets, spec, settings.model_copy(update={"cpu_threads": before + 1}))
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)


def test_early_stopping_restores_the_best_epoch(tiny_sets: TrainingSets, spec: FeatureSpec):
    """A learning rate this high overfits 2,000 rows within a few epochs."""
    settings = TrainSettings(
        epochs=12, batch_size=128, learning_rate=0.05, embedding_dim=8, hidden_units=[32],
        patience=1, device="cpu",
    )  # fmt: skip
    result = train(tiny_sets, spec, settings)
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + settings.patience
    best = min(r.val_logloss for r in result.history)
    assert result.metrics["val"].logloss == pytest.approx(best, abs=1e-6)


def test_learns_the_signal_and_stays_calibrated(trained: TrainResult):
    test = trained.metrics["test"]
    assert test.auc > 0.66
    assert test.normalized_entropy < 0.97
    assert 0.85 < test.calibration < 1.15
    assert trained.device == "cpu" and trained.precision == "float32"


def test_throughput_is_training_rows_over_epoch_time(
    tiny_sets: TrainingSets, spec: FeatureSpec, small_train: TrainSettings, monkeypatch
):
    """Each epoch's samples/s is its training rows over its training time (an injected
    clock: 2 s an epoch), and the run's figure their mean; no wall clock is asserted."""
    from types import SimpleNamespace

    from mlref.training import train as train_module

    ticks = iter(range(10_000))
    clock = SimpleNamespace(perf_counter=lambda: 2.0 * next(ticks))
    monkeypatch.setattr(train_module, "time", clock)
    settings = small_train.model_copy(update={"epochs": 2, "patience": 5})
    result = train(tiny_sets, spec, settings)
    assert [r.samples_per_s for r in result.history] == [len(tiny_sets.train) / 2] * 2
    assert result.samples_per_s == len(tiny_sets.train) / 2


def test_prediction_ignores_fields_outside_the_request(trained: TrainResult, spec: FeatureSpec):
    frame = _rows(spec)
    moved = frame.assign(
        request_id="other", event_timestamp=frame["event_timestamp"] + np.timedelta64(30, "D")
    )
    assert np.array_equal(_predict(trained, frame, spec), _predict(trained, moved, spec))


def test_a_row_scores_the_same_alone_or_in_a_batch(trained: TrainResult, spec: FeatureSpec):
    frame = _rows(spec)
    batch = _predict(trained, frame, spec)
    alone = np.concatenate([_predict(trained, frame.iloc[[i]], spec) for i in range(10)])
    np.testing.assert_allclose(alone, batch[:10], rtol=1e-5)


def test_a_higher_user_ctr_raises_the_probability(
    trained: TrainResult, sets: TrainingSets, spec: FeatureSpec
):
    """User CTR carries the signal in the training data, so the model must follow it
    (moving between the 10th and 90th percentile: values the model has seen)."""
    columns = ["user_ctr_1d", "user_ctr_7d"]
    frame = _rows(spec)
    low = _predict(trained, frame.assign(**sets.train[columns].quantile(0.1)), spec)
    high = _predict(trained, frame.assign(**sets.train[columns].quantile(0.9)), spec)
    assert np.mean(high > low) > 0.9
    assert high.mean() > 1.5 * low.mean()


def _rows(spec: FeatureSpec):
    return make_sets(spec, train_rows=200, eval_rows=1, seed=99).train


def _predict(result: TrainResult, frame, spec: FeatureSpec) -> np.ndarray:
    inputs = encode(frame, spec)
    return predict(result.model, inputs.cat, inputs.num)


def test_cuda_request_without_a_gpu_names_the_fix():
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        return
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="MLREF_TRAIN__DEVICE"):
        resolve_device("cuda")


def test_metrics_match_definitions():
    rng = np.random.default_rng(0)
    labels = (rng.random(5_000) < 0.1).astype(np.float64)
    constant = np.full(5_000, labels.mean())
    scores = metrics.evaluate(labels, constant)
    assert scores.normalized_entropy == pytest.approx(1.0)
    assert scores.calibration == pytest.approx(1.0)
    noisy = np.clip(0.1 + 0.05 * rng.standard_normal(5_000) + 0.2 * labels, 0.01, 0.99)
    assert metrics.logloss(labels, noisy) == pytest.approx(log_loss(labels, noisy))
    bins = metrics.reliability_bins(labels, noisy, n_bins=10)
    assert sum(b.count for b in bins) == 5_000
    assert [b.mean_predicted for b in bins] == sorted(b.mean_predicted for b in bins)
    assert np.isnan(metrics.auc(np.zeros(10), np.linspace(0, 1, 10)))


def test_plots_are_written(trained: TrainResult, tmp_path: Path):
    reliability = plots.reliability_diagram(trained.metrics, tmp_path / "plots" / "rel.png")
    curve = plots.training_curve(trained.history, tmp_path / "curve.png")
    for path in (reliability, curve):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
