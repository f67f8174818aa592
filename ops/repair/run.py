"""Running a repair: fix uid/gid 65534 (nobody/nogroup) ownership in managed volumes, on any target
(what ``inv repair`` and ``inv doctor --repair/--fix`` call).

The engine (volume scope, owner detection) is asked through the target's engine socket; the walk runs
on the engine host itself: in this process for the local host, under the target's ``python3`` for
``lima:<vm>`` and ``ssh://`` targets (:mod:`ops.repair.remote`). Both answer in the same form, and one
report prints either.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ops.tasks._common import cfg, is_tty

EXAMPLES = 5
ERRORS_SHOWN = 20

Runner = Callable[..., dict[str, Any]]


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _out(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class Output:
    """Where the report goes: ``emit`` for the per-volume lines, ``warn`` for warnings and problems."""

    emit: Callable[[str], None] = _out
    warn: Callable[[str], None] = _err
    progress: bool = False


@dataclass(frozen=True)
class Scope:
    """The validated flags of one repair."""

    container: str | None
    dry_run: bool
    override: tuple[int, int] | None

    @property
    def all(self) -> bool:
        """All managed containers (no --container)."""
        return not self.container


@dataclass
class Outcome:
    """The result of a repair on one target: its exit code and one result per volume."""

    code: int
    results: list[Any] = field(default_factory=list)
    target: str = "local"


def scope_of(all: bool, container: str | None, dry_run: bool, uid: Any, gid: Any,  # noqa: A002
             default_all: bool = False) -> Scope:
    """Validate the flags: exactly one of --all / --container (none means all with ``default_all``), and
    --uid/--gid together."""
    from ops.errors import ConfigError
    from ops.repair.scope import parse_override

    if default_all and not all and not container:
        all = True  # noqa: A001 - the flag is --all
    if bool(all) == bool(container):
        raise ConfigError(
            "give exactly one of --all or --container NAME",
            "e.g. inv repair --all, or inv repair --container my-agent (add --dry-run to preview)",
        )
    return Scope(container or None, dry_run, parse_override(uid, gid))


def run_repair(
    ctx: Any,
    all: bool = False,  # noqa: A002 - the flag is --all
    container: str | None = None,
    dry_run: bool = False,
    uid: Any = None,
    gid: Any = None,
    default_all: bool = False,
    target: str | None = None,
) -> int:
    """Repair (or with ``dry_run`` count) damaged ownership in managed volumes of one target; return the
    exit code.

    ``target``: ``local`` (the default, ``cai.target``), ``lima:<vm>`` or ``ssh://``; on a Mac the local
    target is the Lima VM ``cai.lima_vm``.
    0: nothing left to repair (or, on the local host, inside a container without the data root: not
    supported). 1: damage may remain: a volume skipped or refused, an entry that failed or changed during
    the walk. ``default_all``: no scope flag means all managed containers (``inv doctor --repair``);
    without it exactly one of ``all``/``container`` is required (``inv repair``).

    Raises OpsError subclasses for bad input (no flag, unknown/unmanaged container, engine
    unreachable, data root missing, not root, a volume path that is a symlink, no python3 on the target).
    """
    return repair_target(ctx, target or cfg(ctx).target, all, container, dry_run, uid, gid, default_all).code


def repair_target(ctx: Any, text: str, all: bool, container: str | None, dry_run: bool,  # noqa: A002
                  uid: Any, gid: Any, default_all: bool = False, out: Output | None = None) -> Outcome:
    """One target: the local host in this process, any other through its Context."""
    from ops.repair.remote import interrupted
    from ops.targets import effective_target, parse_target

    conf = cfg(ctx)
    out = out or Output(progress=is_tty())
    target = effective_target(parse_target(text, conf.lima_vm), conf)
    try:
        if not target.remote:
            return _repair_local(conf, all, container, dry_run, uid, gid, default_all, out)
        scope = scope_of(all, container, dry_run, uid, gid, default_all)
        return _repair_remote(ctx, conf, text, scope, out)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the walk has unwound (its workers ended)
        raise interrupted(text, getattr(exc, "signum", 0)) from None


def _repair_local(conf: Any, all: bool, container: str | None, dry_run: bool,  # noqa: A002
                  uid: Any, gid: Any, default_all: bool, out: Output) -> Outcome:
    from ops.errors import NotFoundError, RefusedError
    from ops.repair import core, onhost

    # "not supported here" comes before any flag is judged (exit 0)
    message = core.unsupported_message(core.in_container(), core.data_root_visible(conf.data_root))
    if message:
        out.emit(message)
        return Outcome(0)
    scope = scope_of(all, container, dry_run, uid, gid, default_all)
    if os.geteuid() != 0 and not dry_run:
        raise RefusedError("repair changes file owners and needs root", "run it with sudo", exit_code=1)
    if not os.path.isdir(conf.data_root):
        raise NotFoundError(
            f"data root {conf.data_root} does not exist",
            "set cai.data_root (INVOKE_CAI_DATA_ROOT) to the engine's data root",
        )
    facts, warnings = _gather(conf, conf.docker_host, scope)
    return _finish(facts, warnings, conf.data_root, scope, onhost.execute, core.default_workers(), out)


def _repair_remote(ctx: Any, conf: Any, text: str, scope: Scope, out: Output) -> Outcome:
    """A ``lima:<vm>`` or ``ssh://`` target: its layout's engine and data root, root and python3 there."""
    from ops.layout import conf_for
    from ops.repair import remote
    from ops.targets import engine_host, resolve

    r = resolve(text, conf, ctx)
    try:
        host = remote.open_host(r.ctx, r.name, scope.dry_run)  # python3 and root before anything else
        conf = conf_for(conf, remote.layout_of(host, conf, r.name))
        with engine_host(r.target, conf) as docker_host:
            facts, warnings = _gather(conf, docker_host, scope)
        outcome = _finish(facts, warnings, conf.data_root, scope, remote.runner(host, r.name), None, out, r.name)
    finally:
        r.ctx.close()
    outcome.target = r.name
    return outcome


