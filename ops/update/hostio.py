"""Acting on a host through its Context: root commands and atomic file writes.

This is the one place that knows how to put a file on a target: ``fabric.Connection.put`` for a remote
host, a plain copy for the local ``invoke.Context`` (which has no ``put``). Everything else goes through
``ctx.run`` with ``in_stream=False``, prefixed with ``sudo -n`` when the login user is not root.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ops.errors import OpsError
from ops.targets import describe, run


class Host:
    """A target host with root access for actions."""

    def __init__(self, ctx: Any, sudo: str = "") -> None:
        self.ctx = ctx
        self.sudo = sudo  # "" when root, "sudo -n " otherwise
        self._staging: str | None = None

    @classmethod
    def open(cls, ctx: Any) -> Host:
        """Check root access on the target: root, or passwordless sudo; else a clear error."""
        code, out, _err = run(ctx, "id -u; sudo -n true >/dev/null 2>&1 && echo sudo-ok")
        lines = out.split()
        if code != 0 and not lines:
            raise OpsError(f"cannot run commands on {describe(ctx)}", "check that the host is up")
        if lines and lines[0] == "0":
            return cls(ctx, "")
        if "sudo-ok" in lines:
            return cls(ctx, "sudo -n ")
        raise OpsError(f"update needs root on {describe(ctx)} and sudo asks for a password",
                       "run it as root (sudo inv update ...) or allow passwordless sudo")

    @property
    def name(self) -> str:
        """The host's name for messages."""
        return describe(self.ctx)

    def sh(self, command: str, what: str = "", timeout: int | None = 600, check: bool = True) -> str:
        """Run a shell command as root; raise OpsError with its last stderr line when it fails."""
        full = f"{self.sudo}sh -c {shlex.quote(command)}" if self.sudo else command
        code, out, err = run(self.ctx, full, timeout=timeout)
        if code != 0 and check:
            tail = [line for line in (err or out).strip().splitlines() if line.strip()]
            raise OpsError(f"{what or command.split()[0]} failed on {self.name} (exit {code})"
                           + (f": {tail[-1].strip()[:300]}" if tail else ""),
                           "fix the cause shown, then rerun (inv update --resume restarts stopped containers)")
        return out

    def probe(self, command: str) -> tuple[int, str, str]:
        """Run a read-only command as root; never raises on a non-zero exit."""
        full = f"{self.sudo}sh -c {shlex.quote(command)}" if self.sudo else command
        return run(self.ctx, full)

    def staging(self) -> str:
        """A private temporary directory on the target (created once, removed by ``cleanup``)."""
        if self._staging is None:
            code, out, err = run(self.ctx, "mktemp -d /tmp/containai-ops.XXXXXX")
            if code != 0 or not out.strip():
                raise OpsError(f"cannot create a temporary directory on {self.name}: {err.strip()[:200]}",
                               "check that /tmp is writable")
            self._staging = out.strip()
        return self._staging

    def cleanup(self) -> None:
        """Remove the staging directory."""
        if self._staging:
            with contextlib.suppress(Exception):
                run(self.ctx, f"rm -rf {shlex.quote(self._staging)}")
            self._staging = None

    def upload(self, local: str | Path, name: str) -> str:
        """Copy a local file into the staging directory on the target; return its remote path."""
        remote = f"{self.staging()}/{name}"
        put = getattr(self.ctx, "put", None)
        try:
            if callable(put):
                put(str(local), remote=remote)
            else:
                shutil.copyfile(str(local), remote)
        except Exception as exc:
            raise OpsError(f"cannot copy {local} to {self.name}: {str(exc).strip()[:200]}",
                           "check free space in /tmp on the target") from None
        return remote

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file atomically as root: stage it, install it beside the target, rename over it."""
        fd, local = tempfile.mkstemp(prefix="cai-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            staged = self.upload(local, Path(path).name)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(local)
        directory = os.path.dirname(path) or "/"
        tmp = f"{directory}/.{Path(path).name}.cai-new"
        q = shlex.quote
        self.sh(f"mkdir -p {q(directory)} && install -m {mode:o} {q(staged)} {q(tmp)} && mv -f {q(tmp)} {q(path)}",
                what=f"writing {path}")

    def read_text(self, path: str) -> str | None:
        """A file's content on the target, or None when it does not exist."""
        code, out, _err = self.probe(f"cat {shlex.quote(path)} 2>/dev/null || echo @@MISSING@@")
        if out.strip() == "@@MISSING@@":
            return None
        return out
