"""The pod network as the install renders it: Service names and NetworkPolicies.

**Services.** Every in-cluster address pods are given comes from a rendered ``Service``:
its ``name``, ``namespace`` and ``port`` make the addresses cluster DNS answers
(``name.namespace.svc.cluster.local:port``, ``name.namespace.svc:port``,
``name.namespace:port``, and from the Service's own namespace ``name:port``), each mapped to
the 127.0.0.1 address of the test server standing in for the pods behind it
(:func:`service_map`, by the ``app.kubernetes.io/component`` the Service selects).

**NetworkPolicies** (``networking.k8s.io/v1``, evaluated as the API documents them): a pod
selected by a policy of its namespace whose ``policyTypes`` include ``Egress`` (``Ingress``)
is isolated for that direction, and then a connection needs an egress rule of one such
policy that admits the destination (and an ingress rule of one admitting the source, for
the destination pod). A peer's ``podSelector`` alone means pods of the policy's namespace,
``namespaceSelector`` alone every pod of the selected namespaces, both together the selected
pods of the selected namespaces; an empty or absent ``to``/``from`` admits everything, an
empty or absent ``ports`` every port; a port is matched by number or by the destination
container's port name, with ``endPort`` ranges. Namespaces carry their
``kubernetes.io/metadata.name`` label and the labels of the Namespace objects installed.
:func:`connection_gap` names the missing allow rule of a refused connection.

**Routes.** An address served through a proxy of another install (KServe's predictor
host in Knative mode: Kourier's gateway, then the revision's pods) is a :class:`Route`: the
connection is allowed only if every hop along it is, each from the one before.

Not evaluated: ``ipBlock`` peers (pod traffic is matched by selectors only), protocols
other than TCP, policies of namespaces the install does not render (the Kubeflow and KServe
system namespaces, whose pods are therefore not isolated here), and Services without a
selector.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

COMPONENT = "app.kubernetes.io/component"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Pod")


@dataclass(frozen=True)
class Backend:
    """One port of a rendered Service, with the labels and port of the pods behind it."""

    name: str
    namespace: str
    port: int
    target_port: int
    target_port_name: str = ""
    pod_labels: tuple[tuple[str, str], ...] = ()

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.pod_labels)

    def addresses(self, from_namespace: str | None = None) -> list[str]:
        """Its DNS names with the port, the short one only from its own namespace."""
        base = f"{self.name}.{self.namespace}"
        names = [f"{base}.svc.cluster.local", f"{base}.svc", base]
        if from_namespace == self.namespace:
            names.append(self.name)
        return [f"{name}:{self.port}" for name in names]


def _template(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj if obj["kind"] == "Pod" else obj["spec"]["template"]


def rendered_services(objects: Iterable[Mapping[str, Any]], namespace: str) -> list[Backend]:
    """Each port of each Service, resolved to the pods its selector picks."""
    objects = list(objects)
    found = []
    for service in (o for o in objects if o.get("kind") == "Service"):
        meta, spec = service["metadata"], service.get("spec", {})
        selector = spec.get("selector") or {}
        service_ns = meta.get("namespace", namespace)
        pods = [
            _template(o)
            for o in objects
            if o.get("kind") in WORKLOADS
            and o["metadata"].get("namespace", namespace) == service_ns
            and selector
            and selects(selector, _template(o).get("metadata", {}).get("labels", {}))
        ]
        labels = pods[0].get("metadata", {}).get("labels", {}) if pods else selector
        ports = {
            p["name"]: p["containerPort"]
            for pod in pods[:1]
            for c in pod["spec"].get("containers", [])
            for p in c.get("ports", [])
            if "name" in p
        }
        for port in spec.get("ports", []):
            target = port.get("targetPort", port["port"])
            number = ports.get(target, port["port"]) if isinstance(target, str) else int(target)
            name = next((n for n, p in ports.items() if p == number), "")
            found.append(
                Backend(
                    meta["name"],
                    service_ns,
                    int(port["port"]),
                    number,
                    name,
                    tuple(sorted(labels.items())),
                )
            )
    return found


def service_map(
    objects: Iterable[Mapping[str, Any]], servers: Mapping[str, str], namespace: str = "mlref"
) -> dict[str, str]:
    """In-cluster ``host:port`` -> test server ``127.0.0.1:port``; ``servers`` names each
    test server by the component label of the pods it stands in for."""
    backends = rendered_services(objects, namespace)
    mapping: dict[str, str] = {}
    for component, server in servers.items():
        chosen = [b for b in backends if b.labels.get(COMPONENT) == component]
        if not chosen:
            raise LookupError(f"no rendered Service selects {COMPONENT}={component}")
        for backend in chosen:
            for address in backend.addresses(from_namespace=backend.namespace):
                mapping[address] = server.removeprefix("http://")
    return mapping


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (``matchLabels`` and ``matchExpressions``, or a Service's plain
    map) against labels; an empty selector selects everything."""
    if selector is None:
        return False
    plain = {k: v for k, v in selector.items() if k not in ("matchLabels", "matchExpressions")}
    wanted = {**plain, **(selector.get("matchLabels") or {})}
    if any(labels.get(k) != v for k, v in wanted.items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = (
            expression["key"],
            expression["operator"],
            expression.get("values", []),
        )
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


@dataclass(frozen=True)
class Endpoint:
    """One end of a connection: a pod's namespace and labels."""

    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        shown = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "no labels"
        return f"pod ({shown}) in {self.namespace}"


def _policy_types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy.get("spec", {})
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if "egress" in spec else [])]


