"""Run a container the way its pod runs it, on this machine.

A pod here is one process tree in a mount namespace of its own (see ``sandbox.py``): the
root filesystem is this machine's, read-only, and its only writable places are its own
volumes (the emptyDirs and claims its spec mounts, and ``/tmp`` unless the container's root
filesystem is read-only), fresh and empty.
Its environment is exactly what the kubelet gives the container: the image's ``ENV``
(read from the project's Dockerfile, ``PATH`` starting at ``/opt/mlref/bin``), then
``envFrom``, then ``env`` (ConfigMap and Secret keys resolved from the objects the test
supplies, in the pod's namespace; ``$(VAR)`` references expanded; a missing non-optional
source fails the pod as CreateContainerConfigError does), and nothing from the test
process. Its working directory is the container's ``workingDir`` or the image's WORKDIR.
In-cluster Service addresses (the rendered Services' names and ports,
:func:`tests.cluster.network.service_map`) are rewritten to the 127.0.0.1 ports of the test
servers, in env values and arguments, in place of cluster DNS; one the rendered
NetworkPolicies do not allow from this pod goes to a listener that refuses it and records the
missing rule (:class:`tests.cluster.network.PodNetwork`, :attr:`Cluster.refused`). Only the
project image is emulated, whatever the tag: its virtualenv is built from this checkout
as the Dockerfile builds it (a wheel, not editable) and mounted read-only at ``/opt/mlref``
(:func:`image_mounts`), so pods find it wherever the checkout is, ``/tmp`` included. The
checkout, its git directory and this machine's home are hidden (:func:`hidden_paths`), and
the process runs as the container's ``runAsUser``/``runAsGroup`` or the Dockerfile's
``USER`` (10001), its writable volumes owned by that user (when this machine's user is root,
who alone can switch users; otherwise it runs as root mapped into a user namespace).

Not emulated: the rest of the image's filesystem (pods see this machine's, e.g. not
``/opt/mlref-feature-repo``; the virtualenv's dependencies are this interpreter's site dirs,
not a copy, and its Python is this interpreter's), network isolation beyond the Service
addresses it rewrites (pods share this machine's network), resource limits, probes,
restarts, the image's ENTRYPOINT, service-account tokens, volumes other than emptyDir and
claims the test maps to host dirs, and the writable container layer of pods without
``readOnlyRootFilesystem`` (here every write outside a volume fails, as in the chart's pods).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import importlib.metadata
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mlref.k8s.install import kind_objects
from mlref.settings import Settings
from tests.cluster import kubelet_volume
from tests.cluster.network import Endpoint, PodNetwork, Route
from tests.cluster.store_identities import add_store_identities
from tests.servers import require

REPO = Path(__file__).resolve().parents[2]
SANDBOX = Path(__file__).with_name("sandbox.py")
IMAGE_VENV = "/opt/mlref"  # the Dockerfile's virtualenv, mounted there in every pod
IMAGE_DEPS = "/opt/mlref-deps"  # where this interpreter's site dirs appear in pods
SOURCE_IGNORED = (".venv", ".git", ".mlref", "build", "dist", "*.egg-info", "__pycache__", "out")
# The PATH of the python:3.11-slim base image, which the Dockerfile's ``$PATH`` extends.
BASE_IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
PROJECT_IMAGE = Settings.model_fields["image"].default
UNSHARE = ["unshare", "--mount", "--map-root-user", "--propagation", "private"]


class PodFailed(RuntimeError):
    """A pod's container exited non-zero, or could not start (missing ConfigMap key...)."""


