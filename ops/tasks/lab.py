"""Tasks of the test lab: the private engine, the lab images and disposable systemd lab hosts."""

from __future__ import annotations

import os
from typing import Any

from invoke import task
from invoke.exceptions import Exit

from ops.errors import ConfigError
from ops.lab import NEW_DOCKERD, NEW_SYSBOX, OLD_SYSBOX
from ops.tasks._common import cli_errors

DEFAULT_LIMA_HOME = "/var/lib/cai-lab/lima"
DEFAULT_BUNDLE = "/var/lib/cai-lab/bundle"


def _lima_home(value: str) -> str:
    chosen = value or os.environ.get("CAI_LAB_LIMA_HOME", DEFAULT_LIMA_HOME)
    return os.path.abspath(os.path.expanduser(chosen))


@task
@cli_errors
def engine(ctx: Any) -> None:
    """Start the private lab dockerd (or reuse it) and print its DOCKER_HOST."""
    from ops.lab.engine import ensure_engine

    print(f"DOCKER_HOST={ensure_engine()}")


@task
@cli_errors
def image(ctx: Any) -> None:
    """Build the lab images (host and tiny) unless cached for the current recipe."""
    import time

    from ops.lab.engine import ensure_engine
    from ops.lab.image import ensure_lab_image, ensure_tiny_image

    docker_host = ensure_engine()
    start = time.monotonic()
    print(ensure_tiny_image(docker_host))
    print(ensure_lab_image(docker_host))
    print(f"ready in {time.monotonic() - start:.0f}s")


@task(help={
    "name": "Host name, also its Lima VM name (default lab; with --count: lab-1, lab-2, ...)",
    "count": "How many hosts to bring up",
    "lima_home": "LIMA_HOME the Lima-format ssh.config files are written under "
                 f"(default $CAI_LAB_LIMA_HOME or {DEFAULT_LIMA_HOME})",
    "sysbox": "Version printed by the stand-in sysbox-runc; 'none' installs no sysbox-runc",
    "apt_update": "Fetch the apt lists in each host, as a real host has them (--no-apt-update skips it)",
    "layout": "Start the hosts as the ContainAI installer leaves them: containai (Linux/WSL2: "
              "containai-docker.service, bundle, bridge cai0) or lima-vm (the macOS VM: docker.service), "
              "each on a network of its own; empty: the lab's older install",
})
@cli_errors
def up(ctx: Any, name: str = "lab", count: int = 1, lima_home: str = "",
       sysbox: str = OLD_SYSBOX, apt_update: bool = True, layout: str = "") -> None:
    """Bring up lab hosts (systemd, sshd, an older ContainAI engine) and print how to reach them."""
    from ops.lab import hosts
    from ops.lab.engine import ensure_engine

    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}", "use e.g. --count 2")
    hosts.check_layout(layout)
    home = _lima_home(lima_home)
    docker_host = ensure_engine()
    wanted = [name] if count == 1 else [f"{name}-{i}" for i in range(1, count + 1)]
    for host_name in wanted:
        hosts.check_name(host_name)
    for host_name in wanted:
        index = hosts.reserve(host_name)
        host = hosts.up(host_name, index, docker_host, home,
                        None if sysbox.lower() == "none" else sysbox, layout=layout)
        if apt_update and not layout:
            hosts.apt_update(host)
        where = (f"layout {layout}, own network, sshd over docker exec" if layout
                 else f"{host.address}:{host.port}")
        print(f"{host.name}: {where} (container {host.container})")
        print(f"  INVOKE_CAI_LIMA_HOME={host.lima_home} inv doctor --target {host.target}")
        print(f"  ssh -F {host.ssh_config} {host.alias}")


