"""Serving benchmark: in-process floor, predictor vs a plain KServe ModelServer, full path,
caches on and off.

Run from the repo root: ``python bench/serving.py`` (needs ``wrk``: ``apt-get install -y wrk``);
``python bench/serving.py caches`` runs only the comparison of the serving caches, on and off;
``python bench/serving.py shadow`` only the cost of a shadow model on the live path (run
once with the shadow predictor pinned to a core of its own, as a cluster gives it a pod,
and once with every process on every core). Everything binds 127.0.0.1, every load is
bounded (``DURATION`` seconds), and every figure is printed next to the one it is compared
with, measured in the same run. wrk, the servers and anything else running share the
machine's cores: the ratios matter, not the bare rates.

The model is the one production serves: mlref's CTR network, exported and int8-quantized by
the training code (untrained weights; speed does not depend on their values).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
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
CACHE_TRAFFIC_ROWS = 60_000  # three generated days: a round's slice is more than it sends
FEATURE_CACHE_ROWS = 100_000  # the setting's default
PREDICTION_CACHE_SIZE = 100_000
# A level-1 long bracket: the JSON holds "]]" (nested lists), which would end a plain [[...]].
LUA = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [=[{}]=]\n'


def wrk(
    url: str,
    body: dict,
    connections: int = CONCURRENCY,
    seconds: int = DURATION,
    lua: str = "",
) -> dict:
    """req/s, p50 and p99 (ms) and errors of a bounded wrk run posting ``body`` (or running
    the Lua script ``lua``)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua or LUA.format(json.dumps(body)))
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
    requests = re.search(r"(\d+) requests in", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": _ms(_percentile(out, 50)),
        "p99": _ms(_percentile(out, 99)),
        "errors": (int(errors.group(1)) if errors else 0) + (1 if socket_errors else 0),
        "requests": int(requests.group(1)),
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


# The first columns of the caches' and the shadow's tables: each configuration against the
# one with the feature off, measured in the same run.
AGAINST_OFF = f"  {'':18s} {'req/s':>8s} {'x off':>6s} {'p99 ms':>7s} {'x off':>6s}"


def against_off(label: str, result: dict, off: dict) -> str:
    return (
        f"  {label:18s} {result['rps']:8,.0f} {result['rps'] / off['rps']:6.2f} "
        f"{result['p99']:7.2f} {result['p99'] / off['p99']:6.2f}"
    )


def with_serving(settings, **changes):
    return settings.model_copy(update={"serving": settings.serving.model_copy(update=changes)})


def generated_requests(settings, n: int) -> list[dict]:
    """``n`` single-row requests as the generator's world makes them: Zipf-like popularity
    of users and ads, the day's mix of devices, sites, positions and hours (days 0, 1...)."""
    from mlref.data.generate import day_chunk, day_date
    from mlref.data.world import World

    world, per_day, frames = World.from_settings(settings), settings.data.rows_per_day, []
    for day in range(-(-n // per_day)):
        rows = min(per_day, n - day * per_day)
        frames.append(day_chunk(settings, world, day, day_date(settings, day), [], 0, rows))
    frame = pd.concat([f.to_pandas() for f in frames], ignore_index=True)
    frame = frame.drop(columns=["event_timestamp", "clicked"])
    return [{"instances": [row]} for row in frame.to_dict("records")]


def wrk_bodies(url: str, bodies: list[dict], seconds: int = DURATION) -> dict:
    """:func:`wrk` posting ``bodies`` in turn (one Lua state: one sequence over connections)."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as lines:
        lines.write("\n".join(json.dumps(body) for body in bodies) + "\n")
    script = (
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'bodies = {{}}\nfor line in io.lines("{lines.name}") do bodies[#bodies + 1] = line end\n'
        "i = 0\nrequest = function()\n  i = i % #bodies + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[i])\nend\n"
    )
    try:
        return wrk(url, {}, seconds=seconds, lua=script)
    finally:
        Path(lines.name).unlink()


def scraped(url: str, name: str) -> float:
    """The sum of a metric's samples on ``url``'s /metrics (all label values)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def caches(root: Path, settings, model_path: Path) -> list[str]:
    """Full path on generated traffic with each cache on and off: throughput, p99 and hit
    rates, every configuration against both caches off in the same run.

    All four configurations serve at once (a predictor and a transformer each, so no cache
    sees another's traffic) and take turns, ``ROUNDS`` times, each round on the next slice of
    the traffic, so that a cache never sees a request replayed from an earlier round.
    """
    traffic = generated_requests(settings, CACHE_TRAFFIC_ROWS)
    configs = {
        "no cache": (0, 0),
        "entity rows kept": (FEATURE_CACHE_ROWS, 0),
        "prediction cache": (0, PREDICTION_CACHE_SIZE),
        "both caches": (FEATURE_CACHE_ROWS, PREDICTION_CACHE_SIZE),
    }
    predictors, transformers = {}, {}
    try:
        for label, (rows, size) in configs.items():
            predictors[label] = start_predictor(
                with_serving(settings, prediction_cache_size=size), model_path, root
            )
            transformers[label] = start_transformer(
                with_serving(
                    settings,
                    feature_cache_rows=rows,
                    log_spool_dir=str(root / f"spool-{len(transformers)}"),
                ),
                f"http://127.0.0.1:{predictors[label].port}",
                root,
            )
        runs = {label: [] for label in configs}
        part = len(traffic) // ROUNDS
        for round_ in range(ROUNDS):
            bodies = traffic[round_ * part : (round_ + 1) * part]
            for label, server in transformers.items():
                url = f"http://127.0.0.1:{server.port}/v1/models/ctr:predict"
                runs[label].append(wrk_bodies(url, bodies))
        sent = max(r["rps"] for found in runs.values() for r in found) * DURATION
        rates = {}
        for label in configs:
            found = []
            for server, name in (
                (transformers[label], "feature"),
                (predictors[label], "prediction"),
            ):
                url = f"http://127.0.0.1:{server.port}"
                hits = scraped(url, f"mlref_{name}_cache_hits_total")
                misses = scraped(url, f"mlref_{name}_cache_misses_total")
                found.append(hits / (hits + misses) if hits + misses else 0.0)
            rates[label] = found
    finally:
        for server in [*transformers.values(), *predictors.values()]:
            server.stop()
    results = {label: median_round(found) for label, found in runs.items()}
    off = results["no cache"]
    report = [
        f"caches, full path single row c={CONCURRENCY}, generated traffic (median of {ROUNDS}"
        f" rounds of {part:,} requests" + (", replayed: more were sent)" if sent > part else ")"),
        f"{AGAINST_OFF} {'entity hits':>11s} {'score hits':>10s} errors",
    ]
    for label, result in results.items():
        entity, score = rates[label]
        report.append(
            f"{against_off(label, result, off)} {entity:11.1%} {score:10.2%} {result['errors']}"
        )
    return report


SHADOW_SLOW_MS = 20.0  # a shadow ten times slower than this model's ~2 ms at c=8


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of each process onto ``cpus`` (threads started later inherit it)."""
    import psutil

    for pid in pids:
        for thread in psutil.Process(pid).threads():
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(thread.id, cpus)


def placements(cores: list[int]) -> dict[str, tuple[set[int], set[int]]]:
    """Where each run puts (the live path, the shadow predictors). Own core: as in a cluster,
    where the shadow predictor is a pod with CPU of its own, the live path (wrk, transformer,
    live predictor) keeps the same cores in every configuration and the shadow never takes
    from them; shared: everything on every core, the shadow's CPU taken from the live path."""
    found = {}
    if len(cores) > 1:
        found["own core"] = (set(cores[:-1]), {cores[-1]})
    found["shared"] = (set(cores), set(cores))
    return found


def shadow(root: Path, settings, model_path: Path) -> list[str]:
    """Full path single rows at c=8 with no shadow, a shadow scoring every request (with the
    default linger, and with none: one call per live batch), and a slow one
    (``SHADOW_SLOW_MS`` per call, past its timeout when calls queue): throughput, p99 and the
    transformer's CPU per request, each against no shadow in the same run, ``ROUNDS`` turns,
    once for each placement of the processes on the cores (:func:`placements`). Each
    transformer reads its own shadow state file; the shadows serve the same model."""
    from mlref.shadow.state import Shadow, write_shadow

    rows = business_rows(256, seed=1)
    bodies = [{"instances": [row]} for row in rows]
    state = write_shadow(root / "shadow-running.yaml", Shadow(str(model_path), started_at="now"))
    cores = sorted(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    live = start_predictor(settings, model_path, root)
    servers, transformers, shadow_of = [live], {}, {}
    linger = settings.shadow.linger_ms
    try:
        shadows = {
            "shadow": start_predictor(settings, model_path, root, "shadow"),
            "slow shadow": start_predictor(
                settings, model_path, root, "shadow", delay_ms=SHADOW_SLOW_MS
            ),
        }
        servers += shadows.values()
        configs = {
            "no shadow": (None, linger),
            f"shadow {linger:g} ms": (shadows["shadow"], linger),
            "shadow no linger": (shadows["shadow"], 0.0),
            "slow shadow": (shadows["slow shadow"], linger),
        }
        for label, (mirror, linger_ms) in configs.items():
            config = settings.model_copy(
                update={
                    "shadow": settings.shadow.model_copy(
                        update={
                            "port": mirror.port if mirror else free_port(),
                            "state_file": str(state if mirror else root / "no-shadow.yaml"),
                            "timeout_seconds": 0.25,
                            "linger_ms": linger_ms,
                        }
                    ),
                    "serving": settings.serving.model_copy(
                        update={"log_spool_dir": str(root / f"spool-shadow-{len(transformers)}")}
                    ),
                }
            )
            transformers[label] = start_transformer(config, f"http://127.0.0.1:{live.port}", root)
            shadow_of[label] = mirror
        servers = [*transformers.values(), *servers]
        live_pids = [live.process.pid, *(t.process.pid for t in transformers.values())]
        shadow_pids = [s.process.pid for s in shadows.values()]
        report = [
            f"shadow, full path single row c={CONCURRENCY} (median of {ROUNDS} rounds; "
            f"load average {load:.1f} at the start)"
        ]
        for place, (live_cpus, shadow_cpus) in placements(cores).items():
            pin(live_pids, live_cpus)
            pin(shadow_pids, shadow_cpus)
            os.sched_setaffinity(0, live_cpus)  # wrk, started from here, inherits it
            try:
                report += _shadow_runs(
                    place, live_cpus, shadow_cpus, transformers, shadow_of, bodies
                )
            finally:
                os.sched_setaffinity(0, set(cores))
        report.append(f"  load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        for server in servers:
            server.stop()
    return report


SHADOW_COUNTERS = (
    "mlref_shadow_scored_rows_total",
    "mlref_shadow_dropped_rows_total",
    "mlref_shadow_seconds_count",
)


def _shadow_runs(place, live_cpus, shadow_cpus, transformers, shadow_of, bodies) -> list[str]:
    """One placement's rounds: every configuration in turn, ``ROUNDS`` times."""
    runs = {label: [] for label in transformers}
    cpu = {label: [0.0, 0.0, 0] for label in transformers}  # transformer s, shadow s, requests

    def counters() -> dict:
        return {
            label: [scraped(f"http://127.0.0.1:{server.port}", n) for n in SHADOW_COUNTERS]
            for label, server in transformers.items()
        }

    before = counters()
    for _ in range(ROUNDS):
        for label, server in transformers.items():
            pids = [server.process.pid] + (
                [shadow_of[label].process.pid] if shadow_of[label] else []
            )
            used = [process_cpu(pid) for pid in pids]
            url = f"http://127.0.0.1:{server.port}/v1/models/ctr:predict"
            runs[label].append(wrk_bodies(url, bodies))
            for i, pid in enumerate(pids):
                cpu[label][i] += process_cpu(pid) - used[i]
            cpu[label][2] += runs[label][-1]["requests"]
    after = counters()
    results = {label: median_round(found) for label, found in runs.items()}
    off, off_cpu = results["no shadow"], cpu["no shadow"][0] / cpu["no shadow"][2]
    what = (
        f"wrk, transformer and live predictor on cores {sorted(live_cpus)} in every "
        f"configuration, shadow predictors on {sorted(shadow_cpus)} (a cluster gives the "
        "shadow a pod of its own)"
        if live_cpus != shadow_cpus
        else f"every process on cores {sorted(live_cpus)} (the shadow's CPU taken from the "
        "live path)"
    )
    report = [
        f"  {place}: {what}",
        f"{AGAINST_OFF} {'cpu/req':>8s} {'x off':>6s} {'rows/call':>9s} {'shadow cpu/row':>14s} "
        f"{'scored':>7s} {'dropped':>7s} errors",
    ]
    for label, result in results.items():
        scored, dropped, calls = (a - b for a, b in zip(after[label], before[label], strict=True))
        mine, theirs, requests = cpu[label]
        per_request = mine / requests
        shadow_cost = f"{theirs / scored * 1e6:11.0f} us" if scored else f"{'-':>14s}"
        report.append(
            f"{against_off(label, result, off)} {per_request * 1e6:5.0f} us "
            f"{per_request / off_cpu:6.2f} {scored / calls if calls else 0:9.1f} {shadow_cost} "
            f"{scored:7,.0f} {dropped:7,.0f} {result['errors']}"
        )
    return report


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    root = Path(tempfile.mkdtemp(prefix="mlref-bench-"))
    settings = with_serving(serving_settings(root, log_flush_seconds=2.0), max_batch=1024)
    fp32_path, model_path = production_model(root, settings)
    world = settings.data
    build_features(settings, range(1, world.n_users + 1), range(1, world.n_ads + 1))
    if sys.argv[1:2] == ["caches"]:
        print("\n".join(caches(root, settings, model_path)))
        shutil.rmtree(root, ignore_errors=True)
        return
    if sys.argv[1:2] == ["shadow"]:
        print("\n".join(shadow(root, settings, model_path)))
        shutil.rmtree(root, ignore_errors=True)
        return
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
    report.extend(caches(root, settings, model_path))
    report.extend(shadow(root, settings, model_path))
    print("\n".join(report))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["baseline"]:
        baseline(sys.argv[2], int(sys.argv[3]))
    else:
        main()
