"""Interrupting ``inv repair --target ssh://...``: the walk on the target ends with it.

The walk runs on the engine host as root under the target's python3. When the local ``inv`` is
interrupted (Ctrl-C: SIGINT to its process group, as a terminal sends it; or SIGTERM to it alone) the
walk there must end within seconds, driver and workers, having changed only whole entries, and the
local side says so in one line (exit 130 for Ctrl-C, 143 for SIGTERM). A second run finishes the job.

The host is a lab host with the *containai* layout reached as ``ssh://root@...`` through its
ProxyCommand (sshd over ``docker exec``), as the other repair lab tests reach it. So that the walk
takes long enough to be interrupted, the host's ``python3`` is the real one under ``strace``, which
holds each ``fchownat`` (the owner change of a file) for a while: the walk is the real walk, only
slower. The lab image has neither python3 nor strace: Debian's packages are downloaded on this machine
and installed on the host with dpkg.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _debs
import pytest
from _cli import popen_inv

pytestmark = pytest.mark.lab

NOBODY = 65534
MANAGED = "rpi-agent"
DIRS, FILES = 4, 600  # damaged files: with each owner change held DELAY_US, a walk of about a minute
DELAY_US = 40_000
#: The target's walk: its driver and forked workers (and strace, which runs them) carry this in their
#: command line.
WALK = "python3 -I -c"
SLOW_PYTHON = ("#!/bin/sh\nexec strace -f -qq --seccomp-bpf -o /dev/null -e trace=fchownat "
               f"-e inject=fchownat:delay_exit={DELAY_US} /usr/bin/python3 \"$@\"\n")


def sh(host: Any, command: str, timeout: int = 300) -> str:
    from ops.lab.hosts import run

    code, out, err = run(host, command, timeout=timeout)
    assert code == 0, f"{command[:100]!r} exited {code} on {host.name}: {err.strip()[-600:]} {out.strip()[-300:]}"
    return out


@pytest.fixture(scope="module")
def debs(lab_engine: str, lab_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's python3 and strace and what they need beyond the lab image."""
    return _debs.download(tmp_path_factory.mktemp("rpi-debs"), lab_engine, lab_image, ["python3", "strace"])


def install(host: Any, debs: Path, lab_engine: str) -> None:
    """Install Debian's python3 and strace on the host."""
    _debs.install(host, debs, lab_engine, "python3 -c 'import ctypes' && strace -V >/dev/null")


@pytest.fixture
def rpi_host(lab_host: Callable[..., Any]) -> Callable[..., Any]:
    """Factory of lab hosts ``rpi-<hex>`` (``layout=``), removed afterwards."""
    return lambda layout: lab_host(prefix="rpi", layout=layout)


def slow_walk_host(host: Any, debs: Path, lab_engine: str) -> Path:
    """python3 and strace on the host, a managed container whose volume holds DIRS * FILES damaged
    files, and the slow ``python3`` first on root's PATH; the volume's folder on this machine."""
    from ops.lab.containers import run_script

    install(host, debs, lab_engine)
    sh(host, run_script(MANAGED, True, host.docker))
    data = Path(host.data_dir) / "volumes" / f"{MANAGED}-vol" / "_data"
    for d in range(DIRS):
        (data / f"d{d}").mkdir()
        for i in range(FILES):
            path = data / f"d{d}" / f"f{i}"
            path.write_bytes(b"")
            os.chown(path, NOBODY, NOBODY)
    sh(host, f"printf '%s' '{SLOW_PYTHON}' > /usr/local/bin/python3 && chmod 755 /usr/local/bin/python3 && "
             "command -v python3")
    return data


def stopped_line(target: str) -> str:
    return (f"error: the repair was interrupted on {target} (the walk there stops with it; the entries it "
            "reached are repaired, the others may still show 65534): run the same repair again to finish it")


def walk_processes(host: Any, lab_engine: str) -> str:
    """The walk's processes on the host (``pgrep -af``, run without a shell: it cannot match itself)."""
    import docker

    client = docker.DockerClient(base_url=lab_engine, timeout=60)
    try:
        code, out = client.containers.get(host.container).exec_run(["pgrep", "-af", WALK])
    finally:
        client.close()
    assert code in (0, 1), out  # 1: none
    return out.decode(errors="replace").strip()


def owners(data: Path) -> list[tuple[int, int]]:
    return [(st.st_uid, st.st_gid) for path in sorted(data.rglob("f*")) for st in [os.lstat(path)]]


