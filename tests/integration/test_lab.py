"""The lab itself: a systemd host reached over SSH exactly as a Lima VM, with a nested ContainAI engine."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture
def conf_for(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A CaiConfig whose cai.lima_home is the lab host's LIMA_HOME."""
    from ops.config import CaiConfig

    monkeypatch.delenv("LIMA_HOME", raising=False)

    def make(host: Any) -> CaiConfig:
        return CaiConfig.from_mapping({"lima_home": host.lima_home})

    return make


def test_host_boots_systemd_and_the_older_install(lab_host: Any) -> None:
    from ops.lab.hosts import run

    host = lab_host()
    code, out, _ = run(host, "systemctl is-system-running --wait", timeout=120)
    assert out.strip() in ("running", "degraded"), out
    code, out, _ = run(host, "cat /proc/1/comm; systemctl is-active containai-docker; "
                             "systemctl is-enabled containai-docker")
    assert out.split() == ["systemd", "active", "enabled"]
    code, out, _ = run(host, "cat /etc/containai/docker/daemon.json")
    assert code == 0 and '"data-root": "/var/lib/containai-docker"' in out
    code, out, _ = run(host, "sysbox-runc --version")
    assert out.splitlines()[0] == "sysbox-runc"
    assert "version: \t0.6.6+containai.20250101" in out
    code, out, _ = run(host, "systemctl is-enabled docker.service containerd.service docker.socket")
    assert out.split() == ["disabled", "disabled", "disabled"]
    code, out, _ = run(host, "id -u agent; id -g agent; getent passwd agent | cut -d: -f7")
    assert out.split() == ["1000", "1000", "/bin/bash"]


def test_host_without_sysbox(lab_host: Any) -> None:
    from ops.lab.hosts import run

    host = lab_host(sysbox_version=None, wait_for_engine=False)
    code, _, _ = run(host, "command -v sysbox-runc")
    assert code != 0


def test_fabric_through_the_lima_ssh_config(lab_host: Any, tmp_path: Any) -> None:
    from ops.lab.hosts import connection

    host = lab_host(wait_for_engine=False)
    text = Path(host.ssh_config).read_text()
    assert f"Host lima-{host.vm}" in text and f"Hostname {host.address}" in text
    conn = connection(host)
    try:
        assert conn.run("id -un", hide=True, in_stream=False).stdout.strip() == "root"
        payload = f"lab-{uuid.uuid4().hex}\n"
        conn.put(io.StringIO(payload), "/tmp/lab-put.txt")
        assert conn.run("cat /tmp/lab-put.txt", hide=True, in_stream=False).stdout == payload
    finally:
        conn.close()


def test_product_target_resolves_a_lab_host(lab_host: Any, conf_for: Any) -> None:
    from ops.targets import resolve

    host = lab_host(wait_for_engine=False)
    resolved = resolve(host.target, conf_for(host))
    assert resolved.facts.systemd_pid1
    assert resolved.facts.distro == "debian"


def test_nested_engine_through_the_forwarded_socket(lab_host: Any, conf_for: Any, lab_engine: str,
                                                    tiny_image: str) -> None:
    import docker

    from ops.targets import Target, engine_host

    host = lab_host()
    outer = docker.DockerClient(base_url=lab_engine, timeout=120)
    try:
        image_tar = b"".join(outer.images.get(tiny_image).save(named=True))
    finally:
        outer.close()
    with engine_host(Target("lima", vm=host.vm), conf_for(host)) as url:
        nested = docker.DockerClient(base_url=url, timeout=120)
        try:
            assert nested.ping()
            assert nested.info()["DockerRootDir"] == "/var/lib/containai-docker"
            loaded = nested.images.load(image_tar)
            assert tiny_image in [tag for image in loaded for tag in image.tags]
            out = nested.containers.run(tiny_image, ["sh", "-c", "echo nested-$(id -u agent)"],
                                        network_mode="none", remove=True)
            assert out.decode().strip() == "nested-1000"
        finally:
            nested.close()