def _gather(conf: Any, docker_host: str, scope: Scope) -> tuple[list[Any], list[str]]:
    """The engine's facts: its data root must be ``conf.data_root``; the containers in scope, their
    volumes and the owner each wants."""
    from ops.engine import Engine
    from ops.repair import core

    engine = Engine.connect(docker_host, conf.label)
    try:
        core.check_data_root(engine, conf)
        containers = core.scope_containers(engine, scope.all, scope.container)
        return core.gather(engine, conf, containers, scope.override)
    finally:
        engine.close()


def _finish(facts: list[Any], warnings: list[str], data_root: str, scope: Scope, run: Runner,
            workers: int | None, out: Output, where: str = "") -> Outcome:
    """Plan, have the engine host walk (``run``: in this process or on the target), report."""
    from ops.repair import core

    for w in warnings:
        out.warn(f"warning: {w}")
    plans = core.plan(facts, data_root)
    for p in plans:
        for w in p.warnings:
            out.warn(f"warning: {w}")
    if not plans:
        what = f"container {scope.container}" if scope.container else "managed containers"
        out.emit(f"No managed volumes to repair ({what} mount no named volumes).")
        return Outcome(0)
    request = core.request(plans, data_root, scope.dry_run, workers)
    answer = _with_progress(run, request, scope.dry_run) if out.progress else run(request)
    results = core.results(plans, answer, scope.dry_run, where)
    for result in results:
        report(result, out)
    failed = [r.plan.name for r in results if r.failed]
    if failed:
        out.warn(f"damage may remain in {len(failed)} volume(s): {', '.join(failed)} (skipped, or entries "
                 "that failed or changed during the walk; see above); fix the cause and run the repair again")
        return Outcome(1, results)
    return Outcome(0, results)


def _with_progress(run: Runner, request: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    verb = "checking" if dry_run else "repairing"
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,} entries"),
                  TimeElapsedColumn(), transient=True) as progress:
        current: dict[str, Any] = {}

        def on_start(name: str) -> None:
            current["id"] = progress.add_task(f"{verb} {name}", total=None)

        def on_progress(n: int) -> None:
            if "id" in current:
                progress.update(current["id"], completed=n)

        return run(request, on_start, on_progress)


def report(r: Any, out: Output) -> None:
    """The lines of one volume's result (the same for every target)."""
    from ops.repair.walk import show_path

    p = r.plan
    who = ", ".join(p.containers)
    if p.owner is None or r.skipped_reason:
        out.emit(f"volume {p.name} ({who}): skipped: {r.skipped_reason or p.skip}")
        return
    if r.error:
        out.emit(f"volume {p.name} ({who}): failed: {r.error}")
        return
    s = r.stats
    skipped = sum(s.skipped.values())
    why = ", ".join(f"{reason}: {n}" for reason, n in sorted(s.skipped.items()))
    if r.dry_run:
        out.emit(f"volume {p.name} ({who}): would repair {s.repaired} of {s.scanned} entries "
                 f"to {p.owner.ids} ({p.owner.source}); skipped {skipped}{f' ({why})' if why else ''}")
        for e in sorted(s.examples, key=lambda e: e.path)[:EXAMPLES]:
            out.emit(f"  would chown {show_path(e.path)} [{e.kind}] {e.uid}:{e.gid} -> "
                     f"{p.owner.uid if e.uid == 65534 else e.uid}:{p.owner.gid if e.gid == 65534 else e.gid}")
        _report_problems(p.name, s, out)
        return
    out.emit(f"volume {p.name} ({who}): scanned {s.scanned}, repaired {s.repaired} to {p.owner.ids} "
             f"({p.owner.source}), skipped {skipped}{f' ({why})' if why else ''} in {s.seconds:.1f}s")
    _report_problems(p.name, s, out)


