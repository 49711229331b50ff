"""Run one command as a pod's container: private writable volumes over a read-only root.

Started by :func:`tests.cluster.pods.run_in_sandbox` as ``unshare --mount --propagation
private python sandbox.py SPEC.json`` (``--map-root-user`` added when this machine's user is
not root), so every mount below lives in a mount namespace of its own and vanishes with the
process. The new root is a tmpfs holding
read-only bind mounts of this machine's top-level directories (the image's filesystem),
except that each of the spec's ``volumes`` (``/tmp``, KFP's ``/s3`` scratch, a Job's
emptyDir...) is a bind mount of that pod's own host directory, read-only for the paths in
``read_only`` (the image's virtualenv at ``/opt/mlref``). ``/dev``, ``/proc`` and
``/sys`` stay as they are, with a fresh ``/dev/shm``. Each of the spec's ``hidden`` paths (the
checkout, its git directory, this machine's home) is an empty directory instead, though a
volume may still be mounted below it. The tmpfs itself is then made read-only. The command
runs chrooted there, in ``workdir``, with exactly ``env``, as the spec's ``user`` (uid, gid:
the image's ``USER``, privileges dropped for good) when given: nothing written by one pod is
visible to another except through the services they share over the network.

A standalone script (no project imports): it runs before the chroot, inside the namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

LIVE = {"dev", "proc", "sys"}  # kernel filesystems: bound as they are, not read-only


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


KEPT_FLAGS = ((os.ST_NOSUID, "nosuid"), (os.ST_NODEV, "nodev"), (os.ST_NOEXEC, "noexec"))


def bind(source: str, target: str, read_only: bool) -> None:
    mount("--rbind", source, target)
    if read_only:
        read_only_mount(target)


def read_only_mount(target: str) -> None:
    # In a user namespace a remount must keep the flags the mount already has.
    flags = os.statvfs(target).f_flag
    kept = [name for bit, name in KEPT_FLAGS if flags & bit]
    mount("-o", ",".join(["remount", "bind", "ro", *kept]), target)


def build(host_dir: str | None, new_dir: str, volumes: dict[str, str | None], top: bool) -> None:
    """Fill ``new_dir`` (on the tmpfs) with read-only binds of ``host_dir``'s entries and
    the volumes (paths relative to ``new_dir``; a None source is a hidden, empty directory),
    shadowing the directories on their way."""
    heads: dict[str, dict[str, str | None]] = {}
    for path, source in volumes.items():
        head, _, rest = path.partition("/")
        heads.setdefault(head, {})[rest] = source
    if host_dir is not None:
        for entry in os.scandir(host_dir):
            if entry.name in heads:
                continue
            target = os.path.join(new_dir, entry.name)
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            elif entry.is_dir():
                os.mkdir(target)
                bind(entry.path, target, read_only=not (top and entry.name in LIVE))
            elif entry.is_file():
                open(target, "w").close()
                bind(entry.path, target, read_only=True)
    for head, below in heads.items():
        target = os.path.join(new_dir, head)
        source = below.get("")
        if source is not None and os.path.isfile(source):  # a file of the image (/etc/passwd)
            open(target, "w").close()
            bind(source, target, read_only=True)
            continue
        os.mkdir(target)
        if "" in below and below[""] is None:  # hidden: nothing of the host's below
            below.pop("")
            build(None, target, below, top=False)
            continue
        if "" in below:
            source = below.pop("")
            assert source is not None
            bind(source, target, read_only=False)
            if below:
                raise SystemExit(f"volume inside volume {head}: not emulated")
            continue
        host = os.path.join(host_dir, head) if host_dir is not None else None
        build(host if host and os.path.isdir(host) else None, target, below, top=False)


def main(spec_path: str) -> None:
    with open(spec_path) as handle:
        spec = json.load(handle)
    root = spec["root"]
    mount("-t", "tmpfs", "-o", "mode=755", "pod-root", root)
    volumes: dict[str, str | None] = {path.strip("/"): None for path in spec.get("hidden", [])}
    volumes.update({path.strip("/"): source for path, source in spec["volumes"].items()})
    build("/", root, volumes, top=True)
    for path in spec.get("read_only", []):  # the image's own files among the volumes
        read_only_mount(os.path.join(root, path.strip("/")))
    if os.path.isdir(os.path.join(root, "dev", "shm")):
        mount("-t", "tmpfs", "pod-shm", os.path.join(root, "dev", "shm"))
    mount("-o", "remount,ro", root)  # the tmpfs's own directories (hidden paths included)
    os.chroot(root)
    if spec.get("user"):  # the image's USER; no way back to root
        uid, gid = spec["user"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    os.chdir(spec["workdir"])
    argv = spec["argv"]
    os.execvpe(argv[0], argv, spec["env"])


if __name__ == "__main__":
    main(sys.argv[1])
