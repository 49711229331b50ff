"""Serving benchmark: in-process floor, predictor vs a plain KServe ModelServer, full path.

Run from the repo root: ``python bench/serving.py`` (needs ``wrk``: ``apt-get install -y wrk``).
Everything binds 127.0.0.1, every load is bounded (``DURATION`` seconds), and every figure is
printed next to the one it is compared with, measured in the same run. wrk, the servers and
anything else running share the machine's cores: the ratios matter, not the bare rates.

The model is the one production serves: mlref's CTR network, exported and int8-quantized by
the training code (untrained weights; speed does not depend on their values).
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
sys.path.insert(0, str(REPO))  # the test model and feature store builders live in tests/serving

from mlref import onnx_model  # noqa: E402
from mlref.features.store import OnlineFeatureLookup  # noqa: E402
from mlref.features.transform import SmallBatchTransform, build_spec  # noqa: E402
from tests.servers import Server, free_port  # noqa: E402
from tests.serving.conftest import (  # noqa: E402
    build_features,
    config_env,
    serving_settings,
    start_predictor,
    start_transformer,
)
from tests.serving.test_servers import N_CAT, N_NUM, business_rows, flat  # noqa: E402

DURATION = 6
CONCURRENCY = 8
ROUNDS = 4  # predictor and baseline alternate; the median round of each is reported
# A level-1 long bracket: the JSON holds "]]" (nested lists), which would end a plain [[...]].
LUA = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [=[{}]=]\n'


def wrk(url: str, body: dict, connections: int = CONCURRENCY, seconds: int = DURATION) -> dict:
    """req/s, p50 and p99 (ms) and errors of a bounded wrk run posting ``body``."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA.format(json.dumps(body)))
    argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    done = subprocess.run(
        [*argv, "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    )
    Path(script.name).unlink()
    if done.stderr.strip():  # e.g. a script error: wrk would then send GETs and still report
        raise RuntimeError(f"wrk: {done.stderr.strip()}")
    out = done.stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": _ms(_percentile(out, 50)),
        "p99": _ms(_percentile(out, 99)),
        "errors": (int(errors.group(1)) if errors else 0) + (1 if socket_errors else 0),
    }


def _percentile(out: str, p: int) -> str:
    """A latency percentile line; anchored, as a stdev column may also end in "50%"."""
    return re.search(rf"^\s+{p}%\s+(\S+)", out, re.MULTILINE).group(1)


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


def production_model(root: Path, settings) -> tuple[Path, Path]:
    """(fp32, int8) ONNX files of mlref's CTR network, exported as training exports them."""
    import torch

    from mlref.training.export import export_onnx, quantize_int8
    from mlref.training.model import CTRModel

    spec = build_spec(settings.features)
    torch.manual_seed(0)
    width = len(spec.numeric)
    model = CTRModel(spec, settings.train, np.zeros(width), np.ones(width), base_rate=0.05)
    fp32 = export_onnx(model, spec, root / "model.onnx")
    return fp32, quantize_int8(fp32, root / "model.int8.onnx")


def median_round(results: list[dict]) -> dict:
    """The median of each figure over rounds (errors summed)."""
    return {
        **{key: float(np.median([r[key] for r in results])) for key in ("rps", "p50", "p99")},
        "errors": sum(r["errors"] for r in results),
    }


def baseline(model_path: str, port: int) -> None:
    """A plain KServe predictor: the same session behind a bare kserve.Model, logs silenced."""
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
                rows[:, :N_CAT].astype(np.int64), rows[:, N_CAT:].astype(np.float32)
            )
            return {"predictions": probability.tolist()}

    server = kserve.ModelServer(http_port=port, enable_grpc=False, enable_latency_logging=False)
    for name in ("kserve.trace", "uvicorn.access"):  # a line per request each
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([Plain()])


