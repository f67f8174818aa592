"""Tasks of the ``units`` collection: the systemd units of a ContainAI host."""

from __future__ import annotations

from typing import Any

from invoke import task

from ops.tasks._common import cfg, cli_errors


@task(help={"out": "directory to write the rendered files into (default: print them on stdout)"})
@cli_errors
def render(ctx: Any, out: str | None = None) -> None:
    """Render the systemd units (and daemon.json, stop-hook script) exactly as update installs them."""
    from ops import units

    files = units.render(cfg(ctx))
    if out:
        for path in units.write_out(files, out):
            print(path)
        return
    for f in files:
        print(f"# ==> {f.path} (mode {f.mode:o}) <==")
        print(f.text, end="" if f.text.endswith("\n") else "\n")
