"""The fd-based walker on real trees (root needed for chown): depth, hard links, budgets, threads."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.repair.walk import FD_WINDOW, SKIP_HARDLINK, WalkOptions, walk

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