def _report_problems(name: str, s: Any, out: Output) -> None:
    """One warning line per entry that failed or changed during the walk (the first ERRORS_SHOWN)."""
    from ops.repair.walk import SKIP_CHANGED, SKIP_ERROR

    shown = s.errors[:ERRORS_SHOWN]
    for line in shown:
        out.warn(f"warning: volume {name}: {line}")
    more = s.skipped.get(SKIP_ERROR, 0) + s.skipped.get(SKIP_CHANGED, 0) - len(shown)
    if more > 0:
        out.warn(f"warning: volume {name}: ... and {more} more")


# --- several targets ------------------------------------------------------------------------------------

def volume_summary(r: Any) -> dict[str, Any]:
    """Pure: one volume's result as JSON."""
    p = r.plan
    doc: dict[str, Any] = {"volume": p.name, "containers": list(p.containers),
                           "owner": p.owner.ids if p.owner else None, "failed": r.failed}
    if p.owner is None or r.skipped_reason:
        doc["skipped"] = r.skipped_reason or p.skip
    elif r.error:
        doc["error"] = r.error
    else:
        s = r.stats
        doc.update(scanned=s.scanned, damaged=s.damaged, repaired=s.repaired, skipped_entries=dict(s.skipped),
                   errors=list(s.errors), seconds=round(s.seconds, 3), workers=s.workers)
    return doc


def outcome_summary(outcome: Outcome, dry_run: bool) -> str:
    """Pure: one line for a target's row of the result table."""
    done = [r for r in outcome.results if r.stats is not None]
    entries = sum(r.stats.repaired for r in done)
    failed = [r.plan.name for r in outcome.results if r.failed]
    verb = "would repair" if dry_run else "repaired"
    line = f"{verb} {entries} entries in {len(done)} volume(s)"
    if failed:
        line += f"; damage may remain in {', '.join(failed)}"
    return line


def repair_fleet(ctx: Any, targets: list[str], all: bool, container: str | None,  # noqa: A002
                 dry_run: bool, uid: Any, gid: Any, default_all: bool = False, json_: bool = False) -> int:
    """Repair every target through the single-target path, in parallel; each target's lines prefixed
    with its name, then a result table (or one JSON document); return the fleet's exit code."""
    import json
    import threading

    from ops.errors import OpsError
    from ops.fleet import TargetOutput, TargetResult, dedupe, fleet_exit_code, host_identity, render_table, run_fleet

    scope_of(all, container, dry_run, uid, gid, default_all)  # bad flags: one line, before any target
    conf = cfg(ctx)
    kept, dropped = dedupe(targets, lambda text: host_identity(text, conf)) if len(targets) > 1 else (targets, [])
    for text, first in dropped:
        _err(f"note: {text} is the same host as {first}; it is repaired once")
    lock = threading.Lock()
    stream = sys.stderr if json_ else sys.stdout

    def one(text: str) -> TargetResult:
        out = TargetOutput(text, lock, stream)
        try:
            outcome = repair_target(ctx, text, all, container, dry_run, uid, gid, default_all,
                                    Output(out.emit, out.warn))
        except OpsError as exc:
            out.warn(f"error: {exc.line()}")
            return TargetResult(text, exc.exit_code or 1, exc.line())
        return TargetResult(text, outcome.code, outcome_summary(outcome, dry_run),
                            {"target": outcome.target, "volumes": [volume_summary(r) for r in outcome.results]})

    from ops.repair.remote import STOP

    results = run_fleet(kept, one)
    code = 128 + STOP.signum if STOP.requested else fleet_exit_code(results)
    if json_:
        print(json.dumps({"schema": 1, "dry_run": dry_run, "exit": code,
                          "targets": [r.as_dict() for r in results]}, indent=2))
    else:
        render_table(results, "repair (dry run)" if dry_run else "repair")
    return code
