"""``inv repair`` on other hosts: a Lima VM reached from a Mac (``lima:<vm>``, the *lima-vm* layout: the
VM's docker.service, data root ``/var/lib/docker``) and a Linux host reached as ``ssh://`` (the
*containai* layout). The walk runs on the engine host, under its own python3, as root.

The Mac side is faked at the thinnest seam, as the other lab tests do: ``cai.platform=macos`` and a
``LIMA_HOME`` holding the ssh.config Lima writes for the VM. As on a real Lima VM, the login user is not
root (``agent``, passwordless sudo, in the docker group). The lab image has no python3 (a minimal
Debian): the hosts get Debian's python3 packages (downloaded on this machine, installed with dpkg), and
the host without them shows what a host without python3 answers.

Damage is made for real on the engine's volumes (the lab host's data root is a folder of this
machine): entries owned by 65534 in a managed container's volume, a root-owned file beside them, and
the same damage in an unmanaged container's volume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _debs
import pytest
from _cli import inv

pytestmark = pytest.mark.lab

NOBODY = 65534
MANAGED, OTHER = "rep-agent", "rep-other"
DAMAGED = ("d", "d/f1", "d/f2", "top")  # relative to the volume's _data, made 65534:65534


def sh(host: Any, command: str, timeout: int = 300) -> str:
    from ops.lab.hosts import run

    code, out, err = run(host, command, timeout=timeout)
    assert code == 0, f"{command[:100]!r} exited {code} on {host.name}: {err.strip()[-600:]} {out.strip()[-300:]}"
    return out


@pytest.fixture(scope="module")
def python_debs(lab_engine: str, lab_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's python3 and what it needs beyond the lab image."""
    return _debs.download(tmp_path_factory.mktemp("python-debs"), lab_engine, lab_image, ["python3"])


def install_python(host: Any, debs: Path, lab_engine: str) -> None:
    """Install Debian's python3 on the host."""
    _debs.install(host, debs, lab_engine, "python3 -c 'import ctypes'")


@pytest.fixture
def rep_host(lab_host: Callable[..., Any]) -> Callable[..., Any]:
    """Factory of lab hosts named ``rep-<hex>`` (``layout=`` as ``ops.lab.hosts.up``), removed afterwards."""
    return lambda layout: lab_host(prefix="rep", layout=layout)


def containers(host: Any) -> tuple[Path, Path]:
    """A managed and an unmanaged container on the host's engine, each with a volume; damage in both,
    and a root-owned file in the managed one. Returns the two volumes' folders on this machine."""
    from ops.lab.containers import run_script

    sh(host, run_script(MANAGED, True, host.docker) + run_script(OTHER, False, host.docker))
    folders = []
    for name in (MANAGED, OTHER):
        data = Path(host.data_dir) / "volumes" / f"{name}-vol" / "_data"
        (data / "d").mkdir()
        for rel in ("d/f1", "d/f2", "top", "rootfile"):
            (data / rel).write_text(rel)
        for rel in DAMAGED:
            os.chown(data / rel, NOBODY, NOBODY)
        os.chown(data / "rootfile", 0, 0)
        folders.append(data)
    return folders[0], folders[1]


def owners(data: Path) -> dict[str, tuple[int, int]]:
    return {rel: (st.st_uid, st.st_gid) for rel in (*DAMAGED, "rootfile") for st in [os.lstat(data / rel)]}


def damaged_state() -> dict[str, tuple[int, int]]:
    return {**dict.fromkeys(DAMAGED, (NOBODY, NOBODY)), "rootfile": (0, 0)}


def repaired_state() -> dict[str, tuple[int, int]]:
    return {**dict.fromkeys(DAMAGED, (1000, 1000)), "rootfile": (0, 0)}


def mac_lima_home(host: Any, folder: Path) -> Path:
    """A LIMA_HOME for the Mac side whose ssh.config logs in as ``agent`` (not root), as Lima does; the
    host lets agent use sudo without a password and the engine socket (docker group)."""
    sh(host, "install -d -o agent -g agent -m 700 /home/agent/.ssh && "
             "install -o agent -g agent -m 600 /root/.ssh/authorized_keys /home/agent/.ssh/authorized_keys && "
             "echo 'agent ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/lima && chmod 440 /etc/sudoers.d/lima && "
             "usermod -aG docker agent")
    vm_dir = folder / host.vm
    vm_dir.mkdir(parents=True)
    text = Path(host.ssh_config).read_text().replace("  User root\n", "  User agent\n")
    text = text.replace(str(Path(host.ssh_config).parent / "ssh.sock"), str(vm_dir / "ssh.sock"))
    assert "  User agent\n" in text
    (vm_dir / "ssh.config").write_text(text)
    return folder


