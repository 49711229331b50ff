"""The contract is the one source: everything that lists request fields derives from it.

Every test here iterates over :data:`mlref.schema.FIELDS`, so a new field is checked by all
of them without an edit; ``tests/monitoring/test_fields.py`` follows each field through the
pipeline, from the generator to the drift report.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlref import schema
from mlref.data.ingest import ingest
from mlref.features.transform import SmallBatchTransform, build_spec, transform
from mlref.monitoring import drift, quality
from mlref.schema import FIELDS, MAX_TEXT
from mlref.serving import inference_log
from mlref.serving.requests import BUSINESS_FIELDS, RequestError, parse_business
from mlref.settings import DriftSettings, FeatureSettings, Settings

ROW = schema.examples(1).iloc[0].to_dict()
NOW = datetime(2026, 1, 3, 5, tzinfo=UTC)


def breaking(field: schema.Field) -> object:
    """A value of the right type that breaks the contract for ``field``."""
    return {"id": -1, "ordinal": field.high + 1, "category": "x" * (MAX_TEXT + 1)}[field.kind]


def test_every_list_of_fields_is_the_contracts():
    fields = schema.REQUEST_COLUMNS
    assert schema.RAW_SCHEMA.names == ["event_timestamp", "request_id", *fields, "clicked"]
    assert inference_log.SCHEMA.names[2 : 2 + len(fields)] == list(fields)
    assert list(BUSINESS_FIELDS) == [*fields, "request_id"]
    spec = build_spec(FeatureSettings())
    assert spec.categorical_names == fields
    assert set(drift.CATEGORICAL) == set(fields) - set(schema.ID_COLUMNS)
    assert set(quality.CHECKED_COLUMNS) == set(drift.FEATURES)
    for field in FIELDS:  # a nullable field may be null in the raw log, no other
        assert schema.RAW_SCHEMA.field(field.name).nullable == field.nullable
        assert field.nullable == (field.name in schema.NULLABLE_COLUMNS)


def test_examples_are_valid_everywhere_and_read_as_known_values():
    rows = schema.examples(50, seed=3)
    assert list(rows) == list(schema.REQUEST_COLUMNS)
    batch = parse_business({"instances": rows.to_dict("records")}, 50)
    assert batch.columns == rows.to_dict("list")
    spec = build_spec(FeatureSettings())
    stats = pd.DataFrame(0.0, index=rows.index, columns=list(spec.numeric))
    cat, _ = transform(pd.concat([rows, stats], axis=1), spec)
    assert cat.shape == (50, len(FIELDS)) and (cat > 0).all()  # none out-of-vocabulary
    assert (SmallBatchTransform(spec)(batch.columns, stats.to_numpy())[0] == cat).all()


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_requests_refuse_what_breaks_the_contract(field: schema.Field):
    value = breaking(field)
    with pytest.raises(RequestError, match=f"must be {field.description}") as error:
        parse_business({"instances": [ROW, ROW | {field.name: value}]}, 10)
    assert error.value.field == f"instances[1].{field.name}" and error.value.status == 400
    wrong_type = 3 if field.kind == "category" else "3"
    with pytest.raises(RequestError, match=f"instances\\[0\\].{field.name} must be"):
        parse_business({"instances": [ROW | {field.name: wrong_type}]}, 10)


def test_requests_keep_unknown_categories_and_refuse_long_text():
    for name in schema.CATEGORICAL_COLUMNS:
        batch = parse_business({"instances": [ROW | {name: "fridge"}]}, 10)
        assert batch.columns[name] == ["fridge"]  # kept: the model reads it as OOV
    with pytest.raises(RequestError, match="at most 64 characters, got 200000 characters"):
        parse_business({"instances": [ROW | {"device_type": "x" * 200_000}]}, 10)
    with pytest.raises(RequestError, match="at most 128 characters, got 129 characters"):
        parse_business({"instances": [ROW | {"request_id": "r" * 129}]}, 10)


def test_optional_fields_left_out_are_filled_or_read_as_out_of_vocabulary():
    spec = build_spec(FeatureSettings())
    stats = pd.DataFrame(0.0, index=[0, 1], columns=list(spec.numeric)).to_numpy()
    for field in (f for f in FIELDS if not f.required):
        left_out = {k: v for k, v in ROW.items() if k != field.name}
        batch = parse_business({"instances": [left_out, ROW]}, 10, now=NOW)
        first = field.fill(NOW) if field.fill else None
        assert batch.columns[field.name] == [first, ROW[field.name]]
        cat = SmallBatchTransform(spec)(batch.columns, stats)[0]
        assert (cat[0, FIELDS.index(field)] == 0) == field.nullable  # 0: out-of-vocabulary
        if field.nullable:  # null: unknown, the same as left out
            nulled = parse_business({"instances": [ROW | {field.name: None}, ROW]}, 10, now=NOW)
            assert nulled.columns[field.name] == [None, ROW[field.name]]
    for name in schema.REQUEST_COLUMNS:
        if BUSINESS_FIELDS[name][0]:
            with pytest.raises(RequestError, match=f"missing field '{name}'"):
                parse_business({"instances": [{k: v for k, v in ROW.items() if k != name}]}, 10)


def raw_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (request fields) as a raw click log on 2026-01-01, ``hour`` as timestamped."""
    hours = pd.to_numeric(rows["hour"], errors="coerce").fillna(0).clip(0, 23)
    return rows.assign(
        event_timestamp=pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(hours, "h"),
        request_id=[f"r{i}" for i in range(len(rows))],
        clicked=1,
    )[list(schema.RAW_COLUMNS)]


