"""The local split proxy's draw: seeded, the same requests go to the same side every run."""

from __future__ import annotations

import random
from pathlib import Path

from mlref.canary.proxy import Split
from mlref.canary.state import CanaryState, state_path, write_state
from mlref.settings import Settings


def draws(path: Path, seed: int, n: int = 2_000) -> list[bool]:
    split = Split(path, random.Random(seed))
    return [split.candidate() for _ in range(n)]


def test_a_seeded_split_repeats_and_keeps_to_the_share(tmp_path: Path) -> None:
    settings = Settings(work_dir=tmp_path / ".mlref")
    write_state(settings, CanaryState("models:/ctr/2", "models:/ctr/1", 30))
    path = state_path(settings)
    first, again, other = draws(path, 24), draws(path, 24), draws(path, 25)
    assert first == again and first != other
    share, sd = sum(first) / len(first), (0.3 * 0.7 / len(first)) ** 0.5
    assert abs(share - 0.30) < 4 * sd  # seeded: the same share every run
