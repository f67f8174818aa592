"""The ownership walk: directory file descriptors all the way down, never following a link, never
leaving the volume's mount, changing only the inode that was checked.

Safety rules (see docs/repair.md):

- every directory is opened relative to its parent's fd with ``O_NOFOLLOW | O_DIRECTORY``; before
  anything below it is looked at, its mount ID (``mnt_id`` of ``/proc/self/fdinfo/<fd>``) must be the
  volume root's (a mount point, even a bind mount of the same filesystem, is never entered) and its
  inode the one the parent's listing showed (a mismatch means it was swapped: skipped);
- a damaged entry other than a directory is opened with ``O_PATH | O_NOFOLLOW`` (a symlink opens as
  itself), ``fstat``-ed through that fd (same device, inode and type as the listing, still damaged),
  and its owner changed through that same fd (``fchownat(fd, "", AT_EMPTY_PATH |
  AT_SYMLINK_NOFOLLOW)``): a name swapped after the check cannot redirect the change; a directory's
  owner changes through its own fd (``fchown``);
- an entry whose listing inode differs from what its name resolves to has something mounted on it:
  its mount ID is checked the same way before it is touched;
- only owner parts equal to 65534 change (uid 65534 -> uid, gid 65534 -> gid, each independently):
  root-owned and otherwise-owned entries are never touched;
- a file with several hard links is changed once (by inode, across worker processes too);
- an error on one entry (``EACCES``, ``EIO``, ``ESTALE``...) is reported with that entry's path and the
  walk goes on;
- memory is linear in depth and small: a frame keeps a directory's name, inode and its pending
  subdirectory names; paths are only joined to report one;
- the walk is iterative: depth is limited by neither Python's recursion limit nor the fd limit
  (beyond a window, ancestor fds are closed and reopened through ``..`` with an identity check);
- with several workers (``default_workers()``: one per core) the tree is split into units: this
  process opens and checks the top directories (looking at nothing but their subdirectories), then
  forks worker processes that inherit those fds and take units as they finish: whole subtrees, and
  the files of the opened directories (a directory with many files is shared, ``SHARE_FILES`` or more
  per unit, by name hash, the same in every forked worker), under the same rules, sending back one small summary
  each.

Python's ``os`` module has no way to pass ``AT_EMPTY_PATH`` (``os.chown("", dir_fd=fd)`` gives ENOENT
and ``os.fchown`` on an ``O_PATH`` fd gives EBADF), so the owner change of a non-directory calls the C
library's ``fchownat`` through ``ctypes``; entry fds are closed together with the C library's
``close_range`` the same way (``os.closerange`` may close them one by one). These two are the only
hand-written system call bindings here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import selectors
import signal
import stat
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

NOBODY = 65534
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Opens an entry itself (a symlink as the link), without reading or following it.
ENTRY_FLAGS = getattr(os, "O_PATH", 0) | os.O_NOFOLLOW | os.O_CLOEXEC
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
#: Open directory fds kept per walk stack before ancestors are closed (reopened via ``..``).
FD_WINDOW = 64
#: Messages kept per walk (the counts stay exact).
MAX_MESSAGES = 100
#: Entries between progress reports.
PROGRESS_EVERY = 8192
#: Subtrees wanted per worker before forking (more gives better balance), and the most directories
#: this process opens to find them.
UNITS_PER_WORKER = 4
#: Files of one opened directory per file unit before they are shared among workers (by name hash).
SHARE_FILES = 4096
MAX_SPLIT_DIRS = 256
MAX_TASKS = 4096
#: Entry fds kept open before they are closed together.
CLOSE_BATCH = 64
_IFMT = 0o170000

# skip reasons (stable strings, shown in summaries)
SKIP_MOUNT = "mount point (not entered)"
SKIP_CHANGED = "changed during the walk"
SKIP_VANISHED = "vanished during the walk"
SKIP_HARDLINK = "hard link already repaired"
SKIP_NO_LONGER = "no longer damaged"
SKIP_ERROR = "error"
REPAIRED = "repaired"


def default_workers() -> int:
    """Walker processes for a whole walk: one per core this process may run on (its CPU affinity,
    which a container's or a cgroup's cpuset narrows), at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


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