def test_repair_from_a_mac_through_the_lima_vm(rep_host: Callable[..., Any], python_debs: Path,
                                               lab_engine: str, tmp_path: Path) -> None:
    host = rep_host("lima-vm")
    install_python(host, python_debs, lab_engine)
    managed, other = containers(host)
    assert "/var/lib/docker" in sh(host, f"{host.docker} info --format '{{{{.DockerRootDir}}}}'")
    env = {"INVOKE_CAI_PLATFORM": "macos", "INVOKE_CAI_LIMA_HOME": str(mac_lima_home(host, tmp_path / "mac-lima")),
           "INVOKE_CAI_LIMA_VM": host.vm}

    # doctor on the Mac sees the damage inside the VM (it said "not checked" before)
    doc = json.loads(inv("doctor", "--json", env=env, timeout=300).stdout)
    damaged = [f for f in doc["findings"] if f["code"] == "ownership.damaged"]
    assert [f["data"]["volume"] for f in damaged] == [f"{MANAGED}-vol"], doc["findings"]
    assert damaged[0]["target"] == host.target and f"--target {host.target}" in damaged[0]["hint"]

    # --dry-run from the Mac (no --target: the default Lima VM) counts and changes nothing
    dry = inv("repair", "--all", "--dry-run", env=env, timeout=300)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"volume {MANAGED}-vol ({MANAGED}): would repair 4 of 6 entries to 1000:1000" in dry.stdout, dry.stdout
    assert OTHER not in dry.stdout and "not supported" not in dry.stdout + dry.stderr
    assert owners(managed) == damaged_state() and owners(other) == damaged_state()

    # the repair, from the Mac, as doctor --fix runs it: the managed volume only, root-owned files untouched
    fixed = inv("doctor", "--fix", "--json", env=env, timeout=300)
    doc = json.loads(fixed.stdout)
    assert doc["fix"]["targets"] == [host.target] and doc["fix"]["exit_code"] == 0, doc["fix"]
    assert any(line.startswith(f"volume {MANAGED}-vol ({MANAGED}): scanned 6, repaired 4 to 1000:1000 (id agent")
               for line in doc["fix"]["output"]), doc["fix"]
    assert not [f for f in doc["findings"] if f["code"] == "ownership.damaged"]  # checked again after the fix
    assert owners(managed) == repaired_state()
    assert owners(other) == damaged_state(), "an unmanaged container's volume was touched"

    again = inv("repair", "--container", MANAGED, "--target", host.target, env=env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"volume {MANAGED}-vol ({MANAGED}): scanned 6, repaired 0 to 1000:1000" in again.stdout, again.stdout


def test_repair_on_an_ssh_host(rep_host: Callable[..., Any], python_debs: Path, lab_engine: str,
                               tmp_path: Path) -> None:
    from ops.lab.hosts import proxy_command

    host = rep_host("containai")
    managed, other = containers(host)
    alias = f"{host.name}.lab"
    config = tmp_path / "ssh_config"
    config.write_text("\n".join([
        f"Host {alias}", f"  ProxyCommand {proxy_command(host.container, lab_engine)}", f'  IdentityFile "{host.key}"',
        "  IdentitiesOnly yes", "  StrictHostKeyChecking no", "  UserKnownHostsFile /dev/null", "  BatchMode yes",
        "  LogLevel ERROR", ""]))
    target = f"ssh://root@{alias}:22"
    env = {"INVOKE_CAI_SSH_CONFIG": str(config), "INVOKE_CAI_LIMA_HOME": str(tmp_path / "no-lima")}

    # no python3 on the host: one line and exit 1; doctor says the ownership could not be checked
    bare = inv("repair", "--all", "--target", target, env=env, timeout=300)
    assert bare.returncode == 1 and "Traceback" not in bare.stderr, bare.stderr
    assert bare.stderr.strip().splitlines() == [
        f"error: {target} has no python3: repair walks the volumes on the engine host with its python3: "
        "install python3 there (apt-get install python3), then rerun"], bare.stderr
    doc = json.loads(inv("doctor", "--json", "--target", target, env=env, timeout=300).stdout)
    assert [f["message"] for f in doc["findings"] if f["code"] == "ownership.not-checked"] == [
        f"volume ownership not checked: {target} has no python3: repair walks the volumes on the engine host "
        "with its python3"]
    assert owners(managed) == damaged_state()

    install_python(host, python_debs, lab_engine)
    dry = inv("repair", "--all", "--dry-run", "--target", target, env=env, timeout=300)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"volume {MANAGED}-vol ({MANAGED}): would repair 4 of 6 entries to 1000:1000" in dry.stdout, dry.stdout
    assert "  would chown top [file] 65534:65534 -> 1000:1000" in dry.stdout
    doctor = inv("doctor", "--repair", "--dry-run", "--target", target, env=env, timeout=300)
    assert doctor.returncode == 0 and doctor.stdout == dry.stdout, doctor.stdout + doctor.stderr
    assert owners(managed) == damaged_state()

    # a fleet: this host and one that does not answer; a result per target, the others go on
    down = "ssh://root@127.0.0.254:2222"
    fleet = inv("repair", "--all", "--json", "--target", target, "--target", down, env=env, timeout=300)
    assert fleet.returncode == 1, fleet.stdout + fleet.stderr
    result = {t["target"]: t for t in json.loads(fleet.stdout)["targets"]}
    assert result[down]["exit_code"] == 1 and not result[down]["ok"]
    assert result[target]["ok"] and result[target]["summary"] == "repaired 4 entries in 1 volume(s)"
    (volume,) = result[target]["detail"]["volumes"]
    assert (volume["volume"], volume["owner"], volume["repaired"], volume["failed"]) == (
        f"{MANAGED}-vol", "1000:1000", 4, False)
    assert f"[{target}] volume {MANAGED}-vol ({MANAGED}): scanned 6, repaired 4" in fleet.stderr
    assert owners(managed) == repaired_state()
    assert owners(other) == damaged_state(), "an unmanaged container's volume was touched"
