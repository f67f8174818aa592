"""The fd-based walker on real trees (root needed for chown): depth, hard links, budgets, worker
processes and how the tree is split among them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.repair import core
from ops.repair import walk as walk_module
from ops.repair.walk import FD_WINDOW, SHARE_FILES, SKIP_HARDLINK, UNITS_PER_WORKER, WalkOptions, walk

pytestmark = pytest.mark.integration
NOBODY = 65534


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    tree = tmp_path / "vol"
    tree.mkdir()
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield tree, fd
    finally:
        os.close(fd)


def test_a_tree_deeper_than_the_recursion_limit_and_the_fd_window(root: tuple[Path, int]) -> None:
    tree, fd = root
    depth = max(sys.getrecursionlimit(), FD_WINDOW) + 500
    cur = os.dup(fd)
    for _ in range(depth):
        os.mkdir("d", dir_fd=cur)
        os.chown("d", NOBODY, NOBODY, dir_fd=cur)
        nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=cur)
        with open(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=cur), "w"):
            pass
        os.chown("f", NOBODY, NOBODY, dir_fd=cur)
        os.close(cur)
        cur = nxt
    os.close(cur)
    try:
        dry = walk(fd, WalkOptions(apply=False, workers=1))
        assert dry.damaged == 2 * depth and not dry.errors
        done = walk(fd, WalkOptions(uid=1000, gid=1000, apply=True, workers=3))
        assert done.repaired == 2 * depth and not done.errors and not done.skipped
        assert walk(fd, WalkOptions(apply=False)).damaged == 0
    finally:  # shutil.rmtree (pytest's tmp_path cleanup) recurses and would fail on this depth
        subprocess.run(["rm", "-rf", str(tree / "d")], check=True)


def test_hard_links_are_repaired_once(root: tuple[Path, int]) -> None:
    tree, fd = root
    (tree / "a").mkdir()
    (tree / "a" / "one").write_text("x")
    os.chown(tree / "a" / "one", NOBODY, NOBODY)
    os.link(tree / "a" / "one", tree / "two")
    os.link(tree / "a" / "one", tree / "three")
    dry = walk(fd, WalkOptions(apply=False, workers=1))
    assert dry.damaged == 1 and dry.repaired == 1 and dry.skipped[SKIP_HARDLINK] == 2
    done = walk(fd, WalkOptions(uid=1000, gid=1000, apply=True, workers=1))
    assert done.repaired == 1
    assert os.stat(tree / "two")[4:6] == (1000, 1000)


def test_each_owner_part_changes_independently(root: tuple[Path, int]) -> None:
    tree, fd = root
    cases = {"both": (NOBODY, NOBODY), "uid": (NOBODY, 0), "gid": (0, NOBODY), "root": (0, 0), "x": (7, 8)}
    for name, ids in cases.items():
        (tree / name).write_text("x")
        os.chown(tree / name, *ids)
    os.mkfifo(tree / "fifo")
    os.chown(tree / "fifo", NOBODY, 5)
    stats = walk(fd, WalkOptions(uid=1000, gid=2000, apply=True, workers=2))
    assert stats.repaired == 4
    got = {n: os.lstat(tree / n)[4:6] for n in [*cases, "fifo"]}
    assert got == {"both": (1000, 2000), "uid": (1000, 0), "gid": (0, 2000), "root": (0, 0), "x": (7, 8),
                   "fifo": (1000, 5)}


def test_setuid_bits_are_not_kept_on_repaired_files(root: tuple[Path, int]) -> None:
    tree, fd = root
    (tree / "suid").write_text("x")
    os.chown(tree / "suid", NOBODY, NOBODY)
    os.chmod(tree / "suid", 0o4755)
    walk(fd, WalkOptions(uid=1000, gid=1000, apply=True))
    assert not os.stat(tree / "suid").st_mode & 0o4000


def test_detection_budget_stops_early_and_says_so(root: tuple[Path, int]) -> None:
    tree, fd = root
    for i in range(300):
        (tree / f"f{i}").write_text("")
        os.chown(tree / f"f{i}", NOBODY, NOBODY)
    stats = walk(fd, WalkOptions(apply=False, workers=2, max_damaged=10))
    assert stats.truncated and 10 <= stats.damaged < 300
    stats = walk(fd, WalkOptions(apply=False, workers=2, max_entries=50))
    assert stats.truncated and stats.scanned < 300
    full = walk(fd, WalkOptions(apply=False, workers=2))
    assert not full.truncated and full.damaged == 300


def test_hard_links_in_subtrees_of_different_workers_are_counted_once(root: tuple[Path, int]) -> None:
    tree, fd = root
    (tree / "first").write_text("x")
    os.chown(tree / "first", NOBODY, NOBODY)
    for d in range(24):
        (tree / f"d{d}").mkdir()
        os.link(tree / "first", tree / f"d{d}" / "link")
    for workers in (1, 4):
        dry = walk(fd, WalkOptions(apply=False, workers=workers))
        assert (dry.damaged, dry.repaired, dry.skipped[SKIP_HARDLINK]) == (1, 1, 24), (workers, dry)
    done = walk(fd, WalkOptions(uid=1000, gid=1000, apply=True, workers=4))
    assert done.workers == 4 and done.complete
    assert (done.damaged, done.repaired) == (1, 1), done  # the other names show repaired by then
    assert os.stat(tree / "d7" / "link")[4:6] == (1000, 1000)


def test_many_workers_give_the_same_result_as_one(root: tuple[Path, int]) -> None:
    tree, fd = root
    for d in range(40):
        sub = tree / f"d{d}"
        sub.mkdir()
        os.chown(sub, NOBODY, NOBODY)
        for f in range(25):
            (sub / f"f{f}").write_text("")
            os.chown(sub / f"f{f}", NOBODY if f % 2 else 0, NOBODY)
    one = walk(fd, WalkOptions(apply=False, workers=1))
    many = walk(fd, WalkOptions(apply=False, workers=8))
    assert many.workers == 8
    assert (one.scanned, one.damaged) == (many.scanned, many.damaged) == (1041, 1040)
    done = walk(fd, WalkOptions(uid=1000, gid=1000, apply=True, workers=8))
    assert done.repaired == 1040
    assert os.stat(tree / "d3" / "f2")[4:6] == (0, 1000)


def test_memory_stays_small_on_a_20000_deep_chain(root: tuple[Path, int]) -> None:
    """Peak memory (ru_maxrss of the walking process and its workers) of a walk down a 20,000-deep
    chain of damaged directories, each with a damaged file, against the same interpreter idle."""
    tree, fd = root
    depth = 20_000
    cur = os.dup(fd)
    for _ in range(depth):
        os.mkdir("d", dir_fd=cur)
        os.chown("d", NOBODY, NOBODY, dir_fd=cur)
        nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=cur)
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=cur))
        os.chown("f", NOBODY, NOBODY, dir_fd=cur)
        os.close(cur)
        cur = nxt
    os.close(cur)
    script = (
        "import os, resource, sys\n"
        "from ops.repair.walk import WalkOptions, walk\n"
        "def peak():\n"
        "    r = resource.getrusage\n"
        "    return max(r(resource.RUSAGE_SELF).ru_maxrss, r(resource.RUSAGE_CHILDREN).ru_maxrss) // 1024\n"
        "if sys.argv[2] == 'idle':\n"
        "    print(0, peak())\n"
        "    raise SystemExit\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
        "workers = int(sys.argv[3])\n"
        "s = walk(fd, WalkOptions(uid=1000, gid=1000, apply=sys.argv[2] == 'apply', workers=workers))\n"
        "print(s.repaired, peak())\n"
    )
    repo = str(Path(__file__).resolve().parents[2])
    try:
        figures = {}
        for mode, workers in (("idle", 1), ("dry-run", 1), ("dry-run", 4), ("apply", 1)):
            out = subprocess.run([sys.executable, "-c", script, str(tree), mode, str(workers)], cwd=repo,
                                 check=True, capture_output=True, text=True, timeout=600).stdout.split()
            figures[f"{mode} {workers}"] = (int(out[0]), int(out[1]))
            print(f"20,000-deep chain, {mode}, {workers} worker(s): peak {out[1]} MB, {out[0]} entries")
        assert figures["dry-run 1"][0] == figures["dry-run 4"][0] == figures["apply 1"][0] == 2 * depth
        for key in ("dry-run 1", "dry-run 4", "apply 1"):
            assert figures[key][1] < 100, f"{key} worker(s) peaked at {figures[key][1]} MB"
        assert walk(fd, WalkOptions(apply=False)).damaged == 0
    finally:
        subprocess.run(["rm", "-rf", str(tree / "d")], check=True)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_large_directory_is_shared_among_workers_and_the_splitter_looks_at_no_file(
    root: tuple[Path, int],
) -> None:
    """A volume whose top directory holds most of the files: before forking, the splitting process
    only lists directories (no file is looked at or changed there); the top's files become
    ``workers`` shares by name hash, disjoint and together complete, and the walk with workers gives
    the result of one."""
    tree, fd = root
    count = 2 * SHARE_FILES + 7
    for i in range(count):
        os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        if i % 2:
            os.chown(f"f{i}", NOBODY, NOBODY, dir_fd=fd)
    for d in range(3):
        (tree / f"d{d}").mkdir()
        (tree / f"d{d}" / "g").write_text("")
        os.chown(tree / f"d{d}" / "g", NOBODY, NOBODY)
    damaged = count // 2 + 3
    splitter = walk_module._Walk(WalkOptions(apply=False), os.fstat(fd).st_dev, walk_module.mount_id(fd))
    units, held = walk_module._split(splitter, fd, os.fstat(fd).st_ino, 2)
    try:
        assert splitter.stats.damaged == 0 and splitter.stats.scanned == 3, "the splitter looked at files"
        units.sort(key=lambda u: (u.name, u.part))
        # largest first: the top's files in two shares, then the files of the three subdirectories
        # (opened here, as there were fewer units than workers * UNITS_PER_WORKER)
        assert [(u.name, u.part, u.parts) for u in units] == [
            ("", 0, 2), ("", 1, 2), ("d0", 0, 1), ("d1", 0, 1), ("d2", 0, 1)]
        shares = units[:2]
        seen = []
        for share in shares:
            part = walk_module._Walk(WalkOptions(apply=False), splitter.dev, splitter.mnt)
            part.walk_unit(share)
            seen.append((part.stats.scanned, part.stats.damaged))
        assert sum(s for s, _ in seen) == count and sum(d for _, d in seen) == count // 2
        assert all(d > count // 8 for _, d in seen), f"one share did (almost) everything: {seen}"
    finally:
        for h in held:
            os.close(h)
    one = walk(fd, WalkOptions(apply=False, workers=1))
    two = walk(fd, WalkOptions(apply=False, workers=2))
    assert (one.scanned, one.damaged) == (two.scanned, two.damaged) == (count + 7, damaged)
    before = _open_fds()
    done = walk(fd, WalkOptions(uid=1000, gid=1000, apply=True, workers=2))
    assert _open_fds() == before, "the walk left fds open"
    assert done.workers == 2 and done.complete and done.repaired == damaged, done
    assert walk(fd, WalkOptions(apply=False, workers=1)).damaged == 0


@pytest.mark.parametrize("workers", [2, 4])
def test_the_benchmark_tree_shape_gives_every_worker_several_units(root: tuple[Path, int], workers: int) -> None:
    """The tree of bench/repair_throughput (200 directories under 14 top ones): enough units that a
    worker finishing early takes another instead of waiting for the slowest."""
    tree, fd = root
    for d in range(200):
        sub = tree / f"t{d % 14}" / f"d{d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / "f").write_text("")
    splitter = walk_module._Walk(WalkOptions(apply=False), os.fstat(fd).st_dev, walk_module.mount_id(fd))
    units, held = walk_module._split(splitter, fd, os.fstat(fd).st_ino, workers)
    for h in held:
        os.close(h)
    assert len(units) >= workers * UNITS_PER_WORKER, units
    assert splitter.stats.scanned < 100, "the splitter walked more than the top of the tree"


@pytest.mark.parametrize("close_range", [True, False], ids=["close_range", "os.closerange"])
def test_entry_fds_are_all_closed(root: tuple[Path, int], close_range: bool,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Damaged entries' fds are closed in batches, with the C library's close_range or without it."""
    tree, fd = root
    monkeypatch.setattr(walk_module, "_close_range_works", close_range)
    for i in range(300):
        (tree / f"f{i}").write_text("")
        os.chown(tree / f"f{i}", NOBODY, NOBODY)
    before = _open_fds()
    done = walk(fd, WalkOptions(uid=1000, gid=1000, apply=True, workers=1))
    assert done.repaired == 300 and _open_fds() == before


