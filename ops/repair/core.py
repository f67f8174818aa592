"""Repair of managed volumes: gather facts, plan (pure), pre-flight every path, then walk.

Nothing is changed before every volume in scope has been opened safely: a volume whose path is a
symlink stops the whole run with nothing changed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ops.config import CaiConfig
from ops.engine import Engine, ManagedContainer
from ops.errors import ConfigError
from ops.repair.scope import (
    MountedVolumeError,
    Owner,
    Volume,
    detect_owner,
    managed_volumes,
    open_data_root,
    open_volume,
    volume_attrs_problem,
    volume_path,
)
from ops.repair.walk import WalkOptions, WalkStats, walk
from ops.repair.where import data_root_visible as data_root_visible  # re-exported: callers use core.*
from ops.repair.where import in_container as in_container

MACOS_MESSAGE = "Volume repair is not supported on macOS (volumes live inside the Lima VM)"
CONTAINER_MESSAGE = (
    "Volume repair is not supported inside a container (volumes live on the engine host; "
    "run it there)"
)


# --- where we run ---------------------------------------------------------------------------------

def unsupported_message(platform: str, sysname: str, inside_container: bool, root_visible: bool) -> str:
    """Pure: the "not supported here" message, or '' when repair can run.

    macOS (configured or detected): volumes live in the Lima VM. Inside a container: only when the
    engine's data root is not visible here; a container that sees the data root (an admin container
    with the host's data root mounted, or a test machine running its own engine) is on the engine host
    as far as repair is concerned.
    """
    if platform == "macos" or (not platform and sysname == "Darwin"):
        return MACOS_MESSAGE
    if inside_container and not root_visible:
        return CONTAINER_MESSAGE
    return ""


# --- facts and plan ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class VolumeFacts:
    """What the engine says about one managed volume."""

    volume: Volume
    owners: tuple[tuple[str, Owner], ...]
    problem: str = ""


@dataclass(frozen=True)
class VolumePlan:
    """One volume: repair it to ``owner``, or skip it for ``skip``."""

    name: str
    containers: tuple[str, ...]
    path: str
    owner: Owner | None
    skip: str = ""
    warnings: tuple[str, ...] = ()


def scope_containers(engine: Engine, all_: bool, container: str | None) -> list[ManagedContainer]:
    """The managed containers in scope: all of them, or exactly the named one."""
    if all_ == bool(container):
        raise ConfigError(
            "give exactly one of --all or --container NAME",
            "e.g. inv repair --all, or inv repair --container my-agent",
        )
    if container:
        return [engine.get(container, require_managed=True)]
    return engine.managed()


def gather(
    engine: Engine, conf: CaiConfig, containers: list[ManagedContainer], override: tuple[int, int] | None
) -> tuple[list[VolumeFacts], list[str]]:
    """Read the volumes of the containers and the owner each container wants for them."""
    volumes, warnings = managed_volumes(engine, containers)
    by_name = {c.name: c for c in containers}
    owners: dict[str, Owner] = {}
    facts = []
    for vol in volumes:
        pairs = []
        for cname in vol.containers:
            if cname not in by_name:
                continue
            if cname not in owners:
                if override is not None:
                    owners[cname] = Owner(override[0], override[1], "--uid/--gid")
                else:
                    owners[cname] = detect_owner(engine, by_name[cname], conf.ssh_user)
            pairs.append((cname, owners[cname]))
        problem = ""
        try:
            attrs = engine.client.api.inspect_volume(vol.name)
            problem = volume_attrs_problem(attrs, volume_path(conf.data_root, vol.name))
        except Exception as exc:
            problem = f"cannot inspect the volume ({str(exc).splitlines()[0][:120] if str(exc) else exc})"
        facts.append(VolumeFacts(vol, tuple(pairs), problem))
    return facts, warnings


def plan(facts: list[VolumeFacts], data_root: str) -> list[VolumePlan]:
    """Pure: decide per volume which owner to apply, or why to skip it."""
    plans = []
    for f in facts:
        path = volume_path(data_root, f.volume.name)
        warnings = tuple(o.warning for _, o in f.owners if o.warning)
        owner_ids = sorted({(o.uid, o.gid) for _, o in f.owners})
        if f.problem:
            plans.append(VolumePlan(f.volume.name, f.volume.containers, path, None, f.problem, warnings))
        elif len(owner_ids) != 1:
            listing = ", ".join(f"{c} {o.ids}" for c, o in f.owners)
            plans.append(VolumePlan(
                f.volume.name, f.volume.containers, path, None,
                f"containers disagree on the owner ({listing}); use --container NAME --uid N --gid N",
                warnings,
            ))
        else:
            owner = f.owners[0][1]
            if 65534 in (owner.uid, owner.gid):
                plans.append(VolumePlan(f.volume.name, f.volume.containers, path, None,
                                        f"the agent's ids are {owner.ids} (nobody); use --uid/--gid", warnings))
            else:
                plans.append(VolumePlan(f.volume.name, f.volume.containers, path, owner, "", warnings))
    return plans


# --- apply ---------------------------------------------------------------------------------------

@dataclass
class VolumeResult:
    """The outcome of one volume."""

    plan: VolumePlan
    stats: WalkStats | None = None
    error: str = ""
    dry_run: bool = False
    skipped_reason: str = field(default="")

    @property
    def failed(self) -> bool:
        """True when damage may remain: the volume was skipped or refused, the walk could not run, an
        entry failed or changed during the walk."""
        if self.error or self.skipped_reason or self.plan.owner is None:
            return True
        return self.stats is None or not self.stats.complete


@dataclass
class Preflight:
    """Every planned volume root opened (``fds``), or refused with a reason (``refused``)."""

    fds: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def preflight(data_root: str, plans: list[VolumePlan]) -> Preflight:
    """Open every planned volume root safely before anything changes.

    A volume whose ``_data`` is a mount point is refused (the others go on); any other unsafe path
    (a symlink, not a directory) raises at once, with nothing changed anywhere.
    """
    out = Preflight()
    fds = out.fds
    todo = [p for p in plans if p.owner is not None]
    if not todo:
        return out
    volumes_fd = open_data_root(data_root)
    try:
        for p in todo:
            try:
                fds[p.name] = open_volume(volumes_fd, data_root, p.name)
            except MountedVolumeError as exc:
                out.refused[p.name] = exc.message
    except BaseException:
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    finally:
        os.close(volumes_fd)
    return out


def apply(
    plans: list[VolumePlan],
    opened: Preflight,
    dry_run: bool,
    workers: int,
    on_start: Callable[[VolumePlan], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[VolumeResult]:
    """Walk every planned volume (closing the fds); skipped and refused plans pass through with their
    reason."""
    results = []
    fds = opened.fds
    try:
        for p in plans:
            if p.owner is None:
                results.append(VolumeResult(p, None, "", dry_run, p.skip))
                continue
            if p.name in opened.refused:
                results.append(VolumeResult(p, None, "", dry_run, opened.refused[p.name]))
                continue
            if on_start is not None:
                on_start(p)
            opts = WalkOptions(uid=p.owner.uid, gid=p.owner.gid, apply=not dry_run, workers=workers)
            try:
                stats = walk(fds[p.name], opts, on_progress)
                results.append(VolumeResult(p, stats, "", dry_run))
            except OSError as exc:
                results.append(VolumeResult(p, None, f"walk failed: {exc.strerror or exc}", dry_run))
    finally:
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
    return results


def check_data_root(engine: Engine, conf: CaiConfig) -> None:
    """The engine's own data root must be cai.data_root, else paths would name other volumes."""
    try:
        info = engine.client.info()
    except Exception:
        return
    reported = str(info.get("DockerRootDir") or "")
    if reported and os.path.normpath(reported) != os.path.normpath(conf.data_root):
        raise ConfigError(
            f"cai.data_root is {conf.data_root} but the engine's data root is {reported}",
            f"set cai.data_root (INVOKE_CAI_DATA_ROOT) to {reported}",
        )


def default_workers() -> int:
    """Walker processes: one per core this process may run on (at most 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))
