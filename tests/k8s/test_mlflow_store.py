"""The MLflow server the manifests deploy can open its backend store with the image's drivers."""

from __future__ import annotations

import sqlalchemy

from mlref.k8s.render import Rendered


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
            url = uri.replace("$(POSTGRES_USER)", "u").replace("$(POSTGRES_PASSWORD)", "p")
            engine = sqlalchemy.create_engine(url)  # imports the DBAPI module, no connection
            drivers[form.source] = (engine.dialect.name, engine.dialect.driver)
            engine.dispose()
    assert set(drivers) == {form.source for form in forms}, "a form without the mlflow server"
    assert set(drivers.values()) == {("postgresql", "psycopg2")}
