"""Acting on a host through its Context: root commands, privileged reads and durable file writes.

Files reach a target through its Context's ``put`` (``fabric.Connection`` remotely, ``LocalContext``
locally: one code path). Everything else goes through
``ctx.run`` with ``in_stream=False``, prefixed with ``sudo -n`` when the login user is not root. Files
the update replaces are read through that same privileged path, so a file only root can read is read,
and one that cannot be read at all is an error, never "missing".
"""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
from pathlib import Path
from typing import Any

from ops.errors import OpsError, TargetError
from ops.filedump import UNREADABLE, FileState, dump_command, parse_dump
from ops.targets import FileContext, describe

#: The time a read-only probe gets (a command that does real work gets a budget of its own).
PROBE_TIMEOUT = 60
#: Files whose content adds up to at most this many bytes are written by one command that carries
#: them (one round trip, no copy); larger ones are copied to the target first. One shell argument
#: may not exceed 128 KiB (``sudo -n sh -c``), and base64 makes the content a third larger.
INLINE_MAX = 48 * 1024
_WRITING = "@@CAI-WRITING "
#: How the private staging directory is made (as the login user: the copies arrive as that user).
STAGING_TEMPLATE = "/tmp/containai-ops.XXXXXX"
MKTEMP = f"mktemp -d {STAGING_TEMPLATE}"


#: Root, or passwordless sudo (:meth:`Host.open`).
PRIVILEGE_PROBE = "id -u; sudo -n true >/dev/null 2>&1 && echo sudo-ok"


class CutError(OpsError):
    """A command was cut by its timeout (it may still be running on the host)."""


