"""Running the engine host's side of a repair (:mod:`ops.repair.onhost`) on a remote target.

The walk is standard library only, so it runs under the target's own ``python3``: the source of
``ops/repair/walk.py`` and ``ops/repair/onhost.py`` (read from this installation, compressed) and the
request travel in ONE command over the target's Context (a ``fabric.Connection``), as root (``sudo -n``
when the login user is not root, as ``inv update`` does). The answer comes back as one JSON line on
stdout. Nothing is copied to the target's disk and nothing is left there.

Nothing is left running there either. The command's stdin stays open while this side waits (sshd sends
no signal when a connection without a terminal drops, and Fabric cannot signal a remote command: the
end of stdin is what reaches it); the driver ends its walk when stdin ends. Ctrl-C or SIGTERM here
(:func:`interruptible`) closes that stdin, waits for the target's walk to end (it ends its workers) and
raises :func:`interrupted`; a dropped connection ends it the same way.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shlex
import signal
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from invoke.watchers import StreamWatcher

from ops.errors import OpsError, RefusedError
from ops.repair import onhost, walk
from ops.update.hostio import Host

#: A repair walk on a target gets this long (big volumes on slow disks); a detection walk is bounded.
REPAIR_TIMEOUT = 6 * 3600
PROBE_TIMEOUT = 60
#: One shell argument may not exceed 128 KiB (``sudo -n sh -c``): the command stays well below.
COMMAND_MAX = 100 * 1024
PYTHON_MISSING = 127
#: What the local side reads as "no exit status": the connection ended before the command did.
NO_STATUS = -1
#: Seconds a target's walk gets to end after its stdin ended, before its connection is closed.
GRACE = 5.0

#: Loads the two modules from their compressed source (``walk`` first: ``onhost`` imports it) and runs
#: ``onhost.main``. ``-I``: nothing from the environment or the current directory is imported.
BOOTSTRAP = """import base64, sys, types, zlib
def load(name, blob):
    module = types.ModuleType(name)
    module.__file__ = name + ".py"
    sys.modules[name] = module
    exec(compile(zlib.decompress(base64.b64decode(blob)), name + ".py", "exec"), module.__dict__)
    return module
load("walk", W)
sys.exit(load("onhost", O).main(sys.argv[1:]))
"""

#: Who we are on the target, whether sudo works without a password, and whether root has python3.
ACCESS_PROBE = ("id -u; sudo -n true >/dev/null 2>&1 && echo sudo-ok; "
                "if [ \"$(id -u)\" = 0 ]; then p=$(command -v python3); "
                "else p=$(sudo -n sh -c 'command -v python3' 2>/dev/null || command -v python3); fi; "
                "echo \"python3=$p\"")


def _blob(path: str) -> str:
    return base64.b64encode(zlib.compress(Path(path).read_bytes(), 9)).decode("ascii")


def driver_command(request: dict[str, Any]) -> str:
    """Pure but for reading the two module files: the shell command that runs the request on a target
    with its ``python3``."""
    script = f"W = {_blob(walk.__file__)!r}\nO = {_blob(onhost.__file__)!r}\n{BOOTSTRAP}"
    command = f"python3 -I -c {shlex.quote(script)} {onhost.encode_request(request)}"
    if len(command) > COMMAND_MAX:
        raise OpsError(f"the repair command is {len(command)} bytes, more than one shell argument may hold",
                       "report it: the walk's source grew too large to ship in one command")
    return command


def parse_answer(stdout: str) -> dict[str, Any] | None:
    """Pure parser: the answer after :data:`onhost.MARK` on stdout (None when there is none)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(onhost.MARK):
            try:
                loaded = json.loads(line[len(onhost.MARK):])
            except ValueError:
                return None
            return loaded if isinstance(loaded, dict) else None
    return None


def parse_access(stdout: str) -> tuple[bool, bool, str]:
    """Pure parser of :data:`ACCESS_PROBE`: (root, passwordless sudo, path of python3 or '')."""
    lines = stdout.split("\n")
    root = bool(lines) and lines[0].strip() == "0"
    sudo = any(line.strip() == "sudo-ok" for line in lines)
    python = next((line.partition("=")[2].strip() for line in lines if line.startswith("python3=")), "")
    return root, sudo, python


