"""kfp component for the drift job: check the live window, record the decision, retrain.

The body parses its inputs and calls :func:`mlref.monitoring.check.run_check` and
:func:`mlref.monitoring.trigger.trigger`; both are tested there.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Output

from mlref.components.base import component


@component
def drift_check_op(
    report: Output[dsl.HTML],
    since: str = "",
    until: str = "",
    source: str = "",
    trigger: bool = True,
    overrides: str = "",
) -> NamedTuple("DriftOutputs", [("decision", str), ("reason", str), ("action", str)]):
    """Compare the inference log over the window (ISO bounds; empty: the last window_hours)
    with the champion's reference; on a retrain decision submit the training pipeline."""
    import shutil
    from datetime import datetime
    from pathlib import Path

    from mlref.monitoring.check import run_check
    from mlref.monitoring.trigger import trigger as act
    from mlref.settings import load_settings

    settings = load_settings(overrides)
    result = run_check(
        settings,
        datetime.fromisoformat(since) if since else None,
        datetime.fromisoformat(until) if until else None,
    )
    outcome = act(settings, result, source, dry_run=not trigger)
    if result.report is not None:
        shutil.copyfile(result.report, report.path)
    else:
        Path(report.path).write_text(f"<p>{result.decision.reason}</p>")
    return (result.decision.action, result.decision.reason, outcome.status)
