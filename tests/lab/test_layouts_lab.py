"""Hosts as the ContainAI installer leaves them, in the lab: the containai layout (its unit, its
daemon.json with ``bridge: cai0`` and sysbox-runc as the default runtime, the bundle in /opt/containai)
on a network namespace of its own, updated with ``inv update --stop-containers`` and then rebooted
(``docker restart`` of the lab host); and the lima-vm layout (docker.service). The bridge exists only
inside the lab host's namespace."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from _cli import inv

from ops.lab.containers import run_script

pytestmark = pytest.mark.lab

BRIDGE_MISSING = "bridge device with non default name cai0 must be created manually"


def sh(host: Any, command: str, timeout: int = 300, check: bool = True) -> str:
    from ops.lab.hosts import run

    code, out, err = run(host, command, timeout=timeout)
    if check:
        assert code == 0, f"{command[:120]!r} exited {code}: {err.strip()[-600:]} {out.strip()[-300:]}"
    return out


def digest(path: Path) -> dict[str, str]:
    """sha256 of every regular file under path (relative names)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def reboot(host: Any, lab_engine: str) -> None:
    from ops.lab.hosts import reboot as lab_reboot

    lab_reboot(host, lab_engine)


def unit_state(host: Any, unit: str, want: str, timeout: float = 90) -> str:
    """Poll ``systemctl is-active`` until it reads ``want`` (or time is up); return the last state."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = sh(host, f"systemctl is-active {unit}", check=False).strip()
        if state == want:
            break
        time.sleep(1)
    return state


def machine_has_no_cai0() -> bool:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return not any(line.split(":")[1].strip().split("@")[0] == "cai0" for line in out.splitlines() if ":" in line)


def start_managed(host: Any, name: str) -> Path:
    """A managed container with data in its volume; returns the volume's folder on this machine."""
    sh(host, run_script(name, True, host.docker))
    sh(host, f"{host.docker} exec {name} sh -c 'for i in $(seq 1 40); do seq 1 $i > /data/file-$i; done'")
    return Path(host.data_dir) / "volumes" / f"{name}-vol" / "_data"