def wait_for(what: str, check: Any, seconds: float) -> Any:
    """Poll ``check`` until it returns something true; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} (after {seconds:.0f} s)"
        time.sleep(0.2)


def interrupt_repair(host: Any, lab_engine: str, target: str, env: dict[str, str], data: Path,
                     send: Any, code: int, line: str) -> None:
    """Start the repair, interrupt it once the target's walk has changed some owners, then check the
    local side's one line and exit code, and that the walk on the target is gone within seconds,
    having changed only whole entries."""
    before = owners(data).count((1000, 1000))
    proc = popen_inv("repair", "--all", "--target", target, env=env)
    try:
        wait_for("the walk on the target never started changing owners",
                 lambda: proc.poll() is not None or owners(data).count((1000, 1000)) > before, 240)
        assert proc.poll() is None, proc.communicate()
        assert walk_processes(host, lab_engine), "the walk is not running on the target"
        send(proc)
        sent = time.monotonic()
        left = wait_for_gone(host, lab_engine)
        assert not left, f"the repair walk still runs on the target 10 s after the interrupt:\n{left[:300]}"
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            left = walk_processes(host, lab_engine) or "no walk"
            os.kill(proc.pid, signal.SIGABRT)  # PYTHONFAULTHANDLER: where each of its threads waits
            pytest.fail(f"inv did not end within 60 s of the interrupt; on the target: {left}\n"
                        f"{proc.communicate()[1][-6000:]}", pytrace=False)
        print(f"inv ended {time.monotonic() - sent:.1f} s after the interrupt")  # for the log, not asserted
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, out + err
    assert "Traceback" not in err, err
    assert err.strip().splitlines() == [line], err
    now = owners(data)
    assert set(now) <= {(NOBODY, NOBODY), (1000, 1000)}, "an entry was changed only in part"
    assert now.count((NOBODY, NOBODY)) > 0, "the walk was not interrupted: it finished"


def kill_proxy(proc: subprocess.Popen[str]) -> None:
    """SIGKILL to inv's ssh ProxyCommand (``docker exec ... sshd -i``): the connection drops."""
    found: list[int] = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == proc.pid and b"sshd" in cmdline and b"exec" in cmdline:
            found.append(int(entry))
    assert found, "inv's ProxyCommand was not found"
    for pid in found:
        os.kill(pid, signal.SIGKILL)


def wait_for_gone(host: Any, lab_engine: str, seconds: float = 10) -> str:
    """The walk's processes still there after ``seconds`` ('' once none is left)."""
    deadline = time.monotonic() + seconds
    while True:
        left = walk_processes(host, lab_engine)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def test_an_interrupted_repair_stops_on_the_target(rpi_host: Any, debs: Path, lab_engine: str,
                                                   tmp_path: Path) -> None:
    from ops.lab.hosts import proxy_command

    host = rpi_host("containai")
    data = slow_walk_host(host, debs, lab_engine)

    alias = f"{host.name}.lab"
    config = tmp_path / "ssh_config"
    config.write_text("\n".join([
        f"Host {alias}", f"  ProxyCommand {proxy_command(host.container, lab_engine)}", f'  IdentityFile "{host.key}"',
        "  IdentitiesOnly yes", "  StrictHostKeyChecking no", "  UserKnownHostsFile /dev/null", "  BatchMode yes",
        "  LogLevel ERROR", ""]))
    target = f"ssh://root@{alias}:22"
    env = {"INVOKE_CAI_SSH_CONFIG": str(config), "INVOKE_CAI_LIMA_HOME": str(tmp_path / "no-lima"),
           "PYTHONFAULTHANDLER": "1"}

    stopped = stopped_line(target)
    # Ctrl-C in a terminal: SIGINT to the whole process group (the ssh ProxyCommand gets it too)
    interrupt_repair(host, lab_engine, target, env, data, lambda p: os.killpg(p.pid, signal.SIGINT), 130, stopped)
    # SIGTERM to inv alone (a service manager, kill): its connection stays up until inv closes it
    interrupt_repair(host, lab_engine, target, env, data, lambda p: p.send_signal(signal.SIGTERM), 143, stopped)
    # the connection drops (its ProxyCommand is killed): the walk there ends on its own. (This side
    # cannot tell: paramiko's ProxyCommand never reports that its process ended, paramiko#1277; a
    # plain TCP connection reports it. Ctrl-C then ends inv after the grace period.)
    def drop(proc: subprocess.Popen[str]) -> None:
        kill_proxy(proc)
        left = wait_for_gone(host, lab_engine)
        assert not left, f"the connection dropped, and the repair walk still runs on the target:\n{left}"
        os.killpg(proc.pid, signal.SIGINT)

    interrupt_repair(host, lab_engine, target, env, data, drop, 130, stopped)

    # a second run (at full speed) finishes the repair
    sh(host, "rm /usr/local/bin/python3")
    proc = popen_inv("repair", "--all", "--target", target, env=env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert f"volume {MANAGED}-vol ({MANAGED}): scanned {1 + DIRS * (FILES + 1)}" in out, out
    assert set(owners(data)) == {(1000, 1000)}


def test_an_interrupted_repair_stops_under_sudo_in_a_lima_vm(rpi_host: Any, debs: Path, lab_engine: str,
                                                            tmp_path: Path) -> None:
    """From a Mac through its Lima VM, where the login user is not root: the walk runs under
    ``sudo -n`` (which passes its stdin through without a terminal, and relays signals)."""
    from test_repair_targets_lab import mac_lima_home

    host = rpi_host("lima-vm")
    data = slow_walk_host(host, debs, lab_engine)
    env = {"INVOKE_CAI_PLATFORM": "macos", "INVOKE_CAI_LIMA_HOME": str(mac_lima_home(host, tmp_path / "mac-lima")),
           "INVOKE_CAI_LIMA_VM": host.vm, "PYTHONFAULTHANDLER": "1"}
    interrupt_repair(host, lab_engine, host.target, env, data, lambda p: os.killpg(p.pid, signal.SIGINT), 130,
                     stopped_line(host.target))
