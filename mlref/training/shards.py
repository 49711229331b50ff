"""The training-set artifact: Parquet shards per split and day, and a manifest beside them.

Layout under the set's location (a local folder, the kfp ``Dataset`` artifact, or ``s3://``)::

    manifest.json
    train/date=2026-01-01/part-00000.parquet
    val/date=2026-01-08/part-00000.parquet
    ...

A day is written as soon as it is built, in shards of at most ``SHARD_ROWS`` rows (row groups of
``ROW_GROUP_ROWS``), so neither the writer nor a reader ever needs more than one shard of the set
in memory. The manifest lists every shard in row order with its row count and in-memory size,
plus the schema and the feature fingerprint: a reader plans (resident or streamed) from it
without opening a shard, and a set always reads back in the order it was built. Each shard is
published whole (:func:`mlref.storage.publish`) and the manifest last, so a set without a
manifest is an unfinished one.
"""

from __future__ import annotations

import copy
import json
import posixpath
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlref import storage
from mlref.features.transform import FeatureSpec

MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
FORMAT = 1
SHARD_ROWS = 262_144
ROW_GROUP_ROWS = 65_536


class ShardSetError(ValueError):
    """A location holds no finished training set (no manifest) or one of another format."""


@dataclass(frozen=True)
class Shard:
    """One Parquet file of a split: its path relative to the set, day, rows and pandas bytes.

    ``start`` > 0 or ``rows`` under the file's count: a rank's slice of the file
    (:meth:`ShardSet.for_rank`); the manifest itself lists whole files.
    """

    path: str
    day: str
    rows: int
    bytes: int
    start: int = 0


class ShardWriter:
    """Writes a split's days as shards under ``uri``; :meth:`close` writes the manifest."""

    def __init__(self, uri: str, spec: FeatureSpec):
        self.uri = uri.rstrip("/")
        self.spec = spec
        self.shards: dict[str, list[Shard]] = {}
        self.schema: pa.Schema | None = None

    def write(self, split: str, day: str, frame: pd.DataFrame) -> None:
        """Write one day of ``split`` (rows in the order given), in one or more shards."""
        shards = self.shards.setdefault(split, [])
        for number, start in enumerate(range(0, len(frame), SHARD_ROWS)):
            shards.append(
                self.write_shard(split, day, number, frame.iloc[start : start + SHARD_ROWS])
            )

    def write_shard(self, split: str, day: str, number: int, part: pd.DataFrame) -> Shard:
        """Publish ``part`` (at most ``SHARD_ROWS`` rows) whole as shard ``number`` of the day."""
        table = pa.Table.from_pandas(part, preserve_index=False)
        if self.schema is None:
            self.schema = table.schema
        relative = f"{split}/date={day}/part-{number:05d}.parquet"
        with tempfile.TemporaryDirectory(
            prefix=".mlref-shard-", dir=self._scratch(relative)
        ) as scratch:
            local = Path(scratch) / "part.parquet"
            pq.write_table(table, local, row_group_size=ROW_GROUP_ROWS)
            storage.publish(local, f"{self.uri}/{relative}")
        size = int(part.memory_usage(index=False, deep=True).sum())
        return Shard(relative, day, len(part), size)  # a whole file: no start

    def _scratch(self, relative: str) -> Path | None:
        """Where a shard is written before it is published: beside its final place on local
        disk (a rename across filesystems fails), the system's temp folder for object stores."""
        fs, path = storage.filesystem(f"{self.uri}/{relative}")
        if not storage.is_local(fs):
            return None
        folder = Path(path).parent
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def close(self) -> dict:
        """Write the manifest (last: its presence marks the set finished); returns it."""
        manifest = {
            "format": FORMAT,
            "feature_version": self.spec.fingerprint,
            "schema": [{"name": f.name, "type": str(f.type)} for f in self.schema or []],
            "rows": {split: sum(s.rows for s in shards) for split, shards in self.shards.items()},
            "shards": {
                split: [{k: v for k, v in asdict(s).items() if k != "start"} for s in shards]
                for split, shards in self.shards.items()
            },
        }
        fs, root = storage.filesystem(self.uri)
        fs.makedirs(root, exist_ok=True)
        with fs.open(posixpath.join(root, MANIFEST), "w") as out:
            json.dump(manifest, out, indent=2)
        return manifest