def parse_mnt_id(fdinfo: bytes) -> int:
    """Pure parser: the ``mnt_id:`` of a ``/proc/<pid>/fdinfo/<fd>`` text."""
    for line in fdinfo.splitlines():
        if line.startswith(b"mnt_id:"):
            return int(line[7:])
    raise OSError(errno.ENOTSUP, "no mnt_id in /proc/self/fdinfo (Linux 3.15 or later is needed)")


def mount_id(fd: int) -> int:
    """The mount ID of an open fd: the ``mnt_id:`` line of ``/proc/self/fdinfo/<fd>`` (Linux >= 3.15).

    Exact where ``st_dev`` is not: a bind mount of the same filesystem has the same device but its own
    mount ID.
    """
    info = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(info, 4096)
    finally:
        os.close(info)
    return parse_mnt_id(data)


_libc_handle: Any = None


def _libc() -> Any:
    """The C library, loaded once (``use_errno``: a failed call's errno is read with ``_last_error``)."""
    global _libc_handle
    if _libc_handle is None:
        import ctypes

        _libc_handle = ctypes.CDLL(None, use_errno=True)
    return _libc_handle


def _libc_fchownat() -> Any:
    """The C library's ``fchownat`` (arguments: int fd, bytes path, int uid, int gid, int flags)."""
    return _libc().fchownat


def _c_id(value: int) -> int:
    """An id as the C int the untyped call passes (uid_t bits; -1 leaves a part alone)."""
    return value - (1 << 32) if value >= 1 << 31 else value


def _last_error() -> OSError:
    import ctypes

    code = ctypes.get_errno()
    return OSError(code, os.strerror(code))


def chown_fd(fd: int, uid: int, gid: int) -> None:
    """Change the owner of exactly the inode behind ``fd`` (an ``O_PATH`` fd works; a symlink's fd
    changes the link's own owner): ``fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)``.
    -1 leaves a part alone."""
    if _libc_fchownat()(fd, b"", _c_id(uid), _c_id(gid), AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW):
        raise _last_error()


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
    #: "path: reason" of the first MAX_MESSAGES errors; ``skipped[SKIP_ERROR]`` is the exact count.
    errors: list[str] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    truncated: bool = False
    seconds: float = 0.0
    workers: int = 1

    @property
    def complete(self) -> bool:
        """True when no damage can be left behind: no entry failed, none changed during the walk."""
        return not self.skipped[SKIP_ERROR] and not self.skipped[SKIP_CHANGED]


@dataclass(frozen=True)
class WalkOptions:
    """How to walk: target ids, apply or only count, worker processes and a detection budget."""

    uid: int = 1000
    gid: int = 1000
    apply: bool = False
    workers: int = 1
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


class _Frame:
    """One directory on the walk stack: its fd (None when closed beyond the window), its name and
    inode, and the subdirectories still to walk (name, inode from the listing)."""

    __slots__ = ("fd", "name", "ino", "pending")

    def __init__(self, fd: int, name: str, ino: int) -> None:
        self.fd: int | None = fd
        self.name = name
        self.ino = ino
        self.pending: list[tuple[str, int]] = []


class _Unit(NamedTuple):
    """A share of the walk handed to a worker. A subtree (``part`` -1): the directory ``name``
    (listed with inode ``ino``) under the open, checked directory ``parent`` whose path is ``base``.
    Files (``part`` >= 0): the non-directories of the open, checked directory ``parent`` itself
    (named ``name`` under ``base``) whose name hashes to ``part`` of ``parts`` (a large directory is
    shared by several workers; its subdirectories are units of their own)."""

    parent: int
    name: str
    ino: int
    base: tuple[str, ...]
    part: int = -1
    parts: int = 1


