"""Rootfs taint: ``/usr/bin/sudo`` in a container not owned by 0:0. The remedy is recreation.

A running container is asked through exec (``stat``), a stopped one through the archive API (the tar
header of the file), so checking never starts a container. A rootfs is never chowned.
"""

from __future__ import annotations

from dataclasses import dataclass

from ops.engine import Engine, ManagedContainer
from ops.findings import Finding
from ops.repair.scope import archive_bytes, exec_output, tar_member

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


def sudo_owner(engine: Engine, container: ManagedContainer) -> SudoOwner | None:
    """The owner of /usr/bin/sudo in a container; None when there is no sudo or it cannot be read."""
    if container.running:
        try:
            code, out = exec_output(engine, container.id, ["stat", "-c", "%u:%g", SUDO])
        except Exception:
            code, out = 1, ""
        parsed = parse_stat_owner(out) if code == 0 else None
        if parsed is not None:
            return SudoOwner(container.name, parsed[0], parsed[1], "exec")
        if code == 0:
            return None
    try:
        data = archive_bytes(engine, container.id, SUDO)
    except Exception:
        return None
    if data is None:
        return None
    member = tar_member(data, "sudo")
    if member is None:
        return None
    return SudoOwner(container.name, member.uid, member.gid, "archive")


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
    """A ``rootfs.tainted`` finding for every managed container whose sudo is not 0:0.

    Containers are asked in parallel (one exec or archive request each), in a stable order.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not containers:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(containers))) as pool:
        owners = list(pool.map(lambda c: sudo_owner(engine, c), containers))
    return [taint_finding(o, target, platform) for o in owners if o is not None and o.tainted]