@functools.cache
def image_config(dockerfile: Path = REPO / "Dockerfile") -> tuple[dict[str, str], str]:
    """The ``ENV`` and ``WORKDIR`` of the Dockerfile's final stage, as the runtime sets them."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    env: dict[str, str] = {"PATH": BASE_IMAGE_PATH}
    workdir = "/"
    for line in text.splitlines():
        words = line.strip().split(maxsplit=1)
        if not words:
            continue
        instruction = words[0].upper()
        if instruction == "FROM":
            env, workdir = {"PATH": BASE_IMAGE_PATH}, "/"
        elif instruction == "WORKDIR" and len(words) == 2:
            workdir = words[1]
        elif instruction == "ENV" and len(words) == 2:
            for pair in shlex.split(words[1]):
                name, _, value = pair.partition("=")
                env[name] = value.replace("$PATH", env.get("PATH", ""))
    return env, workdir


@functools.cache
def image_mounts() -> dict[str, Path]:
    """Mount path -> host dir of the image's own files, read-only in every pod.

    A virtualenv built once per test process as the Dockerfile builds ``/opt/mlref``: the
    project installed from a wheel (not editable; console scripts run
    ``/opt/mlref/bin/python``), its dependencies this interpreter's site dirs. Mounted at
    ``/opt/mlref``, it does not depend on where the checkout is: a site dir under ``/tmp``,
    which each pod's own ``/tmp`` hides, is mounted under ``/opt/mlref-deps`` instead."""
    base = Path(tempfile.mkdtemp(prefix="mlref-image-"))
    atexit.register(shutil.rmtree, base, True)
    source, venv = base / "src", base / "venv"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*SOURCE_IGNORED))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = venv / "lib" / version / "site-packages"
    # --target: pip leaves this interpreter's own (editable) mlref alone.
    install = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile"),
            *("--no-warn-script-location", "--target", str(site_packages), str(source)),
        ],
        capture_output=True,
        text=True,
    )
    if install.returncode != 0 or not (site_packages / "mlref").is_dir():
        raise RuntimeError(f"building the image's virtualenv failed:\n{install.stderr[-3000:]}")
    for script in (site_packages / "bin").iterdir():  # console scripts, as the image has them
        body = script.read_bytes().split(b"\n", 1)[1]
        (venv / "bin" / script.name).write_bytes(f"#!{IMAGE_VENV}/bin/python\n".encode() + body)
        (venv / "bin" / script.name).chmod(0o755)
    shutil.rmtree(site_packages / "bin")
    for name, target in dependency_scripts().items():  # `pip install .` writes these too
        script = venv / "bin" / name
        if not script.exists():
            module, _, attr = target.partition(":")
            head = attr.split(".")[0]
            script.write_text(
                f"#!{IMAGE_VENV}/bin/python\nimport sys\nfrom {module} import {head}\n"
                f"sys.exit({attr}())\n"
            )
            script.chmod(0o755)
    mounts = {IMAGE_VENV: venv}
    lines = []
    site_dirs = [
        p for p in dict.fromkeys(sys.path) if p.endswith(("site-packages", "dist-packages"))
    ]
    for index, path in enumerate(p for p in site_dirs if Path(p).is_dir()):
        mounts[f"{IMAGE_DEPS}/{index}"] = Path(path)  # out of the checkout and the home
        lines.append(f"import site; site.addsitedir({f'{IMAGE_DEPS}/{index}'!r})\n")
    (site_packages / "_mlref_image_deps.pth").write_text("".join(lines))
    # The base image's Python: this interpreter's prefix, at its own path (the virtualenv's
    # ``home``), even where that lies in the hidden home directory.
    mounts[sys.base_prefix] = Path(sys.base_prefix)
    return mounts


def image_accounts(dockerfile: Path = REPO / "Dockerfile") -> tuple[str, str]:
    """The passwd and group lines the Dockerfile's ``useradd``/``groupadd`` write."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    user = re.search(r"useradd --uid (\d+) --gid (\d+) .*?--home-dir (\S+) (\w+)", text)
    group = re.search(r"groupadd --gid (\d+) (\w+)", text)
    if not user or not group:
        raise LookupError(f"{dockerfile}: no `useradd --uid` / `groupadd --gid` to emulate")
    uid, gid, home, name = user.groups()
    return f"{name}:x:{uid}:{gid}::{home}:/usr/sbin/nologin\n", f"{group[2]}:x:{group[1]}:\n"


def image_passwd(pod_dir: Path) -> Path:
    """This machine's /etc/passwd plus the image's user, as a file of the pod."""
    path = pod_dir / "passwd"
    path.write_text(Path("/etc/passwd").read_text() + image_accounts()[0])
    return path


def image_group(pod_dir: Path) -> Path:
    path = pod_dir / "group"
    path.write_text(Path("/etc/group").read_text() + image_accounts()[1])
    return path


@functools.cache
def image_user(dockerfile: Path = REPO / "Dockerfile") -> tuple[int, int]:
    """The numeric ``USER uid:gid`` of the Dockerfile's final stage (root if none)."""
    user = (0, 0)
    for line in re.sub(r"\\\n", " ", dockerfile.read_text()).splitlines():
        words = line.strip().split()
        if words and words[0].upper() == "FROM":
            user = (0, 0)
        elif len(words) == 2 and words[0].upper() == "USER":
            uid, _, gid = words[1].partition(":")
            user = (int(uid), int(gid or uid))
    return user


