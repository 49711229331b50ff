"""The KServe internals mlref.serving.server still relies on, pinned so that an upgrade that
changes one fails here, by name, instead of silently changing how servers start or answer.

Each is kept for a reason KServe 0.21 has no public switch for: the bind address (KServe's
RESTServer hard-codes 0.0.0.0; local mode binds 127.0.0.1), one uvicorn process on the loop
the role was measured fastest on (bench/serving.py), the one error shape, request metrics
by the answering model, and the feature spec in the v2 model metadata.
"""

from __future__ import annotations

import inspect

import pytest
from kserve import ModelServer
from kserve.errors import InvalidInput
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.server import RESTServer

from mlref.serving.server import KSERVE_BAD_JSON

HOOKS = {
    (ModelServer, "_register_and_check_atleast_one_model_is_ready"): ["self", "models"],
    (ModelServer, "_serve"): ["self"],
    (ModelServer, "setup_event_loop"): ["self"],
    (ModelServer, "register_signal_handler"): ["self"],
    (RESTServer, "_register_endpoints"): ["self", "app"],
    (RESTServer, "_add_exception_handlers"): ["self", "app"],
    (RESTServer, "_add_middlewares"): ["self", "app"],
    (DataPlane, "decode_inference_request"): ["self", "body", "headers", "model_name"],
}


@pytest.mark.parametrize("owner, name", list(HOOKS), ids=[f"{o.__name__}.{n}" for o, n in HOOKS])
def test_private_hook_keeps_its_signature(owner, name):
    params = list(inspect.signature(getattr(owner, name)).parameters)
    assert params == HOOKS[(owner, name)], f"KServe changed {owner.__name__}.{name}: {params}"


def test_rest_server_still_builds_its_app_through_the_hooks():
    """Overriding the three RESTServer hooks only works while create_application calls them."""
    source = inspect.getsource(RESTServer.create_application)
    for hook in ("_register_endpoints", "_add_exception_handlers", "_add_middlewares"):
        assert f"self.{hook}(" in source, f"RESTServer.create_application no longer calls {hook}"
    init = inspect.signature(RESTServer.__init__).parameters
    assert {"app", "data_plane", "model_repository_extension", "http_port"} <= set(init)
    assert "self.config = uvicorn.Config(" in inspect.getsource(RESTServer.__init__)


def test_kserve_bad_json_message_is_still_what_we_translate():
    """Our error shape names malformed JSON by KServe's message text (it has no error type)."""
    plane = DataPlane(model_registry=ModelRepository())
    with pytest.raises(InvalidInput) as raised:
        plane.decode(b"{not json", {})
    assert str(raised.value).startswith(KSERVE_BAD_JSON)


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
