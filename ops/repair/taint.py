"""Rootfs taint: ``/usr/bin/sudo`` in a container not owned by 0:0. The remedy is recreation.

Every container, running or stopped, is asked through the archive API: one ``GET
/containers/<id>/archive?path=/usr/bin/sudo`` of which only the tar header is read (owner, group),
never the file. Nothing runs in the container and checking never starts one. A rootfs is never chowned.
"""

from __future__ import annotations

import os
import tarfile
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ops.engine import Engine, ManagedContainer
from ops.findings import Finding

SUDO = "/usr/bin/sudo"


@dataclass(frozen=True)
class SudoOwner:
    """Owner of /usr/bin/sudo in one container, and how it was read."""

    container: str
    uid: int
    gid: int
    source: str

    @property
    def tainted(self) -> bool:
        """True when sudo is not root:root."""
        return (self.uid, self.gid) != (0, 0)


def parse_stat_owner(text: str) -> tuple[int, int] | None:
    """Pure parser of ``stat -c %u:%g`` output."""
    uid, sep, gid = text.strip().partition(":")
    if sep and uid.isdigit() and gid.isdigit():
        return int(uid), int(gid)
    return None


def archive_header(engine: Engine, container_id: str, path: str, timeout: int = 20) -> tarfile.TarInfo | None:
    """The tar header of ``path`` in a container (running or stopped) through the archive API, without
    reading the file's content; None when the path does not exist."""
    api = engine.client.api
    url = f"{api.base_url}/v{api.api_version}/containers/{urllib.parse.quote(container_id, safe='')}/archive"
    with api.get(url, params={"path": path}, stream=True, timeout=timeout,
                 headers={"Accept-Encoding": "identity"}) as response:
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return first_member(response.raw)


def first_member(stream: Any) -> tarfile.TarInfo | None:
    """Pure: the first member of a tar stream, reading its header blocks only (PAX/GNU extended
    headers included), never its data."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        return tar.next()


@dataclass(frozen=True)
class SudoUnknown:
    """The owner of /usr/bin/sudo in one container could not be read: cannot tell (never "clean")."""

    container: str
    reason: str


def sudo_owner(engine: Engine, container: ManagedContainer) -> SudoOwner | SudoUnknown | None:
    """The owner of /usr/bin/sudo in a container; None when there is no sudo; SudoUnknown when the
    archive request failed (the engine refused it, the connection broke, a malformed answer)."""
    try:
        member = archive_header(engine, container.id, SUDO)
    except Exception as exc:
        text = str(exc).strip()
        return SudoUnknown(container.name, (text.splitlines()[0] if text else type(exc).__name__)[:200])
    if member is None:
        return None
    return SudoOwner(container.name, member.uid, member.gid, "archive")


def unknown_finding(unknown: SudoUnknown, target: str, platform: str) -> Finding:
    """The ``rootfs.not-checked`` warning: the taint of one container cannot be told."""
    return Finding(
        code="rootfs.not-checked",
        severity="warning",
        target=target,
        platform=platform,
        message=(f"container {unknown.container}: cannot tell whether its root filesystem is tainted: "
                 f"reading the owner of {SUDO} through the archive API failed ({unknown.reason})"),
        hint=f"check the engine (docker cp {unknown.container}:{SUDO} - | tar -tv), then run inv doctor again",
        data={"container": unknown.container, "reason": unknown.reason},
    )


def taint_finding(owner: SudoOwner, target: str, platform: str) -> Finding:
    """The ``rootfs.tainted`` warning for one container."""
    return Finding(
        code="rootfs.tainted",
        severity="warning",
        target=target,
        platform=platform,
        message=(
            f"container {owner.container}: {SUDO} is owned by {owner.uid}:{owner.gid}, not 0:0 "
            "(its root filesystem is tainted by an id-mapping failure)"
        ),
        hint=(
            f"recreate the container, keeping its data volume: cai run --fresh (in its workspace), or "
            f"docker rm -f {owner.container} and start it again with cai run; never chown a rootfs"
        ),
        data={"container": owner.container, "uid": owner.uid, "gid": owner.gid, "source": owner.source},
    )


def taint_findings(engine: Engine, containers: list[ManagedContainer], target: str, platform: str) -> list[Finding]:
    """A ``rootfs.tainted`` finding for every managed container whose sudo is not 0:0, and a
    ``rootfs.not-checked`` one for every container whose sudo could not be read.

    Containers are asked in parallel (one archive request each, its tar header read), in a stable order.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not containers:
        return []
    # the engine serves these from its own threads: a few requests at a time per core keep it busy
    with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1), len(containers))) as pool:
        owners = list(pool.map(lambda c: sudo_owner(engine, c), containers))
    out = []
    for o in owners:
        if isinstance(o, SudoUnknown):
            out.append(unknown_finding(o, target, platform))
        elif o is not None and o.tainted:
            out.append(taint_finding(o, target, platform))
    return out
