"""The training pipeline's run parameters: what starts a retraining and the pipeline agree on.

Whoever starts a run (the drift trigger, ``mlref pipeline``, the demo) builds its arguments
here, and a platform's submitter (``mlref.platform``) hands them to the pipeline; so the
watchers need not import the pipeline, as monitoring takes the inference log's schema from
the contract rather than from serving.
"""

from __future__ import annotations

import json


def pipeline_arguments(
    source: str,
    start_date: str = "",
    end_date: str = "",
    epochs: int = 0,
    overrides: dict | None = None,
) -> dict:
    """The run's parameters. ``overrides`` (settings fields, nested like the YAML config)
    replace the steps' own settings; in a cluster those come from the cluster itself."""
    return {
        "source": source,
        "start_date": start_date,
        "end_date": end_date,
        "epochs": epochs,
        "overrides": json.dumps(overrides) if overrides else "",
    }
