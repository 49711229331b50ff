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
    """SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which the image lacks."""
    for form in forms:
        for uri in backend_store_uris(form):
            url = uri.replace("$(POSTGRES_USER)", "u").replace("$(POSTGRES_PASSWORD)", "p")
            sqlalchemy.create_engine(url).dispose()  # imports the DBAPI module, no connection
