"""The ``doctor`` task: flags, rendering and the exit code. The checks live in ``ops.doctor``."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from typing import Any

from invoke import task
from invoke.exceptions import Exit

from ops.tasks._common import cfg, cli_errors, targets_of

#: Finding codes that ``--fix`` knows how to fix: the ownership repair of all managed volumes, and the
#: public key put back into a container that refuses it (``ops.ssh_health``).
FIXABLE = ("ownership.damaged", "ssh.container-key-refused")


@task(
    iterable=["target"],
    help={
        "json": "print one JSON document ({\"schema\": 1, ...}) instead of a table; --fix results go inside it",
        "fix": "apply safe fixes (ownership repair of all managed volumes; the public key put back into a "
               "container that refuses it) after checking, then check again; the repair runs on each target "
               "with damage",
        "target": "target to check: local, lima:<vm> or ssh://user@host:port (repeatable)",
        "repair": "run the ownership repair instead of the checks (same as inv repair --target; default "
                  "scope: all managed containers)",
        "all": "with --repair: repair the volumes of all managed containers (the default)",
        "container": "with --repair: repair only this managed container's volumes",
        "dry_run": "with --repair or --fix: say what would change, change nothing",
        "uid": "with --repair: owner uid to restore (default: detected per container)",
        "gid": "with --repair: owner gid to restore (default: detected per container)",
    },
)
@cli_errors
def doctor(
    c: Any,
    json_: bool = False,
    fix: bool = False,
    target: list[str] | None = None,
    repair: bool = False,
    all: bool = False,  # noqa: A002 - the flag is --all
    container: str = "",
    dry_run: bool = False,
    uid: int = -1,
    gid: int = -1,
) -> None:
    """Check ContainAI hosts: platform, engine, containers, Sysbox, dockerd bundle, units, ownership."""
    conf = cfg(c)
    targets = targets_of(conf, target)
    if repair:
        # the repair on each target (on a Mac without --target: the Lima VM), as inv repair does
        from ops.repair.run import repair_fleet, run_repair

        if len(targets) > 1 or json_:
            code = repair_fleet(c, targets, all, container or None, dry_run, None if uid < 0 else uid,
                                None if gid < 0 else gid, default_all=True, json_=json_)
        else:  # no scope flag means all managed containers; --container narrows it
            code = run_repair(c, all=all, container=container or None, dry_run=dry_run,
                              uid=None if uid < 0 else uid, gid=None if gid < 0 else gid, default_all=True,
                              target=targets[0])
        if code:
            raise Exit(code=code)
        return
    if not json_ and sys.stdout.isatty():  # the table's library loads while the targets are probed
        import threading

        threading.Thread(target=_import_rich, daemon=True).start()
    from ops.doctor import run_doctor
    from ops.findings import has_error, to_document

    reports = run_doctor(targets, conf, c)
    if not json_:
        render_text(reports)
    fix_result: dict[str, Any] | None = None
    if fix:
        fixable = sorted({f.code for r in reports for f in r.findings if f.code in FIXABLE})
        ownership = [f for f in fixable if f.startswith("ownership.")]
        damaged = list(dict.fromkeys(f.target for r in reports for f in r.findings if f.code in ownership))
        # with only SSH fixes to do, the repair has nothing to run and nothing to say
        fix_result = apply_fixes(c, ownership, dry_run, capture=json_ or (not ownership and bool(fixable)),
                                 targets=damaged)
        fix_result["ssh"] = ssh_fixes([f for r in reports for f in r.findings], conf, dry_run, capture=json_)
        if fixable and not dry_run:  # apply, then check again: the findings are the state after the fix
            reports = run_doctor(targets, conf, c)
            if not json_:
                print("after --fix:", file=sys.stderr)
                render_text(reports)
    findings = [f for r in reports for f in r.findings]
    if json_:
        doc = to_document(findings, [r.summary() for r in reports])
        if fix_result is not None:
            doc["fix"] = fix_result
        print(json.dumps(doc, indent=2))
    if fix_result is not None and fix_result["exit_code"]:
        raise Exit(code=int(fix_result["exit_code"]))
    if has_error(findings):
        raise Exit(code=1)


def apply_fixes(c: Any, fixable: list[str], dry_run: bool, capture: bool,
                targets: list[str] | None = None) -> dict[str, Any]:
    """Run the fixes for the fixable finding codes; return what happened (for JSON and the exit code).

    The ownership repair (all managed volumes) runs on each of ``targets`` (the targets whose findings
    asked for it, as doctor named them: ``local``, ``lima:<vm>``, ``ssh://...``; default: the local
    target), on the engine host as ``inv repair --target`` does. With ``capture`` the repair's output is
    collected into the result instead of stdout (``--json`` prints one JSON document and nothing else on
    stdout); its warnings still go to stderr.
    """
    targets = list(targets or ["local"])
    result: dict[str, Any] = {"fixable": fixable, "dry_run": dry_run, "ran": bool(fixable), "exit_code": 0,
                              "output": [], "error": None, "targets": targets if fixable else []}
    if not fixable:
        if not capture:
            print("nothing to fix automatically", file=sys.stderr)
        return result
    from ops.errors import OpsError
    from ops.repair.run import run_repair

    out = io.StringIO()
    errors: list[str] = []
    for target in targets:
        if len(targets) > 1 and not capture:
            print(f"repair on {target}:")
        try:
            with contextlib.redirect_stdout(out) if capture else contextlib.nullcontext():
                code = run_repair(c, all=True, container=None, dry_run=dry_run, uid=None, gid=None, target=target)
        except OpsError as exc:
            if not capture and len(targets) == 1:
                raise
            code = exc.exit_code or 1
            errors.append(f"{target}: {exc.line()}" if len(targets) > 1 else exc.line())
            if not capture:
                print(f"error: {errors[-1]}", file=sys.stderr)
        result["exit_code"] = max(int(result["exit_code"]), code)
    result["error"] = "; ".join(errors) or None
    result["output"] = out.getvalue().splitlines()
    return result


def ssh_fixes(findings: list[Any], conf: Any, dry_run: bool, capture: bool) -> list[str]:
    """Put the public key back into each container that refuses it, then test it again (one line each)."""
    from ops import ssh_health

    lines = [r.line() for r in ssh_health.fix_key_refused(findings, conf, dry_run)]
    if not capture:
        for line in lines:
            print(line, file=sys.stderr)
    return lines


def _import_rich() -> None:
    """Import what :func:`render_text` uses on a terminal."""
    import rich.console  # noqa: F401
    import rich.table  # noqa: F401


def render_text(reports: list[Any]) -> None:
    """Render findings as a rich table per target on a terminal; as plain aligned text when piped."""
    errors = sum(f.severity == "error" for r in reports for f in r.findings)
    warnings = sum(f.severity == "warning" for r in reports for f in r.findings)
    if not sys.stdout.isatty():
        print(plain_text(reports), end="")
        print(f"{errors} error(s), {warnings} warning(s)")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    styles = {"error": "bold red", "warning": "yellow", "info": "green"}
    for report in reports:
        title = f"{report.target} ({report.platform or 'unreachable'})"
        table = Table(title=title, show_lines=False, expand=False)
        table.add_column("severity")
        table.add_column("code")
        table.add_column("message", overflow="fold")
        table.add_column("hint", overflow="fold")
        for f in report.findings:
            table.add_row(f"[{styles[f.severity]}]{f.severity}[/]", f.code, f.message, f.hint)
        console.print(table)
    console.print(f"{errors} error(s), {warnings} warning(s)")


def plain_text(reports: list[Any]) -> str:
    """Pure: the findings as text for a pipe or a log: per target a title line ``<target> (<platform>)``,
    then one line per finding (severity and code in aligned columns, then the message), its hint on the
    next line."""
    lines: list[str] = []
    for report in reports:
        lines.append(f"{report.target} ({report.platform or 'unreachable'})")
        width = max((len(f.code) for f in report.findings), default=0)
        for f in report.findings:
            lines.append(f"  {f.severity:<7}  {f.code:<{width}}  {f.message}")
            if f.hint:
                lines.append(f"  {'':<7}  {'':<{width}}  hint: {f.hint}")
        lines.append("")
    return "\n".join(lines) + ("\n" if lines else "")
