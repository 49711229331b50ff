"""The MLflow server the manifests deploy can open its backend store with the image's drivers."""

from __future__ import annotations

import sqlalchemy

from mlref.k8s.render import Rendered
from mlref.k8s.workloads import pod_spec


def backend_store_uris(form: Rendered) -> list[str]:
    uris = []
    for obj in form.objects:
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "mlflow":
            args = obj["spec"]["template"]["spec"]["containers"][0]["args"]
            uris.append(args[args.index("--backend-store-uri") + 1])
    return uris


def test_mlflow_backend_store_uses_an_installed_driver(forms) -> None:
    """SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which the image lacks: every
    form deploys the MLflow server, on PostgreSQL through psycopg2."""
    drivers = {}
    for form in forms:
        for uri in backend_store_uris(form):
            engine = sqlalchemy.create_engine(uri)  # imports the DBAPI module, no connection
            drivers[form.source] = (engine.dialect.name, engine.dialect.driver)
            engine.dispose()
    assert set(drivers) == {form.source for form in forms}, "a form without the mlflow server"
    assert set(drivers.values()) == {("postgresql", "psycopg2")}


def test_no_secret_is_expanded_into_a_command_line(forms) -> None:
    """A ``$(VAR)`` of a Secret's key in ``command``/``args`` lands in argv, which any process
    listing on the node shows; the MLflow server passes its PostgreSQL login by env."""
    for form in forms:
        for obj in form.objects:
            found = pod_spec(obj)
            if found is None:
                continue
            for container in [*found[1].get("initContainers", []), *found[1]["containers"]]:
                secret_vars = {
                    var["name"]
                    for var in container.get("env", [])
                    if "secretKeyRef" in var.get("valueFrom", {})
                }
                argv = " ".join([*container.get("command", []), *container.get("args", [])])
                leaked = sorted(name for name in secret_vars if f"$({name})" in argv)
                assert not leaked, f"{form.source} {obj['metadata']['name']}: {leaked}"


def test_mlflow_logs_in_with_libpq_environment(forms, postgres_server: str, monkeypatch) -> None:
    """The rendered URI names no user: libpq takes PGUSER (and PGPASSWORD) from the
    Secret-fed env the Deployment sets, here against a real PostgreSQL."""
    (uri,) = set(backend_store_uris(next(f for f in forms if f.source == "chart:kind")))
    mlflow = next(
        o
        for o in next(f for f in forms if f.source == "chart:kind").objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow"
    )
    env = {v["name"]: v for v in mlflow["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PGUSER"]["valueFrom"]["secretKeyRef"]["key"] == "POSTGRES_USER"
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "POSTGRES_PASSWORD"
    server = sqlalchemy.engine.make_url(postgres_server)
    url = sqlalchemy.engine.make_url(uri).set(host=server.host, port=server.port)
    monkeypatch.setenv("PGUSER", server.username)
    monkeypatch.setenv("PGPASSWORD", "from-the-secret")
    engine = sqlalchemy.create_engine(url.set(database=server.database))
    try:
        with engine.connect() as connection:
            user = connection.execute(sqlalchemy.text("select current_user")).scalar()
    finally:
        engine.dispose()
    assert user == server.username
