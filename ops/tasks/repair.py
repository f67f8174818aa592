"""``inv repair``: fix uid/gid 65534 (nobody/nogroup) ownership in managed volumes, on any target
(the work is in :mod:`ops.repair.run`, imported when the task runs)."""

from __future__ import annotations

from typing import Any

from invoke import task
from invoke.exceptions import Exit

from ops.tasks._common import cfg, cli_errors, targets_of


@task(
    iterable=["target"],
    help={
        "all": "repair every managed container's volumes",
        "container": "repair only the volumes of this managed container",
        "dry-run": "change nothing; count per volume what would change and show a few examples",
        "uid": "owner to give damaged entries (overrides detection; needs --gid)",
        "gid": "group to give damaged entries (overrides detection; needs --uid)",
        "target": "where the volumes are: local (default; on a Mac the Lima VM), lima:<vm> or "
                  "ssh://user@host:port (repeatable: a fleet, with a result table)",
        "json": "print one JSON document with each target's result per volume (the volume lines go to stderr)",
    }
)
@cli_errors
def repair(
    ctx: Any,
    all: bool = False,  # noqa: A002 - the flag is --all
    container: str | None = None,
    dry_run: bool = False,
    uid: str | None = None,
    gid: str | None = None,
    target: list[str] | None = None,
    json_: bool = False,
) -> None:
    """Repair nobody:nogroup (65534) ownership in managed volumes (on the engine host of each target)."""
    from ops.repair.remote import interrupted, interruptible
    from ops.repair.run import repair_fleet, run_repair

    targets = targets_of(cfg(ctx), target)
    # Ctrl-C and SIGTERM stop the walks (a target's walk ends there too) and give one line, exit 128+signal
    with interruptible():
        try:
            if len(targets) > 1 or json_:
                code = repair_fleet(ctx, targets, all, container, dry_run, uid, gid, json_=json_)
            else:
                code = run_repair(ctx, all=all, container=container, dry_run=dry_run, uid=uid, gid=gid,
                                  target=targets[0])
        except KeyboardInterrupt as exc:
            raise interrupted(", ".join(targets), getattr(exc, "signum", 0)) from None
    if code:
        raise Exit(code=code)