def test_two_hosts_at_once(lab_host: Any) -> None:
    from ops.lab.hosts import run

    first, second = lab_host(), lab_host()
    assert first.address != second.address
    for host in (first, second):
        code, out, _ = run(host, "systemctl is-active containai-docker; "
                                 "docker -H unix:///var/run/containai-docker.sock info --format '{{.Name}}'")
        assert code == 0 and out.splitlines()[0] == "active", out


def test_recipe_hash_names_the_images() -> None:
    from ops.lab.image import host_tag, recipe_hash, tiny_tag

    digest = recipe_hash()
    assert len(digest) == 64 and digest == recipe_hash()
    assert host_tag() == f"cai-lab-host:{digest[:12]}"
    assert tiny_tag() == f"cai-lab-tiny:{digest[:12]}"


def _machine_links() -> set[str]:
    import subprocess

    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def test_containai_layout_host_is_the_installers_state_on_its_own_network(lab_host: Any, conf_for: Any) -> None:
    from ops.lab.hosts import connection, run
    from ops.layout import read_layout
    from ops.targets import resolve

    host = lab_host(layout="containai")
    text = Path(host.ssh_config).read_text()
    assert "ProxyCommand " in text and f"exec -i {host.container} /usr/sbin/sshd -i" in text
    assert "Hostname" not in text
    code, out, _ = run(host, "ip -o -4 addr show dev cai0; iptables -S FORWARD | grep -c cai0")
    assert code == 0 and out.split()[3] == "172.30.0.1/16", out
    assert int(out.split()[-1]) > 0  # the engine's iptables rules, in the host's namespace
    assert "cai0" not in _machine_links()
    code, out, _ = run(host, "cat /opt/containai/VERSION; echo; readlink /opt/containai/bin/dockerd; "
                             "grep -c '^ExecStopPre=' /etc/systemd/system/containai-docker.service; "
                             "systemctl is-active containai-docker")
    assert out.split() == ["20.10.24", "../docker/20.10.24/dockerd", "1", "active"], out
    c = connection(host)  # Fabric through the ProxyCommand: run and put
    try:
        c.put(io.StringIO("through-proxy\n"), "/tmp/p.txt")
        assert c.run("cat /tmp/p.txt", hide=True, in_stream=False).stdout == "through-proxy\n"
    finally:
        c.close()
    resolved = resolve(host.target, conf_for(host))
    layout = read_layout(resolved.ctx, conf_for(host), resolved.name)
    assert (layout.name, layout.bundle, layout.installer_unit, layout.observed_default_runtime) == (
        "containai", True, True, "sysbox-runc")


def test_lima_vm_layout_host_runs_docker_service_and_the_tunnel_reaches_it(lab_host: Any, conf_for: Any) -> None:
    import docker

    from ops.lab.hosts import run
    from ops.layout import conf_for as layout_conf
    from ops.layout import read_layout
    from ops.targets import engine_host, resolve

    host = lab_host(layout="lima-vm")
    code, out, _ = run(host, "systemctl is-active docker containerd; systemctl is-enabled containai-docker 2>&1; "
                             "test -e /opt/containai && echo opt || echo no-opt; ip -o -4 addr show dev docker0")
    lines = out.splitlines()
    assert lines[:2] == ["active", "active"] and "enabled" not in lines[2] and lines[3] == "no-opt", out
    assert "172.20.0.1/16" in lines[4]
    resolved = resolve(host.target, conf_for(host))
    layout = read_layout(resolved.ctx, conf_for(host), resolved.name)
    assert (layout.name, layout.engine_unit, layout.socket, layout.bundle) == (
        "lima-vm", "docker.service", "/var/run/docker.sock", False)
    with engine_host(resolved.target, layout_conf(conf_for(host), layout)) as url:  # the ssh tunnel, via ProxyCommand
        client = docker.DockerClient(base_url=url, timeout=60)
        try:
            info = client.info()
            assert info["DockerRootDir"] == "/var/lib/docker" and info["DefaultRuntime"] == "runc"
            assert "sysbox-runc" in info["Runtimes"]
        finally:
            client.close()
