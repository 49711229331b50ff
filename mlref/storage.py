"""Shared storage through fsspec: one set of calls for a local folder and an object store.

Locations come from :class:`mlref.settings.Settings` (``curated_uri``, ``labels_uri``, ...):
plain paths locally, ``s3://...`` in a cluster, where S3 clients take the endpoint and
credentials from the standard ``AWS_*`` environment the object-store Secret provides.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import fsspec
import pyarrow.dataset as ds


def filesystem(uri: str, **options) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding ``uri`` and the path within it.

    An object store is listed afresh every time. Other pods add files between a long-running
    reader's reads (the inference log, while a canary or an experiment is analysed), and
    fsspec's listings cache would hide them; worse, s3fs then refuses to open a file a fresh
    listing found, answering FileNotFoundError from the stale listing of its directory."""
    if fsspec.utils.get_protocol(uri) != "file":
        options = {"use_listings_cache": False, **options}
    return fsspec.core.url_to_fs(uri, **options)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in fs.protocol if isinstance(fs.protocol, tuple) else fs.protocol == "file"


def parquet_files(uri: str, pattern: str = "**/*.parquet") -> list[str]:
    """The Parquet files under ``uri`` (sorted paths within its filesystem); none if absent."""
    fs, root = filesystem(uri)
    if not fs.exists(root):
        return []
    return sorted(fs.glob(f"{root.rstrip('/')}/{pattern}"))


def dataset(uri: str, **options) -> ds.Dataset:
    """A pyarrow dataset over ``uri`` read through fsspec, so the S3 endpoint is honoured."""
    fs, root = filesystem(uri)
    return ds.dataset(root, filesystem=fs, format="parquet", **options)


def publish(local: Path, uri: str) -> None:
    """Put a finished local file at ``uri``: a rename on local disk, one upload to an object
    store; readers never see a half-written file either way."""
    fs, path = filesystem(uri)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    if is_local(fs):
        os.replace(local, path)
    else:
        fs.put_file(str(local), path)
        local.unlink()


def upload_tree(local: Path, uri: str) -> list[str]:
    """Copy every file under the folder ``local`` to ``uri``, keeping relative paths (a
    dataset's ``date=...`` partitions); an object store's bucket is made if missing."""
    fs, root = filesystem(uri)
    fs.makedirs(root, exist_ok=True)
    written = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        target = posixpath.join(root, path.relative_to(local).as_posix())
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        fs.put_file(str(path), target)
        written.append(target)
    return written


def move(source: str, uri: str) -> None:
    """Move a finished file to ``uri``: a rename on local disk, an upload from local disk, a
    copy and delete within an object store; readers never see a half-written file."""
    fs, path = filesystem(source)
    if is_local(fs):
        publish(Path(path), uri)
        return
    target_fs, target = filesystem(uri)
    target_fs.makedirs(posixpath.dirname(target), exist_ok=True)
    fs.mv(path, target)


def write_atomically(uri: str, write: Callable[[Path], None]) -> None:
    """Write the file ``uri`` through ``write(staging)`` and :func:`publish` it: readers see
    the old file or the new one, and a failure leaves the old one. Staging lies beside the
    target on local disk (hidden: dataset readers skip names starting with "."), so the
    publish is a rename; for an object store it is a local file, then one upload."""
    fs, path = filesystem(uri)
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        name = posixpath.basename(path)
        staging = Path(posixpath.dirname(path)) / f".{name}.{uuid.uuid4().hex}.staging"
        folder = None
    else:
        folder = tempfile.mkdtemp(prefix="mlref-staging-")
        staging = Path(folder) / posixpath.basename(path)
    try:
        write(staging)
        publish(staging, uri)
    finally:
        staging.unlink(missing_ok=True)
        if folder:
            os.rmdir(folder)