def test_containai_host_survives_update_and_reboot(lab_host: Any, lab_engine: str, lab_image: str,
                                                   tmp_path: Path) -> None:
    from ops.lab.bundle import make_bundle

    host = lab_host(layout="containai")
    assert sh(host, "ip -o -4 addr show dev cai0").split()[3] == "172.30.0.1/16"
    assert machine_has_no_cai0()
    volume = start_managed(host, "agent-1")
    before = digest(volume)
    bundle = make_bundle(host, lab_image, tmp_path / "bundle")
    env = {"INVOKE_CAI_LIMA_HOME": host.lima_home, "INVOKE_CAI_BUNDLE_DIR": str(bundle)}

    r = inv("update", "--stop-containers", "--target", host.target, env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sh(host, f"{host.docker} inspect -f '{{{{.State.Running}}}}' agent-1").strip() == "true"
    config = sh(host, "cat /etc/containai/docker/daemon.json")
    assert '"bridge": "cai0"' in config and '"default-runtime": "sysbox-runc"' in config

    reboot(host, lab_engine)
    state = unit_state(host, "containai-docker", "active")
    journal = sh(host, "journalctl -b -u containai-docker --no-pager | tail -n 20", check=False)
    assert state == "active", journal
    assert sh(host, "ip -o -4 addr show dev cai0").split()[3] == "172.30.0.1/16"
    assert unit_state(host, "containai-docker-guard", "active") == "active"
    info = sh(host, f"{host.docker} info --format '{{{{.DefaultRuntime}}}}'").strip()
    assert info == "sysbox-runc"
    # the stop hook stopped the container gracefully at shutdown: exit 0, its data byte-identical
    out = sh(host, f"{host.docker} inspect -f '{{{{.State.Status}}}} {{{{.State.ExitCode}}}}' agent-1").split()
    assert out[1] == "0", out
    assert digest(volume) == before
    sh(host, f"{host.docker} start agent-1")
    assert machine_has_no_cai0()


def test_without_the_bridge_step_the_reboot_fails(lab_host: Any, lab_engine: str) -> None:
    """The failure mode is real: the toolkit's unit without the step that makes the bridge named in
    daemon.json leaves dockerd refusing to start after a reboot."""
    from ops import units
    from ops.config import CaiConfig
    from ops.lab.hosts import connection

    host = lab_host(layout="containai")
    installed = sh(host, "cat /etc/containai/docker/daemon.json")
    engine = next(f for f in units.render(CaiConfig.from_mapping({}), installed)
                  if f.name == "containai-docker.service")
    stripped = "\n".join(line for line in engine.text.splitlines()
                         if not (line.startswith("ExecStartPre=") and " ip " in f" {line} ")) + "\n"
    assert "ip link add" not in stripped
    import io

    c = connection(host)
    try:
        c.put(io.StringIO(stripped), "/etc/systemd/system/containai-docker.service")
    finally:
        c.close()
    sh(host, "systemctl daemon-reload")
    reboot(host, lab_engine)
    deadline = time.monotonic() + 90
    journal = ""
    while time.monotonic() < deadline and BRIDGE_MISSING not in journal:
        journal = sh(host, "journalctl -b -u containai-docker --no-pager", check=False)
        time.sleep(1)
    assert BRIDGE_MISSING in journal, journal[-1500:]
    assert sh(host, "systemctl is-active containai-docker", check=False).strip() != "active"


def install_deb(host: Any, deb: Path) -> None:
    """apt-get install a .deb in the host, as the Lima template provisions the VM (its apt reads the
    lab's local repository: fuse3 and the other dependencies resolve)."""
    from ops.lab.hosts import connection

    c = connection(host)
    try:
        c.put(str(deb), remote=f"/tmp/{deb.name}")
    finally:
        c.close()
    sh(host, f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/{deb.name} >/dev/null", timeout=600)


def test_doctor_reads_the_lima_vm_layout_without_false_errors(lab_host: Any, tmp_path: Path) -> None:
    """The macOS VM's layout: doctor reads docker.service and its socket, not a containai-docker that
    is not there (no engine.unreachable, dockerd.not-installed, units.drift or engine.unit-inactive)."""
    import json

    from ops.lab import NEW_SYSBOX
    from ops.lab.bundle import build_sysbox_deb

    host = lab_host(layout="lima-vm")
    deb = build_sysbox_deb(NEW_SYSBOX, tmp_path / "bundle")
    install_deb(host, deb)
    sh(host, run_script("agent-1", True, host.docker))
    env = {"INVOKE_CAI_LIMA_HOME": host.lima_home, "INVOKE_CAI_BUNDLE_DIR": str(tmp_path / "bundle")}
    r = inv("doctor", "--json", "--target", host.target, env=env, timeout=300)
    report = json.loads(r.stdout)
    found = {f["code"]: f for f in report["findings"]}
    false = {"engine.unreachable", "dockerd.not-installed", "engine.unit-inactive"} & set(found)
    assert not false, {c: found[c]["message"] for c in false}
    # only the VM's own stop hook (not installed yet: inv update installs it) may drift, never the
    # containai-docker engine unit, its daemon.json or anything in /opt/containai
    drift = {f["data"]["path"] for f in report["findings"] if f["code"] == "units.drift"}
    assert drift <= {"/etc/systemd/system/containai-docker-guard.service", "/usr/local/libexec/containai-guard"}, drift
    assert found["layout.detected"]["data"]["layout"] == "lima-vm"
    assert found["containers.managed"]["data"]["running"] == ["agent-1"]
    assert found["layout.detected"]["data"]["engine_unit"] == "docker.service"
    errors = {c: f["message"] for c, f in found.items() if f["severity"] == "error"}
    assert r.returncode == 0 and not errors, errors
