"""The ``mlref`` command line: one group per stage of the loop.

Each command is a thin wrapper over a plain function; heavy libraries are imported inside
the commands so that ``mlref --help`` stays instant.
"""

from __future__ import annotations

import typer

from mlref.cli import data, features, ingest, pipeline, train

app = typer.Typer(
    name="mlref",
    help="Kubernetes-native MLOps reference: ingest, features, train, serve, canary, watch.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data.app, name="data", help="Generate synthetic ad-impression click logs.")
app.add_typer(ingest.app, name="ingest", help="Validate raw logs into curated Parquet.")
app.add_typer(features.app, name="features", help="Compute, apply and materialize Feast features.")
app.add_typer(train.app, name="train", help="Train, export, quantize and register the CTR model.")
app.add_typer(pipeline.app, name="pipeline", help="Compile, run locally or submit the kfp pipeline.")
