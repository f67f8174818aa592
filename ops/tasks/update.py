"""The ``update`` task: upgrade Sysbox, the dockerd bundle and the units without breaking containers."""

from __future__ import annotations

import json
import sys
from typing import Any

from invoke import task

from ops.errors import OpsError
from ops.tasks._common import cfg, cli_errors, is_tty, targets_of


def _confirm(question: str) -> bool:
    """Ask on stderr (stdout stays the report's), read the answer from stdin; default No."""
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _unique(conf: Any, targets: list[str]) -> list[str]:
    """One run per host: a target naming a host already listed (``lima:x`` and its ssh form) is dropped
    with a note on stderr."""
    from ops.fleet import dedupe, host_identity

    if len(targets) < 2:
        return targets
    kept, dropped = dedupe(targets, lambda text: host_identity(text, conf))
    for text, first in dropped:
        _warn(f"note: {text} is the same host as {first}; it is updated once")
    return kept


@task(
    iterable=["target"],
    help={
        "stop-containers": "stop the running managed containers when the update must restart the engine "
        "(journaled first, started again afterwards)",
        "dry-run": "show the plan, the containers that would stop and 'would ...' lines; change nothing",
        "commands": "with --dry-run: also print every command the update would run on the target, in order "
        "(in the JSON report too)",
        "force": "answer yes to prompts: stop the running managed containers if the update needs it, "
        "after one warning line naming them (never skips stopping containers)",
        "resume": "after an interrupted update: start again what the journal says was running, then finish",
        "json": "print the report as JSON on stdout",
        "target": "where to update: local (default), lima:<vm> or ssh://user@host:port (repeatable: a fleet)",
        "serial": "with several targets: one at a time, stopping at the first failure (rolling update)",
        "parallel": "with several targets: how many to update at once (default 8)",
    },
)
@cli_errors
def update(
    ctx: Any,
    stop_containers: bool = False,
    dry_run: bool = False,
    commands: bool = False,
    force: bool = False,
    resume: bool = False,
    json_: bool = False,
    target: list[str] | None = None,
    serial: bool = False,
    parallel: int = 8,
) -> None:
    """Update Sysbox, the dockerd bundle and the systemd units (exit 2: containers run, see --stop-containers)."""
    from ops.update.apply import Options, run_update

    if commands and not dry_run:
        raise OpsError("--commands shows what a dry run would run; it changes nothing on its own",
                       "add --dry-run (inv update --dry-run --commands)")
    conf = cfg(ctx)
    targets = _unique(conf, targets_of(conf, target))
    if len(targets) > 1:
        _update_fleet(ctx, conf, targets, Options(stop_containers=stop_containers, dry_run=dry_run, force=force,
                                                  resume=resume, interactive=False, progress=False,
                                                  commands=commands),
                      json_, serial, parallel)
        return
    interactive = is_tty() and sys.stdin.isatty()
    opts = Options(stop_containers=stop_containers, dry_run=dry_run, force=force, resume=resume,
                   interactive=interactive, progress=is_tty(), commands=commands)
    out = sys.stderr if json_ else sys.stdout

    def emit(line: str) -> None:
        print(line, file=out, flush=True)

    report: dict[str, Any] = {}
    try:
        report = run_update(ctx, conf, targets[0], opts, emit, _confirm, _warn)
    except OpsError as exc:
        if json_:
            report = {"schema": 1, "result": "refused" if exc.exit_code == 2 else "error",
                      "error": exc.line(), "exit": exc.exit_code}
            print(json.dumps(report, indent=2))
        raise
    if json_:
        print(json.dumps(report, indent=2, default=str))


def _update_fleet(ctx: Any, conf: Any, targets: list[str], opts: Any, json_: bool, serial: bool,
                  parallel: int) -> None:
    """Update several targets through the single-target path; a result table (or JSON) and one exit code."""
    import threading

    from invoke.exceptions import Exit

    from ops.fleet import TargetOutput, TargetResult, fleet_exit_code, render_table, run_fleet
    from ops.update.apply import run_update

    lock = threading.Lock()
    stream = sys.stderr if json_ else sys.stdout

    def one(text: str) -> TargetResult:
        out = TargetOutput(text, lock, stream)
        try:
            report = run_update(ctx, conf, text, opts, out.emit, None, out.warn)
        except OpsError as exc:
            return TargetResult(text, exc.exit_code, exc.line())
        return TargetResult(text, 0, str(report.get("result", "done")), report)

    results = run_fleet(targets, one, parallel=parallel, serial=serial)
    code = fleet_exit_code(results)
    if json_:
        print(json.dumps({"schema": 1, "mode": "serial" if serial else "parallel", "exit": code,
                          "targets": [r.as_dict() for r in results]}, indent=2, default=str))
    else:
        render_table(results, "update")
    if code:
        raise Exit(code=code)
