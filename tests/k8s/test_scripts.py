"""scripts/kind-up.sh is shellcheck-clean, and the mlref commands it runs are valid calls."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer

from mlref.cli import app
from mlref.settings import Settings
from tests.servers import find_binary


def test_kind_up_is_shellcheck_clean(root):
    shellcheck = find_binary("shellcheck", "shellcheck")
    result = subprocess.run(
        [shellcheck, "--severity=style", str(root / "scripts" / "kind-up.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def commands(script: Path) -> list[list[str]]:
    """The script's simple commands, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", script.read_text())
    lines = [line.split(" #", 1)[0].strip() for line in text.splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def mlref_calls(script: Path) -> list[list[str]]:
    """Each ``mlref ...`` invocation's words, pipelines split at ``|``."""
    calls = []
    for words in commands(script):
        while "|" in words:
            cut = words.index("|")
            calls.append(words[:cut])
            words = words[cut + 1 :]
        calls.append(words)
    return [words[1:] for words in calls if words and words[0] == "mlref"]


def check_call(args: list[str]) -> Any:
    """Parse ``args`` as the CLI does: unknown options and missing required ones raise."""
    command = typer.main.get_command(app)
    while hasattr(command, "commands"):  # a group: descend to the named command
        command, args = command.commands[args[0]], args[1:]
    return command.make_context(command.name, list(args))


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["pipeline", "submit", "training", "extra"], "unexpected extra argument"),
        (["data", "generate", "--x"], "No such option: --x"),
    ],
)
def test_check_call_refuses_what_the_cli_refuses(args, problem):
    with pytest.raises(Exception, match=problem):  # typer's own click exceptions
        check_call(args)


def assignments(script: Path) -> dict[str, str]:
    """The script's ``NAME=value`` assignments, exported or not (later ones win)."""
    found = {}
    for words in commands(script):
        for word in words[1:] if words[0] == "export" else words[:1]:
            name, sep, value = word.partition("=")
            if sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
                found[name] = value
    return found


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: variables.get(m[1], m[0]), text)


def test_kind_up_uploads_raw_logs_and_submits_the_run_with_a_source(root, monkeypatch):
    """A new user's last step: logs where the pipeline reads them, a run that reads them."""
    script = root / "scripts" / "kind-up.sh"
    calls = {tuple(args[:2]): args for args in mlref_calls(script)}
    assert set(calls) >= {
        ("manifests", "kind-objects"),
        ("data", "generate"),
        ("pipeline", "submit"),
    }
    for args in calls.values():
        check_call(args)  # every required option given, none unknown
    assert "--upload" in calls[("data", "generate")]
    tools = next(words for words in commands(script) if words[:2] == ["for", "tool"])
    assert "mlref" in [word.rstrip(";") for word in tools]
    # The source is where `data generate --upload` puts the logs under the script's settings,
    # and those settings pass cluster mode's validation (the store is named).
    variables = assignments(script)
    for name, value in variables.items():
        if name.startswith("MLREF_"):
            monkeypatch.setenv(name, expand(value, variables))
    monkeypatch.delenv("MLREF_STORAGE__RAW_URI", raising=False)
    settings = Settings()
    assert settings.mode == "cluster"
    source = check_call(calls[("pipeline", "submit")]).params["source"]
    assert expand(expand(source, variables), variables) == settings.raw_uri
