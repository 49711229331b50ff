"""The synthetic click-log generator: contract, determinism, scale, and each drift scenario."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mlref import schema
from mlref.data.generate import RAW_FILE_SCHEMA, ScenarioWindow, generate
from mlref.data.world import World
from mlref.settings import DataSettings, Settings


def _with_data(settings: Settings, **changes) -> Settings:
    data = DataSettings.model_validate(settings.data.model_dump() | changes)
    return settings.model_copy(update={"data": data})


def _day(out: Path, date: str) -> pa.Table:
    parts = sorted((out / f"date={date}").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(part) for part in parts])


def _pair(settings: Settings, tmp_path: Path, kind: str, day: int = 2):
    """The same day generated as baseline and under scenario ``kind``, as DataFrames."""
    frames = []
    for name, windows in (("base", []), (kind, [ScenarioWindow(kind, day, day)])):
        result = generate(settings, [day], windows, tmp_path / name)
        frames.append(_day(tmp_path / name, result.days[0].date.isoformat()).to_pandas())
    return frames


def test_logs_follow_the_raw_schema(settings: Settings) -> None:
    result = generate(settings)

    assert [p.relative_to(settings.raw_dir).as_posix() for p in result.paths] == [
        f"date=2026-01-0{d}/part-00000.parquet" for d in (1, 2, 3)
    ]
    assert all(pq.read_schema(path) == RAW_FILE_SCHEMA for path in result.paths)
    assert [(f.name, f.type) for f in RAW_FILE_SCHEMA] == [
        (f.name, f.type) for f in schema.RAW_SCHEMA
    ]
    frame = pd.concat([pq.read_table(p).to_pandas() for p in result.paths])
    assert len(frame) == 3 * settings.data.rows_per_day
    assert frame.notna().all().all()
    assert frame["request_id"].is_unique
    assert frame["request_id"].str.fullmatch("[0-9a-f]{32}").all()
    assert (frame["hour"] == frame["event_timestamp"].dt.hour).all()
    assert frame["event_timestamp"].is_monotonic_increasing
    for name, vocabulary in schema.VOCABULARIES.items():  # every known value, no other
        assert set(frame[name]) == set(vocabulary), name
    for name, (low, high) in schema.RANGES.items():
        assert frame[name].between(low, high).all(), name
    assert set(frame["clicked"]) == {0, 1}
    assert result.rows_per_day == {1: 2_000, 2: 2_000, 3: 2_000}
    world = World.from_settings(settings)
    assert frame["user_id"].between(1, world.n_users).all()
    assert frame["ad_id"].between(1, world.n_ads).all()
    # An ad always belongs to the same advertiser and category.
    assert (frame.groupby("ad_id")[["advertiser_id", "ad_category"]].nunique() == 1).all().all()


def test_split_generation_equals_one_run(settings: Settings, tmp_path: Path) -> None:
    windows = [ScenarioWindow.parse("concept:3-4")]
    once = generate(settings, range(1, 5), windows, tmp_path / "once")
    generate(settings, [1, 2], windows, tmp_path / "split")
    generate(settings, [3, 4], windows, tmp_path / "split")

    for day in once.days:
        date = day.date.isoformat()
        assert _day(tmp_path / "split", date).equals(_day(tmp_path / "once", date))
    assert _day(tmp_path / "once", "2026-01-01") != _day(tmp_path / "once", "2026-01-02")


def test_seed_changes_the_logs(settings: Settings, tmp_path: Path) -> None:
    generate(settings, [1], out_dir=tmp_path / "a")
    generate(_with_data(settings, seed=8), [1], out_dir=tmp_path / "b")
    a, b = _day(tmp_path / "a", "2026-01-01"), _day(tmp_path / "b", "2026-01-01")
    assert not a.column("user_id").equals(b.column("user_id"))


def test_chunks_split_the_same_rows_and_regenerating_replaces_the_day(
    settings: Settings, tmp_path: Path
) -> None:
    chunked = _with_data(settings, rows_per_day=2_500, chunk_rows=1_000)
    result = generate(chunked, [1], out_dir=tmp_path)
    assert [pq.read_metadata(p).num_rows for p in result.paths] == [1_000, 1_000, 500]
    parts = _day(tmp_path, "2026-01-01")

    whole = generate(_with_data(chunked, chunk_rows=250_000), [1], out_dir=tmp_path)
    assert [p.name for p in (tmp_path / "date=2026-01-01").iterdir()] == ["part-00000.parquet"]
    assert [p.name for p in tmp_path.iterdir()] == ["date=2026-01-01"]  # no staging left
    assert _day(tmp_path, "2026-01-01").equals(parts)
    assert whole.days[0].clicks == result.days[0].clicks


def test_default_world_clicks_at_a_realistic_rate(settings: Settings) -> None:
    default_world = Settings(work_dir=settings.work_dir, data=DataSettings(rows_per_day=4_000))
    result = generate(default_world, range(1, 4))

    target = default_world.data.target_ctr
    assert all(0.6 * target <= ctr <= 1.5 * target for ctr in result.ctr_per_day.values())
    frame = pd.concat([pq.read_table(p).to_pandas() for p in result.paths])
    truth = World.from_settings(default_world).click_probability(frame)
    assert truth.mean() == pytest.approx(target, rel=0.15)
    assert frame["clicked"].mean() == pytest.approx(truth.mean(), abs=0.004)
    assert truth.max() / truth.min() > 100  # the world's effects spread risk widely
    # Heavy-tailed activity: the busiest 5% of users and ads take a large share of traffic.
    for column in ("user_id", "ad_id"):
        counts = frame[column].value_counts()
        assert counts.iloc[: max(1, len(counts) // 20)].sum() > 0.2 * len(frame)
    # Position effect: top slots click more than bottom slots.
    by_position = frame.groupby("position")["clicked"].mean()
    assert by_position.loc[1:2].mean() > 1.5 * by_position.loc[7:8].mean()


def test_covariate_shifts_device_and_segment_mix(settings: Settings, tmp_path: Path) -> None:
    base, drift = _pair(settings, tmp_path, "covariate")
    world = World.from_settings(settings)

    def share(frame: pd.DataFrame, column: str) -> pd.Series:
        return frame[column].value_counts(normalize=True)

    devices = share(base, "device_type").sub(share(drift, "device_type"), fill_value=0)
    assert devices.abs().sum() / 2 > 0.2  # total variation distance
    base["segment"] = world.segments_of(base["user_id"])
    drift["segment"] = world.segments_of(drift["user_id"])
    segments = share(base, "segment").sub(share(drift, "segment"), fill_value=0)
    assert segments.abs().sum() / 2 > 0.15
    # Only inputs move: true probabilities stay the world's, CTR roughly the same.
    assert drift["clicked"].mean() == pytest.approx(base["clicked"].mean(), abs=0.02)


def test_concept_changes_clicks_for_the_same_inputs(settings: Settings, tmp_path: Path) -> None:
    settings = _with_data(settings, rows_per_day=6_000)
    base, drift = _pair(settings, tmp_path, "concept")
    world = World.from_settings(settings)

    inputs = [c for c in schema.RAW_COLUMNS if c != "clicked"]
    assert base[inputs].equals(drift[inputs])
    assert not base["clicked"].equals(drift["clicked"])
    before = world.click_probability(drift)
    after = world.click_probability(drift, concept=True)
    cells = (
        pd.DataFrame(
            {
                "segment": world.segments_of(drift["user_id"]),
                "category": drift["ad_category"],
                "log_ratio": np.log(after / before),
            }
        )
        .groupby(["segment", "category"])["log_ratio"]
        .mean()
    )
    assert cells.abs().mean() > 0.4  # per-(segment, category) click rates moved

    def logloss(p: np.ndarray) -> float:
        y = drift["clicked"].to_numpy()
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    # The pre-drift truth explains the post-drift clicks worse than the new truth.
    assert logloss(before) > logloss(after) + 0.003


def test_quality_nulls_device_and_sticks_hour(settings: Settings, tmp_path: Path) -> None:
    settings = _with_data(settings, rows_per_day=4_000, quality_bug_share=0.25)
    base, drift = _pair(settings, tmp_path, "quality")

    broken = drift["device_type"].isna()
    assert broken.mean() == pytest.approx(0.25, abs=0.03)
    assert (drift.loc[broken, "hour"] == 0).all()
    assert drift.loc[broken, "event_timestamp"].dt.hour.nunique() > 12
    healthy = drift[~broken]
    assert (healthy["hour"] == healthy["event_timestamp"].dt.hour).all()
    # A logging bug: behaviour and every other column are untouched.
    assert drift.drop(columns=["device_type", "hour"]).equals(
        base.drop(columns=["device_type", "hour"])
    )
    assert drift.loc[~broken, "device_type"].equals(base.loc[~broken, "device_type"])


def test_coldstart_brings_unseen_ads_and_advertisers(settings: Settings, tmp_path: Path) -> None:
    settings = _with_data(settings, rows_per_day=4_000, coldstart_share=0.3)
    base, drift = _pair(settings, tmp_path, "coldstart")
    world = World.from_settings(settings)

    cold = ~drift["ad_id"].isin(base["ad_id"])
    assert cold.mean() == pytest.approx(0.3, abs=0.03)
    assert drift.loc[cold, "ad_id"].isin(world.cold_ad_ids).all()
    assert (drift.loc[cold, "advertiser_id"] > settings.data.n_advertisers).all()
    assert (drift.loc[~cold, "advertiser_id"] <= settings.data.n_advertisers).all()
    assert base["ad_id"].le(settings.data.n_ads).all()
    assert np.isfinite(world.click_probability(drift)).all()  # cold ads are in the world


def test_overlapping_scenarios_combine(settings: Settings, tmp_path: Path) -> None:
    windows = [ScenarioWindow.parse("quality:2-3"), ScenarioWindow.parse("coldstart:3")]
    result = generate(settings, range(1, 4), windows, tmp_path)
    assert [day.scenarios for day in result.days] == [(), ("quality",), ("coldstart", "quality")]
    last = _day(tmp_path, "2026-01-03").to_pandas()
    assert last["device_type"].isna().any()
    assert (last["ad_id"] > settings.data.n_ads).any()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("concept:7-9", ScenarioWindow("concept", 7, 9)),
        (" quality : 2 - 2 ", ScenarioWindow("quality", 2, 2)),
        ("coldstart:4", ScenarioWindow("coldstart", 4, 4)),
    ],
)
def test_scenario_window_parses(text: str, expected: ScenarioWindow) -> None:
    assert ScenarioWindow.parse(text) == expected
    assert ScenarioWindow.parse(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("concept", "write KIND:FIRST-LAST"),
        ("concept:a-b", "write KIND:FIRST-LAST"),
        ("drift:1-2", "unknown scenario 'drift'; use one of covariate, concept"),
        ("concept:9-7", "need 1 <= first day <= last day"),
        ("concept:0-2", "need 1 <= first day <= last day"),
    ],
)
def test_bad_scenario_window_says_how_to_write_one(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScenarioWindow.parse(text)


def test_world_rejects_rows_from_another_world(settings: Settings) -> None:
    world = World.from_settings(settings)
    frame = pd.DataFrame(
        {
            "event_timestamp": [pd.Timestamp("2026-01-01 10:00", tz="UTC")],
            "user_id": [world.n_users + 1],
            "ad_id": [1],
            "device_type": ["mobile"],
            "site_category": ["news"],
            "position": [1],
        }
    )
    with pytest.raises(ValueError, match=f"user_id {world.n_users + 1} is not in this world"):
        world.click_probability(frame)


def test_bad_start_date_is_reported(settings: Settings) -> None:
    with pytest.raises(ValueError, match="write YYYY-MM-DD"):
        generate(_with_data(settings, start_date="2026-02-30"), [1])


def test_cli_generates_days_with_scenarios(cli_env: Settings, tmp_path: Path) -> None:
    from mlref.cli import app

    out = tmp_path / "logs"
    args = ["data", "generate", "--days", "2", "--first-day", "3", "--rows-per-day", "1500"]
    args += ["--start-date", "2026-03-01", "--scenario", "quality:4", "--out", str(out)]
    result = CliRunner().invoke(app, args)

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["date=2026-03-03", "date=2026-03-04"]
    assert _day(out, "2026-03-03").num_rows == 1_500
    assert _day(out, "2026-03-04").column("device_type").null_count > 0
    assert "Click logs" in result.output
    assert "3,000" in result.output  # rows in the summary
    first = _day(out, "2026-03-03").column("event_timestamp")[0].as_py()
    assert first.date() == dt.date(2026, 3, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "concept:9-7"], "error: scenario concept days 9-7"),
        (["--start-date", "yesterday"], "error: start date 'yesterday' is not a date"),
        (["--rows-per-day", "0"], "error: --rows-per-day: Input should be greater than"),
        (["--first-day", "0"], "error: --first-day 0: days are numbered from 1"),
    ],
)
def test_cli_bad_input_is_one_clear_line(cli_env: Settings, args: list[str], message: str) -> None:
    from mlref.cli import app

    result = CliRunner().invoke(app, ["data", "generate", *args])

    assert result.exit_code == 1
    assert result.output.replace("\n", " ").strip().startswith(message)
    assert not cli_env.raw_dir.exists()


def test_cli_uploads_the_logs_where_the_pipeline_reads_them(
    cli_env: Settings, s3_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--upload` puts each day's partition under the settings' raw location; the bucket is
    made if the store has none yet (a fresh MinIO)."""
    from mlref.cli import app
    from mlref.settings import get_settings

    monkeypatch.setenv("MLREF_STORAGE__ROOT", "s3://fresh-raw")
    get_settings.cache_clear()
    args = ["data", "generate", "--days", "2", "--rows-per-day", "500", "--start-date"]
    result = CliRunner().invoke(app, [*args, "2026-03-01", "--upload"])

    assert result.exit_code == 0, result.output
    assert "s3://fresh-raw/data/raw" in result.output
    listing = s3_env.client().list_objects_v2(Bucket="fresh-raw", Prefix="data/raw/")
    keys = [item["Key"] for item in listing["Contents"]]
    assert {key.split("/")[2] for key in keys} == {"date=2026-03-01", "date=2026-03-02"}
