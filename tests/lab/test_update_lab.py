"""``inv update`` end to end on a systemd lab host reached like a Lima VM: an older Sysbox .deb, an
older dockerd bundle, a drifted unit and running managed containers with data in their volumes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from _update_lab import (
    install_old_bundle,
    install_sysbox_deb,
    inv,
    markers,
    popen_inv,
    run_container,
    sh,
    snapshot,
    states,
    tree_digest,
    volume_dir,
    wait_engine_answers,
)

from ops.lab import NEW_DOCKERD, NEW_SYSBOX, OLD_DOCKERD, OLD_SYSBOX
from ops.lab.bundle import build_sysbox_deb, bundle_dir, docker_tarball, package_version

pytestmark = pytest.mark.lab
MANAGED = ("m1", "m2", "m3")


def all_running(host: Any) -> bool:
    s = states(host)
    return all(s.get(n) == "running" for n in MANAGED)


def journal_text(host: Any) -> str:
    return sh(host, "cat /var/lib/containai-ops/update-journal.json 2>/dev/null || true")


@pytest.fixture
def old_host(lab_host: Any, lab_image: str, tmp_path: Path) -> tuple[Any, Path]:
    """A lab host with an older ContainAI install and three managed containers plus an unmanaged one."""
    host = lab_host()
    tarball = docker_tarball(host, lab_image)
    install_sysbox_deb(host, build_sysbox_deb(OLD_SYSBOX, tmp_path / "old"))
    install_old_bundle(host, tarball, OLD_DOCKERD)
    bundle = bundle_dir(tmp_path / "bundle", tarball, build_sysbox_deb(NEW_SYSBOX, tmp_path / "new"))
    for name in MANAGED:
        run_container(host, name, managed=True, delay=1, data_files=30)
    run_container(host, "u1", managed=False)
    return host, bundle


def test_update_refuses_dry_runs_upgrades_and_resumes(old_host: tuple[Any, Path], tmp_path: Path) -> None:
    host, bundle = old_host
    assert "0.6.6" in snapshot(host) and OLD_DOCKERD in sh(host, "cat /opt/containai/VERSION")
    volumes = {n: tree_digest(volume_dir(host, n)) for n in MANAGED}
    assert all(len(v) == 31 for v in volumes.values())
    before = snapshot(host)

    # 1. steps needed, managed containers running, no --stop-containers: exit 2, nothing changes
    refused = inv(["update", "--target", host.target], host, bundle)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    for name in MANAGED:
        assert f"    {name}  t-busy  running" in refused.stdout
    assert "--stop-containers" in refused.stderr and refused.stderr.count("\n") == 1
    assert "because" in refused.stdout and f"install Sysbox {package_version(NEW_SYSBOX)}" in refused.stdout
    assert snapshot(host) == before

    # 2. --dry-run: the plan, the containers, "would" lines; facts identical
    dry = inv(["update", "--target", host.target, "--dry-run"], host, bundle)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would install dockerd bundle 20.10.99" in dry.stdout
    assert "would stop 3 running managed container(s)" in dry.stdout
    assert "dry run: nothing was changed" in dry.stdout
    assert snapshot(host) == before
    # --commands: every command the update would run, in order, in the text (stderr with --json) and JSON
    cmds = inv(["update", "--target", host.target, "--dry-run", "--commands", "--json"], host, bundle)
    assert cmds.returncode == 0, cmds.stdout + cmds.stderr
    listed = [c["command"] for step in json.loads(cmds.stdout)["commands"] for c in step["commands"]]
    assert listed[0] == "mktemp -d /tmp/containai-ops.XXXXXX"
    assert any(c.endswith(" stop -t 100 m1 m2 m3") for c in listed)
    assert any("apt-get install" in c and " -s /tmp/containai-ops.XXXXXX/" in c for c in listed)
    assert "  root#  systemctl reset-failed containai-docker.service 2>/dev/null; " in cmds.stderr
    assert snapshot(host) == before

    # 3. --stop-containers: all three upgraded, containers run again, volumes byte-identical
    done = inv(["update", "--target", host.target, "--stop-containers", "--json"], host, bundle)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["result"] == "updated" and sorted(report["restarted"]) == list(MANAGED)
    assert report["after"]["drift"] == [] and report["after"]["sysbox"]["installed"] == NEW_SYSBOX
    assert "version: \t0.6.7+containai.20260101" in sh(host, "sysbox-runc --version")
    assert sh(host, "cat /opt/containai/VERSION").strip() == NEW_DOCKERD
    assert sh(host, "readlink /opt/containai/bin/dockerd").strip() == f"/opt/containai/docker/{NEW_DOCKERD}/dockerd"
    assert "/opt/containai/bin/dockerd" in sh(host, "ps -o args= -C dockerd")
    assert sh(host, "systemctl is-active containai-docker containai-docker-guard sysbox").split() == ["active"] * 3
    assert all_running(host)
    for name in MANAGED:
        assert markers(host, name) == 1, name  # stopped once, gracefully (SIGTERM trap ran)
        assert tree_digest(volume_dir(host, name)) == volumes[name], name
    assert journal_text(host) == ""
    daemon = json.loads(sh(host, "cat /etc/containai/docker/daemon.json"))
    assert daemon["bridge"] == "none" and daemon["hosts"] == ["unix:///var/run/containai-docker.sock"]

    # 4. nothing left to do: up to date, nothing stopped
    again = inv(["update", "--target", host.target], host, bundle)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr
    assert all(markers(host, n) == 1 for n in MANAGED)

    # 5. killed mid-way, then --resume: every previously running container runs again
    sh(host, "printf '# local edit\\n' >> /etc/systemd/system/containai-docker.service")
    proc = popen_inv(["update", "--target", host.target, "--stop-containers"], host, bundle)
    try:
        deadline = time.monotonic() + 120
        while '"stop-containers"' not in journal_text(host).split('"done"')[-1]:
            assert proc.poll() is None, f"update ended before it could be killed: {proc.communicate()[0]}"
            assert time.monotonic() < deadline, "the journal never recorded the stop"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_engine_answers(host)  # a restart it began finishes on the host
    journal = json.loads(journal_text(host))
    assert sorted(journal["containers"]) == list(MANAGED)
    assert not all_running(host)
    resumed = inv(["update", "--target", host.target, "--resume"], host, bundle)
    assert resumed.returncode in (0, 2), resumed.stdout + resumed.stderr
    assert "resuming: 3 container(s)" in resumed.stdout
    assert all_running(host)
    assert json.loads(journal_text(host) or "null") is None or resumed.returncode == 2
    # finish the interrupted update
    final = inv(["update", "--target", host.target, "--stop-containers"], host, bundle)
    assert final.returncode == 0, final.stdout + final.stderr
    assert all_running(host) and journal_text(host) == ""
    for name in MANAGED:
        assert tree_digest(volume_dir(host, name)) == volumes[name], name


def test_update_bad_input(old_host: tuple[Any, Path], tmp_path: Path) -> None:
    """Checksum wrong, bundle missing, apt failure, unit dir not writable: one line, non-zero, and
    nothing is stopped, or the containers that were stopped are running again."""
    host, bundle = old_host
    before = snapshot(host)

    # checksum wrong: refused before anything is stopped
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in bundle.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    deb = next(bad.glob("*.deb"))
    (bad / (deb.name + ".sha256")).write_text(f"{'0' * 64}  {deb.name}\n")
    r = inv(["update", "--target", host.target, "--stop-containers"], host, bad)
    assert r.returncode == 1 and "checksum mismatch" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert all_running(host)
    assert journal_text(host) == ""

    # bundle missing
    r = inv(["update", "--target", host.target], host, tmp_path / "nope")
    assert r.returncode == 1 and "does not exist" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert snapshot(host) == before

    # apt would fail (the package needs something apt cannot find): found by apt's simulation on the
    # host before any container stops; nothing changed
    broken = tmp_path / "broken"
    broken.mkdir()
    bundle_dir(broken, next(bundle.glob("docker-*.tgz")),
               build_sysbox_deb(NEW_SYSBOX, tmp_path / "broken-deb", extra_depends="containai-no-such-package"))
    r = inv(["update", "--target", host.target, "--stop-containers"], host, broken)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "apt-get install" in r.stderr and "apt-get update" in r.stderr and r.stderr.count("\n") == 1
    assert "containai-no-such-package" in r.stderr and "nothing was changed" in r.stderr, r.stderr
    assert snapshot(host) == before and journal_text(host) == ""
    assert "0.6.6+containai.20250101" in sh(host, "sysbox-runc --version")

    # state dir not usable: the update lock (taken first) cannot be taken there, nothing is read or stopped
    sh(host, "rm -rf /var/lib/containai-ops && touch /var/lib/containai-ops")
    r = inv(["update", "--target", host.target, "--stop-containers"], host, bundle)
    assert r.returncode == 1 and "cannot take the update lock" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert all_running(host)
    sh(host, "rm -f /var/lib/containai-ops")
    # the journal cannot be written (its temporary name is taken by a directory): nothing is stopped
    sh(host, "mkdir -p /var/lib/containai-ops/.update-journal.json.cai-new/x")
    r = inv(["update", "--target", host.target, "--stop-containers"], host, bundle)
    assert r.returncode == 1 and "cannot write the update journal" in r.stderr, r.stderr
    assert "nothing was stopped" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert all_running(host)
    sh(host, "rm -rf /var/lib/containai-ops/.update-journal.json.cai-new")

    # unit directory not writable (a file where the directory should be)
    r = inv(["update", "--target", host.target, "--stop-containers"], host, bundle,
            extra_env={"INVOKE_CAI_UNIT_DIR": "/etc/hostname"})
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "writing /etc/hostname/containai-docker.service failed" in r.stderr
    assert all_running(host) and journal_text(host) == ""

    # not root (the agent user, no sudo): one line, nothing changed
    agent_home = tmp_path / "lima-agent"
    (agent_home / host.vm).mkdir(parents=True)
    text = Path(host.ssh_config).read_text().replace("User root", "User agent")
    text = text.replace("ssh.sock", "ssh-agent.sock")
    (agent_home / host.vm / "ssh.config").write_text(text)
    r = inv(["update", "--target", host.target, "--stop-containers"], host, bundle,
            extra_env={"INVOKE_CAI_LIMA_HOME": str(agent_home)})
    assert r.returncode == 1 and "needs root" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert all_running(host)

    # engine unreachable (stopped): a plain update says so; --stop-containers would install anyway
    sh(host, "systemctl stop containai-docker")
    r = inv(["update", "--target", host.target], host, bundle)
    assert r.returncode == 1 and "does not answer" in r.stderr and r.stderr.count("\n") == 1, r.stderr
