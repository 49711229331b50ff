"""moto's S3 server with credentials checked, and users whose keys the install chose.

A real store checks every request's signature against a user it knows and that user's
policy: SeaweedFS takes its identities (keys and grants) from the install's ``s3.json``,
MinIO adds users with chosen keys (``mc admin user add ALIAS KEY SECRET`` and a policy).
moto enforces the same (SigV4 signature, then the user's IAM policies on
``arn:aws:s3:::bucket/key``) once its ``INITIAL_NO_AUTH_ACTION_COUNT`` is 0, but it only
makes keys of its own; so this launcher adds ``POST /mlref/users`` (JSON ``name``,
``access_key``, ``secret_key``, ``policy``), through which the harness adds the install's
identities (tests/cluster/store_identities.py). Run: ``python tests/s3_store.py HOST PORT
KEY SECRET``, the last two being the store's root user (the test's own).
"""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

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


def presigned_as_header(environ: dict) -> None:
    """A presigned URL (SigV4 in the query, as MLflow's artifact proxy hands out) checked as
    S3 checks it, then re-signed in the ``Authorization`` header moto's checks read, so the
    user's policy still applies; moto 5 fails on query signatures when credentials are on."""
    from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    params = dict(query)
    key_id, _, region, *_ = params["X-Amz-Credential"].split("/")
    backend = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    secrets = [
        k.secret_access_key
        for u in backend.users.values()
        for k in u.access_keys
        if k.access_key_id == key_id
    ]
    host = environ["HTTP_HOST"]
    rest = [(k, v) for k, v in query if not k.startswith("X-Amz-")]
    url = f"http://{host}{quote(environ['PATH_INFO'])}" + (f"?{urlencode(rest)}" if rest else "")
    for secret in secrets:
        request = AWSRequest(method=environ["REQUEST_METHOD"], url=url, headers={"Host": host})
        request.context["timestamp"] = params["X-Amz-Date"]
        signer = S3SigV4QueryAuth(
            Credentials(key_id, secret), "s3", region, expires=int(params["X-Amz-Expires"])
        )
        signer._modify_request_before_signing(request)  # add_auth, at the URL's own time
        expected = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        if expected == params["X-Amz-Signature"]:
            signed = AWSRequest(method=request.method, url=url, headers={"Host": host})
            S3SigV4Auth(Credentials(key_id, secret), "s3", region).add_auth(signed)
            environ["QUERY_STRING"] = urlencode(rest)
            for name, value in signed.headers.items():
                environ["HTTP_" + name.upper().replace("-", "_")] = value
            return


def with_users(app: Any) -> Any:
    def dispatch(environ: dict, start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/mlref/users" and environ["REQUEST_METHOD"] == "POST":
            add_user(**json.loads(Request(environ).get_data()))
            return Response("ok")(environ, start_response)
        if "X-Amz-Signature=" in environ.get("QUERY_STRING", ""):
            presigned_as_header(environ)
        if "HTTP_AUTHORIZATION" not in environ:  # anonymous, or a presigned URL that failed
            return Response("AccessDenied", status=403)(environ, start_response)
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
