"""Serving benchmark: in-process floor, predictor vs a plain KServe ModelServer, full path.

Run from the repo root: ``python bench/serving.py`` (needs ``wrk``: ``apt-get install -y wrk``).
Everything binds 127.0.0.1, every load is bounded (``DURATION`` seconds), and every figure is
printed next to the one it is compared with, measured in the same run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test model and Feast store builders live in tests/serving

from mlref import onnx_model  # noqa: E402
from mlref.features.transform import build_spec, fill_defaults, transform  # noqa: E402
from tests.servers import Server, free_port  # noqa: E402
from tests.serving.conftest import serving_settings, start_predictor, start_transformer  # noqa: E402
from tests.serving.feast_store import FeastLookup, build_store  # noqa: E402
from tests.serving.model import build_model  # noqa: E402
from tests.serving.test_servers import business_rows  # noqa: E402

DURATION = 8
CONCURRENCY = 8
LUA = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[{}]]\n'


def wrk(url: str, body: dict, connections: int = CONCURRENCY, seconds: int = DURATION) -> dict:
    """req/s, p50 and p99 (ms) and errors of a bounded wrk run posting ``body``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA.format(json.dumps(body)))
    out = subprocess.run(
        [
            "wrk",
            "-t",
            "1",
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--latency",
            "-s",
            script.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": _ms(re.search(r"50%\s+(\S+)", out).group(1)),
        "p99": _ms(re.search(r"99%\s+(\S+)", out).group(1)),
        "errors": int(errors.group(1)) if errors else 0,
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def per_second(fn, seconds: float = 2.0) -> float:
    """Calls per second of ``fn`` over a bounded loop."""
    fn()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds and count < 1_000_000:
        fn()
        count += 1
    return count / (time.perf_counter() - start)


def baseline(model_path: str, port: int) -> None:
    """A plain KServe predictor: the same session behind a minimal kserve.Model."""
    sys.argv = sys.argv[:1]
    import logging

    import kserve

    model = onnx_model.load(model_path)

    class Plain(kserve.Model):
        def __init__(self):
            super().__init__("ctr")
            self.ready = True

        def predict(self, payload, headers=None):
            rows = np.asarray(payload["instances"])
            probability = model.predict(
                rows[:, :8].astype(np.int64), rows[:, 8:].astype(np.float32)
            )
            return {"predictions": probability.tolist()}

    server = kserve.ModelServer(http_port=port, enable_grpc=False, enable_latency_logging=False)
    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([Plain()])


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    root = Path(tempfile.mkdtemp(prefix="mlref-bench-"))
    settings = serving_settings(root, log_flush_seconds=2.0)
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"max_batch": 1024})}
    )
    model_path = build_model(root / "model.onnx", settings)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_path = root / "model.int8.onnx"
    quantize_dynamic(model_path, int8_path, weight_type=QuantType.QInt8)
    build_store(root / "feast", range(1, 2001), range(1, 201))
    spec = build_spec(settings.features)
    rows = business_rows(256, seed=1)
    row = rows[0]
    report = {}

    # 1. In-process floor, batch 1.
    cat1, num1 = np.ones((1, 8), np.int64), np.zeros((1, 12), np.float32)
    for label, path in (("fp32", model_path), ("int8", int8_path)):
        m = onnx_model.load(path)
        report[f"onnxruntime {label} batch 1 calls/s"] = per_second(
            lambda m=m: m.predict(cat1, num1)
        )

    # 2. Predictor alone (v1, concurrency 8) vs a plain KServe ModelServer, same session.
    flat = {"instances": [[1] * 8 + [0.5] * 12]}
    predictor = start_predictor(settings, model_path, root)
    port = free_port()
    plain = Server(
        [sys.executable, __file__, "baseline", str(model_path), str(port)],
        port,
        root / "baseline.log",
    )
    plain.wait_ready(timeout=60)
    time.sleep(1)
    try:
        ours = wrk(f"http://127.0.0.1:{predictor.port}/v1/models/ctr:predict", flat)
        theirs = wrk(f"http://127.0.0.1:{port}/v1/models/ctr:predict", flat)
    finally:
        plain.stop()

    # 3. Full path: transformer (Feast lookup) + predictor, single rows and batch 256.
    transformer = start_transformer(
        settings, root / "feast", f"http://127.0.0.1:{predictor.port}", root
    )
    try:
        url = f"http://127.0.0.1:{transformer.port}/v1/models/ctr:predict"
        single = wrk(url, {"instances": [row]})
        batch = wrk(url, {"instances": rows}, connections=2, seconds=5)
    finally:
        transformer.stop()
        predictor.stop()
    lookup = FeastLookup(root / "feast")
    model = onnx_model.load(model_path)
    frame = pd.DataFrame(rows).drop(columns="request_id")

    def in_process():
        stats = lookup.lookup(frame["user_id"].tolist(), frame["ad_id"].tolist())
        filled, _ = fill_defaults(pd.concat([frame, stats], axis=1), spec)
        model.predict(*transform(filled, spec))

    in_process_rows = per_second(in_process, 3.0) * len(rows)

    for key, value in report.items():
        print(f"{key:45s} {value:12,.0f}")
    print(
        f"{'predictor v1 c=8 req/s (ours / plain KServe)':45s} {ours['rps']:12,.0f} / "
        f"{theirs['rps']:,.0f} = {ours['rps'] / theirs['rps']:.2f}x  "
        f"p99 {ours['p99']:.1f} / {theirs['p99']:.1f} ms"
    )
    print(
        f"{'full path single row c=8 req/s':45s} {single['rps']:12,.0f}  p50 {single['p50']:.2f}"
        f" ms  p99 {single['p99']:.2f} ms  errors {single['errors']}"
        f"  (target >= 1000 req/s: {single['rps'] / 1000:.2f}x; p99 < 20 ms)"
    )
    served = batch["rps"] * len(rows)
    print(
        f"{'full path batch 256 rows/s (served / in-process)':45s} {served:12,.0f} / "
        f"{in_process_rows:,.0f} = {served / in_process_rows:.2f}x  errors {batch['errors']}"
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["baseline"]:
        baseline(sys.argv[2], int(sys.argv[3]))
    else:
        main()
