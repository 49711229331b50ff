"""Storage on an object store, as long-running readers use it."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from mlref import storage
from tests.conftest import S3Server


def test_a_reader_sees_the_files_other_pods_added_since_its_last_read(s3_env: S3Server):
    # A canary or experiment analysis reads the inference log again and again in one process
    # while transformer pods add parts to today's partition. With fsspec's listings cache,
    # the second read listed the new part and then failed to open it (FileNotFoundError
    # from the cached listing of its directory).
    uri = s3_env.create_bucket("mlref-readers")
    pod = s3_env.client()

    def added(name: str, value: int) -> None:
        """A part another pod wrote."""
        out = io.BytesIO()
        pq.write_table(pa.table({"x": [value]}), out)
        key = f"log/date=2026-01-02/{name}.parquet"
        pod.put_object(Bucket="mlref-readers", Key=key, Body=out.getvalue())

    def read() -> list[int]:
        return sorted(storage.dataset(f"{uri}/log").to_table()["x"].to_pylist())

    added("part-1", 1)
    assert read() == [1]
    added("part-2", 2)
    assert read() == [1, 2]
    assert storage.parquet_files(f"{uri}/log") == [
        f"mlref-readers/log/date=2026-01-02/part-{i}.parquet" for i in (1, 2)
    ]
