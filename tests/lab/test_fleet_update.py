"""``inv update`` across platforms and as a fleet, in the lab: three lab hosts, each with an older
Sysbox .deb installed, an older dockerd bundle, a drifted unit and a running managed container with
data. One is reached as the Lima VM of a macOS host (``cai.platform=macos``, target ``local``), one as
a WSL2 host (``ssh://`` with ``cai.platform=wsl2``, since the kernel cannot be faked), one as plain
Linux (``ssh://``). All go through the same facts -> plan -> gate -> apply -> re-check code.

``cai.platform`` is one value per run, so the WSL2 host runs in its own command; the macOS run
keeps its ``ssh://`` host detected (linux).
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _cli
import pytest
from _cli import ssh_config
from _update_lab import (
    install_old_bundle,
    install_sysbox_deb,
    markers,
    run_container,
    sh,
    snapshot,
    states,
    tree_digest,
    volume_dir,
)

from ops.lab import NEW_DOCKERD, NEW_SYSBOX, OLD_DOCKERD, OLD_SYSBOX
from ops.lab.bundle import build_sysbox_deb, bundle_dir, docker_tarball, package_version, write_sha256

pytestmark = pytest.mark.lab
NEWER_SYSBOX = "0.6.8+containai.20260201"
AGENT = "agent"  # the managed container of every host
#: Outside the lab's address range (127.0.0.10 .. 127.0.0.250): nothing listens there.
DOWN_ADDRESS = "127.0.0.254"
JOURNAL = "/var/lib/containai-ops/update-journal.json"


# --- helpers ------------------------------------------------------------------------------------------

def arm64_twin(deb: Path, out_dir: Path) -> Path:
    """A real arm64 package of the same content (Architecture field and file name), with its .sha256."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tree = out_dir / ".tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, capture_output=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(control.read_text().replace("Architecture: amd64", "Architecture: arm64"))
    dest = out_dir / deb.name.replace("_amd64.deb", "_arm64.deb")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(tree), str(dest)],
                   check=True, capture_output=True)
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    write_sha256(dest)
    return dest


def add(bundle: Path, *files: Path) -> None:
    """Copy packages (and their .sha256) into a bundle directory."""
    for f in files:
        for p in (f, f.with_name(f.name + ".sha256")):
            (bundle / p.name).write_bytes(p.read_bytes())


def inv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``inv <args>`` from the repository root, no TTY; never a traceback."""
    r = _cli.inv(*args, env=env)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-2000:]
    return r


def targets_args(*targets: str) -> list[str]:
    return [a for t in targets for a in ("--target", t)]


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """The error line of a failed single-target run (exactly one line on stderr)."""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    return r.stderr


def sysbox_on(host: Any) -> str:
    """The Sysbox version the host's own sysbox-runc prints."""
    out = sh(host, "sysbox-runc --version")
    line = next(x for x in out.splitlines() if x.strip().startswith("version:"))
    return line.split(":", 1)[1].strip()


def journal(host: Any) -> str:
    return sh(host, f"cat {JOURNAL} 2>/dev/null || true")


def lab_container(lab_engine: str, host: Any) -> tuple[str, str]:
    """(id, StartedAt) of the container that *is* the host: a recreated or rebooted VM changes it."""
    import docker

    client = docker.DockerClient(base_url=lab_engine)
    try:
        c = client.containers.get(host.container)
        return c.id, c.attrs["State"]["StartedAt"]
    finally:
        client.close()


def prepare(host: Any, tarball: Path, old_deb: Path) -> None:
    """An older ContainAI install (old Sysbox .deb, old dockerd bundle, the old installer's drifted unit)
    and one running managed container with data in its volume."""
    install_sysbox_deb(host, old_deb)
    install_old_bundle(host, tarball, OLD_DOCKERD)
    run_container(host, AGENT, managed=True, delay=1, data_files=12)


# --- the test -----------------------------------------------------------------------------------------