class Host:
    """A target host with root access for actions."""

    def __init__(self, ctx: FileContext, sudo: str = "", privileged: bool = True) -> None:
        self.ctx = ctx
        self.sudo = sudo  # "" when root, "sudo -n " otherwise
        self.privileged = privileged  # False: only the login user's rights (a dry run without root)
        self._staging: str | None = None

    @classmethod
    def open(cls, ctx: FileContext) -> Host:
        """Check root access on the target: root, or passwordless sudo; else a clear error."""
        code, out, _err = _run(ctx, PRIVILEGE_PROBE, PROBE_TIMEOUT)
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

    def root_command(self, command: str) -> str:
        """``command`` as it runs as root on the host (wrapped in ``sudo -n sh -c`` when needed)."""
        return f"{self.sudo}sh -c {shlex.quote(command)}" if self.sudo else command

    def run(self, command: str, what: str = "", timeout: int = PROBE_TIMEOUT) -> tuple[int, str, str]:
        """Run a command as root; never raises on a non-zero exit; a cut command raises CutError."""
        try:
            return _run(self.ctx, self.root_command(command), timeout)
        except CutError as exc:
            raise CutError(f"{what or command.split()[0]} was cut after {timeout}s on {self.name} "
                           "(its timeout; it may still be running there)", exc.hint) from None

    def sh(self, command: str, what: str = "", timeout: int = 600, check: bool = True) -> str:
        """Run a shell command as root; raise OpsError with its last stderr line when it fails."""
        code, out, err = self.run(command, what, timeout)
        if code != 0 and check:
            tail = [line for line in (err or out).strip().splitlines() if line.strip()]
            raise OpsError(f"{what or command.split()[0]} failed on {self.name} (exit {code})"
                           + (f": {tail[-1].strip()[:300]}" if tail else ""),
                           "fix the cause shown, then rerun (inv update --resume restarts stopped containers)")
        return out

    def probe(self, command: str, timeout: int = PROBE_TIMEOUT) -> tuple[int, str, str]:
        """Run a read-only command as root; never raises on a non-zero exit."""
        return self.run(command, timeout=timeout)

    def staging(self) -> str:
        """A private temporary directory on the target (created once, removed by ``cleanup``)."""
        if self._staging is None:
            code, out, err = _run(self.ctx, MKTEMP, PROBE_TIMEOUT)
            if code != 0 or not out.strip():
                raise OpsError(f"cannot create a temporary directory on {self.name}: {err.strip()[:200]}",
                               "check that /tmp is writable")
            self._staging = out.strip()
        return self._staging

    def cleanup(self) -> None:
        """Remove the staging directory."""
        if self._staging:
            with contextlib.suppress(Exception):
                _run(self.ctx, f"rm -rf {shlex.quote(self._staging)}", PROBE_TIMEOUT)
            self._staging = None

    def adopt_staging(self, path: str) -> None:
        """Use ``path`` (made by ``mktemp -d`` as :data:`MKTEMP` says) as the staging directory."""
        self._staging = path

    def upload(self, local: str | Path, name: str) -> str:
        """Copy a local file into the staging directory on the target; return its remote path."""
        remote = f"{self.staging()}/{name}"
        self.put(local, remote)
        return remote

    def put(self, local: str | Path, remote: str) -> None:
        """Copy a local file to ``remote`` on the target (as the login user)."""
        try:
            self.ctx.put(str(local), remote=remote)
        except Exception as exc:
            raise OpsError(f"cannot copy {local} to {self.name}: {str(exc).strip()[:200]}",
                           "check free space in /tmp on the target") from None

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file atomically and durably as root (see :func:`install_command`).

        A file that exists keeps its mode and owner (plus the execute bits of ``mode``, so a script
        stays executable); a new file gets ``mode``.
        """
        self.write_files([(path, text, mode)])

    def write_files(self, files: list[tuple[str, str, int]]) -> None:
        """Write files (path, text, mode) as :meth:`write_text` does, in order; small ones (together
        at most ``INLINE_MAX`` bytes) in ONE command that carries their content, so an update writes
        its units while the containers are down in one round trip. A failure names the file."""
        if not files:
            return
        if not inline(files):
            for path, text, mode in files:
                self._write_uploaded(path, text, mode)
            return
        code, out, err = self.run(write_script(files), what=f"writing {files[0][0]}")
        if code != 0:
            raise write_failure(files, code, out, err, self.name)

    def _write_uploaded(self, path: str, text: str, mode: int) -> None:
        """Write one (large) file through a copy into the staging directory."""
        import tempfile  # here: the doctor, which reads through this module, never writes

        fd, local = tempfile.mkstemp(prefix="cai-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            staged = self.upload(local, Path(path).name)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(local)
        self.sh(install_command(staged, path, mode), what=f"writing {path}")

    def read_files(self, paths: list[str]) -> dict[str, FileState]:
        """Read files as root in one round trip; a file that exists but cannot be read is an error."""
        code, out, err = self.probe(dump_command(paths))
        found = parse_dump(out)
        unreadable = [p for p in paths if found.get(p) == UNREADABLE]
        if unreadable or any(p not in found for p in paths):
            bad = unreadable or [p for p in paths if p not in found]
            how = ("as the login user (run as root to read it)" if not self.privileged
                   else "through sudo" if self.sudo else "as root")
            raise OpsError(f"cannot read {', '.join(bad)} on {self.name} {how}"
                           + (f" ({err.strip().splitlines()[-1][:200]})" if err.strip() else ""),
                           "check the file (a directory, a broken mount, a permission root lacks), "
                           "then rerun; an unreadable file is never treated as missing")
        states = {}
        for p in paths:
            value = found[p]
            states[p] = value if isinstance(value, FileState) else FileState(p, False)
        return states

    def read_text(self, path: str) -> str | None:
        """A file's content on the target (read as root), or None when it does not exist."""
        state = self.read_files([path])[path]
        return state.text if state.exists else None


def inline(files: list[tuple[str, str, int]]) -> bool:
    """Pure: the files are small enough to be carried in one command (see ``INLINE_MAX``)."""
    return sum(len(text.encode()) for _p, text, _m in files) <= INLINE_MAX


def write_script(files: list[tuple[str, str, int]]) -> str:
    """Pure: the ONE command that writes small files (path, text, mode) in order, each as
    :func:`inline_install_command` does, announcing each file first (so a failure names it)."""
    return "\n".join(f"echo {shlex.quote(_WRITING + path)}\n"
                     f"{{ {inline_install_command(path, text, mode)}; }} || exit $?"
                     for path, text, mode in files)