def test_default_workers_follows_the_cpu_affinity() -> None:
    """One walker per core this process may run on: ``taskset`` narrows it; the repair task layer
    uses the same sizing."""
    assert core.default_workers is walk_module.default_workers
    assert walk_module.default_workers() == max(1, min(8, len(os.sched_getaffinity(0))))
    repo = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c",
                          "from ops.repair.walk import default_workers; print(default_workers())"],
                         cwd=repo, check=True, capture_output=True, text=True).stdout
    assert out.strip() == "1"


def test_a_shared_directory_that_can_be_listed_but_not_searched_reports_each_entry(tmp_path: Path) -> None:
    """Root without CAP_DAC_* (setpriv), a 0600 directory of many damaged files shared by two workers:
    each share lists it through an open of its own, every entry is one error with its own path."""
    tree = tmp_path / "vol"
    (tree / "locked").mkdir(parents=True)
    count = 2 * SHARE_FILES + 3
    for i in range(count):
        (tree / "locked" / f"f{i}").write_text("")
        os.chown(tree / "locked" / f"f{i}", NOBODY, NOBODY)
    os.chmod(tree / "locked", 0o600)
    script = (
        "import os, sys\n"
        "from ops.repair.walk import SKIP_ERROR, WalkOptions, walk\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
        "s = walk(fd, WalkOptions(uid=1000, gid=1000, apply=True, workers=2))\n"
        "print(s.workers, s.repaired, s.skipped[SKIP_ERROR], len({e.split(':')[0] for e in s.errors}))\n"
        "print(s.errors[0])\n"
    )
    caps = "-dac_override,-dac_read_search"
    repo = str(Path(__file__).resolve().parents[2])
    try:
        out = subprocess.run(["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--", sys.executable,
                              "-c", script, str(tree)], cwd=repo, check=True, capture_output=True, text=True,
                             timeout=300).stdout.splitlines()
    finally:
        os.chmod(tree / "locked", 0o755)
    assert out[0] == "2 0 " + str(count) + " 100", out  # 100 messages kept, each naming another entry
    assert out[1].startswith("locked/f") and out[1].endswith(": Permission denied"), out


