"""Training windows: days inside a model's training window never enter a comparison."""

from __future__ import annotations

import pytest

from mlref.training.windows import (
    InSampleComparison,
    TrainingWindow,
    compared_on,
    out_of_sample,
    require_out_of_sample,
)

V1 = TrainingWindow("2026-01-01", "2026-01-06")
V2 = TrainingWindow("2026-01-01", "2026-01-13")
DAYS = ["2026-01-07", "2026-01-08", "2026-01-14"]


def test_the_window_spans_train_and_validation_days_not_test_days():
    splits = {"train": ["2026-01-02", "2026-01-03"], "val": ["2026-01-04"], "test": ["2026-01-05"]}
    window = TrainingWindow.of_splits(splits)
    assert str(window) == "2026-01-02..2026-01-04"
    assert TrainingWindow.parse(str(window)) == window
    assert not window.covers("2026-01-05") and window.covers("2026-01-03")
    with pytest.raises(ValueError, match=r"FIRST\.\.LAST"):
        TrainingWindow.parse("2026-01-02")


def test_only_days_outside_every_window_are_compared():
    windows = {"v1": V1, "v2": V2}
    assert out_of_sample(DAYS, windows) == (["2026-01-14"], ["2026-01-07", "2026-01-08"])
    assert require_out_of_sample(DAYS, windows, "the report") == ["2026-01-14"]
    assert require_out_of_sample(DAYS, {"v1": V1, "old": None}, "x") == DAYS  # not recorded


def test_a_comparison_given_only_in_sample_days_refuses_naming_the_windows():
    with pytest.raises(
        InSampleComparison,
        match=r"the report: every day .*2026-01-07.*"
        r"v2 trained on 2026-01-01\.\.2026-01-13.*later days",
    ):
        require_out_of_sample(DAYS[:2], {"v1": V1, "v2": V2}, "the report")
    with pytest.raises(InSampleComparison, match="the gate: some days"):
        require_out_of_sample(DAYS, {"v1": V1, "v2": V2}, "the gate", every=True)


def test_a_benchmark_line_names_the_window_and_refuses_a_test_day_inside_it():
    splits = {"train": ["2026-01-02", "2026-01-03"], "val": ["2026-01-04"], "test": ["2026-01-05"]}
    assert compared_on(splits, ("full", "w=0.1")) == (
        "full trained on 2026-01-02..2026-01-04; w=0.1 trained on 2026-01-02..2026-01-04; "
        "compared on test day(s) 2026-01-05, out of sample"
    )
    with pytest.raises(InSampleComparison, match="this comparison"):
        compared_on({**splits, "test": ["2026-01-03"]})
