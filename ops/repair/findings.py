"""Doctor checks of this package: ownership damage per managed volume (bounded) and rootfs taint.

The walk and the volume scope are imported only when a volume is walked (doctor imports this module
for every target, most of which have nothing to walk from here).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from ops.config import CaiConfig
from ops.errors import OpsError
from ops.findings import Finding

if TYPE_CHECKING:
    from ops.engine import Engine

#: Detection budget per volume: stop at the first damaged entries, or after this many entries/seconds.
DETECT_MAX_DAMAGED = 20
DETECT_MAX_ENTRIES = 200_000
DETECT_SECONDS = 2.0


def _finding(code: str, severity: str, target: str, platform: str, message: str, hint: str = "",
             **data: object) -> Finding:
    return Finding(code=code, severity=severity, target=target, platform=platform,  # type: ignore[arg-type]
                   message=message, hint=hint, data=dict(data))


def ownership_findings(engine: Engine, conf: CaiConfig, target: str, platform: str) -> list[Finding]:
    """One ``ownership.damaged`` warning per managed volume with uid/gid 65534 entries."""
    if platform == "macos" or target != "local":
        return [_finding(
            "ownership.not-checked", "info", target, platform,
            "volume ownership is checked on the engine host itself",
            "run inv doctor on the engine host (inside the Lima VM on macOS)",
        )]
    from ops.repair.where import data_root_visible, in_container

    if not data_root_visible(conf.data_root):
        why = "inside a container" if in_container() else "not readable (run as root)"
        return [_finding(
            "ownership.not-checked", "info", target, platform,
            f"volume ownership not checked: {conf.data_root}/volumes is {why}",
            "run inv doctor as root on the engine host",
        )]
    from ops.repair.scope import managed_volumes, open_data_root, open_volume
    from ops.repair.walk import WalkOptions, show_path, walk

    volumes, warnings = managed_volumes(engine, engine.managed())
    out = [_finding("ownership.volume-skipped", "info", target, platform, w) for w in warnings]
    try:
        volumes_fd = open_data_root(conf.data_root)
    except OpsError as exc:
        return [*out, _finding("ownership.not-checked", "info", target, platform, exc.message, exc.hint)]
    try:
        for vol in volumes:
            fix = (f"inv repair --container {vol.containers[0]}" if len(vol.containers) == 1
                   else "inv repair --all")
            try:
                fd = open_volume(volumes_fd, conf.data_root, vol.name)
            except OpsError as exc:
                out.append(_finding(
                    "ownership.unsafe-path", "warning", target, platform,
                    f"volume {vol.name}: {exc.message}", "inspect the volume by hand; repair refuses it",
                    volume=vol.name, containers=list(vol.containers),
                ))
                continue
            try:
                stats = walk(fd, WalkOptions(apply=False, workers=1, max_damaged=DETECT_MAX_DAMAGED,
                                             max_entries=DETECT_MAX_ENTRIES, seconds=DETECT_SECONDS,
                                             examples=3))
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if stats.damaged:
                count = f"at least {stats.damaged}" if stats.truncated else str(stats.damaged)
                examples = [show_path(e.path) for e in stats.examples]
                out.append(_finding(
                    "ownership.damaged", "warning", target, platform,
                    f"volume {vol.name} ({', '.join(vol.containers)}): {count} entries owned by "
                    f"nobody/nogroup (65534), e.g. {', '.join(examples)}",
                    f"{fix} (or inv doctor --fix); preview with --dry-run",
                    volume=vol.name, containers=list(vol.containers), damaged=stats.damaged,
                    at_least=stats.truncated, examples=examples,
                ))
    finally:
        os.close(volumes_fd)
    return out


def doctor_findings(engine: Engine, conf: CaiConfig, target: str, platform: str) -> list[Finding]:
    """Ownership damage per managed volume (bounded detection) and rootfs taint per managed container."""
    from ops.repair.taint import taint_findings

    out = ownership_findings(engine, conf, target, platform)
    out.extend(taint_findings(engine, engine.managed(), target, platform))
    return out
