"""The engine host's side of a repair: check who and where we are, open every planned volume safely,
walk it, and answer with plain data (JSON-ready).

This module and ``walk`` use the standard library only, so the same code runs in the toolkit's own
process for the local host and, shipped as source, under the ``python3`` of a remote engine host (a
Linux or WSL2 host over SSH, the Lima VM of a Mac). There it is the ``__main__`` of a short bootstrap
(:mod:`ops.repair.remote`): the request comes as base64 JSON in ``argv[1]``, the answer is one line on
stdout, after :data:`MARK`.

Request: ``{"protocol": 1, "data_root": str, "apply": bool, "strict": bool, "workers": int | null,
"budget": {"max_damaged", "max_entries", "seconds"} | null, "examples": int,
"volumes": [{"name", "uid", "gid"}], "hangup": bool}``. With ``hangup`` the driver ends its walk when
its caller goes away (:func:`end_on_hangup`) and exits with :data:`INTERRUPTED`, answering nothing.

Answer: ``{"protocol": 1, "workers": int, "error": {"kind", "message", "hint"}}`` when nothing could
be done (not root, no data root, with ``strict`` a volume path that is a symlink: nothing changed), else
``{"protocol": 1, "workers": int, "volumes": [{"name", "stats": {...}} | {"name", "refused": str,
"kind": str} | {"name", "error": str}]}``, in the order of the request.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import re
import signal
import stat
import sys
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

if __package__:
    from ops.repair import walk
else:  # pragma: no cover - run on a target by the bootstrap, which loaded walk.py as "walk"
    walk = sys.modules["walk"]

PROTOCOL = 1
#: The driver's exit status when its walk was ended by its caller going away (128 + SIGINT, as a shell
#: reports a command ended by Ctrl-C).
INTERRUPTED = 130
#: ``prctl`` option: the signal a process gets when the thread that forked it ends.
PR_SET_PDEATHSIG = 1
#: Printed before the one-line JSON answer on stdout (anything else on stdout is ignored).
MARK = "@@CAI-REPAIR "
#: With ``"progress": true`` in the request: ``PROGRESS start <volume>`` and ``PROGRESS entries <n>``
#: lines on stdout while the walk runs.
PROGRESS = "@@CAI-PROGRESS "
VOLUME_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# refusal kinds (stable strings of the answer)
NOT_FOUND = "not-found"
UNSAFE = "unsafe"
MOUNTED = "mounted"
DENIED = "denied"
NOT_ROOT = "not-root"
FAILED = "error"


class Refusal(Exception):
    """A condition that stops a volume, or the whole repair, before anything changes."""

    def __init__(self, kind: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.hint = hint

    def as_dict(self) -> dict[str, str]:
        """The answer's form."""
        return {"kind": self.kind, "message": self.message, "hint": self.hint}


def valid_volume_name(name: str) -> bool:
    """True when a volume name is safe to build a path from."""
    return bool(VOLUME_NAME_RE.match(name))


def default_workers() -> int:
    """Walker processes on this host: one per core this process may run on (at most 8); the walk
    shipped with this module sizes it."""
    return walk.default_workers()


# --- opening volumes without following links ------------------------------------------------------

