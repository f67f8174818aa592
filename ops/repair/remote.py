"""Running the engine host's side of a repair (:mod:`ops.repair.onhost`) on a remote target.

The walk is standard library only, so it runs under the target's own ``python3``: the source of
``ops/repair/walk.py`` and ``ops/repair/onhost.py`` (read from this installation, compressed) and the
request travel in ONE command over the target's Context (a ``fabric.Connection``), as root (``sudo -n``
when the login user is not root, as ``inv update`` does). The answer comes back as one JSON line on
stdout. Nothing is copied to the target's disk and nothing is left there.
"""

from __future__ import annotations

import base64
import json
import shlex
import zlib
from collections.abc import Callable
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
    callbacks, the walk's progress lines call them as the output arrives."""

    def run(request: dict[str, Any], on_start: Callable[[str], None] | None = None,
            on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        command = driver_command({**request, "progress": on_start is not None or on_progress is not None})
        watched = host
        if on_start is not None or on_progress is not None:
            watched = Host(_Watching(host.ctx, ProgressWatcher(on_start, on_progress)), host.sudo, host.privileged)
        code, out, err = watched.run(command, what="the repair walk", timeout=timeout)
        answer = parse_answer(out)
        if answer is not None:
            return answer
        if code == PYTHON_MISSING:
            raise missing_python(name)
        tail = [line for line in err.strip().splitlines() if line.strip()]
        raise OpsError(f"the repair walk failed on {name} (exit {code})"
                       + (f": {tail[-1].strip()[:300]}" if tail else ""),
                       "check python3 on the target (3.7 or later), then rerun")

    return run


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


class _Watching:
    """A Context whose ``run`` also passes a watcher (everything else goes to the wrapped Context)."""

    def __init__(self, ctx: Any, watcher: StreamWatcher) -> None:
        self.ctx = ctx
        self.watcher = watcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ctx, name)

    def run(self, command: str, **kwargs: Any) -> Any:
        """The wrapped Context's ``run`` with the watcher."""
        return self.ctx.run(command, watchers=[self.watcher], **kwargs)
