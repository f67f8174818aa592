"""Doctor checks of this package: ownership damage per managed volume (bounded) and rootfs taint.

The detection walk runs on the engine host of each target (the same engine-host code as a repair,
:mod:`ops.repair.onhost`), imported when the check runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ops.config import CaiConfig
from ops.errors import OpsError
from ops.findings import Finding

if TYPE_CHECKING:
    from ops.engine import Engine

#: Detection budget per volume: stop at the first damaged entries, or after this many entries/seconds.
DETECT_MAX_DAMAGED = 20
DETECT_MAX_ENTRIES = 200_000
DETECT_SECONDS = 2.0
#: A detection on a remote target: the walks' budgets plus the round trip.
DETECT_TIMEOUT = 120


def _finding(code: str, severity: str, target: str, platform: str, message: str, hint: str = "",
             **data: object) -> Finding:
    return Finding(code=code, severity=severity, target=target, platform=platform,  # type: ignore[arg-type]
                   message=message, hint=hint, data=dict(data))


def ownership_findings(engine: Engine, conf: CaiConfig, target: str, platform: str,
                       where: Any = None) -> list[Finding]:
    """One ``ownership.damaged`` warning per managed volume with uid/gid 65534 entries.

    The bounded detection walk runs on the engine host: in this process for the local host, under the
    target's python3 (as root when it can) when ``where`` (the doctor's ``Resolved`` target) is another
    host, the Lima VM of a Mac included. ``conf.data_root`` is the data root on that host.
    """
    from ops.repair import onhost

    on_target = where is not None and where.target.remote
    if not on_target:
        from ops.repair.where import data_root_visible, in_container

        if not data_root_visible(conf.data_root):
            why = "inside a container" if in_container() else "not readable (run as root)"
            return [_finding(
                "ownership.not-checked", "info", target, platform,
                f"volume ownership not checked: {conf.data_root}/volumes is {why}",
                "run inv doctor as root on the engine host",
            )]
    from ops.repair.scope import managed_volumes
    from ops.repair.walk import show_path

    volumes, warnings = managed_volumes(engine, engine.managed())
    out = [_finding("ownership.volume-skipped", "info", target, platform, w) for w in warnings]
    if not volumes:
        return out
    run: Callable[[dict[str, Any]], dict[str, Any]] = onhost.execute
    if on_target:
        from ops.repair import remote

        try:
            run = remote.runner(remote.open_host(where.ctx, target, dry_run=True), target, timeout=DETECT_TIMEOUT)
        except OpsError as exc:
            return [*out, _finding("ownership.not-checked", "info", target, platform,
                                   f"volume ownership not checked: {exc.message}", exc.hint)]
    try:
        answer = run(detection_request(conf.data_root, [v.name for v in volumes]))
    except OpsError as exc:
        return [*out, _finding("ownership.not-checked", "info", target, platform,
                               f"volume ownership not checked: {exc.message}", exc.hint)]
    if answer.get("error"):
        err = answer["error"]
        return [*out, _finding("ownership.not-checked", "info", target, platform,
                               f"volume ownership not checked: {err.get('message', '')}", str(err.get("hint", "")))]
    by_name = {str(v.get("name")): v for v in answer.get("volumes") or []}
    on = f" --target {target}" if on_target else ""
    for vol in volumes:
        fix = (f"inv repair --container {vol.containers[0]}{on}" if len(vol.containers) == 1
               else f"inv repair --all{on}")
        got = by_name.get(vol.name) or {"error": "the engine host did not report this volume"}
        if "refused" in got:
            out.append(_finding(
                "ownership.unsafe-path", "warning", target, platform,
                f"volume {vol.name}: {got['refused']}", "inspect the volume by hand; repair refuses it",
                volume=vol.name, containers=list(vol.containers),
            ))
            continue
        if "error" in got:
            out.append(_finding("ownership.not-checked", "info", target, platform,
                                f"volume {vol.name} not checked: {got['error']}", "run inv doctor again",
                                volume=vol.name))
            continue
        stats = onhost.stats_from_dict(got["stats"])
        if stats.damaged:
            count = f"at least {stats.damaged}" if stats.truncated else str(stats.damaged)
            examples = [show_path(e.path) for e in stats.examples]
            out.append(_finding(
                "ownership.damaged", "warning", target, platform,
                f"volume {vol.name} ({', '.join(vol.containers)}): {count} entries owned by "
                f"nobody/nogroup (65534), e.g. {', '.join(examples)}",
                f"{fix} (or inv doctor --fix{on}); preview with --dry-run",
                volume=vol.name, containers=list(vol.containers), damaged=stats.damaged,
                at_least=stats.truncated, examples=examples,
            ))
    return out


def detection_request(data_root: str, names: list[str]) -> dict[str, Any]:
    """Pure: the engine host's request of the bounded detection (one process, nothing changed, each
    volume on its own: a refused path is that volume's finding)."""
    from ops.repair import onhost

    return {"protocol": onhost.PROTOCOL, "data_root": data_root, "apply": False, "strict": False,
            "workers": 1, "examples": 3,
            "budget": {"max_damaged": DETECT_MAX_DAMAGED, "max_entries": DETECT_MAX_ENTRIES,
                       "seconds": DETECT_SECONDS},
            "volumes": [{"name": n, "uid": 1000, "gid": 1000} for n in names]}


def doctor_findings(engine: Engine, conf: CaiConfig, target: str, platform: str,
                    where: Any = None) -> list[Finding]:
    """Ownership damage per managed volume (bounded detection, on the engine host: ``where`` is the
    doctor's resolved target) and rootfs taint per managed container."""
    from ops.repair.taint import taint_findings

    out = ownership_findings(engine, conf, target, platform, where)
    out.extend(taint_findings(engine, engine.managed(), target, platform))
    return out
