"""The ``mlref`` command line: one group per stage of the loop.

Each command is a thin wrapper over a plain function; heavy libraries are imported inside
the commands so that ``mlref --help`` stays instant.
"""

from __future__ import annotations

import typer

from mlref.cli import (
    canary,
    data,
    demo,
    drift,
    experiment,
    features,
    ingest,
    manifests,
    pipeline,
    serve,
    shadow,
    train,
)

app = typer.Typer(
    name="mlref",
    help="Kubernetes-native MLOps reference: ingest, features, train, serve, canary, watch.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
GROUPS = {
    "data": (data, "Generate synthetic ad-impression click logs."),
    "ingest": (ingest, "Validate raw logs into curated Parquet, quarantining bad rows."),
    "features": (features, "Compute, apply and materialize Feast features."),
    "train": (train, "Train, export, quantize and register the CTR model."),
    "pipeline": (pipeline, "Compile, run locally or submit the kfp training pipeline."),
    "demo": (demo, "Run the whole local loop on embedded defaults."),
    "serve": (serve, "Serve the champion with KServe: transformer and predictor."),
    "canary": (canary, "Roll a candidate model out on a share of traffic, analyse, decide."),
    "experiment": (experiment, "A/B test a candidate against the champion, by user."),
    "shadow": (shadow, "Score live traffic with a shadow model too, and compare the two."),
    "drift": (drift, "Compare live traffic with the champion's reference; retrain or alert."),
    "manifests": (manifests, "Render and verify the Kubernetes manifests and Helm chart."),
}
for name, (module, text) in GROUPS.items():
    app.add_typer(module.app, name=name, help=text)
