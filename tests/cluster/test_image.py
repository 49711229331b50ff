"""A pod sees the image, not this machine: the image's user, no checkout, no home."""

from __future__ import annotations

import copy
import json
import os
import tomllib
from pathlib import Path

import pytest

from tests.cluster.pods import REPO, image_user, installed, run_pod
from tests.servers import require

PROBE = """
import json, os, sys
def writable(path):
    try:
        with open(os.path.join(path, "probe"), "w"):
            return True
    except OSError:
        return False
print(json.dumps({
    "ids": [os.getuid(), os.getgid()],
    "seen": [p for p in sys.argv[1:] if os.path.exists(p)],
    "writable": [p for p in ("/", "/etc", "/opt/mlref", "/var/tmp", "/tmp") if writable(p)],
}))
"""


@pytest.mark.parametrize("tmp_mounted", [True, False])
def test_a_chart_pod_runs_as_the_images_user_without_the_checkout_or_the_home(
    tmp_mounted: bool, kind_chart: list[dict], tmp_path: Path
) -> None:
    require(os.geteuid() == 0, "running pods as the image's user needs root (uid 10001)")
    assert image_user() == (10001, 10001)  # the Dockerfile's USER
    job = copy.deepcopy(
        next(
            o
            for o in kind_chart
            if o["kind"] == "CronJob" and o["metadata"]["name"] == "drift-check"
        )
    )
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    private = [str(REPO / "pyproject.toml"), str(REPO / ".git"), str(Path.home() / ".bashrc")]
    container["command"], container["args"] = ["python3", "-c", PROBE, *private], []
    if not tmp_mounted:  # the root filesystem is read-only: /tmp too, without its emptyDir
        container["volumeMounts"] = [
            m for m in container["volumeMounts"] if m["mountPath"] != "/tmp"
        ]
    claims = {"drift-state": tmp_path / "state"}
    claims["drift-state"].mkdir()
    done = run_pod(job, installed(kind_chart), tmp_path, claims=claims)
    assert done.returncode == 0, done.stdout
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["ids"] == [10001, 10001]
    assert seen["seen"] == []
    # The chart mounts an emptyDir at /tmp; nothing else is writable.
    assert seen["writable"] == (["/tmp"] if tmp_mounted else [])


def test_the_image_installs_every_package_of_the_checkout() -> None:
    """The image is ``pip install .``: a package the wheel leaves out is missing from every
    pod (the transformer's ``mlref.experiment`` once was), though tests of the checkout pass."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {
        f"mlref.{name}": Path(path)
        for name, path in (
            (key.removeprefix("mlref."), value) for key, value in config["package-dir"].items()
        )
    }
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "mlref").rglob("__init__.py")
    }
    for package, folder in folders.items():
        found |= {
            ".".join((package, *init.parent.relative_to(REPO / folder).parts))
            for init in (REPO / folder).rglob("__init__.py")
        }
    assert found - listed == set()
