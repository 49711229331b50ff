"""moto's S3 server with credentials checked, and users whose keys and grants the install chose.

A real store checks every request's signature against a user it knows, then that user's
grants: SeaweedFS takes its identities (keys and ``Action[:bucket[/path]]`` grants) from the
install's ``s3.json``. moto checks SigV4 signatures (presigned URLs included) once its
``INITIAL_NO_AUTH_ACTION_COUNT`` is 0, but it only makes keys of its own and knows only AWS
IAM policies, whose actions are finer than SeaweedFS's (HeadBucket is ``s3:ListBucket``
there, a ``Read`` here). So this launcher adds ``POST /mlref/users`` (JSON ``name``,
``access_key``, ``secret_key``, ``actions``: SeaweedFS grants), through which the harness
adds the install's identities (tests/cluster/store_identities.py); moto checks each
request's signature and :func:`authorize` decides, as SeaweedFS 4.34 does, whether the
signer's grants allow it. Run: ``python tests/s3_store.py HOST PORT KEY SECRET``, the last
two being the store's root user (the test's own).
"""

from __future__ import annotations

import io
import json
import re
import sys
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from moto import settings
from moto.core import DEFAULT_ACCOUNT_ID
from moto.iam.models import iam_backends
from moto.s3.responses import S3Response
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request, Response

ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["s3:*", "iam:*"], "Resource": "*"}],
}


# access key -> the SeaweedFS grants of the identity it belongs to
GRANTS: dict[str, list[str]] = {}


def add_user(name: str, access_key: str, secret_key: str, actions: list[str] | None = None) -> None:
    """The user ``name`` with exactly this key pair and these SeaweedFS grants (replacing any
    before); no grants: ``Admin``, as a store's root user. moto's own policy lets every
    signed request through: :func:`authorize` holds it to the grants."""
    backend = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    user = backend.users.get(name) or backend.create_user("us-east-1", name)
    for key in user.access_keys:
        GRANTS.pop(key.access_key_id, None)
    user.access_keys.clear()
    key = backend.create_access_key(name)
    key.access_key_id, key.secret_access_key = access_key, secret_key
    backend.put_user_policy(name, "mlref", json.dumps(ADMIN_POLICY))
    GRANTS[access_key] = list(actions) if actions is not None else ["Admin"]


# SeaweedFS 4.34's authorization, for the calls the workloads make; weed/s3api/ at tag 4.34.
# Each route's action (s3api_server.go, the bucket router, lines 780-962), first match wins:
# object routes by method and query, then bucket routes. "*": any other request of the method.
OBJECT_ROUTES = {
    "PUT": [("uploadId", "Write"), ("tagging", "Tagging"), ("acl", "WriteAcp"), ("*", "Write")],
    "POST": [("uploadId", "Write"), ("uploads", "Write")],
    "DELETE": [("uploadId", "Write"), ("tagging", "Tagging"), ("*", "Write")],
    "GET": [("uploadId", "Read"), ("tagging", "Tagging"), ("acl", "ReadAcp"), ("*", "Read")],
    "HEAD": [("*", "Read")],
}
CONFIG = ("policy", "cors", "lifecycle")  # bucket configuration: Read to get, Write to set
BUCKET_ROUTES = {
    "GET": [
        ("uploads", "Read"),
        ("acl", "ReadAcp"),
        *((q, "Read") for q in (*CONFIG, "location", "versioning", "object-lock")),
        ("tagging", "Tagging"),
        ("encryption", "Admin"),
        ("publicAccessBlock", "Admin"),
        ("list-type", "List"),  # ListObjectsV2 (lines 923-926)
        ("versions", "List"),
        ("*", "List"),  # ListObjectsV1 (959-962)
    ],
    "HEAD": [("*", "Read")],  # HeadBucket (946-950); GetBucketLocation is GET ?location (874)
    "PUT": [
        ("acl", "WriteAcp"),
        *((q, "Write") for q in (*CONFIG, "versioning", "object-lock")),
        ("tagging", "Tagging"),
        ("*", "Admin"),  # CreateBucket and the other bucket settings
    ],
    "DELETE": [*((q, "Write") for q in CONFIG), ("tagging", "Tagging"), ("*", "DeleteBucket")],
    "POST": [("delete", "Write")],  # DeleteObjects, authorized key by key (below)
}


def route_action(method: str, has_object: bool, query: dict[str, str]) -> str | None:
    for key, action in (OBJECT_ROUTES if has_object else BUCKET_ROUTES).get(method, []):
        if key == "*" or key in query:
            return action
    return None


