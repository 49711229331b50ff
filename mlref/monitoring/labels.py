"""The label job: click labels for served requests, joined by request id from the click logs.

A click arrives some time after its impression was served, so a request without a click is
only labelled ``clicked = 0`` once it is older than ``drift.label_maturity_hours``; a click
that has arrived labels its request at once. Each run labels the requests of the last
``drift.window_hours`` (plus the maturity window) that have no label yet, and stores them
as one ``labels_uri/labels-<time>.parquet``, where the drift check and the canary analysis
read them (:func:`mlref.monitoring.inference.read_labels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from mlref import storage
from mlref.monitoring.inference import LABEL, read_inference_log, read_labels, write_labels
from mlref.settings import Settings


@dataclass(frozen=True)
class LabelResult:
    """What one run found and wrote."""

    served: int  # logged requests in the window
    already: int  # of those, labelled by an earlier run
    clicked: int  # newly labelled 1
    not_clicked: int  # newly labelled 0: past the maturity window without a click
    waiting: int  # too young to call, no click yet
    name: str  # the labels file written ("" when there was nothing to write)


def read_clicks(source: str) -> pd.DataFrame:
    """``request_id`` and ``clicked`` of every Parquet click-log file under ``source``."""
    files = storage.parquet_files(source)
    if not files:
        raise FileNotFoundError(f"{source}: no Parquet click logs to take labels from")
    fs, _ = storage.filesystem(source)
    frames = [pd.read_parquet(f, columns=["request_id", LABEL], filesystem=fs) for f in files]
    clicks = pd.concat(frames, ignore_index=True).dropna()
    return clicks.groupby("request_id", sort=False)[LABEL].max().reset_index()


def collect(settings: Settings, source: str = "", now: datetime | None = None) -> LabelResult:
    """Label the window's served requests from the click logs at ``source`` (default: the
    raw click logs, ``settings.raw_uri``)."""
    now = now or datetime.now(UTC)
    maturity = timedelta(hours=settings.drift.label_maturity_hours)
    since = now - timedelta(hours=settings.drift.window_hours) - maturity
    log = read_inference_log(settings, since, now).drop_duplicates("request_id")
    known = set(read_labels(settings)["request_id"])
    todo = log[~log["request_id"].isin(known)]
    clicks = read_clicks(source or settings.raw_uri)
    joined = todo[["request_id", "timestamp"]].merge(clicks, on="request_id", how="left")
    clicked = joined[LABEL].fillna(0).to_numpy() > 0
    mature = (joined["timestamp"] < pd.Timestamp(now - maturity)).to_numpy()
    ready = clicked | mature
    labels = pd.DataFrame(
        {"request_id": joined["request_id"][ready], LABEL: clicked[ready].astype(np.int8)}
    )
    name = ""
    if len(labels):
        name = f"labels-{now.strftime('%Y%m%dT%H%M%SZ')}"
        write_labels(settings, labels, name)
    return LabelResult(
        served=len(log),
        already=len(log) - len(todo),
        clicked=int(clicked[ready].sum()),
        not_clicked=int((~clicked & mature).sum()),
        waiting=int((~ready).sum()),
        name=name,
    )
