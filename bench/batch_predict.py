"""Batch prediction benchmark: rows/s of ``predict_range`` against onnxruntime alone.

Run from the repo root: ``python bench/batch_predict.py [rows] [spark]`` (default 100,000
rows). One day of curated impressions is scored end to end (curated read, Feast's
point-in-time join, the shared transform, onnxruntime, an atomic Parquet partition), then the
very same rows' model inputs are scored by onnxruntime alone in this process; with ``spark``,
the same day is scored end to end on Spark (``local[2]``, the session started outside the
clock) too, and its partition compared with the local one. All rates and ratios come from
this one run. The model is mlref's CTR network exported and int8-quantized
as training does it (untrained weights: speed does not depend on their values).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the feature store builders live in tests/

from bench.serving import production_model  # noqa: E402
from mlref import onnx_model  # noqa: E402
from mlref.batch_predict import predict_range, read_predictions  # noqa: E402
from mlref.features.store import historical_features  # noqa: E402
from mlref.features.transform import REQUEST_COLUMNS, build_spec, fill_defaults, transform  # noqa: E402
from mlref.settings import EngineSettings, Settings  # noqa: E402
from mlref.training.dataset import read_curated  # noqa: E402
from tests.features import events, write_curated  # noqa: E402
from tests.serving.conftest import build_features  # noqa: E402

DAY = "2026-01-04"  # after the features' last snapshot (Jan 1-3), within its TTL
USERS, ADS = range(1, 2_001), range(1, 401)


def impressions(rows: int, seed: int = 0) -> pd.DataFrame:
    """``rows`` impressions on ``DAY``; one in ten from a user never seen."""
    rng = np.random.default_rng(seed)
    stamps = pd.Timestamp(DAY, tz="UTC") + pd.to_timedelta(rng.integers(0, 86_400, rows), "s")
    users = rng.integers(1, int(len(USERS) * 1.1), rows)
    ads = rng.integers(1, len(ADS) + 1, rows)
    frame = events(
        list(zip(stamps.astype(str), users.tolist(), ads.tolist(), [0] * rows, strict=True))
    )
    frame["request_id"] = [f"b{i}" for i in range(rows)]
    return frame


def on_spark(settings: Settings) -> tuple[float, pd.Series]:
    """Seconds of the same batch prediction on Spark, and its scores by request id."""
    from mlref import spark
    from mlref.features import store

    engine = EngineSettings(data="spark", spark_master="local[2]")
    settings = settings.model_copy(update={"engine": engine})
    store.apply(settings)  # Feast's sources as Spark's
    spark.session(settings)
    model = settings.work_dir.parent / "model.int8.onnx"
    start = time.perf_counter()
    report = predict_range(settings, str(model), DAY, DAY, name="spark")
    seconds = time.perf_counter() - start
    scores = read_predictions(report.output).to_pandas().set_index("request_id")["score"]
    return seconds, scores


def main(rows: int = 100_000, spark: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(work_dir=root / ".mlref")
        _, model_path = production_model(root, settings)
        build_features(settings, USERS, ADS)
        write_curated(settings.curated_dir, impressions(rows))

        start = time.perf_counter()
        report = predict_range(settings, str(model_path), DAY, DAY)
        batch_seconds = time.perf_counter() - start
        assert read_predictions(report.output).num_rows == rows

        # The same rows' inputs, built once outside the clock; onnxruntime alone is timed.
        curated = read_curated(settings, DAY, DAY)
        joined, _ = historical_features(
            settings, curated[["request_id", "event_timestamp", *REQUEST_COLUMNS]]
        )
        spec = build_spec(settings.features)
        cat, num = transform(fill_defaults(joined, spec)[0], spec)
        model = onnx_model.load(model_path, settings.serving.intra_op_threads)
        start = time.perf_counter()
        scores = model.predict(cat, num)
        onnx_seconds = time.perf_counter() - start
        got = read_predictions(report.output).to_pandas().set_index("request_id")["score"]
        same = np.abs(got[joined["request_id"]].to_numpy() - scores).max()
        if spark:
            spark_seconds, spark_scores = on_spark(settings)
            spark_same = np.abs(spark_scores[got.index].to_numpy() - got.to_numpy()).max()

    batch_rate, onnx_rate = rows / batch_seconds, rows / onnx_seconds
    print(f"rows: {rows:,} (one day; intra-op threads {settings.serving.intra_op_threads})")
    print(f"batch prediction, end to end:         {batch_rate:>12,.0f} rows/s")
    print(f"onnxruntime alone on the same inputs: {onnx_rate:>12,.0f} rows/s")
    print(f"batch / onnxruntime: {batch_rate / onnx_rate:.3f}x; max |score difference| {same:.2e}")
    if spark:
        spark_rate = rows / spark_seconds
        print(f"batch prediction on Spark, end to end: {spark_rate:>11,.0f} rows/s")
        print(
            f"Spark / onnxruntime: {spark_rate / onnx_rate:.3f}x; Spark / local engine: "
            f"{spark_rate / batch_rate:.3f}x; max |Spark - local score| {spark_same:.2e}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000, "spark" in sys.argv[2:])
