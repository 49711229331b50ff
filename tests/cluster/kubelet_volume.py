"""A ConfigMap volume's files, written as kubelet writes them.

kubelet's ``AtomicWriter`` (kubernetes ``pkg/volume/util/atomic_writer.go``, ``Write``): the
payload goes to a new directory ``..<UTC timestamp><random>`` in the volume; a symlink
``..data_tmp`` to it is renamed over ``..data`` (one atomic step: a reader sees the old
payload or the new one, never a mix); each key is a symlink ``<key> -> ..data/<key>``, made
once; keys no longer in the payload lose theirs; the old directory is removed last. A write
whose payload equals the current one changes nothing. An ``optional`` ConfigMap that is
deleted leaves an empty payload: every key's symlink goes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

DATA = "..data"


def current(volume: Path) -> dict[str, str]:
    """The payload ``..data`` holds now."""
    data = volume / DATA
    if not data.is_symlink():
        return {}
    return {p.name: p.read_text() for p in sorted((volume / os.readlink(data)).iterdir())}


def write(volume: Path, files: Mapping[str, str]) -> None:
    """Put ``files`` (key -> content) in ``volume`` as kubelet's atomic writer does."""
    volume.mkdir(parents=True, exist_ok=True)
    data = volume / DATA
    old = os.readlink(data) if data.is_symlink() else None
    if old is not None and current(volume) == dict(files):
        return
    stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
    target = Path(tempfile.mkdtemp(prefix=stamp, dir=volume))
    target.chmod(0o755)
    for key, content in files.items():
        (target / key).write_text(content)
        (target / key).chmod(0o644)
    staging = volume / "..data_tmp"
    os.symlink(target.name, staging)
    os.rename(staging, data)
    for key in files:
        if not (volume / key).is_symlink():
            os.symlink(f"{DATA}/{key}", volume / key)
    for entry in volume.iterdir():
        if not entry.name.startswith("..") and entry.name not in files:
            entry.unlink()
    if old is not None:
        shutil.rmtree(volume / old)


def refresh(volume: Path, files: Mapping[str, str]) -> None:
    """kubelet's sync of a ConfigMap whose content changed: a new ``..data``, the mounted
    path itself never written."""
    before = current(volume)
    write(volume, files)
    assert current(volume) != before, "the refresh changed nothing"