class _Walk:
    """One process's share of a walk: the directories it enters, the damaged entries it changes."""

    def __init__(self, opts: WalkOptions, dev: int, mnt: int, deadline: float | None = None,
                 on_progress: Callable[[int], None] | None = None) -> None:
        self.opts = opts
        self.dev = dev
        self.mnt = mnt
        self.uid = opts.uid
        self.gid = opts.gid
        self.apply = opts.apply
        self.deadline = deadline
        self.limited = (opts.max_damaged is not None or opts.max_entries is not None
                        or deadline is not None)
        self.on_progress = on_progress
        self.next_progress = PROGRESS_EVERY
        self.stats = WalkStats()
        #: multi-link inodes counted here -> what happened to them (merged across workers)
        self.links: dict[tuple[int, int], str] = {}
        self.stop = False
        self.base: tuple[str, ...] = ()
        self.stack: list[_Frame] = []

    # --- reporting ----------------------------------------------------------------------------------
    def path(self, name: str | None = None) -> bytes:
        """The volume-relative path of the current directory (or of ``name`` in it), built on demand."""
        parts = [*self.base, *(f.name for f in self.stack)]
        if name is not None:
            parts.append(name)
        return b"/".join(os.fsencode(p) for p in parts if p)

    def error(self, rel: bytes, exc: OSError | str) -> None:
        """One entry failed: count it and keep its path and reason."""
        self.stats.skipped[SKIP_ERROR] += 1
        self.tell(rel, exc if isinstance(exc, str) else (exc.strerror or str(exc)))

    def tell(self, rel: bytes, reason: str) -> None:
        """Keep one message (path: reason) while there is room; counts are kept elsewhere."""
        if len(self.stats.errors) < MAX_MESSAGES:
            self.stats.errors.append(f"{show_path(rel)}: {reason}")

    def note(self, rel: bytes, st: os.stat_result) -> None:
        """Count one damaged entry (with an example while there is room)."""
        self.stats.damaged += 1
        if len(self.stats.examples) < self.opts.examples:
            self.stats.examples.append(Example(rel, _kind(st.st_mode), st.st_uid, st.st_gid))

    def counted(self) -> None:
        """After each directory: progress callback and detection budget."""
        scanned = self.stats.scanned
        if self.on_progress is not None and scanned >= self.next_progress:
            self.next_progress = scanned + PROGRESS_EVERY
            self.on_progress(scanned)
        if self.limited:
            self.over_budget(0)

    def over_budget(self, extra: int) -> bool:
        """True (and stop) once a detection budget is spent."""
        o = self.opts
        if ((o.max_entries is not None and self.stats.scanned + extra >= o.max_entries)
                or (o.max_damaged is not None and self.stats.damaged >= o.max_damaged)
                or (self.deadline is not None and time.monotonic() >= self.deadline)):
            self.stop = True
            self.stats.truncated = True
        return self.stop

    # --- directories --------------------------------------------------------------------------------
    def enter(self, parent: int, name: str, ino: int) -> int | None:
        """Open a subdirectory of the current one safely and fix its own owner; None when skipped."""
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self.stats.skipped[SKIP_CHANGED] += 1
                self.tell(self.path(name), "changed during the walk (no longer a directory), left alone")
            elif exc.errno == errno.ENOENT:
                self.stats.skipped[SKIP_VANISHED] += 1
            else:
                self.error(self.path(name), exc)
            return None
        try:
            if mount_id(fd) != self.mnt:
                self.stats.skipped[SKIP_MOUNT] += 1
                os.close(fd)
                return None
            st = os.fstat(fd)
            if st.st_dev != self.dev:
                self.stats.skipped[SKIP_MOUNT] += 1
                os.close(fd)
                return None
            if st.st_ino != ino:
                self.stats.skipped[SKIP_CHANGED] += 1
                self.tell(self.path(name), "changed during the walk (another directory), left alone")
                os.close(fd)
                return None
            if st.st_uid == NOBODY or st.st_gid == NOBODY:
                self.fix_dir(fd, st, name)
        except OSError as exc:
            os.close(fd)
            self.error(self.path(name), exc)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def fix_dir(self, fd: int, st: os.stat_result, name: str | None) -> None:
        """A damaged directory (``name`` in the current one, None for the current one itself): its owner
        changes through its own fd."""
        self.note(self.path(name) if len(self.stats.examples) < self.opts.examples else b"", st)
        if self.apply:
            try:
                os.fchown(fd, *new_owner(st.st_uid, st.st_gid, self.uid, self.gid))
            except OSError as exc:
                self.error(self.path(name), exc)
                return
        self.stats.repaired += 1

    def scan(self, fd: int, part: int = -1, parts: int = 1) -> list[tuple[str, int]]:
        """List the current directory: fix its damaged non-directories, return its subdirectories.
        With ``part`` >= 0 only the non-directories whose name hashes to ``part`` of ``parts`` are
        looked at and no subdirectory is returned (a share of a large directory)."""
        subdirs: list[tuple[str, int]] = []
        try:
            it = os.scandir(fd)
        except OSError as exc:
            self.error(self.path(), exc)
            return subdirs
        with it:
            try:
                if self.limited:
                    self.scan_limited(fd, it, subdirs)
                else:
                    self.scan_all(fd, it, subdirs, part, parts)
            except OSError as exc:  # the listing itself failed (EIO, ESTALE...)
                self.error(self.path(), exc)
        self.counted()
        return subdirs

    def listing_error(self, entry: os.DirEntry[str], exc: OSError) -> None:
        """The listing's ``lstat`` of one entry failed: vanished meanwhile, or one error."""
        if exc.errno == errno.ENOENT:
            self.stats.skipped[SKIP_VANISHED] += 1
        else:
            self.error(self.path(entry.name), exc)

    def scan_limited(self, fd: int, it: Iterator[os.DirEntry[str]], subdirs: list[tuple[str, int]]) -> None:
        """The listing under a detection budget: entry by entry, stopping as soon as it is spent."""
        stats = self.stats
        n = 0
        try:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append((entry.name, entry.inode()))
                        n += 1
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    self.listing_error(entry, exc)
                    continue
                n += 1
                if st.st_uid == NOBODY or st.st_gid == NOBODY:
                    self.fix_entry(fd, entry, st)
                    if self.over_budget(n):
                        break
                elif not n & 63 and self.over_budget(n):
                    break
        finally:
            stats.scanned += n

    def scan_all(self, fd: int, it: Iterator[os.DirEntry[str]], subdirs: list[tuple[str, int]],
                 part: int = -1, parts: int = 1) -> None:
        """The listing of a whole directory, the common case in one tight loop: each entry is looked at
        once (``lstat`` relative to the directory fd, as ``find`` does); a damaged one with one name and
        nothing mounted on it is opened (``O_PATH``), checked through that fd (same device, inode and
        type as the listing, still damaged) and changed through it. Every other case, and every
        failure, goes through ``fix_entry`` under the same rules. Entry fds are closed together. Counts
        are kept in local integers and added once."""
        stats = self.stats
        examples, want = stats.examples, self.opts.examples
        dev, apply, nobody = self.dev, self.apply, NOBODY
        uid, gid = _c_id(self.uid), _c_id(self.gid)
        chown: Any = _libc_fchownat() if apply else None
        open_, fstat, flags, at, ifmt = os.open, os.fstat, ENTRY_FLAGS, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, _IFMT
        add_dir, slow = subdirs.append, self.fix_entry
        opened: list[int] = []
        keep = opened.append
        n = damaged = repaired = 0
        files_only, shared = part >= 0, parts > 1
        try:
            for entry in it:
                if shared and hash(entry.name) % parts != part:
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not files_only:
                            add_dir((entry.name, entry.inode()))
                            n += 1
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    self.listing_error(entry, exc)
                    continue
                n += 1
                if st.st_uid != nobody and st.st_gid != nobody:
                    continue
                ino = st.st_ino
                if st.st_nlink > 1 or st.st_dev != dev or entry.inode() != ino:
                    slow(fd, entry, st)  # hard links, a mount on this name, another device
                    continue
                if not apply:
                    damaged += 1
                    repaired += 1
                    if len(examples) < want:
                        examples.append(Example(self.path(entry.name), _kind(st.st_mode), st.st_uid, st.st_gid))
                    continue
                try:
                    pfd = open_(entry.name, flags, dir_fd=fd)
                except OSError:  # vanished, or an error: the careful path sorts it out and reports it
                    slow(fd, entry, st)
                    continue
                keep(pfd)
                try:
                    cur = fstat(pfd)
                except OSError:
                    slow(fd, entry, st)
                    continue
                if cur.st_ino != ino or cur.st_dev != dev or (cur.st_mode ^ st.st_mode) & ifmt:
                    slow(fd, entry, st)  # it opens the name again and finds the change
                    continue
                damaged += 1
                if len(examples) < want:
                    examples.append(Example(self.path(entry.name), _kind(st.st_mode), st.st_uid, st.st_gid))
                u = uid if cur.st_uid == nobody else -1
                g = gid if cur.st_gid == nobody else -1
                if u == -1 and g == -1:
                    stats.skipped[SKIP_NO_LONGER] += 1
                elif chown(pfd, b"", u, g, at):  # exactly the inode checked above
                    self.error(self.path(entry.name), _last_error())
                else:
                    repaired += 1
                if len(opened) >= CLOSE_BATCH:
                    _close_all(opened)
        finally:
            _close_all(opened)
            stats.scanned += n
            stats.damaged += damaged
            stats.repaired += repaired

    # --- other entries ------------------------------------------------------------------------------
    def fix_entry(self, dfd: int, entry: os.DirEntry[str], st: os.stat_result) -> None:
        """A damaged non-directory: check it through an fd of its own, change the owner through it."""
        name = entry.name
        stats = self.stats
        pfd = -1
        try:
            try:
                if st.st_dev != self.dev:
                    stats.skipped[SKIP_MOUNT] += 1
                    return
                if entry.inode() != st.st_ino:  # the listing shows another inode: a mount on this name
                    pfd = os.open(name, ENTRY_FLAGS, dir_fd=dfd)
                    if mount_id(pfd) != self.mnt:
                        stats.skipped[SKIP_MOUNT] += 1
                        return
            except FileNotFoundError:
                stats.skipped[SKIP_VANISHED] += 1
                return
            except OSError as exc:
                self.error(self.path(name), exc)
                return
            key = None
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in self.links:
                    stats.skipped[SKIP_HARDLINK] += 1
                    return
            self.note(self.path(name) if len(stats.examples) < self.opts.examples else b"", st)
            failure: OSError | None = None
            if not self.apply:
                outcome = REPAIRED
            else:
                try:
                    if pfd < 0:
                        pfd = os.open(name, ENTRY_FLAGS, dir_fd=dfd)
                    cur = os.fstat(pfd)
                    if (cur.st_ino != st.st_ino or cur.st_dev != st.st_dev
                            or stat.S_IFMT(cur.st_mode) != stat.S_IFMT(st.st_mode)):
                        outcome = SKIP_CHANGED
                    else:
                        uid = self.uid if cur.st_uid == NOBODY else -1
                        gid = self.gid if cur.st_gid == NOBODY else -1
                        if uid == -1 and gid == -1:
                            outcome = SKIP_NO_LONGER
                        else:
                            chown_fd(pfd, uid, gid)
                            outcome = REPAIRED
                except FileNotFoundError:
                    outcome = SKIP_VANISHED
                except OSError as exc:
                    outcome, failure = SKIP_ERROR, exc
            if key is not None:
                self.links[key] = outcome
            if outcome == REPAIRED:
                stats.repaired += 1
            elif failure is not None:
                self.error(self.path(name), failure)
            else:
                stats.skipped[outcome] += 1
                if outcome == SKIP_CHANGED:
                    self.tell(self.path(name), "changed during the walk (another inode), left alone")
        finally:
            if pfd >= 0:
                os.close(pfd)

    # --- the depth-first walk of one subtree --------------------------------------------------------
    def walk_from(self, fd: int, name: str, ino: int) -> None:
        """Walk below an entered directory ``fd`` (owned from here on) named ``name`` under ``base``."""
        stack = self.stack = [_Frame(fd, name, ino)]
        try:
            stack[0].pending = self.scan(fd)
            while stack and not self.stop:
                top = stack[-1]
                if not top.pending:
                    self.pop()
                    continue
                cname, cino = top.pending.pop()
                assert top.fd is not None
                cfd = self.enter(top.fd, cname, cino)
                if cfd is None:
                    continue
                frame = _Frame(cfd, cname, cino)
                stack.append(frame)
                frame.pending = self.scan(cfd)
                if len(stack) > FD_WINDOW:
                    old = stack[-FD_WINDOW - 1]
                    if old.fd is not None:
                        os.close(old.fd)
                        old.fd = None
        finally:
            for frame in stack:
                if frame.fd is not None:
                    os.close(frame.fd)
                    frame.fd = None
            stack.clear()

    def pop(self) -> None:
        """Leave the top directory; reopen a closed parent through ``..`` and check it is the same."""
        stack = self.stack
        done = stack[-1]
        assert done.fd is not None
        try:
            if len(stack) > 1 and stack[-2].fd is None:
                parent = stack[-2]
                try:
                    pfd = os.open("..", DIR_FLAGS, dir_fd=done.fd)
                except OSError:
                    pfd = -1
                if pfd >= 0:
                    try:
                        pst = os.fstat(pfd)
                        same = (pst.st_ino, pst.st_dev) == (parent.ino, self.dev) and mount_id(pfd) == self.mnt
                    except OSError:
                        same = False
                    if same:
                        parent.fd = pfd
                        stack.pop()
                        return
                    os.close(pfd)
                # the ancestor moved while we were below it: what is left above is not walked
                stack.pop()
                self.stats.skipped[SKIP_CHANGED] += 1
                self.tell(self.path(), "moved during the walk, the rest of it was skipped")
                for frame in stack:
                    if frame.fd is not None:
                        os.close(frame.fd)
                        frame.fd = None
                stack.clear()
                return
            stack.pop()
        finally:
            os.close(done.fd)
            done.fd = None

    def walk_unit(self, unit: _Unit) -> None:
        """Enter and walk one subtree, or look at one share of a directory's files, handed over by the
        splitting process (whose directory fds stay open and are never closed here)."""
        self.base = unit.base
        if unit.part >= 0:
            self.stack = [_Frame(unit.parent, unit.name, unit.ino)]
            try:
                own = self.own_listing(unit) if unit.parts > 1 else unit.parent
                if own >= 0:
                    try:
                        self.scan(own, unit.part, unit.parts)
                    finally:
                        if own != unit.parent:
                            os.close(own)
            finally:
                self.stack = []
            return
        self.stack = []
        fd = self.enter(unit.parent, unit.name, unit.ino)
        if fd is not None:
            self.walk_from(fd, unit.name, unit.ino)

    def own_listing(self, unit: _Unit) -> int:
        """A directory shared by several workers is listed by each through an open of its own (all
        fds of one open directory share one listing position, inherited ones too): ``.`` of the
        inherited fd, or, in a directory that may be listed but not searched, its ``/proc/self/fd``
        link; either is the same directory (checked). -1 after reporting a failure."""
        try:
            try:
                own = os.open(".", DIR_FLAGS, dir_fd=unit.parent)
            except PermissionError:
                own = os.open(f"/proc/self/fd/{unit.parent}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            self.error(self.path(), exc)
            return -1
        try:
            st = os.fstat(own)
            if (st.st_ino, st.st_dev) == (unit.ino, self.dev):
                return own
            self.error(self.path(), "reopened as another directory, left alone")
        except OSError as exc:
            self.error(self.path(), exc)
        os.close(own)
        return -1

    def list_dirs(self, fd: int) -> tuple[list[tuple[str, int]], int]:
        """The subdirectories (name, inode from the listing) of the current directory and how many
        other entries it has, without looking at those (they are left to ``_Unit`` file shares)."""
        subdirs: list[tuple[str, int]] = []
        others = 0
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            subdirs.append((entry.name, entry.inode()))
                            continue
                    except OSError:
                        pass  # the file share lists it again and reports it
                    others += 1
        except OSError as exc:
            self.error(self.path(), exc)
        self.stats.scanned += len(subdirs)
        return subdirs, others


def _close_all(fds: list[int]) -> None:
    """Close the fds (and empty the list): one ``close_range`` system call per run of consecutive
    numbers (the numbers an fd opened while they were taken, such as a listing's, splits a run).
    Python's ``os.closerange`` may close them one by one; the C library's ``close_range`` is used when
    it has one (Linux 5.9 or later)."""
    if not fds:
        return
    fds.sort()
    start = prev = fds[0]
    for fd in fds[1:]:
        if fd != prev + 1:
            _close_run(start, prev)
            start = fd
        prev = fd
    _close_run(start, prev)
    fds.clear()


def _close_run(low: int, high: int) -> None:
    """Close the fds ``low`` to ``high`` (all open, all ours)."""
    if low == high:
        os.close(low)
        return
    close_range = getattr(_libc(), "close_range", None) if _close_range_works else None
    if close_range is None or close_range(low, high, 0):
        _no_close_range()
        os.closerange(low, high + 1)


_close_range_works = True


def _no_close_range() -> None:
    """The C library or the kernel has no ``close_range``: use ``os.closerange`` from now on."""
    global _close_range_works
    _close_range_works = False


# --- splitting the work over processes ------------------------------------------------------------------

def _split(w: _Walk, root_fd: int, root_ino: int, workers: int) -> tuple[list[_Unit], list[int]]:
    """Open the top of the tree here until there are ``workers * UNITS_PER_WORKER`` units (or
    MAX_SPLIT_DIRS directories were opened). Only directories are looked at here: the files of an
    opened directory become file units (shared by name hash among up to ``workers`` units when there
    are more than SHARE_FILES of them), its subdirectories subtree units. The directories opened stay
    open (their fds are the units' parents). File units come first (largest first), then subtrees in
    breadth-first order (shallower first). Workers take units as they finish, so uneven subtrees even
    out."""
    want = workers * UNITS_PER_WORKER
    fd = os.dup(root_fd)
    held = [fd]
    trees: deque[_Unit] = deque()
    files: list[tuple[int, _Unit]] = []

    def opened(dfd: int, name: str, ino: int, base: tuple[str, ...]) -> None:
        w.base, w.stack = base, [_Frame(dfd, name, ino)]
        subdirs, others = w.list_dirs(dfd)
        parts = max(1, min(workers, others // SHARE_FILES))
        files.extend((others // parts, _Unit(dfd, name, ino, base, k, parts)) for k in range(parts) if others)
        below = (*base, name) if name else base
        trees.extend(_Unit(dfd, sub, sub_ino, below) for sub, sub_ino in subdirs)

    try:
        opened(fd, "", root_ino, ())
        count = 0
        while trees and len(trees) + len(files) < want and count < MAX_SPLIT_DIRS:
            unit = trees.popleft()
            count += 1
            w.base, w.stack = unit.base, []
            cfd = w.enter(unit.parent, unit.name, unit.ino)
            if cfd is None:
                continue
            held.append(cfd)
            opened(cfd, unit.name, unit.ino, unit.base)
    except BaseException:
        for h in held:
            os.close(h)
        raise
    finally:
        w.base, w.stack = (), []
    files.sort(key=lambda f: -f[0])
    return [u for _, u in files] + list(trees), held


_TASK = struct.Struct("<II")
_HEAD = struct.Struct("<cQ")


def _send(fd: int, kind: bytes, payload: bytes = b"", value: int = 0) -> None:
    data = _HEAD.pack(kind, len(payload) if payload else value) + payload
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _worker(opts: WalkOptions, dev: int, mnt: int, units: list[_Unit], tasks: int, out: int) -> None:
    """A forked worker: take slices of units from the task pipe until it is empty, send the tally."""
    with contextlib.suppress(ValueError):  # Ctrl-C ends a worker at once; the parent reports it
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    w = _Walk(opts, dev, mnt, on_progress=lambda n: _send(out, b"P", value=n))
    while True:
        data = os.read(tasks, _TASK.size)
        if len(data) < _TASK.size:
            break
        start, end = _TASK.unpack(data)
        for unit in units[start:end]:
            w.walk_unit(unit)
    _send(out, b"R", pickle.dumps((w.stats, w.links), protocol=pickle.HIGHEST_PROTOCOL))


def _run_workers(w: _Walk, units: list[_Unit], workers: int,
                 on_progress: Callable[[int], None] | None) -> list[tuple[WalkStats, dict[tuple[int, int], str]]]:
    """Fork ``workers`` processes over ``units``; return each one's tally (a lost one is an error)."""
    step = max(1, -(-len(units) // MAX_TASKS))
    slices = [(i, min(i + step, len(units))) for i in range(0, len(units), step)]
    task_r, task_w = os.pipe()
    try:
        for start, end in slices:  # at most MAX_TASKS * 8 bytes: fits the pipe before anyone reads
            os.write(task_w, _TASK.pack(start, end))
    finally:
        os.close(task_w)
    pids: dict[int, int] = {}
    results: list[tuple[WalkStats, dict[tuple[int, int], str]]] = []
    sel = selectors.DefaultSelector()
    buffers: dict[int, bytearray] = {}
    done: dict[int, int] = {}
    try:
        for _ in range(workers):
            r, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    os.close(r)
                    _worker(w.opts, w.dev, w.mnt, units, task_r, wfd)
                    code = 0
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            os.close(wfd)
            pids[r] = pid
            buffers[r] = bytearray()
            sel.register(r, selectors.EVENT_READ)
        os.close(task_r)
        task_r = -1
        progress = dict.fromkeys(pids, 0)
        while sel.get_map():
            for key, _ in sel.select():
                fd = int(key.fd)
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    sel.unregister(fd)
                    os.close(fd)
                    continue
                buf = buffers[fd]
                buf += chunk
                while len(buf) >= _HEAD.size:
                    kind, size = _HEAD.unpack_from(buf)
                    if kind == b"P":
                        progress[fd] = size
                        del buf[:_HEAD.size]
                        if on_progress is not None:
                            on_progress(w.stats.scanned + sum(progress.values()))
                        continue
                    if len(buf) < _HEAD.size + size:
                        break
                    results.append(pickle.loads(bytes(buf[_HEAD.size:_HEAD.size + size])))
                    done[fd] = 1
                    del buf[:_HEAD.size + size]
    finally:
        if task_r >= 0:
            os.close(task_r)
        for left in [int(k.fd) for k in sel.get_map().values()]:
            sel.unregister(left)
            os.close(left)
        sel.close()
        for fd, pid in pids.items():
            if fd not in done:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        for fd, pid in pids.items():
            _, status = os.waitpid(pid, 0)
            if fd not in done:
                w.error(b"", f"a walk worker ended without a result (wait status {status}); "
                             "part of the volume was not walked")
    return results


def _merge(total: WalkStats, seen: dict[tuple[int, int], str], part: WalkStats,
           links: dict[tuple[int, int], str], max_examples: int) -> None:
    """Add one process's tally; an inode with several links counted by two processes counts once."""
    total.scanned += part.scanned
    total.damaged += part.damaged
    total.repaired += part.repaired
    total.skipped.update(part.skipped)
    total.errors.extend(part.errors[: max(0, MAX_MESSAGES - len(total.errors))])
    # the first examples by path, not by which worker finished first: a dry run prints the same lines
    # each time (whenever every damaged entry fits in the examples)
    total.examples[:] = sorted([*total.examples, *part.examples], key=lambda e: e.path)[:max_examples]
    total.truncated = total.truncated or part.truncated
    for key, outcome in links.items():
        if key not in seen:
            seen[key] = outcome
            continue
        total.damaged -= 1
        if outcome == REPAIRED:
            total.repaired -= 1
        else:
            total.skipped[outcome] -= 1
        total.skipped[SKIP_HARDLINK] += 1


def walk(root_fd: int, opts: WalkOptions, on_progress: Callable[[int], None] | None = None) -> WalkStats:
    """Walk (and with ``opts.apply`` repair) the tree under an open directory fd (not closed here).

    ``opts.workers`` > 1 forks that many worker processes over the subtrees (not with a detection
    budget, which walks here). Raises OSError when the root cannot be used (no /proc to read mount IDs).
    """
    started = time.monotonic()
    root_st = os.fstat(root_fd)
    if not stat.S_ISDIR(root_st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "volume root is not a directory")
    mnt = mount_id(root_fd)
    deadline = None if opts.seconds is None else started + opts.seconds
    w = _Walk(opts, root_st.st_dev, mnt, deadline, on_progress)
    w.stats.scanned = 1
    if is_damaged(root_st):
        w.fix_dir(root_fd, root_st, None)
    workers = max(1, opts.workers)
    if workers == 1 or w.limited:
        w.walk_from(os.dup(root_fd), "", root_st.st_ino)
        total = w.stats
        used = 1
    else:
        units, held = _split(w, root_fd, root_st.st_ino, workers)
        try:
            used = min(workers, len(units))
            if used <= 1:
                for unit in units:
                    w.walk_unit(unit)
                parts = []
            else:
                parts = _run_workers(w, units, used, on_progress)
        finally:
            for fd in held:
                os.close(fd)
        total = WalkStats()
        seen: dict[tuple[int, int], str] = {}
        _merge(total, seen, w.stats, w.links, opts.examples)
        for stats, links in parts:
            _merge(total, seen, stats, links, opts.examples)
        total.skipped = +total.skipped
    total.workers = max(1, used)
    total.seconds = time.monotonic() - started
    if on_progress is not None:
        on_progress(total.scanned)
    return total
