"""kfp component for the features step: compute snapshots, apply, materialize online.

The body parses its input and calls :func:`mlref.features.store.compute_and_materialize`;
the work itself is tested there.
"""

from typing import NamedTuple

from mlref.components.base import component


@component
def features_op(
    overrides: str = "",
) -> NamedTuple(
    "FeaturesOutputs",
    [("user_rows", int), ("ad_rows", int), ("users", int), ("ads", int), ("last_snapshot", str)],
):
    """Compute the daily user/ad stats, register them with Feast and load the online store."""
    from mlref.features import store
    from mlref.settings import load_settings

    result = store.compute_and_materialize(load_settings(overrides))
    return (
        result.rows["user_stats"],
        result.rows["ad_stats"],
        result.entities["user_stats"],
        result.entities["ad_stats"],
        result.last_snapshot.isoformat(),
    )
