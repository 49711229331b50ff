"""The KServe parts mlref.serving.server builds its servers from, pinned so that an upgrade
that changes one fails here, by name, instead of silently changing how servers answer.

All are public (no underscore): the data plane and model repository, the endpoint
registrations, the metrics handler, the gRPC server and the logging setup. The one
behaviour relied on beyond signatures: a JSON syntax error surfaces as ``InvalidInput``
raised while handling orjson's ``JSONDecodeError``, which is how the server tells malformed
JSON from other invalid input without reading KServe's message text.
"""

from __future__ import annotations

import inspect

import orjson
import pytest
from kserve.errors import InvalidInput
from kserve.logging import configure_logging
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.rest.server import metrics_handler
from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

from mlref.serving.requests import RequestError
from mlref.serving.server import MlrefDataPlane

USED = {
    "DataPlane.decode": (DataPlane.decode, ["self", "body", "headers", "protocol_version"]),
    "DataPlane.decode_inference_request": (
        DataPlane.decode_inference_request,
        ["self", "body", "headers", "model_name"],
    ),
    "DataPlane.model_metadata": (DataPlane.model_metadata, ["self", "model_name"]),
    "DataPlane.live": (DataPlane.live, []),
    "ModelRepository.update": (ModelRepository.update, ["self", "model"]),
    "ModelRepository.unload": (ModelRepository.unload, ["self", "name"]),
    "register_v1_endpoints": (
        register_v1_endpoints,
        ["app", "dataplane", "model_repository_extension"],
    ),
    "register_v2_endpoints": (
        register_v2_endpoints,
        ["app", "dataplane", "model_repository_extension"],
    ),
    "GRPCServer": (
        GRPCServer.__init__,
        ["self", "port", "data_plane", "model_repository_extension", "kwargs", "grace_period"],
    ),
    "GRPCServer.start": (GRPCServer.start, ["self", "max_workers"]),
    "GRPCServer.stop": (GRPCServer.stop, ["self", "sig"]),
    "metrics_handler": (metrics_handler, ["request"]),
    "configure_logging": (configure_logging, ["log_config"]),
}


@pytest.mark.parametrize("name", list(USED))
def test_kserve_part_keeps_its_signature(name):
    function, expected = USED[name]
    params = list(inspect.signature(function).parameters)
    assert params[: len(expected)] == expected, f"KServe changed {name}: {params}"


def test_kserve_still_signals_malformed_json_by_the_json_error():
    plane = DataPlane(model_registry=ModelRepository())
    with pytest.raises(InvalidInput) as raised:
        plane.decode(b"{not json", {})
    assert isinstance(raised.value.__context__, orjson.JSONDecodeError)


def test_malformed_json_and_non_v2_bodies_are_the_clients_error():
    plane = MlrefDataPlane(model_registry=ModelRepository())
    with pytest.raises(RequestError) as raised:
        plane.decode(b"{not json", {})
    assert (raised.value.code, raised.value.status) == ("malformed_json", 400)
    for body in (b'{"x": 1}', b'{"inputs": 5}', b'{"inputs": [{"name": "x"}]}'):
        with pytest.raises(RequestError) as raised:
            plane.decode(body, {}, "v2", "m")
        assert raised.value.status == 400 and "v2 request" in raised.value.message


def test_no_mlref_option_trips_kserves_import_time_argv_parse():
    """``import kserve`` runs ``parse_known_args`` on this process's argv, where an option that
    abbreviates two of KServe's (``--grpc``: ``--grpc_port``, ``--grpc_max_...``) exits."""
    import click
    import typer.main
    from kserve.model_server import parser

    from mlref.cli import app

    def walk(command: click.Command, path: str):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    tripped = []
    for path, command in walk(typer.main.get_command(app), "mlref"):
        for param in command.params:
            for opt in (o for o in param.opts if o.startswith("--")):
                argv = [opt] if getattr(param, "is_flag", False) else [opt, "1"]
                try:
                    parser.parse_known_args(argv)
                except SystemExit:
                    tripped.append(f"{path} {opt}")
    assert not tripped, f"rename these options: {tripped}"
