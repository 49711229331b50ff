"""`mlref serve` commands: both servers locally, or one of them (what a container runs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from mlref.console import console, fail

if TYPE_CHECKING:
    from mlref.settings import Settings

# The flags KServe's controller appends (pkg/apis/serving/v1beta1/transformer_custom.go) or
# that a ServingRuntime passes, under KServe's own names; mlref/k8s/kserve.py computes them.
MODEL_NAME_HELP = (
    "Name the model is served under (/v1/models/NAME); KServe passes the InferenceService "
    "name. Default settings.model_name."
)
WORKERS_HELP = (
    "KServe passes containerConcurrency here; only 1 (or 0) is accepted: one process per pod."
)

app = typer.Typer(invoke_without_command=True)


@app.callback()
def serve(
    ctx: typer.Context,
    model: str = typer.Option(
        "", help="Model file, directory or models:/ URI; default models:/<model_name>@champion."
    ),
    candidate: str = typer.Option(
        "",
        help="Canary candidate model (file, directory or models:/ URI), served as variant "
        "`canary` on canary.candidate_port behind a split proxy that gives it the share the "
        "canary state says.",
    ),
    grpc: bool = typer.Option(False, "--with-grpc", help="Also serve gRPC on the predictor."),
    shadow: str = typer.Option(
        "",
        help="Shadow model (file, directory or models:/ URI), served as variant `shadow` on "
        "shadow.port; the transformer mirrors requests to it while `mlref shadow start` says.",
    ),
) -> None:
    """Start predictor(s) and transformer on settings.serving.host (127.0.0.1) until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    from mlref.serving.server import default_model_uri, serve_local
    from mlref.settings import get_settings

    settings = get_settings()
    serving = settings.serving
    console.print(
        f"transformer http://{serving.host}:{serving.transformer_port}"
        f"/v1/models/{settings.model_name}:predict -> predictor "
        f"http://{serving.host}:{serving.predictor_port}"
        + (
            f" + candidate http://{serving.host}:{settings.canary.candidate_port}"
            if candidate
            else ""
        )
        + (f" + shadow {settings.shadow_url}" if shadow else "")
    )
    raise typer.Exit(
        serve_local(
            settings, model or default_model_uri(settings), candidate or None, grpc, shadow or None
        )
    )


@app.command()
def predictor(
    model: str = typer.Option(
        "",
        "--model",
        "--model_dir",
        help="Model file, directory (e.g. /mnt/models) or models:/ URI.",
    ),
    host: str = typer.Option("", help="Bind address; default settings.serving.host."),
    port: int = typer.Option(0, "--port", "--http_port", help="Default serving.predictor_port."),
    grpc: bool = typer.Option(False, "--with-grpc", help="Also serve gRPC."),
    grpc_port: int = typer.Option(8081, "--grpc-port", "--grpc_port"),
    model_name: str = typer.Option("", "--model_name", "--model-name", help=MODEL_NAME_HELP),
    workers: int = typer.Option(1, "--workers", min=0, help=WORKERS_HELP),
) -> None:
    """Serve the ONNX model with KServe (v1 and v2 protocols)."""
    from mlref.serving.server import default_model_uri, run_predictor

    settings = _settings(model_name, workers)
    serving = settings.serving
    try:
        run_predictor(
            settings,
            model or default_model_uri(settings),
            host or serving.host,
            port or serving.predictor_port,
            grpc,
            grpc_port,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None


@app.command()
def transformer(
    predictor_host: str = typer.Option(
        "",
        "--predictor-host",
        "--predictor_host",
        help="host:port of the predictor, or of a traffic split over several; default local.",
    ),
    host: str = typer.Option("", help="Bind address; default settings.serving.host."),
    port: int = typer.Option(0, "--port", "--http_port", help="Default serving.transformer_port."),
    model_name: str = typer.Option("", "--model_name", "--model-name", help=MODEL_NAME_HELP),
    workers: int = typer.Option(1, "--workers", min=0, help=WORKERS_HELP),
) -> None:
    """Serve the transformer: Feast lookup, shared transform, predictor call, inference log."""
    from mlref.serving.server import run_transformer

    settings = _settings(model_name, workers)
    serving = settings.serving
    target = predictor_host or f"{serving.host}:{serving.predictor_port}"
    try:
        run_transformer(
            settings,
            host or serving.host,
            port or serving.transformer_port,
            _url(target),
            serving.predictor_host_header,
        )
    except (RuntimeError, ValueError) as exc:
        raise fail(str(exc)) from None


def _settings(model_name: str, workers: int) -> Settings:
    """Settings with KServe's ``--model_name`` as the served name; one process only."""
    from mlref.settings import get_settings

    if workers > 1:
        raise fail(
            f"--workers {workers}: the server is one asyncio process; remove "
            "containerConcurrency from the InferenceService component and scale with "
            "minReplicas/maxReplicas instead",
            code=2,
        )
    settings = get_settings()
    if not model_name:
        return settings
    return settings.model_copy(update={"model_name": model_name})


def _url(target: str) -> str:
    return target if "://" in target else f"http://{target}"


@app.command("log-sink")
def log_sink(
    host: str = typer.Option("", help="Bind address; default settings.serving.host."),
    port: int = typer.Option(0, "--port", help="Default serving.log_sink_port."),
) -> None:
    """Receive inference-log CloudEvents (serving.log_sink http) and store them as Parquet."""
    from mlref.serving.log_sink import run_log_sink
    from mlref.settings import get_settings

    settings = get_settings()
    serving = settings.serving
    console.print(f"storing inference-log events in {settings.inference_log_uri}")
    run_log_sink(settings, host or serving.host, port or serving.log_sink_port)