def write_failure(files: list[tuple[str, str, int]], code: int, out: str, err: str, where: str) -> OpsError:
    """Pure: the error of a failed :func:`write_script`, naming the file it was writing."""
    failed = [line[len(_WRITING):] for line in out.splitlines() if line.startswith(_WRITING)]
    tail = [line for line in err.strip().splitlines() if line.strip()]
    return OpsError(f"writing {failed[-1] if failed else files[0][0]} failed on {where} (exit {code})"
                    + (f": {tail[-1].strip()[:300]}" if tail else ""),
                    "fix the cause shown, then rerun (inv update --resume restarts stopped containers)")


def run_as_login(ctx: Any, command: str, timeout: int) -> tuple[int, str, str]:
    """Run a command as the login user (the staging directory is made and removed that way)."""
    return _run(ctx, command, timeout)


def _run(ctx: Any, command: str, timeout: int) -> tuple[int, str, str]:
    """Run on a Context without reading our stdin; a timeout is CutError, a lost host TargetError."""
    try:
        result = ctx.run(command, hide=True, warn=True, in_stream=False, timeout=timeout, pty=False)
    except Exception as exc:
        from invoke.exceptions import CommandTimedOut

        if isinstance(exc, CommandTimedOut):
            raise CutError(f"{command.split()[0]} was cut after {timeout}s on {describe(ctx)}",
                           "see what it was doing on the host, then rerun") from None
        text = str(exc).strip()
        first = (text.splitlines()[0] if text else type(exc).__name__)[:200]
        raise TargetError(f"cannot reach {describe(ctx)} ({first})",
                          "check that the host is up and the SSH key is right") from None
    return int(result.exited), str(result.stdout), str(result.stderr)


def install_command(staged: str, path: str, mode: int) -> str:
    """Shell that installs ``staged`` as ``path``: a temporary file beside it (the existing file's mode
    and owner, or ``mode``), ``sync`` of that file, rename over ``path``, ``sync`` of the directory.

    ``sync FILE`` (GNU coreutils 8.24 or later: every Debian and Ubuntu release in support) calls
    fsync on each file it is given, a directory included.
    """
    q = shlex.quote
    directory = os.path.dirname(path) or "/"
    tmp = f"{directory}/.{Path(path).name}.cai-new"
    exec_bits = f"{mode & 0o111:o}"
    return (f"set -e; p={q(path)}; t={q(tmp)}; mkdir -p {q(directory)}; rm -f \"$t\"; "
            f"cp {q(staged)} \"$t\"; "
            "if [ -f \"$p\" ]; then chown --reference=\"$p\" \"$t\"; "
            f"m=$(stat -c %a \"$p\"); chmod \"$(printf '%o' $(( 0$m | 0{exec_bits} )))\" \"$t\"; "
            f"else chown 0:0 \"$t\"; chmod {mode:o} \"$t\"; fi; "
            f"sync \"$t\"; mv -f \"$t\" \"$p\"; sync {q(directory)}")


def inline_install_command(path: str, text: str, mode: int) -> str:
    """Shell that installs ``text`` (carried in the command, base64) as ``path`` exactly as
    :func:`install_command` installs a staged copy: a temporary file beside it with the existing
    file's mode and owner (or ``mode``), fsync, rename, fsync of the directory. One ``&&`` chain, so
    it stops at the first failure wherever it is embedded."""
    q = shlex.quote
    directory = os.path.dirname(path) or "/"
    tmp = f"{directory}/.{Path(path).name}.cai-new"
    exec_bits = f"{mode & 0o111:o}"
    data = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return " && ".join([
        f"p={q(path)}", f"t={q(tmp)}", f"mkdir -p {q(directory)}", 'rm -f "$t"',
        f'printf %s {data} | base64 -d > "$t"',
        ('if [ -f "$p" ]; then chown --reference="$p" "$t" && m=$(stat -c %a "$p") && '
         f'chmod "$(printf \'%o\' $(( 0$m | 0{exec_bits} )))" "$t"; '
         f'else chown 0:0 "$t" && chmod {mode:o} "$t"; fi'),
        'sync "$t"', 'mv -f "$t" "$p"', f"sync {q(directory)}",
    ])