@functools.cache
def git_dir() -> str:
    """The checkout's git directory (a worktree's is its main checkout's), or ''."""
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--path-format=absolute", "--git-common-dir"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def hidden_paths(volumes: Mapping[str, Path]) -> list[str]:
    """What this machine has and the image does not: ``/tmp``'s content, the checkout, its
    git directory and the home directory (paths already under a volume are hidden by it)."""
    found = git_dir()
    # The image's /tmp is empty: this machine's is never seen.
    paths = {"/tmp", str(REPO), str(Path.home()), *([found] if found else [])}
    # A path under another hidden one is hidden with it (kept, it would show as an empty
    # directory: a clone's .git inside its checkout).
    outermost = {p for p in paths if not any(p != q and Path(p).is_relative_to(q) for q in paths)}
    return sorted(
        path
        for path in outermost
        if path != "/" and not any(Path(path).is_relative_to(v) for v in volumes)
    )


def dependency_scripts(project: str = "mlref") -> dict[str, str]:
    """Console scripts (name -> ``module:attr``) of the project's installed dependency
    closure, as ``pip install`` puts them in the image's ``bin`` (``mlflow`` among them)."""
    from packaging.requirements import Requirement

    scripts: dict[str, str] = {}
    seen: set[str] = set()
    todo = [project]
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if name != project:
            for entry in dist.entry_points.select(group="console_scripts"):
                scripts.setdefault(entry.name, entry.value)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return scripts


def image_env() -> dict[str, str]:
    return dict(image_config()[0])


def image_workdir() -> str:
    return image_config()[1]


