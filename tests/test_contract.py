"""The contract is the one source: everything that lists request fields derives from it."""

from __future__ import annotations

import pandas as pd
import pytest

from mlref import schema
from mlref.features.transform import build_spec
from mlref.monitoring import drift, quality
from mlref.serving import inference_log
from mlref.serving.requests import BUSINESS_FIELDS, RequestError, parse_business
from mlref.settings import DriftSettings, FeatureSettings

ROW = {
    "user_id": 1,
    "ad_id": 2,
    "advertiser_id": 3,
    "ad_category": "retail",
    "device_type": "mobile",
    "site_category": "news",
    "position": 1,
    "hour": 5,
}


def test_every_list_of_fields_is_the_contracts():
    fields = schema.REQUEST_COLUMNS
    assert schema.RAW_SCHEMA.names == ["event_timestamp", "request_id", *fields, "clicked"]
    assert inference_log.SCHEMA.names[2 : 2 + len(fields)] == list(fields)
    assert list(BUSINESS_FIELDS) == [*fields, "request_id"]
    assert build_spec(FeatureSettings()).categorical_names == fields
    assert set(drift.CATEGORICAL) == set(fields) - set(schema.ID_COLUMNS)
    assert set(quality.CHECKED_COLUMNS) == set(drift.FEATURES)


def test_requests_keep_unknown_categories_and_refuse_contract_breaks():
    batch = parse_business({"instances": [ROW | {"device_type": "fridge"}]}, 10)
    assert batch.columns["device_type"] == ["fridge"]  # kept: the model reads it as OOV
    breaks = {
        "device_type": ("x" * 200_000, "at most 64 characters, got 200000 characters"),
        "position": (9, "an integer 1-8, got int 9"),
        "user_id": (-1, "an integer id, got int -1"),
        "request_id": ("r" * 129, "at most 128 characters, got 129 characters"),
    }
    for name, (value, message) in breaks.items():
        with pytest.raises(RequestError, match=message) as error:
            parse_business({"instances": [ROW, ROW | {name: value}]}, 10)
        assert error.value.field == f"instances[1].{name}" and error.value.status == 400


def test_values_outside_a_vocabulary_are_reported_as_vocabulary_drift():
    reference = pd.DataFrame(
        {name: [values[0]] * 100 for name, values in schema.VOCABULARIES.items()}
    )
    current = reference.copy()
    current.loc[:9, "ad_category"] = ["toys"] * 6 + ["garden"] * 4  # advertisers add categories
    current.loc[0, "device_type"] = "fridge"  # 1%: within the tolerance
    found = {v.column: v for v in drift.vocabulary_drift(reference, current, DriftSettings())}
    assert found["ad_category"].current_share == pytest.approx(0.10)
    assert found["ad_category"].new_values == {"toys": 6, "garden": 4}
    assert found["ad_category"].drifted
    assert not found["device_type"].drifted and found["device_type"].new_values == {"fridge": 1}
    assert not found["site_category"].drifted and found["site_category"].current_share == 0
