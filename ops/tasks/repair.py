"""``inv repair``: fix uid/gid 65534 (nobody/nogroup) ownership in managed volumes."""

from __future__ import annotations

import os
import sys
from typing import Any

from invoke import task
from invoke.exceptions import Exit

from ops.tasks._common import cfg, cli_errors, is_tty

EXAMPLES = 5
ERRORS_SHOWN = 20


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_repair(
    ctx: Any,
    all: bool = False,  # noqa: A002 - the flag is --all
    container: str | None = None,
    dry_run: bool = False,
    uid: Any = None,
    gid: Any = None,
    default_all: bool = False,
) -> int:
    """Repair (or with ``dry_run`` count) damaged ownership in managed volumes; return the exit code.

    0: nothing left to repair (or not supported here: macOS, a container without the data root).
    1: damage may remain: a volume skipped or refused, an entry that failed or changed during the
    walk. ``default_all``: no scope flag means all managed containers (``inv doctor --repair``);
    without it exactly one of ``all``/``container`` is required (``inv repair``).

    Raises OpsError subclasses for bad input (no flag, unknown/unmanaged container, engine
    unreachable, data root missing, not root, a volume path that is a symlink).
    """
    from ops.errors import ConfigError, RefusedError
    from ops.repair import core
    from ops.repair.scope import parse_override

    conf = cfg(ctx)
    message = core.unsupported_message(
        conf.platform, os.uname().sysname, core.in_container(), core.data_root_visible(conf.data_root)
    )
    if message:
        print(message)
        return 0
    if default_all and not all and not container:
        all = True  # noqa: A001 - the flag is --all
    if bool(all) == bool(container):
        raise ConfigError(
            "give exactly one of --all or --container NAME",
            "e.g. inv repair --all, or inv repair --container my-agent (add --dry-run to preview)",
        )
    override = parse_override(uid, gid)
    if os.geteuid() != 0 and not dry_run:
        raise RefusedError("repair changes file owners and needs root", "run it with sudo", exit_code=1)
    if not os.path.isdir(conf.data_root):
        from ops.errors import NotFoundError

        raise NotFoundError(
            f"data root {conf.data_root} does not exist",
            "set cai.data_root (INVOKE_CAI_DATA_ROOT) to the engine's data root",
        )
    from ops.engine import Engine

    engine = Engine.connect(conf.docker_host, conf.label)
    try:
        core.check_data_root(engine, conf)
        containers = core.scope_containers(engine, bool(all), container)
        facts, warnings = core.gather(engine, conf, containers, override)
    finally:
        engine.close()
    for w in warnings:
        _err(f"warning: {w}")
    plans = core.plan(facts, conf.data_root)
    for p in plans:
        for w in p.warnings:
            _err(f"warning: {w}")
    if not plans:
        scope = f"container {container}" if container else "managed containers"
        print(f"No managed volumes to repair ({scope} mount no named volumes).")
        return 0
    opened = core.preflight(conf.data_root, plans)
    results = _apply_with_progress(core, plans, opened, dry_run)
    for r in results:
        _report(r)
    failed = [r.plan.name for r in results if r.failed]
    if failed:
        _err(f"damage may remain in {len(failed)} volume(s): {', '.join(failed)} (skipped, or entries "
             "that failed or changed during the walk; see above); fix the cause and run the repair again")
        return 1
    return 0


def _apply_with_progress(core: Any, plans: list[Any], opened: Any, dry_run: bool) -> list[Any]:
    workers = core.default_workers()
    if not is_tty():
        return list(core.apply(plans, opened, dry_run, workers))
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    verb = "checking" if dry_run else "repairing"
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,} entries"),
                  TimeElapsedColumn(), transient=True) as progress:
        current: dict[str, Any] = {}

        def on_start(p: Any) -> None:
            current["id"] = progress.add_task(f"{verb} {p.name}", total=None)

        def on_progress(n: int) -> None:
            if "id" in current:
                progress.update(current["id"], completed=n)

        return list(core.apply(plans, opened, dry_run, workers, on_start, on_progress))


def _report(r: Any) -> None:
    from ops.repair.walk import show_path

    p = r.plan
    who = ", ".join(p.containers)
    if p.owner is None or r.skipped_reason:
        print(f"volume {p.name} ({who}): skipped: {r.skipped_reason or p.skip}")
        return
    if r.error:
        print(f"volume {p.name} ({who}): failed: {r.error}")
        return
    s = r.stats
    skipped = sum(s.skipped.values())
    why = ", ".join(f"{reason}: {n}" for reason, n in sorted(s.skipped.items()))
    if r.dry_run:
        print(f"volume {p.name} ({who}): would repair {s.repaired} of {s.scanned} entries "
              f"to {p.owner.ids} ({p.owner.source}); skipped {skipped}{f' ({why})' if why else ''}")
        for e in s.examples[:EXAMPLES]:
            print(f"  would chown {show_path(e.path)} [{e.kind}] {e.uid}:{e.gid} -> "
                  f"{p.owner.uid if e.uid == 65534 else e.uid}:{p.owner.gid if e.gid == 65534 else e.gid}")
        _report_problems(p.name, s)
        return
    print(f"volume {p.name} ({who}): scanned {s.scanned}, repaired {s.repaired} to {p.owner.ids} "
          f"({p.owner.source}), skipped {skipped}{f' ({why})' if why else ''} in {s.seconds:.1f}s")
    _report_problems(p.name, s)


def _report_problems(name: str, s: Any) -> None:
    """One stderr line per entry that failed or changed during the walk (the first ERRORS_SHOWN)."""
    from ops.repair.walk import SKIP_CHANGED, SKIP_ERROR

    shown = s.errors[:ERRORS_SHOWN]
    for line in shown:
        _err(f"warning: volume {name}: {line}")
    more = s.skipped.get(SKIP_ERROR, 0) + s.skipped.get(SKIP_CHANGED, 0) - len(shown)
    if more > 0:
        _err(f"warning: volume {name}: ... and {more} more")


@task(
    help={
        "all": "repair every managed container's volumes",
        "container": "repair only the volumes of this managed container",
        "dry-run": "change nothing; count per volume what would change and show a few examples",
        "uid": "owner to give damaged entries (overrides detection; needs --gid)",
        "gid": "group to give damaged entries (overrides detection; needs --uid)",
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
) -> None:
    """Repair nobody:nogroup (65534) ownership in managed volumes."""
    code = run_repair(ctx, all=all, container=container, dry_run=dry_run, uid=uid, gid=gid)
    if code:
        raise Exit(code=code)

