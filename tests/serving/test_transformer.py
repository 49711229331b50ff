"""The transformer's small-batch path gives exactly the shared transform's numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlref.features.transform import STAT_COLUMNS, SmallBatchTransform, build_spec
from mlref.serving.transformer import shared_transform
from tests.serving.test_servers import business_rows


def test_small_batch_path_equals_shared_transform(settings):
    spec = build_spec(settings.features)
    fast = SmallBatchTransform(spec)
    rng = np.random.default_rng(0)
    for n in (1, 7, 40):  # repeated calls exercise the memo as well
        rows = pd.DataFrame(business_rows(n, seed=n)).drop(columns="request_id")
        rows.loc[0, "user_id"] = -5  # negative id: OOV bucket on both paths
        columns = {c: rows[c].tolist() for c in rows.columns}
        stats = rng.uniform(0, 300, (n, len(STAT_COLUMNS)))
        stats[rng.random(stats.shape) < 0.3] = np.nan
        for got, want in zip(
            fast(columns, stats), shared_transform(columns, stats, spec), strict=True
        ):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
