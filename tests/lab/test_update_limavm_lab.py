"""``inv update`` on the *lima-vm* layout (the macOS VM: the distribution's ``docker.service`` on
``/var/run/docker.sock``, Sysbox from its .deb, no containai-docker, no ``/opt/containai``), on a lab host
in that layout reached as ``lima:<vm>``, with a running managed container.

The bundle holds a dockerd tarball too (one bundle serves every platform): on this layout the update
must ignore it and upgrade Sysbox inside the VM only, gated on the VM engine's managed containers, then
install the stop hook into docker.service, so that ``systemctl stop docker`` stops the managed
containers gracefully first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from _update_lab import TRAP, exit_code_on_disk, inv, sh

from ops.lab import NEW_SYSBOX, OLD_SYSBOX
from ops.lab.bundle import build_sysbox_deb, bundle_dir, docker_tarball, package_version
from ops.lab.containers import image_script

pytestmark = pytest.mark.lab
NAME = "agent-1"
GUARD = "containai-docker-guard.service"
#: Everything an update could change in the VM.
SNAPSHOT = """
sysbox-runc --version 2>&1 | grep -i 'version:'
dpkg-query -W -f='${Version}\\n' sysbox-ce
ls -d /opt/containai /etc/systemd/system/containai-docker.service /etc/systemd/system/containai-docker-guard.service \
  /usr/local/libexec/containai-guard 2>&1
sha256sum /etc/docker/daemon.json
systemctl show -p ExecMainPID -p ActiveEnterTimestamp docker.service sysbox.service
ls -A /var/lib/containai-ops 2>/dev/null | grep -v '^update.lock' || true
docker -H unix:///var/run/docker.sock ps -a --format '{{.Names}} {{.State}}'
"""


def vm_container(host: Any, name: str, delay: int = 1) -> None:
    """A managed container on the VM's docker.service whose SIGTERM trap writes /data/marker."""
    cmd = TRAP.format(delay=delay).replace("'", "'\"'\"'")
    sh(host, image_script("t-busy", host.docker) + f"{host.docker} run -d --name {name} --network none "
             "--runtime runc --label containai.managed=true --label containai.ssh-port=0 --stop-timeout 100 "
             f"-v {name}-vol:/data t-busy sh -c '{cmd}' >/dev/null")


def markers(host: Any, name: str) -> int:
    """How many times the container's SIGTERM trap ran (graceful stops)."""
    marker = Path(host.data_dir) / "volumes" / f"{name}-vol" / "_data" / "marker"
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def state(host: Any, name: str) -> str:
    return sh(host, f"{host.docker} inspect -f '{{{{.State.Status}}}}' {name}", check=False).strip()