def open_data_root(data_root: str) -> int:
    """Open ``<data_root>/volumes`` (the configured data root may itself be a link)."""
    try:
        root = os.open(data_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Refusal(NOT_FOUND, f"data root {data_root} does not exist",
                      "set cai.data_root to the engine's data root (docker info: Docker Root Dir)") from None
    except PermissionError:
        raise Refusal(DENIED, f"cannot read the data root {data_root}", "run as root (sudo)") from None
    try:
        return _open_step(root, "volumes", data_root)
    finally:
        os.close(root)


def open_volume(volumes_fd: int, data_root: str, name: str) -> int:
    """Open a volume's ``_data`` without following any link below ``<data_root>/volumes``.

    Refuses (:class:`Refusal`) a symlink or non-directory on the way (``unsafe``), and a ``_data`` that
    is a mount point, its mount ID differing from the volume directory's (``mounted``): the local
    driver mounts something there only for a volume with options, which are refused earlier.
    """
    if not valid_volume_name(name):
        raise Refusal(UNSAFE, f"volume name {name!r} is not a plain name", "nothing was changed")
    vpath = os.path.join(data_root, "volumes", name)
    vdir = _open_step(volumes_fd, name, os.path.join(data_root, "volumes"))
    try:
        data = _open_step(vdir, "_data", vpath)
        try:
            mounted = walk.mount_id(data) != walk.mount_id(vdir)
        except OSError as exc:
            os.close(data)
            raise Refusal(FAILED, f"cannot read the mount ID of {vpath}/_data ({exc.strerror})",
                          "is /proc mounted? repair needs /proc/self/fdinfo") from None
        if mounted:
            os.close(data)
            raise Refusal(
                MOUNTED,
                f"{vpath}/_data is a mount point (another filesystem or a bind mount), not the volume's "
                "own directory",
                "its files may not be the volume's: inspect the mount (findmnt) and repair it by hand",
            )
        return data
    finally:
        os.close(vdir)


def _open_step(parent: int, name: str, parent_path: str) -> int:
    path = os.path.join(parent_path, name)
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            except OSError:
                what = "not a directory"
            raise Refusal(UNSAFE, f"{path} is {what}",
                          "refusing to repair this volume; nothing was changed") from None
        if exc.errno == errno.ENOENT:
            raise Refusal(NOT_FOUND, f"{path} does not exist", "check cai.data_root") from None
        if exc.errno == errno.EACCES:
            raise Refusal(DENIED, f"cannot open {path}", "run as root (sudo)") from None
        raise Refusal(FAILED, f"cannot open {path} ({exc.strerror})") from None


def preflight(data_root: str, names: list[str], strict: bool) -> tuple[dict[str, int], dict[str, Refusal]]:
    """Open every named volume root before anything changes: (open fds, refused volumes).

    A mount point is refused for its volume only. With ``strict`` any other refusal (a symlink, not a
    directory) is raised at once with every fd closed: nothing changes anywhere. Without it (detection)
    every refusal stays with its volume.
    """
    fds: dict[str, int] = {}
    refused: dict[str, Refusal] = {}
    if not names:
        return fds, refused
    volumes_fd = open_data_root(data_root)
    try:
        for name in names:
            try:
                fds[name] = open_volume(volumes_fd, data_root, name)
            except Refusal as exc:
                if strict and exc.kind != MOUNTED:
                    raise
                refused[name] = exc
    except BaseException:
        _close(fds)
        raise
    finally:
        os.close(volumes_fd)
    return fds, refused


def _close(fds: dict[str, int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


# --- one request --------------------------------------------------------------------------------------

def execute(request: dict[str, Any], on_start: Callable[[str], None] | None = None,
            on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run one repair (or detection) request on this host; the answer (see the module docstring)."""
    apply = bool(request.get("apply"))
    data_root = str(request["data_root"])
    jobs = list(request.get("volumes") or [])
    budget = dict(request.get("budget") or {})
    workers = int(request.get("workers") or default_workers())
    answer: dict[str, Any] = {"protocol": PROTOCOL, "workers": workers}
    try:
        if apply and os.geteuid() != 0:
            raise Refusal(NOT_ROOT, "repair changes file owners and needs root", "run it with sudo")
        if not os.path.isdir(data_root):
            raise Refusal(NOT_FOUND, f"data root {data_root} does not exist",
                          "set cai.data_root (INVOKE_CAI_DATA_ROOT) to the engine's data root")
        fds, refused = preflight(data_root, [str(j["name"]) for j in jobs], bool(request.get("strict", True)))
    except Refusal as exc:
        answer["error"] = exc.as_dict()
        return answer
    volumes: list[dict[str, Any]] = []
    try:
        for job in jobs:
            name = str(job["name"])
            if name in refused:
                volumes.append({"name": name, "refused": refused[name].message, "kind": refused[name].kind})
                continue
            if on_start is not None:
                on_start(name)
            opts = walk.WalkOptions(uid=int(job["uid"]), gid=int(job["gid"]), apply=apply, workers=workers,
                                    examples=int(request.get("examples", 5)), **budget)
            try:
                stats = walk.walk(fds[name], opts, on_progress)
                volumes.append({"name": name, "stats": stats_to_dict(stats)})
            except OSError as exc:
                volumes.append({"name": name, "error": f"walk failed: {exc.strerror or exc}"})
            finally:
                with contextlib.suppress(OSError):
                    os.close(fds.pop(name))
    finally:
        _close(fds)
    answer["volumes"] = volumes
    return answer


def stats_to_dict(stats: Any) -> dict[str, Any]:
    """A ``WalkStats`` as plain data (paths of examples as base64: names are bytes)."""
    return {
        "scanned": stats.scanned, "damaged": stats.damaged, "repaired": stats.repaired,
        "skipped": dict(stats.skipped), "errors": list(stats.errors),
        "examples": [{"path": base64.b64encode(e.path).decode("ascii"), "kind": e.kind, "uid": e.uid,
                      "gid": e.gid} for e in stats.examples],
        "truncated": stats.truncated, "seconds": stats.seconds, "workers": stats.workers,
    }


def stats_from_dict(data: dict[str, Any]) -> Any:
    """Pure: the ``WalkStats`` of :func:`stats_to_dict`'s form."""
    return walk.WalkStats(
        scanned=int(data["scanned"]), damaged=int(data["damaged"]), repaired=int(data["repaired"]),
        skipped=Counter({str(k): int(v) for k, v in dict(data.get("skipped") or {}).items()}),
        errors=[str(e) for e in data.get("errors") or []],
        examples=[walk.Example(base64.b64decode(e["path"]), str(e["kind"]), int(e["uid"]), int(e["gid"]))
                  for e in data.get("examples") or []],
        truncated=bool(data.get("truncated")), seconds=float(data.get("seconds") or 0.0),
        workers=int(data.get("workers") or 1),
    )


def encode_request(request: dict[str, Any]) -> str:
    """The request as the one argument the script takes."""
    return base64.b64encode(json.dumps(request).encode("utf-8")).decode("ascii")


def main(argv: list[str]) -> int:
    """Script entry point on a target: decode the request, execute it, print the answer after MARK."""
    request = json.loads(base64.b64decode(argv[0]).decode("utf-8"))
    if request.get("hangup"):
        end_on_hangup()
    try:
        if int(request.get("protocol", 0)) != PROTOCOL:
            answer: dict[str, Any] = {"protocol": PROTOCOL, "error": {
                "kind": FAILED, "message": f"repair protocol {request.get('protocol')} is not {PROTOCOL}",
                "hint": "use the same toolkit version on both sides"}}
        elif request.get("progress"):
            answer = execute(request, lambda name: _tell("start", name), lambda n: _tell("entries", str(n)))
        else:
            answer = execute(request)
        sys.stdout.write(MARK + json.dumps(answer) + "\n")
        sys.stdout.flush()
    except (KeyboardInterrupt, BrokenPipeError):
        # the caller went away (or asked us to stop): the walk has ended (its workers too), every owner
        # change it made is whole; nobody is left to read an answer
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write("repair walk interrupted: its caller went away\n")
            sys.stderr.flush()
        return INTERRUPTED
    return 0


def end_on_hangup() -> None:
    """Make this process's walk end when its caller goes away.

    Without a terminal, sshd sends nothing when the connection drops, and Fabric cannot signal a
    command: what reaches the command is end-of-file on its stdin (the channel), which the caller keeps
    open while it waits. A thread reads stdin; at end-of-file it sends SIGHUP to the main thread. SIGHUP,
    SIGTERM and SIGINT (``sudo`` relays them) raise KeyboardInterrupt there: the walk unwinds, and with
    several workers it ends them (SIGTERM) and waits for them. Every owner change is one system call, so
    an entry is either changed or not. A forked worker gets SIGTERM's default action back and a parent-death
    signal, so it cannot outlive the driver even when the driver is killed outright.
    """
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    driver = os.getpid()
    os.register_at_fork(after_in_child=lambda: _worker_signals(driver))
    main_thread = threading.get_ident()  # called from main(), in the main thread

    def watch() -> None:
        while True:
            try:
                if not os.read(0, 4096):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        signal.pthread_kill(main_thread, signal.SIGHUP)

    threading.Thread(target=watch, name="hangup", daemon=True).start()


def _worker_signals(driver: int) -> None:
    """In a forked walk worker: SIGTERM and SIGHUP end it at once, and so does its driver's death."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != driver:  # the driver ended before the death signal was armed
        os._exit(INTERRUPTED)


def _tell(kind: str, value: str) -> None:
    sys.stdout.write(f"{PROGRESS}{kind} {value}\n")
    sys.stdout.flush()
