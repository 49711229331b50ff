"""An experiment on real servers: each user is scored by their variant's model, every time.

Stable and candidate predictors behind the local split proxy, which gives untagged traffic
10 % to the candidate; the transformer calls the proxy. With the experiment running, the
transformer tags each call with its rows' variant and the proxy routes by the tag, as Knative
tag-header routing does: every row of a B user is scored by the candidate and of an A user by
the stable model, single rows and mixed batches alike, and the log names the experiment and
the variant. Stopped, the experiment assigns nobody and the split applies again; the report
reads the log, the clicks and the two predictors' own metrics.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from mlref.canary.sources import LocalSource
from mlref.canary.state import CanaryState, write_state
from mlref.experiment import control
from mlref.experiment.assign import TREATMENT
from mlref.experiment.report import report
from mlref.monitoring.inference import read_inference_log, write_labels
from mlref.serving.requests import VARIANT_HEADER
from mlref.settings import CanarySettings, ExperimentSettings
from tests.canary import models
from tests.canary.e2e import start_candidate
from tests.servers import wait_until
from tests.serving.conftest import (
    KNOWN_ADS,
    KNOWN_USERS,
    build_features,
    serving_settings,
    start_predictor,
)
from tests.serving.test_servers import business_rows

pytestmark = pytest.mark.slow
NAME = "ranker"


def rows_for(users: list[int], tag: str) -> list[dict]:
    rows = business_rows(len(users), seed=3)
    for i, (row, user) in enumerate(zip(rows, users, strict=True)):
        row.update(user_id=user, ad_id=KNOWN_ADS[i % len(KNOWN_ADS)], request_id=f"{tag}-{i}")
    return rows


def test_each_user_is_scored_by_their_variants_model(tmp_path: Path):
    settings = serving_settings(tmp_path, log_flush_seconds=0.3).model_copy(
        update={
            "experiment": ExperimentSettings(name=NAME, percent=50),
            # The report's serving guardrails on this small traffic; latency is judged in the
            # canary's tests on given samples, never on a shared CPU's timings.
            "canary": CanarySettings(min_requests=20, latency_slack_ms=60_000.0),
        }
    )
    build_features(settings, KNOWN_USERS, KNOWN_ADS)
    stable = models.stable_model(tmp_path / "stable.onnx", settings)
    candidate = models.shifted_bias(stable, tmp_path / "candidate" / "model.onnx", 1.0)
    write_state(settings, CanaryState(str(candidate), str(stable), 10))
    experiment = control.start(settings, users=40)
    users = list(KNOWN_USERS)
    in_b = dict(zip(users, (experiment.variants(users) == TREATMENT).tolist(), strict=True))
    assert 5 < sum(in_b.values()) < 35

    predictor = start_predictor(settings, stable, tmp_path, "stable")
    serving = start_candidate(settings, f"http://127.0.0.1:{predictor.port}", candidate, tmp_path)
    url = f"{serving.transformer_url}/v1/models/{settings.model_name}:predict"
    try:
        with httpx.Client(timeout=30.0) as client:
            single = {}
            for round_ in range(3):
                for row in rows_for(users, f"single{round_}"):
                    answer = client.post(url, json={"instances": [row]})
                    assert answer.status_code == 200, answer.text
                    b = in_b[row["user_id"]]
                    assert answer.headers[VARIANT_HEADER] == ("canary" if b else "stable")
                    (prediction,) = answer.json()["predictions"]
                    assert prediction["experiment_variant"] == ("B" if b else "A")
                    single[row["user_id"]] = prediction["probability"]
            # One request with every user: split by variant, scored apart, answered in order.
            mixed = client.post(url, json={"instances": rows_for(users, "mixed")})
            assert mixed.status_code == 200, mixed.text
            predictions = mixed.json()["predictions"]
            assert [p["experiment_variant"] for p in predictions] == [
                "B" if in_b[u] else "A" for u in users
            ]
            assert np.allclose([p["probability"] for p in predictions], [single[u] for u in users])

            control.stop(settings)
            row = rows_for(users[:1], "after")[0]

            def unassigned() -> bool:
                answer = client.post(url, json={"instances": [row]}).json()
                return "experiment_variant" not in answer["predictions"][0]

            wait_until(unassigned, 10.0, "the transformer to see the experiment stopped")

        # Clicks for every scored row, then the report with the predictors' own metrics.
        def logged() -> bool:
            return (read_inference_log(settings)["experiment"] == NAME).sum() >= 4 * len(users)

        wait_until(logged, 30.0, "the inference log to hold every experiment row")
        ids = read_inference_log(settings)["request_id"].unique()
        clicks = np.random.default_rng(0).random(len(ids)) < 0.3
        write_labels(settings, pd.DataFrame({"request_id": ids, "clicked": clicks}), "clicks")
        found = report(settings, source=LocalSource(settings, serving.metrics_urls))
    finally:
        serving.stop()
        predictor.stop()

    log = read_inference_log(settings)
    after = log[log["request_id"].str.startswith("after")].sort_values("timestamp")
    ours = log[log["experiment"] == NAME]  # with the calls sent before the stop was seen
    assert len(ours) - after["experiment"].notna().sum() == 4 * len(users)  # each row once
    expected = ours["user_id"].map(in_b)
    assert (ours["experiment_variant"] == np.where(expected, "B", "A")).all()
    assert (ours["variant"] == np.where(expected, "canary", "stable")).all()
    assert ours.groupby("user_id")["experiment_variant"].nunique().max() == 1  # sticky
    assert after["experiment"].isna().iloc[-1]
    verdicts = {check.name: check.verdict for check in found.checks}
    assert found.users == {"A": 40 - sum(in_b.values()), "B": sum(in_b.values())}
    assert verdicts["routing"] == verdicts["sample ratio"] == verdicts["errors"] == "pass"
    assert found.check("errors").values["canary_rate"] == 0.0
    assert verdicts["latency"] == "pass"  # the slack is wide: no timing is judged here
