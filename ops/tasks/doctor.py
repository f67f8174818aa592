"""The ``doctor`` task: flags, rendering and the exit code. The checks live in ``ops.doctor``."""

from __future__ import annotations

import json
import sys
from typing import Any

from invoke import task
from invoke.exceptions import Exit

from ops.tasks._common import cfg, cli_errors, targets_of


@task(
    iterable=["target"],
    help={
        "json": "print the findings as JSON ({\"schema\": 1, ...}) instead of a table",
        "fix": "apply safe fixes (ownership repair of all managed volumes) after checking",
        "target": "target to check: local, lima:<vm> or ssh://user@host:port (repeatable)",
        "repair": "run the ownership repair instead of the checks (same as inv repair)",
        "all": "with --repair: repair the volumes of all managed containers",
        "container": "with --repair: repair only this managed container's volumes",
        "dry_run": "with --repair: say what would change, change nothing",
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
    if repair:
        from ops.tasks.repair import run_repair

        code = run_repair(c, all=all, container=container or None, dry_run=dry_run,
                          uid=None if uid < 0 else uid, gid=None if gid < 0 else gid)
        if code:
            raise Exit(code=code)
        return
    from ops.doctor import run_doctor
    from ops.findings import has_error, to_document

    reports = run_doctor(targets_of(conf, target), conf, c)
    findings = [f for r in reports for f in r.findings]
    if json_:
        print(json.dumps(to_document(findings, [r.summary() for r in reports]), indent=2))
    else:
        render_text(reports)
    if fix:
        fixable = [f for f in findings if f.code == "ownership.damaged"]
        if fixable:
            from ops.tasks.repair import run_repair

            code = run_repair(c, all=True, container=None, dry_run=dry_run, uid=None, gid=None)
            if code:
                raise Exit(code=code)
            findings = [f for f in findings if f.code != "ownership.damaged"]
        elif not json_:
            print("nothing to fix automatically", file=sys.stderr)
    if has_error(findings):
        raise Exit(code=1)


def render_text(reports: list[Any]) -> None:
    """Render findings as a rich table per target (plain text when piped)."""
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
    errors = sum(f.severity == "error" for r in reports for f in r.findings)
    warnings = sum(f.severity == "warning" for r in reports for f in r.findings)
    console.print(f"{errors} error(s), {warnings} warning(s)")