def line(label: str, ours: dict, theirs: dict | float, unit: str = "req/s") -> str:
    value = theirs if isinstance(theirs, float) else theirs["rps"]
    text = f"{label:52s} {ours['rps']:9,.0f} / {value:9,.0f} {unit} = {ours['rps'] / value:.2f}x"
    if isinstance(theirs, dict):
        text += f"  p99 {ours['p99']:.1f} / {theirs['p99']:.1f} ms"
    return text + f"  errors {ours['errors']}"


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    root = Path(tempfile.mkdtemp(prefix="mlref-bench-"))
    settings = serving_settings(root, log_flush_seconds=2.0)
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"max_batch": 1024})}
    )
    fp32_path, model_path = production_model(root, settings)
    build_features(settings, range(1, 2001), range(1, 201))
    rows = business_rows(256, seed=1)
    report = []

    # 1. In-process floor, batch 1.
    cat1, num1 = np.ones((1, N_CAT), np.int64), np.zeros((1, N_NUM), np.float32)
    for label, path in (("fp32", fp32_path), ("int8", model_path)):
        m = onnx_model.load(path)
        rate = per_second(lambda m=m: m.predict(cat1, num1))
        report.append(f"{f'onnxruntime {label} batch 1 in-process calls/s':52s} {rate:9,.0f}")

    # 2. Predictor alone (v1, single rows) vs a plain KServe ModelServer, same model file.
    flat_row = {"instances": [flat()]}
    predictor = start_predictor(settings, model_path, root)
    port = free_port()
    plain = Server(
        [sys.executable, __file__, "baseline", str(model_path), str(port)],
        port,
        root / "baseline.log",
        env=config_env(settings),
    )
    plain.wait_ready(timeout=60)
    ours, theirs = [], []
    try:
        for _ in range(ROUNDS):
            theirs.append(wrk(f"http://127.0.0.1:{port}/v1/models/ctr:predict", flat_row))
            ours.append(wrk(f"http://127.0.0.1:{predictor.port}/v1/models/ctr:predict", flat_row))
    finally:
        plain.stop()
    report.append(
        line(
            f"predictor v1 c={CONCURRENCY} (ours / plain KServe, median of {ROUNDS})",
            median_round(ours),
            median_round(theirs),
        )
    )

    # 3. Full path: transformer (Feast lookup) + predictor, single rows and batches of 256.
    transformer = start_transformer(settings, f"http://127.0.0.1:{predictor.port}", root)
    try:
        url = f"http://127.0.0.1:{transformer.port}/v1/models/ctr:predict"
        single = wrk(url, {"instances": [rows[0]]})
        batch = wrk(url, {"instances": rows}, connections=2)
    finally:
        transformer.stop()
        predictor.stop()
    report.append(
        f"{f'full path single row c={CONCURRENCY} req/s':52s} {single['rps']:9,.0f}"
        f"  p50 {single['p50']:.2f} ms  p99 {single['p99']:.2f} ms  errors {single['errors']}"
        f"  (target 1,000 req/s: {single['rps'] / 1000:.2f}x; p99 target 20 ms)"
    )

    # The floors, in this process, for the same 256 rows: onnxruntime alone (the model's own
    # rows/s), and everything the transformer computes (Feast lookup with the entity rows it
    # keeps, the shared transform, onnxruntime). What the served path adds on top: JSON in and
    # out, the predictor hop, the inference log, HTTP; the per-row costs show where it goes.
    lookup = OnlineFeatureLookup(settings)
    model = onnx_model.load(model_path)
    fast = SmallBatchTransform(model.spec)
    columns = pd.DataFrame(rows).drop(columns="request_id").to_dict("list")
    cat, num, _, _ = fast(columns, lookup.lookup(columns["user_id"], columns["ad_id"]).to_numpy())

    def in_process() -> None:
        stats = lookup.lookup(columns["user_id"], columns["ad_id"]).to_numpy()
        model.predict(*fast(columns, stats)[:2])

    model_rows = per_second(lambda: model.predict(cat, num), 3.0) * len(rows)
    path_rows = per_second(in_process, 3.0) * len(rows)
    served = {**batch, "rps": batch["rps"] * len(rows)}
    report.append(
        line("full path batch 256 c=2 rows/s (served / onnxruntime)", served, model_rows, "")
    )
    report.append(line("  same, served / in-process lookup+transform+onnx", served, path_rows, ""))
    report.append(
        f"{'  wall time per row: onnxruntime':52s} {1e6 / model_rows:9.2f} us,"
        f" lookup+transform {1e6 / path_rows - 1e6 / model_rows:.2f} us,"
        f" served {1e6 / served['rps']:.2f} us (2 requests in flight on 2 cores)"
    )
    print("\n".join(report))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["baseline"]:
        baseline(sys.argv[2], int(sys.argv[3]))
    else:
        main()
