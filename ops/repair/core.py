"""Repair of managed volumes: gather facts through the engine, plan (pure), then the engine host
opens every planned path and walks (:mod:`ops.repair.onhost`, in this process for the local host or
under the target's python3), and its answer becomes one result per volume (pure).

Nothing is changed before every volume in scope has been opened safely: a volume whose path is a
symlink stops the whole run with nothing changed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ops.config import CaiConfig
from ops.engine import Engine, ManagedContainer
from ops.errors import ConfigError
from ops.repair import onhost
from ops.repair.scope import (
    Owner,
    Volume,
    detect_owner,
    managed_volumes,
    refusal_error,
    volume_attrs_problem,
    volume_path,
)
from ops.repair.walk import WalkStats
from ops.repair.walk import default_workers as default_workers  # walkers per core: the walk's sizing
from ops.repair.where import data_root_visible as data_root_visible  # re-exported: callers use core.*
from ops.repair.where import in_container as in_container

CONTAINER_MESSAGE = (
    "Volume repair is not supported inside a container (volumes live on the engine host; "
    "run it there)"
)


# --- where we run ---------------------------------------------------------------------------------

def unsupported_message(inside_container: bool, root_visible: bool) -> str:
    """Pure: the "not supported here" message of the local host, or '' when repair can run.

    Inside a container only when the engine's data root is not visible here; a container that sees
    the data root (an admin container with the host's data root mounted, or a test machine running
    its own engine) is on the engine host as far as repair is concerned. (A Mac repairs through its
    Lima VM: its local target is the VM, see ``ops.targets.effective_target``.)
    """
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


def request(plans: list[VolumePlan], data_root: str, dry_run: bool, workers: int | None) -> dict[str, Any]:
    """Pure: the engine host's request (:mod:`ops.repair.onhost`) for the planned volumes: every volume
    root opened before anything changes (a symlink on the way stops everything), then walked.
    ``workers`` None: as many as the engine host has cores."""
    return {
        "protocol": onhost.PROTOCOL, "data_root": data_root, "apply": not dry_run, "strict": True,
        "workers": workers, "budget": None, "examples": 5,
        "volumes": [{"name": p.name, "uid": p.owner.uid, "gid": p.owner.gid} for p in plans if p.owner is not None],
    }


def results(plans: list[VolumePlan], answer: dict[str, Any], dry_run: bool, where: str = "") -> list[VolumeResult]:
    """Pure: one result per plan from the engine host's answer; skipped plans pass through with their
    reason. An answer that refused the whole repair raises its typed error (nothing was changed);
    ``where`` names a remote target in that message."""
    if answer.get("error"):
        err = answer["error"]
        raise refusal_error(onhost.Refusal(str(err.get("kind", "")), str(err.get("message", "")),
                                           str(err.get("hint", ""))), where)
    by_name = {str(v["name"]): v for v in answer.get("volumes") or []}
    out = []
    for p in plans:
        if p.owner is None:
            out.append(VolumeResult(p, None, "", dry_run, p.skip))
            continue
        got = by_name.get(p.name)
        if got is None:
            out.append(VolumeResult(p, None, "the engine host did not report this volume", dry_run))
        elif "refused" in got:
            out.append(VolumeResult(p, None, "", dry_run, str(got["refused"])))
        elif "error" in got:
            out.append(VolumeResult(p, None, str(got["error"]), dry_run))
        else:
            out.append(VolumeResult(p, onhost.stats_from_dict(got["stats"]), "", dry_run))
    return out


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
