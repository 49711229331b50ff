"""The object store's users as the installed SeaweedFS knows them, for the test S3 server.

SeaweedFS (the chart's and the kind overlay's ``seaweedfs`` StatefulSet) reads its
identities from the file its ``-s3.config`` argument names, which the StatefulSet mounts
from the install's Secret: every identity's keys and its grants, ``Action[:bucket[/prefix*]]``
with ``Read``, ``Write``, ``List``, ``Tagging`` and ``Admin`` (seaweedfs
weed/s3api/auth_credentials.go ``canDo``: a grant ending in ``*`` matches object paths by
prefix, ``Action:bucket`` the whole bucket, a bare action every bucket; ``Admin`` allows
everything its scope covers). :func:`add_store_identities` reads that file out of the
install's objects, exactly as the pod would see it, and adds each identity to the test
server (moto, which enforces IAM policies on ``arn:aws:s3:::bucket/key``) with the policy
that grants the same: nothing a test writes by hand.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

# SeaweedFS's actions and the S3 calls each authorizes (weed/s3api/s3api_server.go routes),
# as IAM actions under moto's names: on objects, and on the bucket itself. HeadBucket is a
# bucket-level Read there, so only a grant that covers the bucket (``Read:bucket``, which
# also covers every object) lets it through, never ``Read:bucket/prefix*``.
OBJECT_ACTIONS = {
    "Read": ["s3:GetObject", "s3:GetObjectVersion"],
    "Write": [
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
    ],
    "List": [],
    "Tagging": ["s3:GetObjectTagging", "s3:PutObjectTagging", "s3:DeleteObjectTagging"],
    "Admin": ["s3:*"],
}
BUCKET_ACTIONS = {
    "Read": ["s3:HeadBucket", "s3:GetBucketLocation"],
    "Write": [],
    "List": ["s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:ListBucketVersions"],
    "Tagging": [],
    "Admin": ["s3:*"],
}


def statements(grant: str) -> list[dict[str, Any]]:
    """The IAM statements allowing what one SeaweedFS grant allows (``canDo``)."""
    action, _, scope = grant.partition(":")
    if action not in OBJECT_ACTIONS:
        raise ValueError(f"unknown SeaweedFS action {action!r} in grant {grant!r}")
    if not scope:  # a bare action: every bucket and object
        pairs = [(OBJECT_ACTIONS[action] + BUCKET_ACTIONS[action], "*")]
    elif "/" in scope:  # Action:bucket/prefix* (or an exact key): those objects only
        pairs = [(OBJECT_ACTIONS[action], f"arn:aws:s3:::{scope}")]
    else:  # Action:bucket (or bucket*): the bucket and every object in it
        pairs = [
            (BUCKET_ACTIONS[action], f"arn:aws:s3:::{scope}"),
            (OBJECT_ACTIONS[action], f"arn:aws:s3:::{scope}/*"),
        ]
    return [
        {"Effect": "Allow", "Action": actions, "Resource": resource}
        for actions, resource in pairs
        if actions
    ]


def iam_policy(actions: list[str]) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [statement for grant in actions for statement in statements(grant)],
    }


def store_identities(cluster: Any) -> list[dict[str, Any]]:
    """The identities in the installed SeaweedFS's ``-s3.config`` file, read from the
    Secret volume mounted at that file's directory."""
    (store,) = [
        o
        for o in cluster.objects
        if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "seaweedfs"
    ]
    pod = store["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (path,) = [arg.split("=", 1)[1] for arg in container["args"] if arg.startswith("-s3.config=")]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == posixpath.dirname(path)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    namespace = store["metadata"].get("namespace", cluster.namespace)
    key = posixpath.basename(path)
    secret = cluster.key("Secret", volume["secret"]["secretName"], key, namespace)
    return json.loads(secret)["identities"]


def add_store_identities(store: Any, cluster: Any) -> list[str]:
    """Every identity of the installed store becomes a user of the test server with its
    keys and the IAM policy of its grants; returns their names."""
    names = []
    for identity in store_identities(cluster):
        for credential in identity["credentials"]:
            store.add_user(
                identity["name"],
                credential["accessKey"],
                credential["secretKey"],
                iam_policy(identity["actions"]),
            )
        names.append(identity["name"])
    return names