def open_host(ctx: Any, name: str, dry_run: bool) -> Host:
    """Root on the target (root, or passwordless sudo) with a ``python3``; else one clear error.

    A dry run without root runs as the login user (it reads what that user may read)."""
    code, out, err = Host(ctx).probe(ACCESS_PROBE, timeout=PROBE_TIMEOUT)
    if code != 0 and not out.strip():
        raise OpsError(f"cannot run commands on {name} ({err.strip()[:200] or f'exit {code}'})",
                       "check that the host is up")
    root, sudo, python = parse_access(out)
    if not python:
        raise missing_python(name)
    if root:
        return Host(ctx, "")
    if sudo:
        return Host(ctx, "sudo -n ")
    if dry_run:
        return Host(ctx, "", privileged=False)
    raise RefusedError(f"repair changes file owners and needs root on {name}, and sudo asks for a password",
                       "log in as root, or allow passwordless sudo for this user", exit_code=1)


def layout_of(host: Host, conf: Any, name: str) -> Any:
    """The target's host layout (``ops.layout.Layout``), its facts read as root (a daemon.json only root
    may read is read, as ``inv update`` reads it); ``cai.layout`` forces it."""
    from ops.layout import LayoutError, decide, parse_probe, probe_command

    code, out, err = host.probe(probe_command(conf.label), timeout=PROBE_TIMEOUT)
    if "load:" not in out:
        raise LayoutError(f"{name}: the layout probe failed ({err.strip()[:200] or code})",
                          "check that the host is a POSIX host with a shell")
    return decide(parse_probe(out), name, conf.layout)


def missing_python(name: str) -> OpsError:
    """The one line for a target without python3."""
    return OpsError(f"{name} has no python3: repair walks the volumes on the engine host with its python3",
                    "install python3 there (apt-get install python3), then rerun")


def runner(host: Host, name: str, timeout: int = REPAIR_TIMEOUT) -> Callable[..., dict[str, Any]]:
    """A request runner (the remote twin of :func:`ops.repair.onhost.execute`) on ``host``; given
    callbacks, the walk's progress lines call them as the output arrives.

    The walk's stdin is held open until a stop is asked (:func:`interruptible`); then it ends, the
    target's driver ends the walk, and this raises :func:`interrupted` (so does a stop asked before)."""

    def run(request: dict[str, Any], on_start: Callable[[str], None] | None = None,
            on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        progress = on_start is not None or on_progress is not None
        command = driver_command({**request, "progress": progress, "hangup": True})
        options: dict[str, Any] = {"in_stream": OpenUntilStop()}
        if progress:
            options["watchers"] = [ProgressWatcher(on_start, on_progress)]
        walking = Host(_RunWith(host.ctx, options), host.sudo, host.privileged)
        if STOP.requested:
            raise interrupted(name)
        try:
            with interruptible(), STOP.walking(host.ctx):
                code, out, err = walking.run(command, what="the repair walk", timeout=timeout)
        except KeyboardInterrupt:  # asked twice: we stop waiting (the target's walk ends on its own)
            raise interrupted(name) from None
        except OpsError:
            if STOP.requested:  # the connection was cut after the grace period
                raise interrupted(name) from None
            raise
        if STOP.requested:
            raise interrupted(name)
        answer = parse_answer(out)
        if answer is not None:
            return answer
        if code == PYTHON_MISSING:
            raise missing_python(name)
        if code == NO_STATUS:
            raise OpsError(f"the connection to {name} was lost during the repair walk (the walk there ends "
                           "with it; the entries it reached are repaired)",
                           "check the connection, then run the repair again to finish", exit_code=1)
        tail = [line for line in err.strip().splitlines() if line.strip()]
        raise OpsError(f"the repair walk failed on {name} (exit {code})"
                       + (f": {tail[-1].strip()[:300]}" if tail else ""),
                       "check python3 on the target (3.7 or later), then rerun")

    return run


# --- stopping a repair ----------------------------------------------------------------------------------

class Stop:
    """This process's request to stop its repairs: which signal asked (0: none), and the connections of
    the remote walks waiting for their target right now. A walk stops when its stdin ends; one whose
    target has not answered :data:`GRACE` seconds later has its connection closed (a half-dead ssh
    ProxyCommand, a frozen link): the target's driver sees its stdin end with it."""

    def __init__(self) -> None:
        self.signum = 0
        self._walks: list[Any] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    @property
    def requested(self) -> bool:
        """True once a stop was asked."""
        return self.signum != 0

    def ask(self, signum: int) -> bool:
        """Ask every repair to stop; True when remote walks are in flight (they will stop and raise)."""
        with self._lock:
            self.signum = self.signum or signum
            if self._walks and self._timer is None:
                self._timer = threading.Timer(GRACE, self._cut)
                self._timer.daemon = True
                self._timer.start()
            return bool(self._walks)

    def clear(self) -> None:
        """Forget an earlier stop (a new command begins)."""
        with self._lock:
            self.signum = 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _cut(self) -> None:
        with self._lock:
            walks = list(self._walks)
        for ctx in walks:
            with contextlib.suppress(Exception):
                ctx.close()

    @contextlib.contextmanager
    def walking(self, ctx: Any) -> Iterator[None]:
        """Registers a remote walk in flight on ``ctx`` (its Context: closed if it does not stop)."""
        with self._lock:
            self._walks.append(ctx)
        try:
            yield
        finally:
            with self._lock:
                self._walks.remove(ctx)


STOP = Stop()


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) while no remote walk is in flight: unwinds like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupted(name: str, signum: int = 0) -> OpsError:
    """The one line for a repair stopped by Ctrl-C or SIGTERM: exit 130 (128 + SIGINT) or 143 (SIGTERM)."""
    signum = signum or STOP.signum or signal.SIGINT
    return OpsError(f"the repair was interrupted on {name} (the walk there stops with it; the entries it "
                    "reached are repaired, the others may still show 65534)",
                    "run the same repair again to finish it", exit_code=128 + signum)