def matches_wildcard(pattern: str, text: str) -> bool:
    """weed/util/wildcard/wildcard_matcher.go ``matchWildcardString``: ``*`` any run of
    characters, ``?`` exactly one."""
    if pattern == "*" or pattern == text:
        return True
    ti = pi = 0
    star, star_match = -1, 0
    while ti < len(text):
        if pi < len(pattern) and pattern[pi] in ("?", text[ti]):
            ti, pi = ti + 1, pi + 1
        elif pi < len(pattern) and pattern[pi] == "*":
            star, star_match, pi = pi, ti, pi + 1
        elif star != -1:
            pi, star_match = star + 1, star_match + 1
            ti = star_match
        else:
            return False
    while pi < len(pattern) and pattern[pi] == "*":
        pi += 1
    return pi == len(pattern)


def can_do(grants: list[str], action: str, bucket: str, key: str) -> bool:
    """auth_credentials.go ``Identity.CanDo`` (lines 1630-1687): ``Admin`` and a bare action
    allow everything; a grant with a wildcard is matched against ``Action:bucket/key`` (the
    bucket alone for a bucket call); a grant without one only equals ``Action:bucket``, which
    then covers every key in the bucket."""
    if "Admin" in grants or action in grants:
        return True
    if not bucket:
        return False
    path = bucket + ("/" if key and not key.startswith("/") else "") + key
    for grant in grants:
        if "*" in grant or "?" in grant:
            if matches_wildcard(grant, f"{action}:{path}") or matches_wildcard(
                grant, f"Admin:{path}"
            ):
                return True
        elif grant in (f"{action}:{bucket}", f"Admin:{bucket}"):
            return True
    return False


def normalize_key(key: str) -> str:
    """s3_constants/header.go ``NormalizeObjectKey``: no leading or doubled slashes."""
    trailing = key.endswith("/")
    key = re.sub("/+", "/", key.replace("\\", "/")).lstrip("/")
    return key + "/" if trailing and key and not key.endswith("/") else key


def access_key_of(environ: dict) -> str:
    header = environ.get("HTTP_AUTHORIZATION", "")
    found = re.search(r"Credential=([^/]+)/", header) or re.match(r"AWS ([^:]+):", header)
    return found.group(1) if found else ""


def authorize(environ: dict) -> str:
    """Why SeaweedFS 4.34 would refuse this signed request ("" when it would not), from the
    signer's grants: ``authRequestWithAuthType`` (auth_credentials.go lines 1507-1607).

    A list's ``prefix`` (or, for another bucket call, a ``prefix`` parameter) stands in for
    the key; DeleteObjects needs ``Write`` on every key of its body
    (``AuthorizeBatchDeleteKey``: SeaweedFS reports refused keys one by one, this server
    refuses the request), a copy ``Read`` on its source (``AuthorizeCopySource``)."""
    grants = GRANTS.get(access_key_of(environ))
    if grants is None:
        return ""  # an unknown key: moto refuses it (InvalidAccessKeyId)
    request = Request(environ)
    path = environ.get("PATH_INFO", "/")
    if S3Response.subdomain_based_buckets(request):
        bucket, key = request.host.split(".")[0], path.lstrip("/")
    else:
        bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        return ""  # ListBuckets: SeaweedFS lists only the buckets the identity may list
    query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
    method = environ["REQUEST_METHOD"]
    key = normalize_key(key)
    action = route_action(method, bool(key), query)
    if action is None:
        return f"{method} {path}?{environ.get('QUERY_STRING', '')}: no such route emulated"
    prefix = re.sub("/+", "/", query.get("prefix", ""))
    if not key and prefix:
        key = prefix
    if action == "Write" and method == "POST" and "delete" in query:
        body = request.get_data()
        environ["wsgi.input"] = io.BytesIO(body)
        keys = [el.text or "" for el in ET.fromstring(body).iter() if el.tag.endswith("Key")]
        refused = [k for k in keys if not can_do(grants, "Write", bucket, normalize_key(k))]
        return f"Write:{bucket}/{refused[0]} (DeleteObjects)" if refused else ""
    if not can_do(grants, action, bucket, key):
        return f"{action}:{bucket}/{key}"
    source = environ.get("HTTP_X_AMZ_COPY_SOURCE", "")
    if method == "PUT" and source:
        src_bucket, _, src_key = unquote(source.split("?")[0]).lstrip("/").partition("/")
        if not can_do(grants, "Read", src_bucket, normalize_key(src_key)):
            return f"Read:{src_bucket}/{src_key} (copy source)"
    return ""


def access_denied(environ: dict, start_response: Any, why: str) -> Any:
    print(f"AccessDenied {access_key_of(environ)}: {why}", file=sys.stderr, flush=True)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
        "<Message>Access Denied.</Message></Error>"
    )
    response = Response(body, status=403, content_type="application/xml")
    return response(environ, start_response)


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
        if why := authorize(environ):
            return access_denied(environ, start_response, why)
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
