"""The ownership walk: directory file descriptors all the way down, never following a link.

Safety rules (see docs/repair.md):

- every directory is opened relative to its parent's fd with ``O_NOFOLLOW | O_DIRECTORY``, then
  ``fstat``-ed and compared (dev, ino) with what the parent's listing showed; a mismatch means it was
  swapped during the walk and the subtree is skipped;
- every other entry is re-checked with ``fstatat`` right before ``fchownat(AT_SYMLINK_NOFOLLOW)``
  relative to the parent fd: a name swapped in between can only name another entry of the same
  directory, never anything outside it, and a symlink's own owner is what changes (lchown semantics);
- ``st_dev`` must equal the volume root's: mount points of other filesystems are skipped;
- only owner parts equal to 65534 change (uid 65534 -> uid, gid 65534 -> gid, each independently):
  root-owned and otherwise-owned entries are never touched;
- a file with several hard links is changed once (by inode);
- names are handled as the bytes the kernel returns (decoded losslessly with ``surrogateescape``);
- the walk is iterative: depth is limited by neither Python's recursion limit nor the fd limit
  (beyond a window, ancestor fds are closed and reopened through ``..`` with an identity check).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

NOBODY = 65534
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Open directory fds kept per worker stack before ancestors are closed (reopened via ``..``).
FD_WINDOW = 64

# skip reasons (stable strings, shown in summaries)
SKIP_OTHER_FS = "other filesystem (mount point)"
SKIP_CHANGED = "changed during the walk"
SKIP_VANISHED = "vanished during the walk"
SKIP_HARDLINK = "hard link already repaired"
SKIP_NO_LONGER = "no longer damaged"
SKIP_ERROR = "error"


def is_damaged(st: os.stat_result) -> bool:
    """Damage: the owner or the group is 65534 (nobody / nogroup)."""
    return st.st_uid == NOBODY or st.st_gid == NOBODY


def new_owner(st_uid: int, st_gid: int, uid: int, gid: int) -> tuple[int, int]:
    """The (uid, gid) arguments of the chown: only 65534 parts change, -1 leaves a part alone."""
    return (uid if st_uid == NOBODY else -1, gid if st_gid == NOBODY else -1)


def show_path(rel: bytes) -> str:
    """A printable form of a relative path of any bytes (newlines and invalid UTF-8 escaped)."""
    text = rel.decode("utf-8", "backslashreplace") if rel else "."
    return "".join(
        c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text
    )


@dataclass
class Example:
    """One damaged entry, for dry-run listings."""

    path: bytes
    kind: str
    uid: int
    gid: int


@dataclass
class WalkStats:
    """What a walk saw and did in one volume."""

    scanned: int = 0
    damaged: int = 0
    repaired: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    truncated: bool = False
    seconds: float = 0.0

    def merge(self, other: WalkStats, max_examples: int) -> None:
        """Add another (thread-local) tally into this one."""
        self.scanned += other.scanned
        self.damaged += other.damaged
        self.repaired += other.repaired
        self.skipped.update(other.skipped)
        self.errors.extend(other.errors[: max(0, 20 - len(self.errors))])
        room = max(0, max_examples - len(self.examples))
        self.examples.extend(other.examples[:room])


@dataclass(frozen=True)
class WalkOptions:
    """How to walk: target ids, apply or only count, parallelism and a detection budget."""

    uid: int = 1000
    gid: int = 1000
    apply: bool = False
    workers: int = 4
    max_damaged: int | None = None
    max_entries: int | None = None
    seconds: float | None = None
    examples: int = 5


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "file"
    return "special"


@dataclass
class _Frame:
    fd: int | None
    rel: bytes
    ident: tuple[int, int]
    subdirs: list[tuple[str, os.stat_result]]
    pos: int = 0


class Walker:
    """One walk of one volume root (an open directory fd), shared by its worker threads."""

    def __init__(self, opts: WalkOptions, on_progress: Callable[[int], None] | None = None) -> None:
        self.opts = opts
        self.on_progress = on_progress
        self.stats = WalkStats()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._queued = 0
        self._seen_links: set[tuple[int, int]] = set()
        self._stop = threading.Event()
        self._scanned_total = 0
        self._damaged_total = 0
        self._deadline: float | None = None
        self._dev = -1
        self._pool: ThreadPoolExecutor | None = None

    # --- entry point --------------------------------------------------------------------------
    def run(self, root_fd: int) -> WalkStats:
        """Walk the tree under ``root_fd`` (not closed here); return the merged tally."""
        started = time.monotonic()
        if self.opts.seconds is not None:
            self._deadline = started + self.opts.seconds
        root_st = os.fstat(root_fd)
        if not stat.S_ISDIR(root_st.st_mode):
            raise NotADirectoryError("volume root is not a directory")
        self._dev = root_st.st_dev
        local = WalkStats(scanned=1)
        self._count(1, 0)
        if is_damaged(root_st):
            self._fix_dir_fd(root_fd, root_st, b"", local)
        with self._lock:
            self.stats.merge(local, self.opts.examples)
        first = os.dup(root_fd)
        workers = max(1, self.opts.workers)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cai-repair") as pool:
            self._pool = pool
            self._submit(first, b"", (root_st.st_dev, root_st.st_ino))
            while True:
                with self._idle:
                    if not self._active:
                        break
                    self._idle.wait(0.1)
                if self.on_progress is not None:
                    self.on_progress(self._scanned_total)
        self._pool = None
        self.stats.truncated = self._stop.is_set()
        self.stats.seconds = time.monotonic() - started
        if self.on_progress is not None:
            self.on_progress(self._scanned_total)
        return self.stats

    # --- scheduling ---------------------------------------------------------------------------
    def _submit(self, fd: int, rel: bytes, ident: tuple[int, int]) -> None:
        assert self._pool is not None
        with self._lock:
            self._active += 1
            self._queued += 1
        self._pool.submit(self._task, fd, rel, ident)

    def _want_handoff(self) -> bool:
        return self._queued < self.opts.workers and self.opts.workers > 1

    def _task(self, fd: int, rel: bytes, ident: tuple[int, int]) -> None:
        with self._lock:
            self._queued -= 1
        local = WalkStats()
        try:
            self._subtree(fd, rel, ident, local)
        except Exception as exc:  # never lose the accounting of a worker
            local.errors.append(f"{show_path(rel)}: {exc}")
            local.skipped[SKIP_ERROR] += 1
        finally:
            with self._idle:
                self.stats.merge(local, self.opts.examples)
                self._active -= 1
                self._idle.notify_all()

    def _count(self, scanned: int, damaged: int) -> None:
        with self._lock:
            self._scanned_total += scanned
            self._damaged_total += damaged
            o = self.opts
            if (
                (o.max_entries is not None and self._scanned_total >= o.max_entries)
                or (o.max_damaged is not None and self._damaged_total >= o.max_damaged)
                or (self._deadline is not None and time.monotonic() >= self._deadline)
            ):
                self._stop.set()

    # --- the depth-first walk of one subtree ----------------------------------------------------
    def _subtree(self, fd: int, rel: bytes, ident: tuple[int, int], local: WalkStats) -> None:
        stack: list[_Frame] = []
        try:
            if self._stop.is_set():
                return
            stack.append(_Frame(fd, rel, ident, self._scan(fd, rel, local)))
            fd = -1  # owned by the stack now
            while stack:
                if self._stop.is_set():
                    return
                top = stack[-1]
                if top.pos >= len(top.subdirs):
                    self._pop(stack, local)
                    continue
                name, st = top.subdirs[top.pos]
                top.pos += 1
                assert top.fd is not None
                child_rel = _join(top.rel, name)
                child = self._open_dir(top.fd, name, st, child_rel, local)
                if child is None:
                    continue
                child_ident = (st.st_dev, st.st_ino)
                if self._want_handoff():
                    self._submit(child, child_rel, child_ident)
                    continue
                try:
                    subdirs = self._scan(child, child_rel, local)
                except BaseException:
                    os.close(child)
                    raise
                stack.append(_Frame(child, child_rel, child_ident, subdirs))
                if len(stack) > FD_WINDOW:
                    old = stack[-FD_WINDOW - 1]
                    if old.fd is not None:
                        os.close(old.fd)
                        old.fd = None
        finally:
            if fd >= 0:
                os.close(fd)
            for frame in stack:
                if frame.fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(frame.fd)

    def _pop(self, stack: list[_Frame], local: WalkStats) -> None:
        done = stack.pop()
        assert done.fd is not None
        try:
            if stack and stack[-1].fd is None:
                parent = stack[-1]
                try:
                    pfd = os.open("..", DIR_FLAGS, dir_fd=done.fd)
                except OSError:
                    pfd = -1
                if pfd >= 0:
                    pst = os.fstat(pfd)
                    if (pst.st_dev, pst.st_ino) == parent.ident:
                        parent.fd = pfd
                        return
                    os.close(pfd)
                # the ancestor moved while we were below it: give up on what is left above
                local.skipped[SKIP_CHANGED] += 1
                local.errors.append(f"{show_path(parent.rel)}: moved during the walk, rest skipped")
                for frame in stack:
                    if frame.fd is not None:
                        os.close(frame.fd)
                stack.clear()
        finally:
            os.close(done.fd)

    def _scan(self, fd: int, rel: bytes, local: WalkStats) -> list[tuple[str, os.stat_result]]:
        """List one directory: fix its damaged non-directories, return its subdirectories."""
        subdirs: list[tuple[str, os.stat_result]] = []
        scanned = 0
        dev = self._dev
        stop = self._stop.is_set
        fix = self._fix_entry
        per_damage = self.opts.max_damaged is not None
        o = self.opts
        batch = 64 if (o.max_entries is not None or o.seconds is not None) else 1024
        s_isdir = stat.S_ISDIR
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    if stop():
                        break
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        local.skipped[SKIP_VANISHED] += 1
                        continue
                    scanned += 1
                    if st.st_dev != dev:
                        local.skipped[SKIP_OTHER_FS] += 1
                    elif s_isdir(st.st_mode):
                        subdirs.append((entry.name, st))
                    elif st.st_uid == NOBODY or st.st_gid == NOBODY:
                        fix(fd, entry.name, st, rel, local)
                        if per_damage:
                            local.scanned += scanned
                            self._count(scanned, 1)
                            scanned = 0
                    if scanned >= batch:
                        local.scanned += scanned
                        self._count(scanned, 0)
                        scanned = 0
        finally:
            local.scanned += scanned
            self._count(scanned, 0)
        return subdirs

    # --- changing owners ------------------------------------------------------------------------
    def _note(self, local: WalkStats, rel: bytes, st: os.stat_result) -> None:
        local.damaged += 1
        if len(local.examples) < self.opts.examples:
            local.examples.append(Example(rel, _kind(st.st_mode), st.st_uid, st.st_gid))

    def _fix_entry(self, fd: int, name: str, st: os.stat_result, rel: bytes, local: WalkStats) -> None:
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            with self._lock:
                if key in self._seen_links:
                    local.skipped[SKIP_HARDLINK] += 1
                    return
                self._seen_links.add(key)
        local.damaged += 1
        if len(local.examples) < self.opts.examples:
            local.examples.append(Example(_join(rel, name), _kind(st.st_mode), st.st_uid, st.st_gid))
        if not self.opts.apply:
            local.repaired += 1
            return
        try:
            cur = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            local.skipped[SKIP_VANISHED] += 1
            return
        if (
            cur.st_ino != st.st_ino
            or cur.st_dev != st.st_dev
            or stat.S_IFMT(cur.st_mode) != stat.S_IFMT(st.st_mode)
        ):
            local.skipped[SKIP_CHANGED] += 1
            return
        uid = self.opts.uid if cur.st_uid == NOBODY else -1
        gid = self.opts.gid if cur.st_gid == NOBODY else -1
        if uid == -1 and gid == -1:
            local.skipped[SKIP_NO_LONGER] += 1
            return
        try:
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            local.skipped[SKIP_VANISHED] += 1
            return
        except OSError as exc:
            local.skipped[SKIP_ERROR] += 1
            local.errors.append(f"{show_path(_join(rel, name))}: {exc.strerror}")
            return
        local.repaired += 1

    def _open_dir(
        self, parent: int, name: str, st: os.stat_result, rel: bytes, local: WalkStats
    ) -> int | None:
        """Open a subdirectory safely; fix its own owner through the fd. None when skipped."""
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                local.skipped[SKIP_CHANGED] += 1
            elif exc.errno == errno.ENOENT:
                local.skipped[SKIP_VANISHED] += 1
            else:
                local.skipped[SKIP_ERROR] += 1
                local.errors.append(f"{show_path(rel)}: {exc.strerror}")
            return None
        try:
            cur = os.fstat(fd)
            if (cur.st_dev, cur.st_ino) != (st.st_dev, st.st_ino) or cur.st_dev != self._dev:
                local.skipped[SKIP_CHANGED] += 1
                os.close(fd)
                return None
            if is_damaged(cur):
                self._count(0, 1)
                self._fix_dir_fd(fd, cur, rel, local)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _fix_dir_fd(self, fd: int, st: os.stat_result, rel: bytes, local: WalkStats) -> None:
        self._note(local, rel, st)
        if not self.opts.apply:
            local.repaired += 1
            return
        uid, gid = new_owner(st.st_uid, st.st_gid, self.opts.uid, self.opts.gid)
        try:
            os.fchown(fd, uid, gid)
        except OSError as exc:
            local.skipped[SKIP_ERROR] += 1
            local.errors.append(f"{show_path(rel)}: {exc.strerror}")
            return
        local.repaired += 1


def _join(rel: bytes, name: str) -> bytes:
    raw = os.fsencode(name)
    return rel + b"/" + raw if rel else raw


def walk(root_fd: int, opts: WalkOptions, on_progress: Callable[[int], None] | None = None) -> WalkStats:
    """Walk (and with ``opts.apply`` repair) the tree under an open directory fd."""
    return Walker(opts, on_progress).run(root_fd)
