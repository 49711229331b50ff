"""Files published through a staging file: replaced whole, kept whole when a write fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlref import storage


def _fail_half_way(path: Path) -> None:
    path.write_bytes(b"half")
    raise OSError("disk full")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_replaced_whole_and_kept_on_failure(where: str, tmp_path: Path, request) -> None:
    if where == "s3":
        root = request.getfixturevalue("s3_env").create_bucket("atomic")
    else:
        root = str(tmp_path / "out")
    uri = f"{root}/date=2026-01-04/part-0.parquet"
    fs, path = storage.filesystem(uri)
    storage.write_atomically(uri, lambda p: p.write_bytes(b"first"))
    storage.write_atomically(uri, lambda p: p.write_bytes(b"second"))
    assert fs.cat_file(path) == b"second"
    with pytest.raises(OSError, match="disk full"):
        storage.write_atomically(uri, _fail_half_way)
    fs.invalidate_cache()
    assert fs.cat_file(path) == b"second"
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(path.rsplit("/", 1)[0], detail=False)] == [
        "part-0.parquet"
    ]
