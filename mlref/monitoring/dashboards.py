"""Grafana dashboards of the loop, built with the Grafana Foundation SDK.

The chart ships each as a ConfigMap labelled ``grafana_dashboard: "1"``, the label Grafana's
dashboard sidecar (kube-prometheus-stack's default) provisions from. The JSON lives in
``helm/mlref/dashboards/``, written by ``mlref manifests dashboards`` from this module, so a
panel is changed here, never in the JSON; a test keeps the two equal and runs every panel's
query against a real Prometheus scraping real servers, so no panel ships without series.

Every query reads the names in :mod:`serving.metrics` and :mod:`mlref.monitoring.push`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
WINDOW = "[$__rate_interval]"
TAGS = ["mlref"]
# What kube-prometheus-stack's Grafana sidecar watches by default; the chart's values
# (monitoring.dashboards.label / labelValue) may name another.
SIDECAR_LABEL, SIDECAR_VALUE = "grafana_dashboard", "1"
NAMESPACE = "mlref"  # manifests/base's; the chart uses its release namespace


@dataclass(frozen=True)
class Panel:
    """One panel: a title, its queries (legend by query) and the unit of its values."""

    title: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend format)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat": the latest value, large


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]


def rate(metric: str, by: str, where: str = "") -> str:
    selector = f"{{{where}}}" if where else ""
    return f"sum by ({by}) (rate({metric}{selector}{WINDOW}))"


def share(part: str, whole: str) -> str:
    """``part / whole`` that is 0, not absent, while ``part`` has no series yet (no errors)."""
    return f"(({part}) or ({whole}) * 0) / ({whole})"


def quantile(q: float, metric: str, by: str, where: str = "") -> str:
    return f"histogram_quantile({q}, {rate(metric + '_bucket', f'le, {by}', where)})"


def mean(metric: str, by: str, where: str = "") -> str:
    return f"{rate(metric + '_sum', by, where)} / {rate(metric + '_count', by, where)}"


def hit_ratio(prefix: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    hits = f"sum{grouping} (rate({prefix}_hits_total{WINDOW}))"
    misses = f"sum{grouping} (rate({prefix}_misses_total{WINDOW}))"
    return f"{hits} / ({hits} + {misses})"


PREDICTOR = 'server="predictor"'

SERVING = Board(
    "mlref-serving",
    "mlref / serving",
    "The transformer and the predictor: traffic, errors, latency, batching, caches, the "
    "inference log.",
    (
        Panel(
            "Requests by status",
            ((rate("mlref_requests_total", "server, status"), "{{server}} {{status}}"),),
            "reqps",
        ),
        Panel(
            "Error share",
            (
                (
                    share(
                        rate("mlref_requests_total", "server", 'status!="200"'),
                        rate("mlref_requests_total", "server"),
                    ),
                    "{{server}}",
                ),
            ),
            "percentunit",
        ),
        Panel(
            "Latency p99 by stage",
            ((quantile(0.99, "mlref_stage_seconds", "server, stage"), "{{server}} {{stage}}"),),
            "s",
        ),
        Panel(
            "Latency p50 by stage",
            ((quantile(0.5, "mlref_stage_seconds", "server, stage"), "{{server}} {{stage}}"),),
            "s",
        ),
        Panel(
            "Rows per predictor call (coalesced batches)",
            (
                (quantile(0.5, "mlref_batch_rows", "server"), "p50"),
                (quantile(0.99, "mlref_batch_rows", "server"), "p99"),
            ),
        ),
        Panel(
            "Mean score by model version",
            ((mean("mlref_prediction_score", "model_version", PREDICTOR), "v{{model_version}}"),),
            "percentunit",
        ),
        Panel(
            "Feature cache hit ratio",
            ((hit_ratio("mlref_feature_cache", "entity"), "{{entity}}"),),
            "percentunit",
        ),
        Panel("Feature cache age", (("mlref_feature_cache_age_seconds", "age"),), "s", "stat"),
        Panel(
            "Prediction cache hit ratio",
            ((hit_ratio("mlref_prediction_cache"), "hits"),),
            "percentunit",
        ),
        Panel(
            "Defaulted feature values",
            ((rate("mlref_defaulted_features_total", "feature"), "{{feature}}"),),
            "ops",
        ),
        Panel(
            "Inference log: rows waiting for the sink",
            (("sum by (where) (mlref_inference_log_spilled_rows)", "{{where}}"),),
        ),
        Panel(
            "Inference log: rows lost or failing",
            (
                (rate("mlref_inference_log_dropped_rows_total", "reason"), "dropped: {{reason}}"),
                (f"sum(rate(mlref_inference_log_dead_letter_rows_total{WINDOW}))", "dead letter"),
                (f"sum(rate(mlref_inference_log_write_failures_total{WINDOW}))", "write failures"),
            ),
            "rowsps",
        ),
    ),
)

DRIFT = Board(
    "mlref-drift",
    "mlref / drift and retraining",
    "What each drift check found and decided (pushed by the drift job to the Pushgateway).",
    (
        Panel("Decision", (("max by (action) (mlref_drift_decision)", "{{action}}"),), kind="stat"),
        Panel("Share of inputs drifted", (("max(mlref_drift_share)", "drifted"),), "percentunit"),
        Panel("Drift or performance drop", (("max(mlref_drift_detected)", "detected"),)),
        Panel("Broken input alert", (("max(mlref_data_quality_alert)", "alert"),)),
        Panel(
            "Drift score by column",
            (("max by (column, method) (mlref_drift_score)", "{{column}} ({{method}})"),),
        ),
        Panel(
            "Last check",
            (('time() - max(push_time_seconds{job="mlref-drift"})', "age"),),
            "s",
            "stat",
        ),
    ),
)

CANARY = Board(
    "mlref-canary",
    "mlref / canary",
    "Stable against canary on the predictor's own series: the share each gets (the stage), "
    "errors, latency and scores, as the canary analysis compares them.",
    (
        Panel(
            "Traffic share by variant (the stage)",
            (
                (
                    f"{rate('mlref_requests_total', 'variant', PREDICTOR)} / scalar("
                    f"sum(rate(mlref_requests_total{{{PREDICTOR}}}{WINDOW})))",
                    "{{variant}}",
                ),
            ),
            "percentunit",
        ),
        Panel(
            "Error share by variant",
            (
                (
                    share(
                        rate("mlref_requests_total", "variant", f'{PREDICTOR},status!="200"'),
                        rate("mlref_requests_total", "variant", PREDICTOR),
                    ),
                    "{{variant}}",
                ),
            ),
            "percentunit",
        ),
        Panel(
            "Inference p99 by variant",
            (
                (
                    quantile(
                        0.99, "mlref_stage_seconds", "variant", f'{PREDICTOR},stage="inference"'
                    ),
                    "{{variant}}",
                ),
            ),
            "s",
        ),
        Panel(
            "Mean score by variant",
            ((mean("mlref_prediction_score", "variant", PREDICTOR), "{{variant}}"),),
            "percentunit",
        ),
        Panel(
            "Model version by variant",
            (
                (
                    f"count by (variant, model_version) (mlref_requests_total{{{PREDICTOR}}})",
                    "{{variant}}: v{{model_version}}",
                ),
            ),
            kind="stat",
        ),
    ),
)

EXPERIMENT = Board(
    "mlref-experiment",
    "mlref / A/B experiment",
    "Live view of a user-level experiment: rows per arm, and each arm's model as it answers. "
    "CTR per user, its confidence interval and the p-value come from `mlref experiment "
    "report` once clicks have arrived.",
    (
        Panel(
            "Rows per arm",
            ((rate("mlref_experiment_rows_total", "experiment, arm"), "{{experiment}} {{arm}}"),),
            "rowsps",
        ),
        Panel(
            "Share of rows in B",
            (
                (
                    f'sum by (experiment) (rate(mlref_experiment_rows_total{{arm="B"}}{WINDOW})) / '
                    f"{rate('mlref_experiment_rows_total', 'experiment')}",
                    "{{experiment}}",
                ),
            ),
            "percentunit",
        ),
        Panel(
            "Mean score by arm's model",
            ((mean("mlref_prediction_score", "variant", PREDICTOR), "{{variant}}"),),
            "percentunit",
        ),
        Panel(
            "Inference p99 by arm's model",
            (
                (
                    quantile(
                        0.99, "mlref_stage_seconds", "variant", f'{PREDICTOR},stage="inference"'
                    ),
                    "{{variant}}",
                ),
            ),
            "s",
        ),
    ),
)

BOARDS = (SERVING, DRIFT, CANARY, EXPERIMENT)


def build(board: Board) -> dict:
    """The dashboard's JSON model, as Grafana imports it."""
    builder = (
        dashboard.Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags(TAGS)
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
    )
    for index, panel in enumerate(board.panels):
        kind = stat if panel.kind == "stat" else timeseries
        built = (
            kind.Panel()
            .title(panel.title)
            .unit(panel.unit)
            .datasource(DATASOURCE)
            .grid_pos(_grid(index))
        )
        for ref, (expr, legend) in zip("ABCDEFGH", panel.queries, strict=False):
            built = built.with_target(
                prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
            )
        builder = builder.with_panel(built)
    return json.loads(json.dumps(builder.build(), cls=JSONEncoder))


