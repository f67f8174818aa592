"""``inv update`` when things go wrong, on systemd lab hosts reached like a Lima VM: two updates at once,
an interrupted update followed by a plain one, a dockerd that cannot start, an engine slower than a
minute to restart, a 0600 daemon.json over a non-root login, and the warnings and prompts a user sees.

Each host starts as an older install: the lab's own unit (drifted), an older dockerd bundle and managed
containers; the bundle upgrades the dockerd bundle (and the units) only, so the engine restarts and the
containers must stop, but no Sysbox package is installed (its version is current).
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _cli
import pytest
from _update_lab import (
    install_old_bundle,
    inv,
    markers,
    popen_inv,
    run_container,
    sh,
    states,
    wait_engine_answers,
)

from ops.lab import NEW_DOCKERD, OLD_DOCKERD, OLD_SYSBOX
from ops.lab.bundle import build_sysbox_deb, bundle_dir, docker_tarball, write_sha256

pytestmark = pytest.mark.lab
MANAGED = ("m1", "m2")
STATE = "/var/lib/containai-ops"
JOURNAL = f"{STATE}/update-journal.json"
UNIT = "/etc/systemd/system/containai-docker.service"
DAEMON_JSON = "/etc/containai/docker/daemon.json"
#: What a failed update must leave exactly as it was.
INSTALLED = f"""
cat /opt/containai/VERSION; readlink /opt/containai/bin/dockerd; ls -A /opt/containai/bin | sort
sha256sum {UNIT} {DAEMON_JSON} 2>&1; stat -c '%a %U' {DAEMON_JSON}
ls /etc/systemd/system/containai-docker-guard.service /opt/containai/libexec/containai-guard 2>&1
ls /opt/containai/docker | sort
"""

Prepared = Callable[..., tuple[Any, Path, Path]]


@pytest.fixture
def prepared(lab_host: Any, lab_image: str, tmp_path: Path) -> Prepared:
    """``prepared(delay=N)``: a lab host with an older dockerd bundle and running managed containers
    m1, m2 that take N seconds to exit on SIGTERM; returns (host, bundle dir, dockerd tarball)."""

    def make(delay: int = 1) -> tuple[Any, Path, Path]:
        host = lab_host()
        tarball = docker_tarball(host, lab_image)
        install_old_bundle(host, tarball, OLD_DOCKERD)
        deb = build_sysbox_deb(OLD_SYSBOX, tmp_path / "deb")  # what the host runs: no Sysbox step
        bundle = bundle_dir(tmp_path / "bundle", tarball, deb)
        for name in MANAGED:
            run_container(host, name, managed=True, delay=delay)
        return host, bundle, tarball

    return make


def running(host: Any) -> list[str]:
    s = states(host)
    return [n for n in MANAGED if s.get(n) == "running"]


def journal(host: Any) -> str:
    return sh(host, f"cat {JOURNAL} 2>/dev/null || true")


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stdout + r.stderr
    return r.stderr


def env_of(host: Any, bundle: Path, **extra: str) -> dict[str, str]:
    return {"INVOKE_CAI_LIMA_HOME": host.lima_home, "INVOKE_CAI_BUNDLE_DIR": str(bundle), **extra}


def kill_after_stop(host: Any, bundle: Path) -> None:
    """Start ``update --stop-containers`` and SIGKILL it (and its ssh children) right after the journal
    records that the containers were stopped."""
    proc = popen_inv(["update", "--target", host.target, "--stop-containers"], host, bundle)
    try:
        deadline = time.monotonic() + 300
        while '"stop-containers"' not in journal(host).split('"done"')[-1]:
            assert proc.poll() is None, f"update ended before it could be killed: {proc.communicate()[0]}"
            assert time.monotonic() < deadline, "the journal never recorded the stop"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_engine_answers(host)  # a restart of the engine it began finishes on the host


def on_a_terminal(args: list[str], env: dict[str, str], answer: str) -> tuple[int, str, str]:
    """Run ``inv ARGS`` with a terminal on stdin and stdout and stderr on a pipe; type ``answer`` once
    a ``[y/N]`` prompt shows up (wherever it shows up). Returns (exit code, terminal text, stderr)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=_cli.REPO, env=_cli.clean_env(env),
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE, start_new_session=True)
    os.close(slave)
    assert proc.stderr is not None
    tty, err = b"", b""
    answered = False
    open_fds = {master, proc.stderr.fileno()}
    deadline = time.monotonic() + 600
    try:
        while open_fds and time.monotonic() < deadline:
            ready, _, _ = select.select(list(open_fds), [], [], 1.0)
            for fd in ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the terminal's other side is closed
                    chunk = b""
                if not chunk:
                    open_fds.discard(fd)
                elif fd == master:
                    tty += chunk
                else:
                    err += chunk
            if not answered and b"[y/N]" in tty + err:
                os.write(master, answer.encode() + b"\n")
                answered = True
            if not ready and proc.poll() is not None:
                break
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(master)
    return code, tty.decode(errors="replace"), err.decode(errors="replace")


