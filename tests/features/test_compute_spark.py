"""The daily entity snapshots computed on Spark equal the local engine's."""

from __future__ import annotations

import pandas as pd
import pytest

from mlref.data.generate import generate
from mlref.data.ingest import ingest
from mlref.features.compute import TABLES, compute_tables, table_uri
from mlref.settings import EngineSettings, Settings
from tests.monitoring.conftest import day_window


def test_spark_computes_the_local_engines_snapshots(settings: Settings, spark) -> None:
    generate(settings)
    ingest(str(settings.raw_dir), settings, now=day_window(settings, settings.data.days)[1])
    local = compute_tables(settings)
    expected = {t.name: pd.read_parquet(table_uri(settings, t)) for t in TABLES}

    on_spark = settings.model_copy(update={"engine": EngineSettings(data="spark")})
    result = compute_tables(on_spark)

    assert result == local
    for table in TABLES:
        computed = pd.read_parquet(table_uri(settings, table))
        pd.testing.assert_frame_equal(computed, expected[table.name])
    assert min(len(frame) for frame in expected.values()) > 100


def test_spark_needs_curated_data_too(settings: Settings, spark) -> None:
    from mlref.features.counts import NoCuratedDataError

    with pytest.raises(NoCuratedDataError, match="run `mlref ingest run` first"):
        compute_tables(settings.model_copy(update={"engine": EngineSettings(data="spark")}))