@dataclass
class Cluster:
    """What pods can reach: ConfigMaps and Secrets (Kubernetes objects as dicts) and the
    in-cluster ``host:port`` of each Service mapped to a test server's ``127.0.0.1:port``.

    Objects without ``metadata.namespace`` live in ``namespace`` (as ``kubectl apply -n``)."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    services: dict[str, str] = field(default_factory=dict)
    namespace: str = "mlref"
    image_env: dict[str, str] = field(default_factory=image_env)
    image_workdir: str = field(default_factory=image_workdir)
    image_repository: str = PROJECT_IMAGE.rsplit(":", 1)[0]
    # Kubeflow's task cache (fingerprint -> finished task), kept across pipeline runs.
    executions: dict[str, Any] = field(default_factory=dict)
    # Every connection a pod was refused by the NetworkPolicies, with the missing rule.
    refused: list[str] = field(default_factory=list)
    # Addresses served through another install's proxies (KServe's predictor host).
    routes: dict[str, Route] = field(default_factory=dict)
    # The nodes' clock, in seconds ahead of this machine's (None: this machine's own).
    clock: float | None = None

    def set_clock(self, at: datetime) -> None:
        """Pods started from now on see the time ``at`` now, their clock running on from
        there (:func:`node_clock`): the cluster's time moved, as a test needs it to be when
        a CronJob runs, without waiting."""
        self.clock = at.timestamp() - (time.time() - own_clock_offset())

    def check_image(self, image: str) -> None:
        """The image's virtualenv stands in for the project image (any tag) and nothing else."""
        if image.rsplit(":", 1)[0] != self.image_repository:
            raise NotImplementedError(
                f"image {image}: only {self.image_repository} is emulated (by its virtualenv)"
            )

    def lookup(self, kind: str, name: str, namespace: str) -> dict[str, str] | None:
        """The string data of a ConfigMap or Secret in ``namespace``, or None."""
        for obj in self.objects:
            meta = obj.get("metadata", {})
            if (
                obj.get("kind") == kind
                and meta.get("name") == name
                and meta.get("namespace", self.namespace) == namespace
            ):
                data = {k: str(v) for k, v in (obj.get("data") or {}).items()}
                if kind == "Secret":
                    data = {k: base64.b64decode(v).decode() for k, v in data.items()}
                    data.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
                return data
        return None

    def key(
        self, kind: str, name: str, key: str, namespace: str, optional: bool = False
    ) -> str | None:
        """One key, or PodFailed as the kubelet's CreateContainerConfigError."""
        data = self.lookup(kind, name, namespace)
        if data is not None and key in data:
            return data[key]
        if optional:
            return None
        where = f"{kind} {namespace}/{name}"
        raise PodFailed(
            f"{where} not found" if data is None else f"couldn't find key {key} in {where}"
        )

    def resolve(self, text: str) -> str:
        """Cluster DNS: in-cluster service addresses become the test servers' addresses."""
        for address in sorted(self.services, key=len, reverse=True):
            text = text.replace(address, self.services[address])
        return text

    def network(self, source: Endpoint) -> PodNetwork:
        """Cluster DNS and the NetworkPolicies for one pod (:mod:`tests.cluster.network`)."""
        return PodNetwork(self.services, self.objects, source, self.namespace, self.routes)

    def record_refusals(self, network: PodNetwork) -> list[str]:
        """Close a pod's network; what it was refused is kept in :attr:`refused`."""
        refused = network.close()
        self.refused.extend(refused)
        return refused


def installed(
    chart: list[dict[str, Any]],
    services: Mapping[str, str] | None = None,
    namespace: str = "mlref",
    pipelines_namespace: str = "kubeflow",
    store: Any = None,
) -> Cluster:
    """The cluster scripts/kind-up.sh leaves: the rendered chart's objects and the namespace
    and Secrets it applies besides (:func:`mlref.k8s.install.kind_objects`), and nothing a
    test makes for itself. ``store`` (the test S3 server), as the installed SeaweedFS does,
    knows exactly the identities of the install's store config, each allowed only its
    prefixes (:mod:`tests.cluster.store_identities`), and refuses every other key."""
    objects = [*kind_objects(REPO, namespace, pipelines_namespace, token=install_token()), *chart]
    cluster = Cluster(objects=objects, services=dict(services or {}), namespace=namespace)
    if store is not None:
        add_store_identities(store, cluster)
    settings = cluster.lookup("ConfigMap", "mlref-settings", namespace) or {}
    if "MLREF_IMAGE" in settings:  # the project image, as this install names it
        cluster.image_repository = settings["MLREF_IMAGE"].rsplit(":", 1)[0]
    return cluster


# One install per test session: every ``installed()`` call is the same cluster, so its
# generated passwords and keys are the same in each (a server started from one call's Secrets,
# MLflow's, keeps working after another call adds the store's users).
INSTALL_SEED = os.urandom(16)


def install_token():
    """kind_objects' token generator, the same sequence of values in every call."""
    draw = random.Random(INSTALL_SEED)
    return lambda n: draw.randbytes(n).hex()


FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime")


def own_clock_offset() -> float:
    """How far this process's clock runs ahead of the machine's: libfaketime's relative
    ``FAKETIME`` (``+Ns``/``-Ns``, as tests/at-utc.sh sets it), else 0."""
    spec = os.environ.get("FAKETIME", "") if os.environ.get("LD_PRELOAD") else ""
    if not spec:
        return 0.0
    match = re.fullmatch(r"([+-]\d+(?:\.\d+)?)s?", spec.strip())
    if match is None:
        raise ValueError(f"FAKETIME={spec!r}: only a relative offset (+Ns / -Ns) is understood")
    return float(match[1])