def test_update_lima_wsl2_linux_and_serial_fleet(lab_host: Any, lab_image: str, lab_engine: str,
                                                  tmp_path: Path) -> None:
    # bundles: the amd64 .deb of NEW beside a newer arm64 decoy; an arm64-only one; a Sysbox-only one
    old_deb = build_sysbox_deb(OLD_SYSBOX, tmp_path / "old")
    new_deb = build_sysbox_deb(NEW_SYSBOX, tmp_path / "new")
    newer_deb = build_sysbox_deb(NEWER_SYSBOX, tmp_path / "newer")
    decoy = arm64_twin(newer_deb, tmp_path / "arm64")
    assert decoy.name == f"sysbox-ce_{package_version(NEWER_SYSBOX)}_arm64.deb"

    with ThreadPoolExecutor(3) as pool:
        vm, wsl, linux = list(pool.map(lambda _: lab_host(), range(3)))
    tarball = docker_tarball(vm, lab_image)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda h: prepare(h, tarball, old_deb), (vm, wsl, linux)))
    hosts = {"vm": vm, "wsl": wsl, "linux": linux}

    bundle = bundle_dir(tmp_path / "bundle", tarball, new_deb)
    add(bundle, decoy)
    arm_only = tmp_path / "arm-only"
    arm_only.mkdir()
    add(arm_only, decoy, bundle / f"docker-{NEW_DOCKERD}.tgz")
    sysbox_only = bundle_dir(tmp_path / "sysbox-only", tarball, newer_deb)

    config = ssh_config(tmp_path / "ssh_config", vm.key)
    base = {k: v for k, v in os.environ.items() if k != "LIMA_HOME" and not k.startswith("INVOKE_CAI_")}
    base.update({"INVOKE_CAI_LIMA_HOME": vm.lima_home, "INVOKE_CAI_BUNDLE_DIR": str(bundle),
                 "INVOKE_CAI_SSH_CONFIG": str(config), "COLUMNS": "200"})
    mac = {**base, "INVOKE_CAI_PLATFORM": "macos", "INVOKE_CAI_LIMA_VM": vm.vm}
    wsl2 = {**base, "INVOKE_CAI_PLATFORM": "wsl2"}
    vm_name = f"lima:{vm.vm}"
    wsl_t = f"ssh://root@{wsl.address}:{wsl.port}"
    linux_t = f"ssh://root@{linux.address}:{linux.port}"

    for host in hosts.values():
        assert sysbox_on(host) == OLD_SYSBOX and sh(host, "cat /opt/containai/VERSION").strip() == OLD_DOCKERD
        assert states(host) == {AGENT: "running"}
    volumes = {k: tree_digest(volume_dir(h, AGENT)) for k, h in hosts.items()}
    assert all(len(v) == 13 for v in volumes.values())
    sh(vm, "touch /run/cai-test-vm-boot")  # tmpfs: gone if the VM were recreated or rebooted
    vm_container = lab_container(lab_engine, vm)
    before = {k: snapshot(h) for k, h in hosts.items()}

    # (a) the gate refuses on each host while its managed container runs: exit 2, nothing changed
    r = inv(mac, "update", "--json", *targets_args("local", linux_t))
    assert r.returncode == 2, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert [(t["target"], t["exit_code"]) for t in doc["targets"]] == [("local", 2), (linux_t, 2)], doc
    assert all("managed container(s) are running (agent)" in t["summary"] and "--stop-containers" in t["summary"]
               for t in doc["targets"])
    r = inv(wsl2, "update", "--target", wsl_t)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"    {AGENT}  t-busy  running" in r.stdout and "--stop-containers" in one_line(r)
    assert {k: snapshot(h) for k, h in hosts.items()} == before

    # (b) the .deb is chosen by the architecture read on each target: amd64 NEW, never the newer arm64 decoy
    plans = {}
    r = inv(mac, "update", "--dry-run", "--json", *targets_args("local", linux_t))
    assert r.returncode == 0, r.stdout + r.stderr
    for key, t in zip(("vm", "linux"), json.loads(r.stdout)["targets"], strict=True):
        plans[key] = t["detail"]
    r = inv(wsl2, "update", "--dry-run", "--json", "--target", wsl_t)
    assert r.returncode == 0, r.stdout + r.stderr
    plans["wsl"] = json.loads(r.stdout)
    assert {k: (p["target"], p["platform"]) for k, p in plans.items()} == {
        "vm": (vm_name, "macos"), "linux": (linux_t, "linux"), "wsl": (wsl_t, "wsl2")}
    for key, p in plans.items():
        assert p["before"]["arch"] == "amd64" and p["before"]["sysbox"] == {
            "installed": OLD_SYSBOX, "bundled": package_version(NEW_SYSBOX)}, key
        step = next(s for s in p["plan"]["steps"] if s["action"] == "install-sysbox")
        assert Path(step["deb"]).name == f"sysbox-ce_{package_version(NEW_SYSBOX)}_amd64.deb", (key, step)
        assert [c["name"] for c in p["plan"]["stop"]] == [AGENT]
    # ... read inside the VM (`uname` there), not on this machine: a VM whose uname says aarch64 (for any
    # flags: -m, -a, -srm) gets arm64
    sh(vm, "printf '#!/bin/sh\\n/bin/uname \"$@\" | sed s/x86_64/aarch64/g\\n' "
           "> /usr/local/bin/uname && chmod 0755 /usr/local/bin/uname")
    try:
        r = inv(mac, "update", "--dry-run", "--json")
    finally:
        sh(vm, "rm -f /usr/local/bin/uname")
    assert r.returncode == 0, r.stdout + r.stderr
    arm = json.loads(r.stdout)
    assert arm["target"] == vm_name and arm["before"]["arch"] == "arm64"
    assert Path(next(s for s in arm["plan"]["steps"] if s["action"] == "install-sysbox")["deb"]).name == decoy.name
    assert {k: snapshot(h) for k, h in hosts.items()} == before

    # bad input on the VM: one line naming the target and the cause, nothing changed
    r = inv({**mac, "INVOKE_CAI_BUNDLE_DIR": str(arm_only)}, "update", "--stop-containers")
    assert r.returncode == 1, r.stdout + r.stderr
    line = one_line(r)
    assert f"{vm_name} is amd64" in line and "no sysbox-ce_*_amd64.deb" in line and decoy.name in line, line
    down_home = tmp_path / "lima-down"
    (down_home / vm.vm).mkdir(parents=True)
    text = Path(vm.ssh_config).read_text().replace(f"Hostname {vm.address}", f"Hostname {DOWN_ADDRESS}")
    (down_home / vm.vm / "ssh.config").write_text(text.replace("ControlMaster auto", "ControlMaster no"))
    r = inv({**mac, "INVOKE_CAI_LIMA_HOME": str(down_home)}, "update", "--stop-containers")
    assert r.returncode == 1, r.stdout + r.stderr
    line = one_line(r)
    assert f"Lima VM '{vm.vm}' does not answer" in line and f"limactl start {vm.vm}" in line, line
    r = inv({**mac, "INVOKE_CAI_LIMA_VM": "no-such-vm"}, "update")
    assert r.returncode == 1 and "Lima VM 'no-such-vm' not found" in one_line(r), r.stderr
    # the copy inside the VM does not match its checksum: refused there before any container stops
    sh(vm, "printf '#!/bin/sh\\ncase \"$1\" in /tmp/containai-ops.*) echo %s \"$1\"; exit 0;; esac\\n"
           "exec /usr/bin/sha256sum \"$@\"\\n' > /usr/local/bin/sha256sum && chmod 0755 /usr/local/bin/sha256sum"
       % ("0" * 64))
    try:
        r = inv(mac, "update", "--stop-containers")
    finally:
        sh(vm, "rm -f /usr/local/bin/sha256sum")
    assert r.returncode == 1, r.stdout + r.stderr
    line = one_line(r)
    assert f"on lima-{vm.vm} does not match its checksum" in line, line
    assert states(vm) == {AGENT: "running"} and journal(vm) == "" and markers(vm, AGENT) == 0
    assert sysbox_on(vm) == OLD_SYSBOX and sh(vm, "cat /opt/containai/VERSION").strip() == OLD_DOCKERD
    assert sh(vm, "ls /opt/containai/docker; ls -A /tmp | grep containai-ops || true").split() == [OLD_DOCKERD]
    for key in ("wsl", "linux"):
        assert snapshot(hosts[key]) == before[key]

    # (c) --stop-containers upgrades every host to the bundled versions; the containers run again
    mac_run = _cli.popen_inv("update", "--stop-containers", "--json", *targets_args("local", linux_t), env=mac)
    try:
        r = inv(wsl2, "update", "--stop-containers", "--json", "--target", wsl_t)
    finally:
        out, err = mac_run.communicate(timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert mac_run.returncode == 0, out + err
    reports = {"wsl": json.loads(r.stdout)}
    for key, t in zip(("vm", "linux"), json.loads(out)["targets"], strict=True):
        assert t["ok"] and t["summary"] == "updated", t
        reports[key] = t["detail"]
    for key, host in hosts.items():
        rep = reports[key]
        assert rep["result"] == "updated" and rep["restarted"] == [AGENT], (key, rep)
        assert rep["after"]["sysbox"]["installed"] == NEW_SYSBOX and rep["after"]["drift"] == [], (key, rep)
        assert sysbox_on(host) == NEW_SYSBOX, key  # re-read on the host itself
        assert sh(host, "dpkg-query -W -f='${Version}' sysbox-ce").strip() == package_version(NEW_SYSBOX)
        assert sh(host, "cat /opt/containai/VERSION").strip() == NEW_DOCKERD
        assert sh(host, "systemctl is-active containai-docker containai-docker-guard sysbox").split() == ["active"] * 3
        assert states(host) == {AGENT: "running"}, key
        # stopped gracefully by the update, once (the failed attempts before it stopped nothing)
        assert markers(host, AGENT) == 1, key
        assert tree_digest(volume_dir(host, AGENT)) == volumes[key], key
        assert journal(host) == ""
    assert [reports[k]["platform"] for k in ("vm", "wsl", "linux")] == ["macos", "wsl2", "linux"]
    # the VM was updated in place: same VM, never recreated or rebooted
    assert lab_container(lab_engine, vm) == vm_container
    assert sh(vm, "ls /run/cai-test-vm-boot").strip() == "/run/cai-test-vm-boot"

    # (d) a Sysbox-only rolling update that fails on the second host (apt refuses: the package is held
    # there): the first is updated, the second reports that apt would fail before it stops anything,
    # the third is skipped and untouched; exit non-zero, all three in the JSON
    sh(wsl, "apt-mark hold sysbox-ce >/dev/null")
    dockerd_link = sh(vm, "readlink /opt/containai/bin/dockerd")
    mid = {k: snapshot(h) for k, h in hosts.items()}
    serial = {**mac, "INVOKE_CAI_BUNDLE_DIR": str(sysbox_only)}
    r = inv(serial, "update", "--serial", "--stop-containers", "--json", *targets_args("local", wsl_t, linux_t))
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["mode"] == "serial" and doc["exit"] == 1
    first, second, third = doc["targets"]
    assert [t["target"] for t in doc["targets"]] == ["local", wsl_t, linux_t]
    assert first["ok"] and first["summary"] == "updated", first
    assert [s["action"] for s in first["detail"]["plan"]["steps"]] == [
        "stop-containers", "install-sysbox", "restart-sysbox", "restart-engine", "start-containers"]
    assert not second["ok"] and not second["skipped"] and second["exit_code"] == 1, second
    assert "apt-get install" in second["summary"] and "held" in second["summary"].lower(), second
    assert "nothing was changed" in second["summary"], second
    assert third["skipped"] and not third["ok"] and "skipped" in third["summary"], third
    # first: Sysbox-only, in place
    assert sysbox_on(vm) == NEWER_SYSBOX and states(vm) == {AGENT: "running"}
    assert sh(vm, "readlink /opt/containai/bin/dockerd") == dockerd_link
    assert sh(vm, "cat /opt/containai/VERSION").strip() == NEW_DOCKERD
    assert lab_container(lab_engine, vm) == vm_container
    assert sh(vm, "ls /run/cai-test-vm-boot").strip() == "/run/cai-test-vm-boot"
    # second: refused before anything changed (its container was never stopped), no journal
    assert snapshot(wsl) == mid["wsl"] and markers(wsl, AGENT) == 1
    assert sysbox_on(wsl) == NEW_SYSBOX
    assert (sh(wsl, "dpkg-query -W -f='${Version} ${Status}' sysbox-ce").strip()
            == f"{package_version(NEW_SYSBOX)} hold ok installed")
    assert states(wsl) == {AGENT: "running"} and journal(wsl) == ""
    # third: untouched
    assert snapshot(linux) == mid["linux"] and sysbox_on(linux) == NEW_SYSBOX

    # the same rollout as a table: the VM is up to date now, the held host stops it again (the gate
    # refuses without --stop-containers), the third is skipped
    r = inv(serial, "update", "--serial", *targets_args("local", wsl_t, linux_t))
    assert r.returncode == 2, r.stdout + r.stderr
    rows = {t: next((line for line in r.stdout.splitlines() if f" {t} " in line), "")
            for t in ("local", wsl_t, linux_t)}
    assert all(rows.values()), r.stdout
    assert " ok " in rows["local"] and "up-to-date" in rows["local"]
    assert "exit 2" in rows[wsl_t] and "skipped" in rows[linux_t]
    assert snapshot(linux) == mid["linux"]
    sh(wsl, "apt-mark unhold sysbox-ce >/dev/null")
    for key, host in hosts.items():
        assert tree_digest(volume_dir(host, AGENT)) == volumes[key], key
