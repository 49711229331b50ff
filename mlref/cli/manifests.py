"""`mlref manifests` commands: render and verify the Kubernetes packaging offline."""

from __future__ import annotations

from pathlib import Path

import typer

from mlref.console import fail

app = typer.Typer(no_args_is_help=True)


@app.command()
def render(
    overlay: str = typer.Option("", help="Kustomize overlay: base, kind, canary, promote, ..."),
    chart: bool = typer.Option(False, "--chart", help="Render the Helm chart instead."),
    values: str = typer.Option(
        "default", help="With --chart: a value set (default, kind, canary, ...)."
    ),
) -> None:
    """Print the rendered YAML of one overlay or of the chart."""
    from mlref.k8s.render import (
        RenderError,
        chart_value_sets,
        render_chart,
        render_overlay,
        repo_root,
    )
    from mlref.settings import get_settings

    if chart == bool(overlay):
        raise fail("give exactly one of --overlay NAME or --chart")
    try:
        root = repo_root()
        if chart:
            sets = chart_value_sets(root)
            if values not in sets:
                raise fail(f"no value set {values!r}; known: {', '.join(sets)}")
            namespace = get_settings().cluster.namespace
            form = render_chart(root, sets[values], values, namespace)
        else:
            form = render_overlay(root, overlay)
    except RenderError as exc:
        raise fail(str(exc)) from None
    typer.echo(form.to_yaml(), nl=False)


@app.command()
def verify(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(
        None,
        help="Your own kustomize directories and chart values files to verify instead of the "
        "repo's overlays and value sets.",
        show_default=False,
    ),
    crd_dir: Path | None = typer.Option(
        None,
        help="Directory of CRD YAML (default: $MLREF_CRDS_DIR, else ../shared/crds beside "
        "the repo).",
    ),
    k8s_version: str = typer.Option("", help="Kubernetes version (default: settings)."),
    knative_config: Path | None = typer.Option(
        None,
        help="YAML with Knative's config-features ConfigMap the cluster runs "
        "(default: manifests/cluster/knative-serving.yaml, what scripts/kind-up.sh applies).",
    ),
    api_versions: list[str] = typer.Option(
        [],
        "--api-versions",
        help="With values files: APIs the cluster serves beyond Kubernetes' own, as for "
        "helm --api-versions (e.g. monitoring.coreos.com/v1).",
    ),
    skip_security: bool = typer.Option(
        False, "--skip-security", help="Skip checkov (container hardening is still checked)."
    ),
) -> None:
    """Render every overlay and chart value set (or PATHs), check schemas, security, structure."""
    from rich.console import Console
    from rich.table import Table

    from mlref.k8s.checkov import CheckovMissing
    from mlref.k8s.knative import load_features
    from mlref.k8s.render import RenderError, render_all, render_paths, repo_root
    from mlref.k8s.schemas import SchemaSetupError, Validator, default_crd_dir
    from mlref.k8s.verify import verify as run_verify
    from mlref.settings import get_settings

    settings = get_settings()
    namespace = settings.cluster.namespace
    try:
        root = repo_root()
        validator = Validator(
            crd_dir or default_crd_dir(root),
            k8s_version or settings.cluster.kubernetes_version,
        )
        features_file = knative_config or root / "manifests" / "cluster" / "knative-serving.yaml"
        if not features_file.is_file():
            raise fail(f"no Knative config at {features_file}: pass --knative-config")
        if paths:
            forms = render_paths(root, paths, namespace, api_versions)
        else:
            forms = render_all(root, namespace)
        report = run_verify(
            forms,
            validator,
            settings.image,
            None if paths else root / "pipelines",
            security_scan=not skip_security,
            model_name=settings.model_name,
            knative_features=load_features(features_file),
            command=ctx.find_root().command,  # the containers' argv must parse with it
        )
    except (RenderError, SchemaSetupError, CheckovMissing) as exc:
        raise fail(str(exc)) from None

    table = Table(title=f"{len(report.objects)} objects in {len(forms)} rendered forms")
    for column in ("kind", "name", "source", "schema", "security"):
        table.add_column(column)
    for result in report.objects:
        table.add_row(
            result.kind,
            result.name,
            result.source,
            "[green]ok[/green]" if not result.schema else f"[red]{len(result.schema)} errors[/red]",
            "[green]ok[/green]"
            if not result.security
            else f"[red]{len(result.security)} failed[/red]",
        )
    console = Console(width=max(Console().width, 100))
    console.print(table)
    if not report.ok:
        for finding in report.findings:
            console.print(f"[red]FAIL[/red] {finding}", highlight=False, soft_wrap=True)
        raise fail(f"{len(report.findings)} problems found")
    console.print("[green]all manifests verified[/green]")


@app.command("kind-objects")
def kind_objects(
    existing: Path | None = typer.Option(
        None,
        help="YAML/JSON of the Secrets already in the cluster (`kubectl get secret -o yaml`; "
        "- for stdin): their values are kept.",
    ),
    namespace: str = typer.Option("", help="The chart's namespace (default: settings)."),
    pipelines_namespace: str = typer.Option(
        "", help="Where Kubeflow runs the pipeline's pods (default: settings)."
    ),
) -> None:
    """Print the namespace and Secrets scripts/kind-up.sh applies besides the chart."""
    import sys

    import yaml

    from mlref.k8s.install import kind_objects as objects
    from mlref.k8s.render import RenderError, repo_root
    from mlref.settings import get_settings

    settings = get_settings()
    text = ""
    if existing is not None:
        text = sys.stdin.read() if str(existing) == "-" else existing.read_text()
    try:
        found = [doc for doc in yaml.safe_load_all(text) if doc]
        rendered = objects(
            repo_root(),
            namespace or settings.cluster.namespace,
            pipelines_namespace or settings.pipeline.namespace,
            found,
        )
    except (RenderError, yaml.YAMLError) as exc:
        raise fail(f"error: {exc}") from None
    typer.echo(yaml.safe_dump_all(rendered, sort_keys=False), nl=False)


@app.command()
def dashboards(
    check: bool = typer.Option(
        False, "--check", help="Write nothing; fail if the chart's files differ from the build."
    ),
) -> None:
    """Build the Grafana dashboards into the chart (helm/mlref/dashboards/)."""
    from mlref.k8s.render import RenderError, repo_root
    from mlref.monitoring.dashboards import dashboards_dir, rendered, write

    try:
        root = repo_root()
    except RenderError as exc:
        raise fail(f"error: {exc}") from None
    folder = dashboards_dir(root)
    if check:
        built = rendered()
        held = {path.name: path.read_text() for path in folder.iterdir()}
        stale = sorted(
            name for name in built.keys() | held.keys() if built.get(name) != held.get(name)
        )
        if stale:
            raise fail(
                f"dashboards out of date in {folder}: {', '.join(stale)}; run: mlref manifests "
                "dashboards"
            )
        typer.echo(f"{len(built)} dashboards up to date in {folder}")
        return
    for path in write(root):
        typer.echo(f"wrote {path}")
