"""RecordedCustomObjectsApi: a recorded stand-in for the Kubernetes API server.

No API server runs here, so cluster-mode tests talk to this recording of CustomObjectsApi:
it keeps one InferenceService, records every call, and answers as the API server does:

* 404 for any group, version, namespace, plural or name that is not the stored object's;
* 422 for a patch, or a result, that the real KServe CRD's structural schema refuses;
* server-side apply with field ownership (``metadata.managedFields``), as
  sigs.k8s.io/structured-merge-diff's ``merge.Updater`` does it: an apply sets the fields
  of its configuration and owns exactly them; a field it owned and no longer sets is removed
  only when no other manager owns it; changing a field another manager owns is a 409
  conflict unless ``force``, which takes it over. An update (``kubectl apply`` without
  ``--server-side``, helm) owns the fields it added or changed. Lists follow the CRD:
  ``x-kubernetes-list-type: map`` merges by key (env by name), others are atomic.

Reads answer with a status sequence: not yet observed, then Ready with the split, as a
Serverless rollout records it (Knative revisions in status.components) or, in Standard mode,
as the CRD's status.canaryStatuses describes it.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator

from kubernetes.client.exceptions import ApiException

from mlref.canary.kube import FIELD_MANAGER, GROUP, PLURAL, VERSION, deployment_mode
from mlref.k8s.checks import STANDARD_MODES
from mlref.k8s.render import repo_root
from mlref.k8s.schemas import Validator
from tests.k8s.conftest import KUBERNETES_VERSION, find_crd_dir

API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
# Identity and server-set fields: never owned by a manager (as the API server strips them).
UNMANAGED = {
    ("f:apiVersion",),
    ("f:kind",),
    ("f:status",),
    ("f:metadata", "f:name"),
    ("f:metadata", "f:namespace"),
    ("f:metadata", "f:generation"),
    ("f:metadata", "f:managedFields"),
    ("f:metadata", "f:resourceVersion"),
    ("f:metadata", "f:uid"),
    ("f:metadata", "f:creationTimestamp"),
}

Path = tuple[str, ...]


class Conflict(Exception):
    """An apply changes fields another manager owns (the API server's 409)."""


class Invalid(Exception):
    """An object the server cannot even merge (the API server's 422)."""


@functools.cache
def validator() -> Validator:
    """The real CRDs, loaded once; skips (strict: fails) without them."""
    return Validator(find_crd_dir(repo_root()), KUBERNETES_VERSION)


def isvc_schema() -> dict:
    return validator().crds[(API_VERSION, KIND)]


# --- paths over the object, typed by the CRD schema ---------------------------------------


def _child(schema: dict | None, key: str) -> dict | None:
    if not schema:
        return None
    props = schema.get("properties") or {}
    if key in props:
        return props[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def _list_keys(schema: dict | None) -> list[str] | None:
    """The keys of a ``map`` list; None for an atomic one."""
    if schema and schema.get("x-kubernetes-list-type") == "map":
        return list(schema.get("x-kubernetes-list-map-keys") or [])
    return None


def _element(item: dict, keys: list[str]) -> str:
    missing = [k for k in keys if not isinstance(item, dict) or k not in item]
    if missing:
        raise Invalid(f"associative list with keys has an element that omits key field {missing}")
    return "k:" + json.dumps({k: item[k] for k in keys}, separators=(",", ":"), sort_keys=True)


def field_set(obj: dict, schema: dict | None = None) -> set[Path]:
    """Every field ``obj`` sets, as paths of structured-merge-diff's fieldsV1 names."""
    found: set[Path] = set()

    def walk(value, schema, path: Path) -> None:
        if isinstance(value, dict) and value:
            for key, child in value.items():
                walk(child, _child(schema, key), (*path, f"f:{key}"))
            return
        keys = _list_keys(schema)
        if isinstance(value, list) and keys is not None:
            found.add(path)
            for item in value:
                element = (*path, _element(item, keys))
                found.add(element)
                for key, child in item.items():
                    walk(child, _child(schema.get("items"), key), (*element, f"f:{key}"))
            return
        found.add(path)  # a scalar, an atomic list or an empty map

    walk(obj, schema or isvc_schema(), ())
    return {p for p in found if p and not any(p[: len(u)] == u for u in UNMANAGED)}


def _step(node, name: str):
    if name.startswith("f:"):
        return node.get(name[2:]) if isinstance(node, dict) else None
    wanted = json.loads(name[2:])
    for item in node if isinstance(node, list) else []:
        if all(item.get(k) == v for k, v in wanted.items()):
            return item
    return None


_MISSING = object()


def value_at(obj: dict, path: Path):
    node = obj
    for name in path:
        if node is None:
            return _MISSING
        if name.startswith("f:") and isinstance(node, dict) and name[2:] not in node:
            return _MISSING
        node = _step(node, name)
    return _MISSING if node is None and path else node


def remove_at(obj: dict, path: Path) -> None:
    parent = obj
    for name in path[:-1]:
        parent = _step(parent, name)
        if parent is None:
            return
    last = path[-1]
    if last.startswith("f:") and isinstance(parent, dict):
        parent.pop(last[2:], None)
    elif isinstance(parent, list):
        item = _step(parent, last)
        if item is not None:
            parent.remove(item)


def merge(live, config, schema: dict | None):
    """``config`` merged onto ``live``: maps by key, map lists by element key, else replaced."""
    if isinstance(live, dict) and isinstance(config, dict):
        out = copy.deepcopy(live)
        for key, value in config.items():
            out[key] = merge(live.get(key), value, _child(schema, key)) if key in live else value
        return copy.deepcopy(out)
    keys = _list_keys(schema)
    if isinstance(live, list) and isinstance(config, list) and keys is not None:
        out = copy.deepcopy(live)
        for item in config:
            where = next(
                (i for i, old in enumerate(out) if _element(old, keys) == _element(item, keys)),
                None,
            )
            if where is None:
                out.append(copy.deepcopy(item))
            else:
                out[where] = merge(out[where], item, schema.get("items"))
        return out
    return copy.deepcopy(config)


def compare(old: dict, new: dict) -> tuple[set[Path], set[Path], set[Path]]:
    """(added, modified, removed) fields from ``old`` to ``new``."""
    before, after = field_set(old), field_set(new)
    modified = {
        p
        for p in before & after
        if value_at(old, p) != value_at(new, p) and not _has_children(p, before | after)
    }
    return after - before, modified, before - after


def _has_children(path: Path, paths: set[Path]) -> bool:
    return any(len(p) > len(path) and p[: len(path)] == path for p in paths)


# --- managedFields: stored on the object in the API server's fieldsV1 format ---------------


def to_fields_v1(paths: set[Path]) -> dict:
    tree: dict = {}
    for path in sorted(paths):
        node = tree
        for name in path:
            node = node.setdefault(name, {})
        if path[-1].startswith("k:"):
            node["."] = {}
    return tree


def from_fields_v1(tree: dict, prefix: Path = ()) -> Iterator[Path]:
    for name, child in tree.items():
        if name == ".":
            yield prefix
            continue
        path = (*prefix, name)
        if child:
            yield from from_fields_v1(child, path)
        else:
            yield path


Managers = dict[str, tuple[str, set[Path]]]  # manager -> (operation, fields)


def managers_of(obj: dict) -> Managers:
    return {
        entry["manager"]: (entry["operation"], set(from_fields_v1(entry.get("fieldsV1") or {})))
        for entry in (obj.get("metadata") or {}).get("managedFields") or []
    }


def with_managers(obj: dict, managers: Managers) -> dict:
    obj.setdefault("metadata", {})["managedFields"] = [
        {
            "manager": name,
            "operation": operation,
            "apiVersion": API_VERSION,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(fields),
        }
        for name, (operation, fields) in managers.items()
        if fields
    ]
    return obj


def _settle(live: dict, new: dict, managers: Managers, manager: str, force: bool) -> Managers:
    """Updater.update: other managers lose what changed under them (a conflict, unless
    forced) and what was removed."""
    added, modified, removed = compare(live, new)
    conflicts = {
        name: fields & (added | modified)
        for name, (_, fields) in managers.items()
        if name != manager and fields & (added | modified)
    }
    if conflicts and not force:
        raise Conflict(
            f"Apply failed with {sum(map(len, conflicts.values()))} conflict(s): "
            + "; ".join(
                f'conflict with "{name}": ' + ", ".join(".".join(p) for p in sorted(fields))
                for name, fields in sorted(conflicts.items())
            )
        )
    return {
        name: (operation, fields - conflicts.get(name, set()) - removed)
        for name, (operation, fields) in managers.items()
    }


def server_side_apply(
    obj: dict, patch: dict, manager: str = FIELD_MANAGER, force: bool = True
) -> dict:
    """``obj`` after ``patch`` is applied server-side (Updater.Apply): merged, then the fields
    ``manager`` applied last time and leaves out now removed unless another manager owns
    them."""
    managers = managers_of(obj)
    merged = merge(obj, patch, isvc_schema())
    last = managers.get(manager, ("Apply", set()))[1]
    applied = field_set(patch)
    managers[manager] = ("Apply", applied)
    owned = set().union(*(fields for _, fields in managers.values()))
    present = field_set(merged)
    prunable = {p for p in (last - owned) if p in present}
    for path in sorted(prunable, key=len):
        descendants = {p for p in present if len(p) > len(path) and p[: len(path)] == path}
        if descendants <= prunable:
            remove_at(merged, path)
    managers = _settle(obj, merged, managers, manager, force)
    return with_managers(merged, managers)


def update(obj: dict, new: dict, manager: str) -> dict:
    """``new`` stored over ``obj`` by an update (Updater.Update): ``manager`` owns what it
    added or changed, and takes it over from the others."""
    managers = managers_of(obj)
    settled = _settle(obj, new, managers, manager, force=True)
    added, modified, removed = compare(obj, new)
    _, fields = settled.get(manager, ("Update", set()))
    settled[manager] = ("Update", (fields | added | modified) - removed)
    return with_managers(copy.deepcopy(new), settled)


def client_side_apply(obj: dict | None, config: dict, last_applied: dict | None = None) -> dict:
    """``kubectl apply`` without ``--server-side``: the configuration merged onto the live
    object, less what the last applied configuration set and this one does not, stored as
    an update by manager ``kubectl-client-side-apply``."""
    schema = isvc_schema()
    live = obj or {}
    new = merge(live, config, schema)
    for path in sorted(field_set(last_applied or {}) - field_set(config), key=len):
        remove_at(new, path)
    return update(live, new, "kubectl-client-side-apply")


# --- the recorded API ---------------------------------------------------------------------


def traffic(percent: int | None) -> list[dict]:
    if percent is None or percent == 100:
        return [{"revisionName": "ctr-predictor-00002", "percent": 100, "latestRevision": True}]
    return [
        {"revisionName": "ctr-predictor-00002", "percent": percent, "latestRevision": True},
        {"revisionName": "ctr-predictor-00001", "percent": 100 - percent, "latestRevision": False},
    ]


def canary_statuses(spec: dict) -> list[dict]:
    return [
        {"name": c["predictor"]["name"], "ready": True, "trafficPercent": c["trafficPercent"]}
        for c in spec.get("canary") or []
    ]


def schema_errors(obj: dict) -> list[str]:
    return [str(error) for error in validator().validate(obj)]


class RecordedCustomObjectsApi:
    """The CustomObjectsApi calls mlref makes, answered from a recorded rollout."""

    def __init__(self, isvc: dict | None, error_status: int | None = None, ready_after: int = 1):
        self.isvc = copy.deepcopy(isvc)
        self.error_status = error_status
        self.ready_after = ready_after  # reads that still show the old generation
        self.calls: list[tuple[str, tuple, dict]] = []
        self._reads_since_patch = 0

    def _fail_if_asked(self, group, version, namespace, plural, name) -> None:
        if self.error_status is not None:
            raise ApiException(status=self.error_status, reason="recorded error")
        if self.isvc is None or (group, version, plural) != (GROUP, VERSION, PLURAL):
            raise ApiException(status=404, reason="Not Found")
        meta = self.isvc["metadata"]
        if (namespace, name) != (meta.get("namespace"), meta["name"]):
            raise ApiException(status=404, reason="Not Found")

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("get", (group, version, namespace, plural, name), {}))
        self._fail_if_asked(group, version, namespace, plural, name)
        self._reads_since_patch += 1
        obj = copy.deepcopy(self.isvc)
        meta = obj["metadata"]
        status = obj.setdefault("status", {})
        if self._reads_since_patch <= self.ready_after:
            status["observedGeneration"] = meta["generation"] - 1
            status["conditions"] = [{"type": "Ready", "status": "Unknown", "reason": "Rolling"}]
        else:
            status["observedGeneration"] = meta["generation"]
            status["conditions"] = [{"type": "Ready", "status": "True"}]
            if deployment_mode(obj) in STANDARD_MODES:
                status["canaryStatuses"] = canary_statuses(obj["spec"])
            else:
                percent = obj["spec"]["predictor"].get("canaryTrafficPercent")
                status["components"] = {"predictor": {"traffic": traffic(percent)}}
        return obj

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body, **kw):
        self.calls.append(("patch", (group, version, namespace, plural, name, body), kw))
        self._fail_if_asked(group, version, namespace, plural, name)
        meta = body.get("metadata") or {}
        if (meta.get("name"), meta.get("namespace", namespace)) != (name, namespace):
            raise ApiException(status=400, reason="the object's name does not match the URL")
        # A typed apply configuration: every field declared, of its type (required ones may
        # be left out; the merged object must have them).
        errors = [e for e in schema_errors(body) if "required" not in e]
        if errors:
            raise ApiException(status=422, reason="Unprocessable Entity: " + "; ".join(errors))
        manager = kw.get("field_manager") or ""
        self.store(lambda live: server_side_apply(live, body, manager, bool(kw.get("force"))))
        return copy.deepcopy(self.isvc)

    def store(self, change) -> None:
        """Put ``change(live)`` in force as the server would: refused whole when invalid, a
        new generation when the spec changed."""
        try:
            new = change(copy.deepcopy(self.isvc))
        except Conflict as exc:
            raise ApiException(status=409, reason=f"Conflict: {exc}") from None
        except Invalid as exc:
            raise ApiException(status=422, reason=f"Unprocessable Entity: {exc}") from None
        errors = schema_errors({k: v for k, v in new.items() if k != "status"})
        if errors:
            raise ApiException(status=422, reason="Unprocessable Entity: " + "; ".join(errors))
        generation = (self.isvc or {}).get("metadata", {}).get("generation", 0)
        if new.get("spec") != (self.isvc or {}).get("spec"):
            generation += 1
            self._reads_since_patch = 0
        new["metadata"]["generation"] = generation
        self.isvc = new

    def update(self, obj: dict, manager: str) -> None:
        """A create or update by ``manager`` (helm install or upgrade, kubectl edit)."""
        self.store(lambda live: update(live or {}, copy.deepcopy(obj), manager))

    def kubectl_apply(self, config: dict, server_side: bool = False) -> None:
        """What ``kubectl apply [--server-side]`` does to the stored object."""
        if server_side:
            self.store(lambda live: server_side_apply(live or {}, config, "kubectl", force=False))
            return
        last = getattr(self, "_last_applied", None)
        self.store(lambda live: client_side_apply(live, config, last))
        self._last_applied = copy.deepcopy(config)
