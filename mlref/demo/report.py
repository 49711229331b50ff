"""What the loop did, as data, and the one-page HTML report written from it."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float
    outcome: str


@dataclass(frozen=True)
class DriftPoint:
    """One drift check: drifted share of columns, live normalized entropy minus the reference."""

    label: str
    drift_share: float
    ne_increase: float | None
    decision: str
    reason: str


@dataclass(frozen=True)
class CanaryPoint:
    """One variant's figures at the end of one rollout stage."""

    percent: int
    variant: str
    requests: int
    error_rate: float
    p99_ms: float | None
    logloss: float | None
    action: str


@dataclass(frozen=True)
class QualityPoint:
    """A model's AUC on one day's impressions (scored offline with the shared transform)."""

    day: str
    model: str
    auc: float


@dataclass
class LoopRecord:
    steps: list[Step] = field(default_factory=list)
    drift: list[DriftPoint] = field(default_factory=list)
    canary: list[CanaryPoint] = field(default_factory=list)
    shadow: list[str] = field(default_factory=list)  # the shadow report's lines
    quality: list[QualityPoint] = field(default_factory=list)
    links: dict[str, Path] = field(default_factory=dict)


def _png(figure: Figure) -> str:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def drift_figure(points: list[DriftPoint]) -> Figure:
    figure = Figure(figsize=(7, 3.2))
    share, loss = figure.subplots(1, 2)
    labels = [p.label for p in points]
    share.bar(labels, [p.drift_share for p in points], color="tab:blue")
    share.set(title="drifted share of columns", ylim=(0, 1))
    loss.bar(labels, [p.ne_increase or 0.0 for p in points], color="tab:red")
    loss.set(title="normalized entropy: live - reference")
    for axes in (share, loss):
        axes.tick_params(axis="x", labelrotation=20)
    return figure


def canary_figure(points: list[CanaryPoint]) -> Figure:
    figure = Figure(figsize=(10, 3.2))
    panels = figure.subplots(1, 3)
    stages = sorted({p.percent for p in points})
    for axes, (title, value) in zip(
        panels,
        (
            ("error rate", lambda p: p.error_rate),
            ("p99 latency (ms)", lambda p: p.p99_ms),
            ("logloss (labelled)", lambda p: p.logloss),
        ),
        strict=True,
    ):
        for variant in sorted({p.variant for p in points}):
            rows = {p.percent: value(p) for p in points if p.variant == variant}
            xs = [s for s in stages if rows.get(s) is not None]
            axes.plot(xs, [rows[s] for s in xs], marker="o", label=variant)
        axes.set(title=title, xlabel="canary traffic %")
        axes.legend()
    return figure


def quality_figure(points: list[QualityPoint]) -> Figure:
    figure = Figure(figsize=(7, 3.2))
    axes = figure.add_subplot()
    days = list(dict.fromkeys(p.day for p in points))  # in the order scored
    for model in sorted({p.model for p in points}):
        rows = {p.day: p.auc for p in points if p.model == model}
        xs = [d for d in days if d in rows]
        axes.plot(xs, [rows[d] for d in xs], marker="o", label=model)
    axes.set(title="AUC per day", ylabel="AUC")
    axes.tick_params(axis="x", labelrotation=20)
    axes.legend()
    return figure


def _plotted(title: str, figure: Figure) -> list[str]:
    """A section's heading and its plot, inline as a PNG (the page stays one file)."""
    return [f"<h2>{html.escape(title)}</h2>", f'<img src="data:image/png;base64,{_png(figure)}">']


def _table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(record: LoopRecord, path: Path) -> Path:
    """A self-contained HTML page: timeline, drift, shadow, canary and model quality, with
    plots."""
    sections = [
        "<h2>Timeline</h2>",
        _table(
            ["step", "seconds", "outcome"],
            [[s.name, f"{s.seconds:.1f}", s.outcome] for s in record.steps],
        ),
    ]
    if record.drift:
        sections += [
            *_plotted("Drift checks", drift_figure(record.drift)),
            _table(
                ["window", "drifted share", "NE increase", "decision", "reason"],
                [
                    [
                        p.label,
                        f"{p.drift_share:.2f}",
                        _fmt(p.ne_increase),
                        p.decision,
                        p.reason,
                    ]
                    for p in record.drift
                ],
            ),
        ]
    if record.shadow:
        text = html.escape("\n".join(record.shadow))
        sections += ["<h2>Shadow before the canary</h2>", f"<pre>{text}</pre>"]
    if record.canary:
        sections += [
            *_plotted("Canary rollout", canary_figure(record.canary)),
            _table(
                ["stage %", "variant", "requests", "error rate", "p99 ms", "logloss", "action"],
                [
                    [
                        p.percent,
                        p.variant,
                        p.requests,
                        f"{p.error_rate:.4f}",
                        _fmt(p.p99_ms),
                        _fmt(p.logloss),
                        p.action,
                    ]
                    for p in record.canary
                ],
            ),
        ]
    if record.quality:
        sections += _plotted("Model quality over time", quality_figure(record.quality))
    if record.links:
        items = "".join(
            f'<li><a href="{html.escape(str(target))}">{html.escape(name)}</a></li>'
            for name, target in record.links.items()
        )
        sections += ["<h2>Reports</h2>", f"<ul>{items}</ul>"]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>mlref demo</title>"
        f"<style>{style}</style></head><body><h1>mlref: the closed loop</h1>"
        + "".join(sections)
        + "</body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