def _peer_admits(
    peer: Mapping[str, Any], policy_ns: str, other: Endpoint, namespace_labels: Mapping
) -> bool:
    if "ipBlock" in peer:
        return False
    pods, spaces = peer.get("podSelector"), peer.get("namespaceSelector")
    if spaces is None:
        in_namespace = other.namespace == policy_ns
    else:
        in_namespace = selects(spaces, namespace_labels.get(other.namespace, {}))
    return in_namespace and (pods is None or selects(pods, other.labels))


def _ports_admit(ports: list[Mapping[str, Any]] | None, port: int, port_name: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        wanted = entry.get("port")
        if wanted is None or wanted == port or (port_name and wanted == port_name):
            return True
        if isinstance(wanted, int) and "endPort" in entry and wanted <= port <= entry["endPort"]:
            return True
    return False


def connection_gap(
    objects: Iterable[Mapping[str, Any]],
    source: Endpoint,
    destination: Endpoint,
    port: int,
    port_name: str = "",
    namespace: str = "mlref",
) -> str | None:
    """None if the rendered NetworkPolicies let ``source`` open a TCP connection to
    ``destination`` on ``port``; else what is missing, naming the isolating policies."""
    objects = list(objects)
    namespace_labels: dict[str, dict[str, str]] = {}
    for obj in objects:
        if obj.get("kind") == "Namespace":
            name = obj["metadata"]["name"]
            namespace_labels[name] = dict(obj["metadata"].get("labels") or {})
    for name in {source.namespace, destination.namespace}:
        namespace_labels.setdefault(name, {})[NAMESPACE_LABEL] = name
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
    gaps = []
    for direction, pod, other, rules_key, peers_key in (
        ("Egress", source, destination, "egress", "to"),
        ("Ingress", destination, source, "ingress", "from"),
    ):
        isolating = [
            p
            for p in policies
            if p["metadata"].get("namespace", namespace) == pod.namespace
            and direction in _policy_types(p)
            and selects(p["spec"].get("podSelector", {}), pod.labels)
        ]
        if not isolating:
            continue
        admitted = any(
            (
                not rule.get(peers_key)
                or any(
                    _peer_admits(peer, pod.namespace, other, namespace_labels)
                    for peer in rule[peers_key]
                )
            )
            and _ports_admit(rule.get("ports"), port, port_name)
            for policy in isolating
            for rule in policy["spec"].get(rules_key) or []
        )
        if not admitted:
            names = ", ".join(sorted(p["metadata"]["name"] for p in isolating))
            gaps.append(
                f"no {direction.lower()} rule admits {other} on port {port} for {pod} "
                f"(isolated by NetworkPolicy {names})"
            )
    return "; ".join(gaps) or None


@dataclass(frozen=True)
class Route:
    """An in-cluster address, the test server behind it, and the pods a connection to it
    passes on the way, in order (destination endpoint, port); the last one serves it."""

    server: str
    hops: tuple[tuple[Endpoint, int], ...]

    def gap(
        self, objects: Iterable[Mapping[str, Any]], source: Endpoint, namespace: str
    ) -> str | None:
        """The first hop the rendered NetworkPolicies refuse, or None."""
        objects = list(objects)
        for destination, port in self.hops:
            gap = connection_gap(objects, source, destination, port, "", namespace)
            if gap is not None:
                return gap
            source = destination
        return None


class PodNetwork:
    """One pod's view of the network: in-cluster addresses the policies allow become the
    test servers'; one they refuse becomes a listener that accepts, records the policy gap
    and hangs up, so the pod fails to talk there and the harness says why."""

    def __init__(
        self,
        services: Mapping[str, str],
        objects: Iterable[Mapping[str, Any]],
        source: Endpoint,
        namespace: str = "mlref",
        routes: Mapping[str, Route] | None = None,
    ):
        self.source, self.objects, self.namespace = source, list(objects), namespace
        self.refused: list[str] = []
        self.listeners: list[socket.socket] = []
        backends = {
            address: backend
            for backend in rendered_services(self.objects, namespace)
            for address in backend.addresses(from_namespace=backend.namespace)
        }
        self.targets: dict[str, str] = {}
        for address in sorted(services, key=len, reverse=True):
            backend = backends.get(address)
            if backend is None:  # a Service of another install (Kubeflow's API server)
                host, _, port = address.rpartition(":")
                parts = host.split(".")
                destination = Endpoint(parts[1] if len(parts) > 1 else namespace)
                gap = connection_gap(self.objects, source, destination, int(port), "", namespace)
            elif address not in backend.addresses(from_namespace=source.namespace):
                continue  # a short name, from another namespace: cluster DNS has no answer
            else:
                destination = Endpoint(backend.namespace, backend.labels)
                gap = connection_gap(
                    self.objects,
                    source,
                    destination,
                    backend.target_port,
                    backend.target_port_name,
                    namespace,
                )
            self.targets[address] = (
                services[address] if gap is None else self.refusing(f"{address}: {gap}")
            )
        for address, route in (routes or {}).items():
            gap = route.gap(self.objects, source, namespace)
            self.targets[address] = (
                route.server if gap is None else self.refusing(f"{address}: {gap}")
            )
        # Longest first: a name is never replaced inside a longer one it begins.
        self.targets = dict(sorted(self.targets.items(), key=lambda item: -len(item[0])))

    def refusing(self, message: str) -> str:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        self.listeners.append(listener)

        def serve() -> None:
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return
                self.refused.append(message)
                connection.close()

        threading.Thread(target=serve, daemon=True).start()
        return f"127.0.0.1:{listener.getsockname()[1]}"

    def resolve(self, text: str) -> str:
        """Cluster DNS for this pod: each known address, as a whole word, replaced."""
        for address, target in self.targets.items():
            text = re.sub(rf"(?<![A-Za-z0-9.-]){re.escape(address)}(?!\d)", target, text)
        return text

    def close(self) -> list[str]:
        """Stop the refusing listeners; the refused connections' gaps, once each."""
        for listener in self.listeners:
            listener.close()
        return list(dict.fromkeys(self.refused))
