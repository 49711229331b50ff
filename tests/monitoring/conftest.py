"""One small trained world shared by the drift tests, and scenario days replayed against it.

The world is learnable at test scale (few users and segments, a high CTR) so that a concept
change costs the champion measurably; days 1-8 train it (test split: day 8, the reference),
and each scenario is generated as day 9, replayed through the champion as serving would log it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from mlref.data.generate import ScenarioWindow, day_date, generate
from mlref.data.ingest import ingest
from mlref.features.store import compute_and_materialize
from mlref.monitoring.replay import replay
from mlref.settings import DataSettings, ParitySettings, Settings, TrainSettings
from mlref.training.workflow import run_all

TRAIN_DAYS = 8
SCENARIO_DAY = 9


def world_settings(work_dir: Path) -> Settings:
    return Settings(
        work_dir=work_dir,
        data=DataSettings(
            days=TRAIN_DAYS,
            rows_per_day=4_000,
            n_users=300,
            n_ads=60,
            n_advertisers=12,
            n_segments=2,
            target_ctr=0.15,
        ),
        # One torch thread: the cluster loop's training pods (given this section) share the
        # test run's few cores, where a second thread only spin-waits.
        train=TrainSettings(
            epochs=3,
            batch_size=512,
            embedding_dim=8,
            hidden_units=[32, 16],
            device="cpu",
            cpu_threads=1,
        ),
        # A model this small loses more to int8 than the production gate allows.
        parity=ParitySettings(
            max_abs_diff=1, mean_abs_diff=1, max_auc_drop=1, max_logloss_increase=1
        ),
    )


def build_world(settings: Settings, scenarios=()) -> None:
    """Generate, ingest, compute features and register a champion, as the pipeline does."""
    generate(settings, scenarios=scenarios)
    ingest(str(settings.raw_dir), settings, now=day_window(settings, settings.data.days)[1])
    compute_and_materialize(settings)
    run_all(settings, settings.artifacts_dir / "train")


def day_window(settings: Settings, day: int) -> tuple[datetime, datetime]:
    start = datetime.combine(day_date(settings, day), datetime.min.time(), UTC)
    return start, datetime.combine(day_date(settings, day + 1), datetime.min.time(), UTC)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = world_settings(tmp_path_factory.mktemp("world") / ".mlref")
    build_world(settings)
    return settings


@pytest.fixture(scope="session")
def scenario_log(world: Settings, tmp_path_factory: pytest.TempPathFactory):
    """``scenario_log(kind)``: day 9 with scenario ``kind`` ("none": baseline) as the champion
    would have logged it, with its clicks."""
    cache: dict[str, pd.DataFrame] = {}

    def make(kind: str) -> pd.DataFrame:
        if kind not in cache:
            windows = [] if kind == "none" else [ScenarioWindow(kind, SCENARIO_DAY, SCENARIO_DAY)]
            out = tmp_path_factory.mktemp(f"raw-{kind}")
            days = generate(world, days=[SCENARIO_DAY], scenarios=windows, out_dir=out)
            cache[kind] = replay(world, pd.read_parquet(days.paths))
        return cache[kind].copy()

    return make


@pytest.fixture
def job_settings(world: Settings, tmp_path: Path) -> Settings:
    """The world's registry and features, with this test's own log, labels and drift dir."""
    return world.model_copy(
        update={
            "work_dir": tmp_path / ".mlref",
            "registry": world.registry.model_copy(update={"tracking_uri": world.tracking_uri}),
        },
        deep=True,  # a test that sets a section's field must not change the session's world
    )
