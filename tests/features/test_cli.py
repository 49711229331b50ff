"""`mlref features build` and `mlref features lookup`, through the real command line app."""

from __future__ import annotations

from typer.testing import CliRunner

from mlref.cli import app
from mlref.settings import Settings
from tests.features import LOG, events, write_curated


def test_build_then_lookup(cli_env: Settings):
    runner = CliRunner()
    write_curated(cli_env.curated_dir, events(LOG))

    built = runner.invoke(app, ["features", "build"])
    assert built.exit_code == 0, built.output
    assert "user_stats rows / entities" in built.output and "23 / 3" in built.output
    assert (cli_env.feature_dir / "online.db").is_file()

    looked = runner.invoke(app, ["features", "lookup", "--user-id", "1", "--ad-id", "555"])
    assert looked.exit_code == 0, looked.output
    assert "6 of 12 features defaulted" in looked.output
    assert "online store" in looked.output and "default (prior)" in looked.output


def test_expected_errors_are_one_line_and_exit_1(cli_env: Settings):
    runner = CliRunner()
    build = runner.invoke(app, ["features", "build"])
    assert build.exit_code == 1 and "mlref ingest run" in build.output
    assert "Traceback" not in build.output
    lookup = runner.invoke(app, ["features", "lookup", "--user-id", "1", "--ad-id", "2"])
    assert lookup.exit_code == 1 and "mlref features build" in lookup.output
