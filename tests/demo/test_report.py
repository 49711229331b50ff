"""The demo report's model comparison: each model's training window, out-of-sample days only."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlref.demo.report import LoopRecord, Quality, QualityPoint, write_report


def test_the_report_names_each_window_and_compares_only_out_of_sample_days(tmp_path: Path):
    quality = Quality(
        points=[
            QualityPoint("day 14 (2026-01-14)", "v1 (old champion)", 0.61),
            QualityPoint("day 14 (2026-01-14)", "v2 (retrained)", 0.66),
        ],
        windows={
            "v1 (old champion)": "2026-01-01..2026-01-06",
            "v2 (retrained)": "2026-01-01..2026-01-12",
        },
        left_out=["day 8 (2026-01-08)", "day 9 (2026-01-09)"],
    )
    page = write_report(LoopRecord(quality=quality), tmp_path / "report.html").read_text()

    assert "2026-01-01..2026-01-06" in page and "2026-01-01..2026-01-12" in page
    comparison = page[page.index("day (out of sample)") :]
    assert "day 14 (2026-01-14)" in comparison and "0.6600" in comparison
    assert "day 8 (2026-01-08)" not in comparison  # named as left out, above, not compared
    assert "Left out (inside a training window): day 8 (2026-01-08), day 9 (2026-01-09)" in page


def test_a_comparison_without_training_windows_is_refused():
    with pytest.raises(ValueError, match="which days each model trained on"):
        Quality(points=[QualityPoint("day 7", "v1", 0.6)])