_depth = 0


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While a repair runs (main thread only; elsewhere nothing changes): SIGINT and SIGTERM ask
    :data:`STOP`. With a remote walk in flight the signal only asks (each walk ends its target's side,
    then raises :func:`interrupted`); otherwise, or when asked a second time, it raises
    :class:`Interrupted` at once, as Ctrl-C does (an in-process walk unwinds and ends its workers).
    The outermost use forgets an earlier stop."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        again = STOP.requested
        if STOP.ask(signum) and not again:
            return
        raise Interrupted(signum)

    if _depth == 0:
        STOP.clear()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for sig, old in previous.items():
            signal.signal(sig, old)


class OpenUntilStop:
    """The walk's ``in_stream``: nothing to read (Invoke polls it) until a stop is asked, then end of
    file, and Invoke closes the command's stdin (on a ``fabric.Connection``, the channel's write side)."""

    def read(self, size: int = -1) -> str | None:
        """None (nothing yet) while no stop is asked; '' (end of file) after."""
        return "" if STOP.requested else None


class ProgressWatcher(StreamWatcher):
    """Reads the walk's progress lines (:data:`onhost.PROGRESS`) from the output seen so far and calls
    ``on_start`` once per volume and ``on_progress`` with the latest count. Invoke hands a watcher each
    stream whole as it grows; only stdout carries these lines."""

    def __init__(self, on_start: Callable[[str], None] | None, on_progress: Callable[[int], None] | None) -> None:
        super().__init__()
        self.on_start = on_start
        self.on_progress = on_progress
        self.started: list[str] = []
        self.count = -1

    def submit(self, stream: str) -> list[str]:
        """Note the complete progress lines of ``stream``; never answers anything."""
        lines = stream[:stream.rfind("\n") + 1].splitlines()
        for name in [line[len(onhost.PROGRESS) + 6:] for line in lines if line.startswith(onhost.PROGRESS + "start ")]:
            if name not in self.started:
                self.started.append(name)
                self.count = -1
                if self.on_start is not None:
                    self.on_start(name)
        counts = [line for line in lines if line.startswith(onhost.PROGRESS + "entries ")]
        if counts:
            count = int(counts[-1].rsplit(" ", 1)[1])
            if count != self.count and self.on_progress is not None:
                self.on_progress(count)
            self.count = count
        return []


class _RunWith:
    """A Context whose ``run`` passes ``options`` over the caller's (everything else goes to the wrapped
    Context)."""

    def __init__(self, ctx: Any, options: dict[str, Any]) -> None:
        self.ctx = ctx
        self.options = options

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ctx, name)

    def run(self, command: str, **kwargs: Any) -> Any:
        """The wrapped Context's ``run`` with the options."""
        return self.ctx.run(command, **{**kwargs, **self.options})