def wait_for(host: Any, what: Any, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(1)
    return bool(what())


def test_update_upgrades_sysbox_in_the_vm_only_and_installs_the_stop_hook(lab_host: Any, lab_image: str,
                                                                         tmp_path: Path) -> None:
    host = lab_host(layout="lima-vm")
    assert host.target.startswith("lima:")
    # the VM as the Lima template provisions it: Sysbox from its .deb, through apt
    old = build_sysbox_deb(OLD_SYSBOX, tmp_path / "old")
    from ops.lab.hosts import connection

    c = connection(host)
    try:
        c.put(str(old), remote=f"/tmp/{old.name}")
    finally:
        c.close()
    sh(host, f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/{old.name} >/dev/null", timeout=600)
    new = build_sysbox_deb(NEW_SYSBOX, tmp_path / "new")
    bundle = bundle_dir(tmp_path / "bundle", docker_tarball(host, lab_image), new)
    assert list(bundle.glob("docker-*.tgz")), "the bundle holds a dockerd tarball too"
    vm_container(host, NAME)
    before = sh(host, SNAPSHOT)
    assert OLD_SYSBOX in before and "No such file" in before

    # --dry-run: the plan names the VM's engine and its running managed container; nothing changes
    dry = inv(["update", "--target", host.target, "--dry-run"], host, bundle)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"    {NAME}  t-busy  running" in dry.stdout, dry.stdout
    assert f"would install Sysbox {package_version(NEW_SYSBOX)} with apt-get" in dry.stdout
    assert "would restart docker.service and wait for a ping" in dry.stdout
    assert "dockerd bundle 2" not in dry.stdout and "containai-docker.service" not in dry.stdout, dry.stdout
    assert sh(host, SNAPSHOT) == before
    # --commands: the VM's commands only (its docker.service and socket, no bundle, no /opt/containai)
    cmds = inv(["update", "--target", host.target, "--dry-run", "--commands"], host, bundle)
    assert cmds.returncode == 0, cmds.stdout + cmds.stderr
    listing = cmds.stdout.split("the commands of this update, in order", 1)[1]
    assert f"  engine docker -H unix:///var/run/docker.sock stop -t 100 {NAME}\n" in listing, listing
    assert "  root#  systemctl reset-failed docker.service 2>/dev/null; systemctl restart docker.service\n" in listing
    assert "/opt/containai" not in listing and "containai-docker.service" not in listing, listing
    assert sh(host, SNAPSHOT) == before

    # without --stop-containers: exit 2, the list, the flag; nothing changes
    refused = inv(["update", "--target", host.target], host, bundle)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"    {NAME}  t-busy  running" in refused.stdout
    assert "--stop-containers" in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
    assert sh(host, SNAPSHOT) == before

    # --stop-containers: Sysbox upgraded in the VM, the container runs again, no second engine
    done = inv(["update", "--target", host.target, "--stop-containers", "--json"], host, bundle)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["layout"] == "lima-vm" and report["result"] == "updated" and report["restarted"] == [NAME]
    assert report["after"]["sysbox"]["installed"] == NEW_SYSBOX and report["after"]["drift"] == []
    assert f"version: \t{NEW_SYSBOX}" in sh(host, "sysbox-runc --version")
    assert state(host, NAME) == "running" and markers(host, NAME) == 1  # stopped once, gracefully
    assert sh(host, "ls -d /opt/containai /etc/systemd/system/containai-docker.service 2>&1 || true").count(
        "No such file") == 2
    assert sh(host, "systemctl show -p LoadState --value containai-docker.service").strip() == "not-found"
    assert sh(host, f"systemctl is-active docker.service sysbox.service {GUARD}").split() == ["active"] * 3
    shown = sh(host, f"systemctl show -p PartOf -p After -p WantedBy {GUARD}")
    part_of = next(line for line in shown.splitlines() if line.startswith("PartOf="))
    assert set(part_of[len("PartOf="):].split()) == {"docker.service", "sysbox.service", "sysbox-mgr.service",
                                                     "sysbox-fs.service"}, shown
    assert "docker.service" in next(line for line in shown.splitlines() if line.startswith("After="))
    assert "sysbox-runc" in sh(host, f"{host.docker} info --format '{{{{json .Runtimes}}}}'")
    assert sh(host, "ls -A /var/lib/containai-ops | grep -v '^update.lock' || true").strip() == ""

    again = inv(["update", "--target", host.target], host, bundle)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr
    assert markers(host, NAME) == 1

    # the stop hook: `systemctl stop docker` stops the managed container gracefully before dockerd goes
    sh(host, "systemctl stop docker.socket docker.service", timeout=300)
    assert markers(host, NAME) == 2, sh(host, f"journalctl -u {GUARD} --no-pager | tail -n 20", check=False)
    assert exit_code_on_disk(host, NAME) == 0
    assert "stopped 1 managed container(s)" in sh(host, f"journalctl -u {GUARD} --no-pager", check=False)
    # and starting docker again starts the guard (WantedBy=docker.service), which starts it again
    sh(host, "systemctl start docker.service", timeout=300)
    assert wait_for(host, lambda: state(host, NAME) == "running"), sh(
        host, f"systemctl status {GUARD} --no-pager 2>&1 | tail -n 15", check=False)