def test_entry_fds_are_closed_in_runs_not_one_by_one(root: tuple[Path, int], tmp_path: Path) -> None:
    """The real system calls (strace): 640 damaged files' fds are closed with a few ``close_range``
    calls, not 640 ``close`` calls, even when fds the walk does not own sit between theirs."""
    tree, _ = root
    (tree / "a").mkdir()  # entered, so fds were opened and closed below the listing's before its files
    for i in range(640):
        (tree / "a" / f"f{i}").write_text("")
        os.chown(tree / "a" / f"f{i}", NOBODY, NOBODY)
    script = (
        "import os, sys\n"
        "from ops.repair.walk import WalkOptions, walk\n"
        "held = [os.open('/dev/null', os.O_RDONLY) for _ in range(16)]\n"
        "for fd in held[::2]:\n"  # free fd numbers between open ones, as a long-running process has
        "    os.close(fd)\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
        "print(walk(fd, WalkOptions(uid=1000, gid=1000, apply=True, workers=1)).repaired)\n"
    )
    log = tmp_path / "close.log"
    repo = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(["strace", "-f", "-qq", "-o", str(log), "-e", "trace=close,close_range", sys.executable,
                          "-c", script, str(tree)], cwd=repo, check=True, capture_output=True, text=True).stdout
    assert out.strip() == "640"
    calls = log.read_text().splitlines()
    ranges = [c for c in calls if "close_range(" in c]
    singles = [c for c in calls if " close(" in c or c.startswith("close(")]
    assert len(ranges) >= 640 // 64, calls[-20:]
    assert len(singles) < 320, f"{len(singles)} close calls (the interpreter's start makes about 80)"