def node_clock(pod_dir: Path, offset: float) -> dict[str, Path]:
    """The files that set a pod's clock ``offset`` seconds ahead of this machine's, as the
    node's own time and not the container's env: libfaketime preloaded for every process of
    the pod (``/etc/ld.so.preload``) reading its offset from ``/etc/faketimerc``."""
    lib = next(
        (
            f"{d}/libfaketimeMT.so.1"
            for d in FAKETIME_LIBS
            if Path(d, "libfaketimeMT.so.1").is_file()
        ),
        None,
    )
    require(lib is not None, "moving the pods' clock needs libfaketime: apt-get install faketime")
    preload, rc = pod_dir / "ld.so.preload", pod_dir / "faketimerc"
    preload.write_text(f"{lib}\n")
    rc.write_text(f"{offset:+.0f}s\n")
    return {"/etc/ld.so.preload": preload, "/etc/faketimerc": rc}


@functools.cache
def sandbox_available() -> bool:
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, check=False)
    return probe.returncode == 0


def require_sandbox() -> None:
    require(
        sandbox_available(),
        "pods need Linux mount namespaces: `unshare --mount --map-root-user` failed "
        "(enable unprivileged user namespaces, e.g. sysctl "
        "kernel.apparmor_restrict_unprivileged_userns=0, or run as root)",
    )