def broken_bundle(tarball: Path, deb: Path, out: Path) -> Path:
    """The bundle with a dockerd that cannot start (it exits 1), everything else as it is."""
    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"docker-{NEW_DOCKERD}.tgz"
    script = b"#!/bin/sh\necho 'dockerd: this build cannot start' >&2\nexit 1\n"
    with tarfile.open(tarball) as src, tarfile.open(dest, "w:gz") as tar:
        for member in src.getmembers():
            if member.name == "docker/dockerd":
                member.size = len(script)
                tar.addfile(member, io.BytesIO(script))
            else:
                tar.addfile(member, src.extractfile(member) if member.isfile() else None)
    write_sha256(dest)
    return bundle_dir(out, dest, deb)


# --- item 5: one update per host at a time ------------------------------------------------------------

def test_second_update_is_refused_while_one_runs_and_a_killed_one_releases_the_lock(prepared: Prepared) -> None:
    host, bundle, _ = prepared(delay=20)  # the first update spends 20 s stopping the containers
    first = popen_inv(["update", "--target", host.target, "--stop-containers"], host, bundle)
    try:
        deadline = time.monotonic() + 300
        while not journal(host):  # written under the lock, before the containers stop
            assert first.poll() is None, first.communicate()[0]
            assert time.monotonic() < deadline, "the first update never wrote its journal"
            time.sleep(0.1)
        for extra in ([], ["--resume"]):
            second = inv(["update", "--target", host.target, "--stop-containers", *extra], host, bundle)
            assert second.returncode == 1, second.stdout + second.stderr
            line = one_line(second)
            assert f"another update holds the lock on {host.target}: pid {first.pid} of " in line, line
            assert " since 20" in line and "wait for it to finish" in line, line
        out = first.communicate(timeout=900)[0]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, out
    assert running(host) == list(MANAGED) and all(markers(host, n) == 1 for n in MANAGED)
    assert inv(["update", "--target", host.target], host, bundle).returncode == 0  # released: up to date

    # a killed update cannot keep the lock: its holder ends with it, --resume runs at once
    sh(host, f"printf '# local edit\\n' >> {UNIT}")
    kill_after_stop(host, bundle)
    assert running(host) == []
    resumed = inv(["update", "--target", host.target, "--resume", "--stop-containers"], host, bundle)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert running(host) == list(MANAGED) and journal(host) == ""