@task(help={
    "host": "Lab host whose docker.io binaries make the dockerd tarball (default lab)",
    "out": "Bundle directory to write (default /var/lib/cai-lab/bundle)",
    "sysbox": f"Version of the sysbox-ce .deb built from the packaging fixture (default {NEW_SYSBOX})",
    "dockerd": f"Version the dockerd tarball is labelled with (default {NEW_DOCKERD})",
})
@cli_errors
def bundle(ctx: Any, host: str = "lab", out: str = DEFAULT_BUNDLE, sysbox: str = NEW_SYSBOX,
           dockerd: str = NEW_DOCKERD) -> None:
    """Build a bundle that upgrades lab hosts (for trying inv update)."""
    from pathlib import Path

    from ops.lab import hosts
    from ops.lab.bundle import make_bundle
    from ops.lab.engine import ensure_engine
    from ops.lab.image import ensure_lab_image
    from ops.versions import parse_version

    parse_version(sysbox)  # a bad version is one line, before anything is built
    parse_version(dockerd)
    lab_host = hosts.load(host)
    image = ensure_lab_image(ensure_engine())
    path = make_bundle(lab_host, image, Path(out).expanduser().resolve(), sysbox, dockerd)
    for item in sorted(path.iterdir()):
        if not item.name.startswith("."):
            print(item)
    print(f"  INVOKE_CAI_BUNDLE_DIR={path} INVOKE_CAI_LIMA_HOME={lab_host.lima_home} "
          f"inv update --dry-run --target {lab_host.target}")


@task(help={
    "host": "Lab host to start the container on (default lab)",
    "name": "Container name (default agent-1)",
    "unmanaged": "Leave out the containai.managed=true label (the toolkit must ignore it)",
})
@cli_errors
def container(ctx: Any, host: str = "lab", name: str = "agent-1", unmanaged: bool = False) -> None:
    """Start a managed container with a volume on a lab host."""
    from ops.lab import containers, hosts

    lab_host = hosts.load(host)
    containers.start(lab_host, name, managed=not unmanaged)
    kind = "unmanaged" if unmanaged else "managed"
    print(f"{name}: {kind} container running on {lab_host.name} (volume {name}-vol at /data)")


@task(help={"name": "Host to reboot (default lab)"})
@cli_errors
def reboot(ctx: Any, name: str = "lab") -> None:
    """Reboot a lab host (docker restart: systemd stops its units, the host's own network is reset)."""
    from ops.lab import hosts
    from ops.lab.engine import ensure_engine

    lab_host = hosts.load(name)
    hosts.reboot(lab_host, ensure_engine())
    print(f"{name}: rebooted; SSH answers")


@task(iterable=["name"], help={
    "name": "Host to remove (repeatable)",
    "all": "Remove every lab host",
})
@cli_errors
def down(ctx: Any, name: list[str] | None = None, all: bool = False) -> None:  # noqa: A002
    """Remove lab hosts: container, nested engine data, ssh.config."""
    from ops.lab import hosts
    from ops.lab.engine import ensure_engine

    ensure_engine()
    if all:
        targets = sorted(set(hosts.names()) | {row["name"] for row in hosts.status() if row["name"]})
    else:
        targets = list(name or [])
    if not targets:
        raise Exit("error: name a host with --name N, or use --all", code=1)
    for host_name in targets:
        hosts.down(host_name)
        print(f"removed {host_name}")


@task
@cli_errors
def status(ctx: Any) -> None:
    """List the lab engine, the cached images and the lab hosts."""
    from ops.lab import hosts
    from ops.lab.engine import DOCKER_HOST, ping
    from ops.lab.image import host_tag, image_exists, tiny_tag

    if not ping():
        print(f"engine: not running ({DOCKER_HOST}); start it with `inv lab.engine`")
        return
    print(f"engine: {DOCKER_HOST}")
    for tag in (host_tag(), tiny_tag()):
        print(f"image: {tag} {'cached' if image_exists(DOCKER_HOST, tag) else 'missing (inv lab.image)'}")
    rows = hosts.status()
    if not rows:
        print("hosts: none (inv lab.up)")
    for row in rows:
        print(f"host: {row['name']} {row['address']} {row['state']} {row['ssh_config']}".rstrip())