def start_in_sandbox(
    argv: list[str],
    env: Mapping[str, str],
    pod_dir: Path,
    volumes: Mapping[str, Path],
    workdir: str,
    user: tuple[int, int] | None = None,
    output: Any = subprocess.PIPE,
    image: Mapping[str, Path] | None = None,
    read_only: Sequence[str] = (),
    clock: float | None = None,
) -> subprocess.Popen[str]:
    """Start ``argv`` as a pod's container in ``workdir``, as ``user`` (uid, gid; the image's
    ``USER`` by default; this machine's user unless that is root), stdout and stderr to
    ``output``; ``volumes`` maps mount paths to host dirs (those in ``read_only`` mounted
    read-only); ``image`` (read-only mounts) stands in for the container's image, by default
    the project's; ``clock`` is the node's clock offset (:func:`node_clock`). The pod leads
    its own process group."""
    require_sandbox()
    root = pod_dir / "root"
    root.mkdir(parents=True, exist_ok=True)
    image_is_project = image is None
    image = image_mounts() if image is None else image
    user = image_user() if user is None else user
    if os.geteuid() == 0:  # a writable volume belongs to the pod's user, as the kubelet's
        for source in volumes.values():
            chown_tree(source, user)
    if image_is_project:  # the image's own accounts: its user resolves (Java's user.home)
        image = {**image, "/etc/passwd": image_passwd(pod_dir), "/etc/group": image_group(pod_dir)}
    if clock is not None:
        image = {**image, **node_clock(pod_dir, clock)}
    spec = {
        "root": str(root),
        "volumes": {path: str(source) for path, source in {**volumes, **image}.items()},
        "read_only": [*image, *read_only],
        "hidden": hidden_paths(volumes),
        "user": list(user) if os.geteuid() == 0 else None,
        "workdir": workdir,
        "argv": argv,
        "env": dict(env),
    }
    spec_path = pod_dir / "pod.json"
    spec_path.write_text(json.dumps(spec))
    unshare = UNSHARE if os.geteuid() != 0 else [u for u in UNSHARE if u != "--map-root-user"]
    process = subprocess.Popen(
        [*unshare, sys.executable, str(SANDBOX), str(spec_path)],
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return process


def run_in_sandbox(
    argv: list[str],
    env: Mapping[str, str],
    pod_dir: Path,
    volumes: Mapping[str, Path],
    workdir: str,
    timeout: float = 600,
    user: tuple[int, int] | None = None,
    image: Mapping[str, Path] | None = None,
    clock: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as a pod's container to completion (:func:`start_in_sandbox`)."""
    process = start_in_sandbox(argv, env, pod_dir, volumes, workdir, user, image=image, clock=clock)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        os.killpg(process.pid, signal.SIGKILL)  # the pod's own process group
        output, _ = process.communicate()
        raise PodFailed(
            f"{argv[0]}: still running after {timeout}s; log tail:\n{output[-4000:]}"
        ) from exc
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def chown_tree(path: Path, user: tuple[int, int]) -> None:
    os.chown(path, *user)
    for parent, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.chown(os.path.join(parent, name), *user, follow_symlinks=False)


def run_as(pod: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[int, int]:
    """The uid and gid a container runs as: its securityContext, the pod's, the image's."""
    uid, gid = image_user()
    for context in (pod.get("securityContext") or {}, container.get("securityContext") or {}):
        uid = context.get("runAsUser", uid)
        gid = context.get("runAsGroup", gid)
    return uid, gid


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names replaced, ``$$`` escapes, rest kept."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


def field_value(path: str, pod_name: str, namespace: str) -> str:
    values = {
        "metadata.name": pod_name,
        "metadata.namespace": namespace,
        "metadata.uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{namespace}/{pod_name}")),
        "status.podIP": "127.0.0.1",
        "spec.nodeName": "localhost",
    }
    if path not in values:
        raise PodFailed(f"fieldRef {path}: not emulated")
    return values[path]


def declared_env(
    container: Mapping[str, Any], cluster: Cluster, namespace: str, pod_name: str
) -> dict[str, str]:
    """What the container spec declares: ``envFrom``, then ``env`` (whose ``$(VAR)``
    references see only what was declared before them, not the image's ENV)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if ref not in source:
                continue
            name = source[ref]["name"]
            data = cluster.lookup(kind, name, namespace)
            if data is None and not source[ref].get("optional", False):
                raise PodFailed(f"{kind} {namespace}/{name} not found")
            env.update({prefix + k: v for k, v in (data or {}).items()})
    for var in container.get("env", []):
        if "value" in var or "valueFrom" not in var:
            env[var["name"]] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        value: str | None
        if "fieldRef" in source:
            value = field_value(source["fieldRef"]["fieldPath"], pod_name, namespace)
        else:
            kind, ref = (
                ("ConfigMap", source["configMapKeyRef"])
                if "configMapKeyRef" in source
                else ("Secret", source["secretKeyRef"])
            )
            value = cluster.key(
                kind, ref["name"], ref["key"], namespace, ref.get("optional", False)
            )
        if value is not None:
            env[var["name"]] = value
    return env


def pod_spec_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod template of a Deployment, Job, CronJob (or a Pod's own spec)."""
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec if obj["kind"] == "Pod" else spec["template"]["spec"]


@dataclass
class PodCommand:
    """A container of a rendered object, ready to start in its sandbox."""

    argv: list[str]
    env: dict[str, str]
    pod_dir: Path
    volumes: dict[str, Path]
    workdir: str
    user: tuple[int, int]
    network: PodNetwork
    read_only: list[str] = field(default_factory=list)  # volumes mounted readOnly
    clock: float | None = None  # the node's clock (Cluster.clock) when it was made

    def start(self, output: Any = subprocess.PIPE) -> subprocess.Popen[str]:
        """The container started in its sandbox (:func:`start_in_sandbox`)."""
        return start_in_sandbox(
            self.argv,
            self.env,
            self.pod_dir,
            self.volumes,
            self.workdir,
            self.user,
            output,
            read_only=self.read_only,
            clock=self.clock,
        )


def pod_labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    """The labels of the pods a Deployment/Job/CronJob makes (or a Pod's own)."""
    if obj["kind"] == "Pod":
        return dict(obj.get("metadata", {}).get("labels") or {})
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return dict(spec["template"].get("metadata", {}).get("labels") or {})


def config_map_volume(
    volume: Mapping[str, Any], cluster: Cluster, namespace: str, target: Path
) -> Path:
    """A configMap volume as the kubelet fills it at the pod's start, with its atomic writer
    (:mod:`tests.cluster.kubelet_volume`): a file per key (``items`` choose and rename keys),
    each a symlink through ``..data``; an ``optional`` one that is missing holds no key."""
    source = volume["configMap"]
    data = cluster.lookup("ConfigMap", source["name"], namespace)
    if data is None and not source.get("optional"):
        where = f"{namespace}/{source['name']}"
        raise PodFailed(f"volume {volume['name']}: ConfigMap {where} not found")
    items = source.get("items") or [{"key": key, "path": key} for key in (data or {})]
    files = {item["path"]: data[item["key"]] for item in items if data and item["key"] in data}
    kubelet_volume.write(target, files)
    return target


def pod_command(
    obj: Mapping[str, Any],
    cluster: Cluster,
    work_dir: Path,
    container: str | None = None,
    claims: Mapping[str, Path] | None = None,
) -> PodCommand:
    """One container's argv, env, volumes and user, as its pod would run it.

    Its emptyDir volumes are fresh dirs under ``work_dir``; a persistentVolumeClaim mounts
    the host dir ``claims[claimName]`` (the claim's lasting state between runs)."""
    pod = pod_spec_of(obj)
    spec = next(c for c in pod["containers"] if container is None or c["name"] == container)
    namespace = obj.get("metadata", {}).get("namespace", cluster.namespace)
    pod_name = f"{obj['metadata']['name']}-{uuid.uuid4().hex[:5]}"
    pod_dir = Path(tempfile.mkdtemp(prefix=f"{pod_name}-", dir=work_dir))
    sources = {volume["name"]: volume for volume in pod.get("volumes", [])}
    # A writable container layer's /tmp; with a read-only root only a mounted /tmp is.
    read_only_root = (spec.get("securityContext") or {}).get("readOnlyRootFilesystem", False)
    volumes: dict[str, Path] = {} if read_only_root else {"/tmp": pod_dir / "tmp"}
    read_only = [m["mountPath"] for m in spec.get("volumeMounts", []) if m.get("readOnly")]
    for mount_ in spec.get("volumeMounts", []):
        volume = sources[mount_["name"]]
        if "emptyDir" in volume:
            volumes[mount_["mountPath"]] = pod_dir / "volumes" / volume["name"]
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if claims is None or claim not in claims:
                raise PodFailed(f"volume {volume['name']}: pass claims={{{claim!r}: dir}}")
            volumes[mount_["mountPath"]] = claims[claim]
        elif "configMap" in volume:
            volumes[mount_["mountPath"]] = config_map_volume(
                volume, cluster, namespace, pod_dir / "volumes" / volume["name"]
            )
        else:
            raise PodFailed(
                f"volume {volume['name']}: only emptyDir, configMap and claims are emulated"
            )
    for source in volumes.values():
        source.mkdir(parents=True, exist_ok=True)
    declared = declared_env(spec, cluster, namespace, pod_name)
    network = cluster.network(Endpoint(namespace, pod_labels_of(obj)))
    env = {k: network.resolve(v) for k, v in {**cluster.image_env, **declared}.items()}
    argv = [
        network.resolve(expand(arg, declared))
        for arg in [*spec.get("command", []), *spec.get("args", [])]
    ]
    if not spec.get("command"):
        network.close()
        raise PodFailed(f"{spec['name']}: no command; the image's entrypoint is not emulated")
    workdir = spec.get("workingDir", cluster.image_workdir)
    return PodCommand(
        argv, env, pod_dir, volumes, workdir, run_as(pod, spec), network, read_only, cluster.clock
    )


def run_pod(
    obj: Mapping[str, Any],
    cluster: Cluster,
    work_dir: Path,
    container: str | None = None,
    claims: Mapping[str, Path] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run one container of a rendered Deployment/Job/CronJob/Pod to completion
    (:func:`pod_command`). Returns the completed process (stdout and stderr merged, then a
    line for each connection the NetworkPolicies refused); the caller checks
    ``returncode``."""
    command = pod_command(obj, cluster, work_dir, container, claims)
    try:
        done = run_in_sandbox(
            command.argv,
            command.env,
            command.pod_dir,
            command.volumes,
            workdir=command.workdir,
            timeout=timeout,
            user=command.user,
            clock=command.clock,
        )
    finally:
        refused = cluster.record_refusals(command.network)
    done.stdout += "".join(f"\nNetworkPolicy refused {gap}" for gap in refused)
    return done


def stop_in_sandbox(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM to the pod's process group, as the kubelet stops a container; SIGKILL after
    ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
