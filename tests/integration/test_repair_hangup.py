"""The target's side of a remote repair ends when its caller goes away.

The command a target runs (``ops.repair.remote.driver_command``) is run here under a real ``python3``
in a session of its own, as sshd runs it: its stdin a pipe, like the channel. So that the walk lasts
long enough to be interrupted, each owner change is held for a while by ``strace`` (the walk itself is
the real one, with two worker processes). Then the caller goes away (stdin ends), or the driver gets
SIGTERM (what ``sudo`` relays), or it is killed outright: the driver and its workers must be gone
within seconds, each entry changed whole or not at all. Runs as root (it changes owners).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ops.repair import core, onhost, remote
from ops.repair.scope import Owner

pytestmark = pytest.mark.integration

NOBODY = 65534
FILES = 200
DELAY_US = 50_000  # per owner change: a walk of about five seconds with two workers


def plan(name: str) -> core.VolumePlan:
    return core.VolumePlan(name, ("c",), f"/d/volumes/{name}/_data", Owner(1000, 1000, "test"), "")


@pytest.fixture
def slow_python(tmp_path: Path) -> str:
    """A ``python3`` on PATH that is the real one under strace, each ``fchownat`` held DELAY_US."""
    strace = shutil.which("strace")
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if os.geteuid() != 0:
        pytest.fail("run as root: the walk changes owners", pytrace=False)
    assert strace, "strace is needed (apt-get install strace)"
    assert python, "python3 is needed"
    folder = tmp_path / "bin"
    folder.mkdir()
    wrapper = folder / "python3"
    wrapper.write_text(f"#!/bin/sh\nexec {strace} -f -qq --seccomp-bpf -o /dev/null -e trace=fchownat "
                       f"-e inject=fchownat:delay_exit={DELAY_US} {python} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(folder)


def damaged_volume(root: Path) -> Path:
    data = root / "volumes" / "v" / "_data"
    for d in range(2):
        (data / f"d{d}").mkdir(parents=True)
        for i in range(FILES // 2):
            path = data / f"d{d}" / f"f{i}"
            path.write_bytes(b"")
            os.chown(path, NOBODY, NOBODY)
    return data


def owners(data: Path) -> list[tuple[int, int]]:
    return [(st.st_uid, st.st_gid) for path in sorted(data.rglob("f*")) for st in [os.lstat(path)]]


def group_members(pgid: int) -> list[str]:
    """The processes of a process group still alive (zombies do not count)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(entry)
    return found


def comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def ppid(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return ""


def start(tmp_path: Path, path: str, hangup: bool = True) -> tuple[subprocess.Popen[bytes], Path]:
    data = damaged_volume(tmp_path)
    request = {**core.request([plan("v")], str(tmp_path), False, 2), "hangup": hangup}
    proc = subprocess.Popen(["/bin/sh", "-c", remote.driver_command(request)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": f"{path}:/usr/bin:/bin"},
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while owners(data).count((1000, 1000)) == 0:  # the walk has begun changing owners
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the walk never changed an owner"
        time.sleep(0.05)
    return proc, data


def ended(proc: subprocess.Popen[bytes], data: Path, seconds: float = 10) -> int:
    """Wait for the driver and every process of its group; the driver's exit status."""
    try:
        code = proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the driver still ran {seconds:.0f} s after its caller went away", pytrace=False)
    deadline = time.monotonic() + seconds
    while group_members(proc.pid):
        assert time.monotonic() < deadline, f"walk workers outlived the driver: {group_members(proc.pid)}"
        time.sleep(0.05)
    now = owners(data)
    assert set(now) <= {(NOBODY, NOBODY), (1000, 1000)}, "an entry was changed only in part"
    assert now.count((NOBODY, NOBODY)) > 0, "the walk was not interrupted: it finished"
    return code


def test_the_walk_ends_when_its_stdin_ends(tmp_path: Path, slow_python: str) -> None:
    proc, data = start(tmp_path, slow_python)
    assert proc.stdin is not None
    proc.stdin.close()  # the caller went away: the channel's end of file
    assert ended(proc, data) == onhost.INTERRUPTED
    assert proc.stderr is not None and b"repair walk interrupted" in proc.stderr.read()


def test_the_walk_ends_on_sigterm_and_when_its_driver_is_killed(tmp_path: Path, slow_python: str) -> None:
    proc, data = start(tmp_path / "term", slow_python)
    os.killpg(proc.pid, signal.SIGTERM)  # sudo relays SIGTERM and SIGHUP to the command
    assert ended(proc, data) in (onhost.INTERRUPTED, -signal.SIGTERM)

    proc, data = start(tmp_path / "kill", slow_python)
    # the driver: the python3 that strace runs (its workers are forked from it)
    driver = [int(pid) for pid in group_members(proc.pid) if comm(pid) == "python3" and comm(ppid(pid)) == "strace"]
    assert len(driver) == 1, driver
    os.kill(driver[0], signal.SIGKILL)  # no handler runs: the workers' parent-death signal ends them
    ended(proc, data)


def test_without_hangup_the_walk_ignores_its_stdin(tmp_path: Path, slow_python: str) -> None:
    """A driver not asked to watch (a caller that closes stdin at once, as ``subprocess.run`` without
    input does) walks to the end."""
    proc, data = start(tmp_path, slow_python, hangup=False)
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.wait(timeout=120)
    assert proc.returncode == 0 and remote.parse_answer(out.decode()) is not None
    assert set(owners(data)) == {(1000, 1000)}