class ShardSet:
    """A finished training set at ``uri`` (local path or ``s3://``), read shard by shard."""

    def __init__(self, uri: str):
        self.uri = str(uri).rstrip("/")
        self.fs, self.root = storage.filesystem(self.uri)
        path = posixpath.join(self.root, MANIFEST)
        if not self.fs.exists(path):
            raise ShardSetError(
                f"{self.uri}: no {MANIFEST}, so no finished training set; run "
                "`mlref train run` (or the pipeline's training-set step) to write one"
            )
        with self.fs.open(path) as source:
            self.manifest = json.load(source)
        if self.manifest.get("format") != FORMAT:
            raise ShardSetError(
                f"{self.uri}: training-set format {self.manifest.get('format')}, this version "
                f"reads {FORMAT}; rebuild the training set"
            )

    def shards(self, split: str) -> list[Shard]:
        return [Shard(**s) for s in self.manifest["shards"].get(split, [])]

    def rows(self, split: str) -> int:
        return sum(s.rows for s in self.shards(split))

    def memory_bytes(self) -> int:
        """Bytes every split takes as pandas frames (what reading it all would hold)."""
        return sum(s.bytes for split in self.manifest["shards"] for s in self.shards(split))

    def table(
        self, shard: Shard, columns: Sequence[str] | None = None, dictionaries: Sequence[str] = ()
    ) -> pa.Table:
        """The shard's rows: every column, or ``columns``; ``dictionaries`` read as dictionary
        columns (pandas categoricals)."""
        table = pq.read_table(
            posixpath.join(self.root, shard.path),
            columns=columns,
            filesystem=self.fs,
            read_dictionary=list(dictionaries) or None,
        )
        if shard.start or shard.rows < table.num_rows:
            table = table.slice(shard.start, shard.rows)
        return table

    def for_rank(self, rank: int, world: int) -> ShardSet:
        """This set as rank ``rank`` of ``world`` sees it: each split's rows cut into ``world``
        contiguous ranges in manifest order, sizes differing by at most one row, and rank
        ``rank`` given the shards (or slices of shards) of its range.

        Deterministic from the manifest alone, so every rank computes the same plan without
        talking to the others, and every row belongs to exactly one rank. Balanced by rows, not
        by whole shards: a set of a few day shards would otherwise leave ranks idle, and DDP
        steps all ranks together, so the largest range sets the pace.
        """
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        view = copy.copy(self)
        view.manifest = {**self.manifest, "shards": {}, "rows": {}}
        for split in self.manifest["shards"]:
            total = self.rows(split)
            first, last = total * rank // world, total * (rank + 1) // world
            mine, offset = [], 0
            for shard in self.shards(split):
                lo, hi = max(first, offset), min(last, offset + shard.rows)
                if lo < hi:
                    share = shard.bytes * (hi - lo) // max(shard.rows, 1)
                    mine.append(Shard(shard.path, shard.day, hi - lo, share, lo - offset))
                offset += shard.rows
            view.manifest["shards"][split] = [asdict(s) for s in mine]
            view.manifest["rows"][split] = last - first
        return view

    def days(self, split: str) -> list[str]:
        """The split's days, in order."""
        return sorted({shard.day for shard in self.shards(split)})

    def recent(self, split: str, days: int) -> ShardSet:
        """This set with ``split`` cut to its last ``days`` days (a warm start's window)."""
        keep = set(self.days(split)[-days:])
        view = copy.copy(self)
        shards = [asdict(s) for s in self.shards(split) if s.day in keep]
        view.manifest = {
            **self.manifest,
            "shards": {**self.manifest["shards"], split: shards},
            "rows": {**self.manifest["rows"], split: sum(s["rows"] for s in shards)},
        }
        return view

    def read(self, shard: Shard) -> pd.DataFrame:
        return self.table(shard).to_pandas()

    def inputs(self, shard: Shard, columns: Sequence[str]) -> pd.DataFrame:
        """The shard's ``columns`` (those it has), strings as pandas categoricals: what training
        encodes, at about a third of :meth:`read`'s CPU. Streamed training reads every shard
        each epoch on the cores that train, and most of a full read is other columns (request
        ids, one Python string per row) and per-row strings of a handful of categories."""
        wanted = set(columns)
        schema = [field for field in self.manifest["schema"] if field["name"] in wanted]
        strings = [field["name"] for field in schema if field["type"] == "string"]
        names = [field["name"] for field in schema]
        return self.table(shard, names, strings).to_pandas()

    def frames(self, split: str) -> Iterator[pd.DataFrame]:
        """The split's shards as frames, in row order, one at a time."""
        for shard in self.shards(split):
            yield self.read(shard)

    def frame(self, split: str) -> pd.DataFrame:
        """The whole split in memory (the resident path; a split of no rows is empty)."""
        tables = [self.table(shard) for shard in self.shards(split)]
        if not tables:
            return pd.DataFrame(columns=[f["name"] for f in self.manifest["schema"]])
        return pa.concat_tables(tables).to_pandas()