def test_a_host_named_twice_is_updated_once(prepared: Prepared, tmp_path: Path) -> None:
    host, bundle, _ = prepared()
    config = _cli.ssh_config(tmp_path / "ssh.config", host.key, pattern=host.address)
    ssh_form = f"ssh://root@{host.address}:{host.port}"
    r = inv(["update", "--target", host.target, "--target", ssh_form, "--target", host.target,
             "--stop-containers"], host, bundle, extra_env={"INVOKE_CAI_SSH_CONFIG": str(config)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(": updated (") == 1, r.stdout
    assert f"note: {ssh_form} is the same host as {host.target}; it is updated once" in r.stderr
    assert r.stderr.count("is the same host as") == 2, r.stderr
    assert all(markers(host, n) == 1 for n in MANAGED)  # stopped once


# --- item 6: the journal is never lost ----------------------------------------------------------------

def test_journal_of_an_interrupted_update_makes_a_plain_update_refuse(prepared: Prepared) -> None:
    host, bundle, _ = prepared()
    kill_after_stop(host, bundle)
    left = journal(host)
    assert sorted(json.loads(left)["containers"]) == list(MANAGED) and running(host) == []
    for extra in (["--stop-containers"], ["--dry-run"], []):
        r = inv(["update", "--target", host.target, *extra], host, bundle)
        assert r.returncode == 1, r.stdout + r.stderr
        line = one_line(r)
        assert "containers m1, m2 were stopped by an interrupted update" in line, line
        assert "run with --resume" in line, line
        assert journal(host) == left and running(host) == []  # neither overwritten nor forgotten
    done = inv(["update", "--target", host.target, "--resume", "--stop-containers"], host, bundle)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming: 2 container(s)" in done.stdout
    assert running(host) == list(MANAGED) and journal(host) == ""


# --- item 7: a failed engine start rolls back ---------------------------------------------------------

def test_a_dockerd_that_cannot_start_is_rolled_back(prepared: Prepared, tmp_path: Path) -> None:
    host, bundle, tarball = prepared()
    before = sh(host, INSTALLED)
    assert OLD_DOCKERD in before and "No such file" in before  # no guard unit yet
    broken = broken_bundle(tarball, next(bundle.glob("*.deb")), tmp_path / "broken")
    r = inv(["update", "--target", host.target, "--stop-containers"], host, broken)
    assert r.returncode == 1, r.stdout + r.stderr
    line = one_line(r)
    assert "containai-docker.service did not (re)start" in line, line
    assert "rolled back to the previous dockerd bundle, units and daemon.json" in line, line
    assert "the 2 stopped container(s) were started again" in line, line
    assert sh(host, INSTALLED) == before  # links, VERSION, unit, daemon.json; the new files gone
    assert sh(host, "systemctl is-active containai-docker").strip() == "active"
    assert "/usr/sbin/dockerd" in sh(host, "ps -o args= -C dockerd")  # the previous engine
    assert running(host) == list(MANAGED) and journal(host) == ""
    assert sh(host, f"ls -A {STATE}").split() == ["update.lock", "update.lock.owner"]  # copy dropped


def test_stop_containers_installs_a_fix_while_the_engine_is_failed(prepared: Prepared) -> None:
    host, bundle, _ = prepared()
    drop_in = "/run/systemd/system/containai-docker.service.d"
    sh(host, f"mkdir -p {drop_in} && printf '[Service]\\nExecStartPre=/bin/false\\nRestart=no\\n' "
             f"> {drop_in}/broken.conf && systemctl daemon-reload && "
             "(systemctl restart containai-docker || true) && "
             f"rm -rf {drop_in} && systemctl daemon-reload")
    assert sh(host, "systemctl is-active containai-docker || true").strip() == "failed"
    plain = inv(["update", "--target", host.target], host, bundle)
    assert plain.returncode == 1 and "does not answer" in one_line(plain), plain.stderr
    r = inv(["update", "--target", host.target, "--stop-containers"], host, bundle)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "or `inv update --stop-containers` to install the update with the engine down" in plain.stderr
    assert "containai-docker.service is failed: no container runs" in r.stdout
    assert sh(host, "cat /opt/containai/VERSION").strip() == NEW_DOCKERD
    assert sh(host, "systemctl is-active containai-docker containai-docker-guard").split() == ["active"] * 2


# --- item 8: timeouts that fit the work ---------------------------------------------------------------

def test_an_engine_slower_than_a_minute_to_restart_still_updates(prepared: Prepared) -> None:
    host, bundle, _ = prepared()
    sh(host, "mkdir -p /etc/systemd/system/containai-docker.service.d && printf "
             "'[Service]\\nExecStartPre=/bin/sleep 70\\n' > /etc/systemd/system/containai-docker.service.d/slow.conf "
             "&& systemctl daemon-reload")
    r = inv(["update", "--target", host.target, "--stop-containers"], host, bundle, timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sh(host, "cat /opt/containai/VERSION").strip() == NEW_DOCKERD
    assert "ExecStartPre=/bin/sleep 70" in sh(host, "systemctl cat containai-docker")  # the drop-in stays
    assert running(host) == list(MANAGED) and journal(host) == ""


# --- item 9: read what you will replace as the user who writes it -------------------------------------

def test_a_0600_daemon_json_over_a_non_root_login(prepared: Prepared, tmp_path: Path) -> None:
    host, bundle, _ = prepared()
    # a Lima-like login: a user with passwordless sudo, in the docker group (the engine socket's)
    sh(host, "printf 'agent ALL=(ALL) NOPASSWD:ALL\\n' > /etc/sudoers.d/agent && chmod 0440 /etc/sudoers.d/agent "
             f"&& usermod -aG docker agent && chmod 0600 {DAEMON_JSON}")
    home = tmp_path / "lima-agent"
    (home / host.vm).mkdir(parents=True)
    text = Path(host.ssh_config).read_text().replace("User root", "User agent").replace("ssh.sock", "agent.sock")
    (home / host.vm / "ssh.config").write_text(text)
    kept = json.loads(sh(host, f"cat {DAEMON_JSON}"))
    r = inv(["update", "--target", host.target, "--stop-containers"], host, bundle,
            extra_env={"INVOKE_CAI_LIMA_HOME": str(home)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "daemon.json is missing" not in r.stdout
    assert sh(host, f"stat -c '%a %U' {DAEMON_JSON}").strip() == "600 root"
    daemon = json.loads(sh(host, f"cat {DAEMON_JSON}"))
    assert all(daemon[k] == v for k, v in kept.items() if k != "runtimes"), daemon  # bridge, iptables ...
    assert daemon["runtimes"]["sysbox-runc"]["path"] == "/usr/bin/sysbox-runc"
    assert running(host) == list(MANAGED)


# --- issue 15: --force warns, prompts go to stderr, --json stays one document --------------------------

def test_prompt_on_stderr_and_force_warns_before_stopping(prepared: Prepared) -> None:
    host, bundle, _ = prepared()
    code, tty, err = on_a_terminal(["update", "--target", host.target], env_of(host, bundle), "n")
    assert code == 2, tty + err
    assert "Stop 2 running managed container(s) (m1, m2) and update? [y/N]" in err, err
    assert "[y/N]" not in tty and "update declined; nothing was changed" in err
    assert running(host) == list(MANAGED) and all(markers(host, n) == 0 for n in MANAGED)

    r = inv(["update", "--target", host.target, "--force", "--json"], host, bundle)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["result"] == "updated"  # stdout is the one JSON document
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, r.stderr
    assert warnings[0].startswith("warning: --force: stopping 2 running managed container(s) (m1, m2) because "), \
        warnings[0]
    lines = r.stderr.splitlines()
    assert lines.index(warnings[0]) < lines.index("- stop 2 running managed container(s) in parallel"), r.stderr
    assert running(host) == list(MANAGED) and all(markers(host, n) == 1 for n in MANAGED)