def test_ingestion_quarantines_contract_breaks_and_keeps_unknown_values(
    tmp_path: Path, settings: Settings
):
    """Per field: a breaking value and a null are quarantined with the field's reason (a
    null in a nullable field is kept); an unknown category is kept and counted."""
    cases = []  # (row changes, the reason it is quarantined for, or None: kept)
    for field in FIELDS:
        broken = "out of range" if field.kind == "ordinal" else ""
        cases.append(({field.name: breaking(field)}, f"{field.name}: {broken}"))
        cases.append(({field.name: None}, None if field.nullable else f"{field.name}: null"))
        if field.kind == "category":
            cases.append(({field.name: "brand-new"}, None))
    rows = schema.examples(len(cases) + 1, seed=5).astype(object)  # the last one unchanged
    for i, (changes, _) in enumerate(cases):
        for name, value in changes.items():
            rows.loc[i, name] = value
    source = tmp_path / "raw.parquet"
    raw_rows(rows).to_parquet(source)

    result = ingest(str(source), settings, now=NOW)
    quarantined = pd.read_parquet(settings.quarantine_dir).set_index("request_id")["reason"]
    for i, (changes, reason) in enumerate(cases):
        got = quarantined.get(f"r{i}")
        assert got is None if reason is None else got.startswith(reason), (changes, got)
    assert result.rows_quarantined == len(quarantined)
    assert result.unknown_values == dict.fromkeys(schema.CATEGORICAL_COLUMNS, 1)
    curated = pd.read_parquet(settings.curated_dir)
    assert len(curated) == len(cases) + 1 - len(quarantined)
    for name in schema.NULLABLE_COLUMNS:
        assert curated[name].isna().sum() == 1


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_logs_written_before_a_nullable_field_existed_are_kept(
    tmp_path: Path, settings: Settings, fmt: str
):
    """A file that lacks a nullable column (older than the field) is ingested with it null,
    and the curated data of old and new files reads as one, the old rows null."""
    from mlref.training.dataset import read_curated

    rows = raw_rows(schema.examples(4, seed=7))
    old, new = tmp_path / f"old.{fmt}", tmp_path / "new.parquet"
    older = rows.iloc[:2].drop(columns=list(schema.NULLABLE_COLUMNS))
    older.to_parquet(old) if fmt == "parquet" else older.to_csv(old, index=False)
    result = ingest(str(old), settings, now=NOW)
    assert result.rows_quarantined == 0 and result.rows_curated == 2
    later = rows.iloc[2:].assign(event_timestamp=rows["event_timestamp"] + pd.Timedelta("1D"))
    later.to_parquet(new)  # the next day's log, with the field
    ingest(str(new), settings, now=NOW)
    curated = read_curated(settings).set_index("request_id")
    for name in schema.NULLABLE_COLUMNS:
        assert curated.loc[["r0", "r1"], name].isna().all()
        assert curated.loc[["r2", "r3"], name].tolist() == rows[name].iloc[2:].tolist()


def logged(n: int, seed: int) -> pd.DataFrame:
    """Inference-log rows of known entities (no cold start), every field drawn by the contract."""
    rng = np.random.default_rng(seed)
    rows = schema.examples(n, seed=seed)
    stats = {  # impressions > 0: no cold start
        name: rng.random(n) if "ctr" in name else rng.integers(10, 50, n).astype(float)
        for name in schema.STAT_COLUMNS
    }
    return rows.assign(**stats, probability=rng.random(n), defaulted=[[] for _ in range(n)])


def test_a_reference_older_than_a_nullable_field_reads_it_as_unknown(tmp_path: Path):
    """The champion's reference predates the field: the drift check raises no quality alert
    for it, leaves it out of the comparison and names it, and compares everything else."""
    from mlref.monitoring.reference import read_reference
    from mlref.training.reference import META_FILE, ROWS_FILE

    older = logged(400, seed=1).drop(columns=list(schema.NULLABLE_COLUMNS))
    older.to_parquet(tmp_path / ROWS_FILE)
    (tmp_path / META_FILE).write_text('{"model_version": "1"}')
    reference = read_reference(tmp_path)
    current = logged(400, seed=2)
    current.loc[:300, list(schema.NULLABLE_COLUMNS)] = None  # most clients do not send it yet

    assert quality.quality_issues(reference.rows, current, DriftSettings()) == []
    result = drift.compare(reference.rows, current, DriftSettings(), tmp_path / "drift.html")
    assert result.not_compared == schema.NULLABLE_COLUMNS
    compared = {c.column for c in result.columns}
    assert compared == set(drift.FEATURES) - set(schema.NULLABLE_COLUMNS)


def test_values_outside_a_vocabulary_are_reported_as_vocabulary_drift():
    reference = pd.DataFrame(
        {name: [values[0]] * 100 for name, values in schema.VOCABULARIES.items()}
    )
    current = reference.copy()
    current.loc[:9, "ad_category"] = ["toys"] * 6 + ["garden"] * 4  # advertisers add categories
    current.loc[0, "device_type"] = "fridge"  # 1%: within the tolerance
    found = {v.column: v for v in drift.vocabulary_drift(reference, current, DriftSettings())}
    assert set(found) == set(schema.CATEGORICAL_COLUMNS)
    assert found["ad_category"].current_share == pytest.approx(0.10)
    assert found["ad_category"].new_values == {"toys": 6, "garden": 4}
    assert found["ad_category"].drifted
    assert not found["device_type"].drifted and found["device_type"].new_values == {"fridge": 1}
    assert not found["site_category"].drifted and found["site_category"].current_share == 0