def _grid(index: int) -> GridPos:
    return GridPos(h=8, w=12, x=12 * (index % 2), y=8 * (index // 2))


def queries(model: dict) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every target of a built dashboard."""
    for panel in model["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def dashboards_dir(root: Path) -> Path:
    return root / "helm" / "mlref" / "dashboards"


def config_map_name(board: Board) -> str:
    return f"{board.uid}-dashboard"


def kustomization() -> str:
    """The folder as a kustomization, so that manifests/base ships the same ConfigMaps."""
    header = (
        "# The chart's Grafana dashboards for kustomize (manifests/base lists this folder).\n"
        "# Written by `mlref manifests dashboards` from mlref/monitoring/dashboards.py.\n"
    )
    body = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "generatorOptions": {
            "disableNameSuffixHash": True,
            "labels": {SIDECAR_LABEL: SIDECAR_VALUE},
        },
        "configMapGenerator": [
            {"name": config_map_name(b), "namespace": NAMESPACE, "files": [f"{b.uid}.json"]}
            for b in BOARDS
        ],
    }
    return header + yaml.safe_dump(body, sort_keys=False)


def rendered() -> dict[str, str]:
    """File name → text of every file the chart's dashboards folder holds."""
    files = {f"{b.uid}.json": json.dumps(build(b), indent=2) + "\n" for b in BOARDS}
    return files | {"kustomization.yaml": kustomization()}


def write(root: Path) -> list[Path]:
    """Write every dashboard into the chart; remove ones no longer built."""
    folder = dashboards_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    files = rendered()
    for stale in folder.iterdir():
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        (folder / name).write_text(text)
        written.append(folder / name)
    return written
