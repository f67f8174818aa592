"""One update per host at a time: a lock on the TARGET, held for the whole run.

The lock is ``flock`` on ``<cai.state_dir>/update.lock`` on the target, held by a small shell that runs
there as root for the length of the session and waits on its stdin. Its stdin is a pipe from this
process (through ``ssh`` for a remote target), so whatever ends this process (a crash, a kill, a closed
terminal, a dropped connection) closes the pipe, the shell ends, and the kernel releases the lock: there
is no stale lock to clean up. The holder writes who it is (pid, user, machine, target, start time) to
``update.lock.owner`` beside it, which a second run prints when it finds the lock taken.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import select
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from ops.config import CaiConfig
from ops.errors import OpsError

NAME = "update.lock"
OWNER = "update.lock.owner"
#: Exit code of the holder when another process holds the lock.
BUSY = 75
#: Seconds the holder waits for a lock that is just being released (a killed update's session ending).
WAIT = 10
#: Seconds to wait for the holder to say whether it got the lock.
ANSWER_TIMEOUT = 45


def lock_path(conf: CaiConfig) -> str:
    """Where the lock file lives on the target."""
    return f"{conf.state_dir.rstrip('/')}/{NAME}"


def holder_script(state_dir: str, owner: str) -> str:
    """The shell that takes the lock and holds it until its stdin closes.

    It prints ``LOCKED`` once it holds the lock, or, after ``WAIT`` seconds, ``BUSY <owner line>`` and
    exits 75.
    """
    q = shlex.quote
    d = state_dir.rstrip("/") or "/"
    return (f"d={q(d)}; mkdir -p \"$d\" || exit 3; exec 9>>\"$d/{NAME}\" || exit 3; "
            "command -v flock >/dev/null 2>&1 || { echo 'NOFLOCK'; exit 4; }; "
            f"if ! flock -w {WAIT} 9; then printf 'BUSY '; "
            f"head -n 1 \"$d/{OWNER}\" 2>/dev/null || echo 'an unknown process'; exit {BUSY}; fi; "
            f"printf '%s\\n' {q(owner)} > \"$d/.{OWNER}.new\" && mv -f \"$d/.{OWNER}.new\" \"$d/{OWNER}\"; "
            "echo LOCKED; cat >/dev/null")


def owner_line(target: str) -> str:
    """Who takes the lock: this process, its user and machine, the target, the start time (UTC)."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry: the uid is still telling
        user = str(os.getuid())
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"pid {os.getpid()} of {user}@{socket.gethostname()} (updating {target}) since {since}"


def parse_answer(first_line: str) -> tuple[str, str]:
    """Pure: the holder's first line -> (``locked`` | ``busy`` | ``noflock`` | ``error``, detail)."""
    line = first_line.strip()
    if line == "LOCKED":
        return "locked", ""
    if line.startswith("BUSY"):
        return "busy", line[4:].strip() or "an unknown process"
    if line == "NOFLOCK":
        return "noflock", ""
    return "error", line


class HostLock:
    """The update lock of one target, held by a process on it (see the module docstring)."""

    def __init__(self, proc: subprocess.Popen[bytes], where: str, path: str) -> None:
        self.proc = proc
        self.where = where
        self.path = path

    @property
    def held(self) -> bool:
        """True while the holder still runs (it has the lock)."""
        return self.proc.poll() is None

    def check(self) -> None:
        """Fail when the lock was lost (its session ended) before a step that changes the host."""
        if not self.held:
            raise OpsError(f"lost the update lock on {self.where} (its session ended)",
                           "check the connection to the host and rerun (inv update --resume if containers "
                           "were stopped)")

    def release(self) -> None:
        """Close the holder's stdin: it ends and the lock is released."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        with contextlib.suppress(OSError):
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def holder_argv(target: Any, conf: CaiConfig, sudo: str, script: str) -> list[str]:
    """The command that runs the holder as root on the target: locally ``sh -c``, remotely through
    ``ssh`` exactly as the engine tunnel reaches the host (no connection sharing: its own session)."""
    from ops.targets import command_argv

    return command_argv(target, conf, f"{sudo}sh -c {shlex.quote(script)}",
                        ("-T", "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ConnectTimeout=15",
                         "-o", "ServerAliveInterval=15"))


def acquire(target: Any, conf: CaiConfig, sudo: str, where: str) -> HostLock:
    """Take the update lock on the target or fail with who holds it since when (exit 1)."""
    script = holder_script(conf.state_dir, owner_line(where))
    argv = holder_argv(target, conf, sudo, script)
    # stderr goes to a file, never a pipe: a chatty ssh must not block on a full one
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                                    start_new_session=True)
        except OSError as exc:
            raise OpsError(f"cannot take the update lock on {where} ({exc.strerror})",
                           "install the ssh client (openssh-client)") from None
        lock = HostLock(proc, where, lock_path(conf))
        line = _first_line(proc, ANSWER_TIMEOUT)
        state, detail = parse_answer(line)
        if state == "locked":
            return lock
        lock.release()
        errors.seek(0)
        err = errors.read().decode(errors="replace")
    if state == "busy":
        raise OpsError(f"another update holds the lock on {where}: {detail}",
                       f"wait for it to finish (the lock {lock.path} is released when that update ends, "
                       "even if it is killed), then rerun")
    if state == "noflock":
        raise OpsError(f"flock is not installed on {where}", "install util-linux there, then rerun")
    reason = (err.strip().splitlines() or [line.strip() or f"exit {proc.returncode}"])[-1][:200]
    raise OpsError(f"cannot take the update lock {lock.path} on {where} ({reason})",
                   f"make cai.state_dir ({conf.state_dir}) writable by root there, or point it elsewhere")


def _first_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The holder's first output line (or "" when it ended or stayed silent)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").split("\n", 1)[0]


@contextlib.contextmanager
def held(target: Any, conf: CaiConfig, sudo: str, where: str) -> Iterator[HostLock]:
    """The update lock of a target for the length of a ``with`` block."""
    lock = acquire(target, conf, sudo, where)
    try:
        yield lock
    finally:
        lock.release()
