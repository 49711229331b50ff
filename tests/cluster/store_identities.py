"""The object store's users as the installed SeaweedFS knows them, for the test S3 server.

SeaweedFS (the chart's and the kind overlay's ``seaweedfs`` StatefulSet) reads its
identities from the file its ``-s3.config`` argument names, which the StatefulSet mounts
from the install's Secret: every identity's keys and its grants, ``Action[:bucket[/path]]``
with ``Read``, ``Write``, ``List``, ``Tagging`` and ``Admin``. :func:`add_store_identities`
reads that file out of the install's objects, exactly as the pod would see it, and adds each
identity to the test server with its keys and those grants, which the server applies as
SeaweedFS 4.34 does (tests/s3_store.py ``authorize``): nothing a test writes by hand.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any


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
    keys and its grants; returns their names."""
    names = []
    for identity in store_identities(cluster):
        for credential in identity["credentials"]:
            store.add_user(
                identity["name"],
                credential["accessKey"],
                credential["secretKey"],
                identity["actions"],
            )
        names.append(identity["name"])
    return names
