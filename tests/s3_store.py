"""moto's S3 server with credentials checked, and users whose keys the install chose.

A real store checks every request's signature against a user it knows and that user's
policy: MinIO takes its root user from the install's Secret and adds others with chosen keys
(``mc admin user add ALIAS KEY SECRET`` and a policy). moto enforces the same (SigV4
signature, then the user's IAM policies on ``arn:aws:s3:::bucket/key``) once its
``INITIAL_NO_AUTH_ACTION_COUNT`` is 0, but it only makes keys of its own; so this launcher
adds ``POST /mlref/users`` (JSON ``name``, ``access_key``, ``secret_key``, ``policy``), the
``mc admin user add`` of the harness. Run: ``python tests/s3_store.py HOST PORT KEY SECRET``,
the last two being the store's root user.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from moto import settings
from moto.core import DEFAULT_ACCOUNT_ID
from moto.iam.models import iam_backends
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request, Response

ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["s3:*", "iam:*"], "Resource": "*"}],
}


def add_user(
    name: str, access_key: str, secret_key: str, policy: dict[str, Any] | None = None
) -> None:
    """The user ``name`` with exactly this key pair and this policy (replacing any before);
    no policy: everything, as a store's root user."""
    backend = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    user = backend.users.get(name) or backend.create_user("us-east-1", name)
    user.access_keys.clear()
    key = backend.create_access_key(name)
    key.access_key_id, key.secret_access_key = access_key, secret_key
    backend.put_user_policy(name, "mlref", json.dumps(policy or ADMIN_POLICY))


def with_users(app: Any) -> Any:
    def dispatch(environ: dict, start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/mlref/users" and environ["REQUEST_METHOD"] == "POST":
            add_user(**json.loads(Request(environ).get_data()))
            return Response("ok")(environ, start_response)
        return app(environ, start_response)

    return dispatch


def main() -> None:
    host, port, access_key, secret_key = sys.argv[1:5]
    add_user("root", access_key, secret_key)
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on every request is checked
    app = with_users(DomainDispatcherApplication(create_backend_app))
    run_simple(host, int(port), app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
