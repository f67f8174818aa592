"""Helpers of the update and stop-hook lab tests: an older install and containers in a lab host,
snapshots of a host's state, and running ``inv`` against a lab host exactly as a user would."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import _cli

from ops.lab import OLD_DOCKERD
from ops.lab.containers import DOCKER as D
from ops.lab.containers import image_script


def sh(host: Any, command: str, timeout: int = 600, check: bool = True) -> str:
    """Run a command on a lab host; fail with its output when it fails."""
    from ops.lab.hosts import run

    code, out, err = run(host, command, timeout=timeout)
    if check:
        assert code == 0, f"{command[:120]!r} exited {code}: {err.strip()[-800:]} {out.strip()[-400:]}"
    return out


def conn(host: Any) -> Any:
    from ops.lab.hosts import connection

    return connection(host)


# --- an older ContainAI install -------------------------------------------------------------------------

def install_sysbox_deb(host: Any, deb: Path) -> None:
    """apt-get install a sysbox .deb in the host (the lists are fetched first: the image has none)."""
    c = conn(host)
    try:
        c.put(str(deb), remote=f"/tmp/{deb.name}")
    finally:
        c.close()
    sh(host, "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
             f"/tmp/{deb.name} >/dev/null && rm -f /tmp/{deb.name}", timeout=900)


def install_old_bundle(host: Any, tarball: Path, version: str = OLD_DOCKERD) -> None:
    """Unpack an older dockerd bundle by hand, as the old installer did (its unit still runs
    Debian's dockerd: that unit is the drifted one)."""
    c = conn(host)
    try:
        c.put(str(tarball), remote="/tmp/old-docker.tgz")
    finally:
        c.close()
    sh(host, f"set -e; mkdir -p /opt/containai/docker/{version} /opt/containai/bin; "
             f"tar -xzf /tmp/old-docker.tgz -C /opt/containai/docker/{version} --strip-components=1; "
             f"for f in /opt/containai/docker/{version}/*; do ln -sfn $f /opt/containai/bin/$(basename $f); done; "
             f"echo {version} > /opt/containai/VERSION; rm -f /tmp/old-docker.tgz")


#: PID 1 of a test container: on SIGTERM it appends "TERM" to /data/marker (in its volume) after
#: ``delay`` seconds and exits 0.
TRAP = ("echo start >> /data/log; trap 'sleep {delay}; echo TERM >> /data/marker; exit 0' TERM; "
        "while :; do sleep 0.2; done")


def run_container(host: Any, name: str, managed: bool, delay: int = 0, data_files: int = 0) -> None:
    """Start a container that traps SIGTERM (see TRAP) with a volume ``<name>-vol`` at /data."""
    label = "--label containai.managed=true --label containai.ssh-port=0" if managed else ""
    cmd = TRAP.format(delay=delay).replace("'", "'\"'\"'")
    # runc named: Sysbox cannot run here, and an updated daemon.json makes sysbox-runc the default runtime
    sh(host, image_script("t-busy") + f"{D} run -d --name {name} --network none --runtime runc {label} "
                            f"--stop-timeout 100 -v {name}-vol:/data t-busy sh -c '{cmd}' >/dev/null")
    if data_files:
        sh(host, f"{D} exec {name} sh -c 'for i in $(seq 1 {data_files}); do "
                 f"seq 1 $i > /data/file-$i; done; mkdir -p /data/sub && seq 1 5000 > /data/sub/big'")


def volume_dir(host: Any, name: str) -> Path:
    """The volume's data on this machine (the host's data root is bind-mounted from here)."""
    return Path(host.data_dir) / "volumes" / f"{name}-vol" / "_data"


def tree_digest(path: Path, skip: tuple[str, ...] = ("log", "marker")) -> dict[str, str]:
    """sha256 of every regular file under path (relative names), except the test's own logs."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name not in skip:
            out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def markers(host: Any, name: str) -> int:
    """How many times the container's SIGTERM trap ran (graceful stops)."""
    marker = volume_dir(host, name) / "marker"
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def wait_engine_answers(host: Any, timeout: int = 120) -> None:
    """Wait until the nested engine answers: an update killed right after the stop may have left a
    restart of the engine running on the host (systemd finishes it on its own)."""
    sh(host, f"i=0; until {D} version >/dev/null 2>&1; do i=$((i + 1)); [ $i -lt {timeout * 2} ] || exit 1; "
             "sleep 0.5; done", timeout=timeout + 30)


def states(host: Any) -> dict[str, str]:
    """name -> state of every container on the nested engine."""
    out = sh(host, f"{D} ps -a --format '{{{{.Names}}}} {{{{.State}}}}'")
    return dict(line.split(" ", 1) for line in out.strip().splitlines() if line.strip())


def exit_code_on_disk(host: Any, name: str) -> int:
    """A container's recorded exit code, read from the engine's data root (works with the engine down)."""
    import json

    root = Path(host.data_dir) / "containers"
    for cfg in root.glob("*/config.v2.json"):
        data = json.loads(cfg.read_text())
        if data.get("Name") == f"/{name}":
            return int(data["State"]["ExitCode"])
    raise AssertionError(f"no container {name} on disk")


SNAPSHOT = f"""
sysbox-runc --version 2>&1 | grep -i 'version:' || echo sysbox=missing
dpkg-query -W -f='${{Version}}\\n' sysbox-ce 2>/dev/null || echo dpkg=missing
cat /opt/containai/VERSION 2>/dev/null || echo VERSION=missing
readlink /opt/containai/bin/dockerd || echo link=missing
ls /opt/containai/docker 2>/dev/null
sha256sum /etc/systemd/system/containai-docker.service /etc/systemd/system/containai-docker-guard.service \
  /etc/containai/docker/daemon.json /opt/containai/libexec/containai-guard 2>&1
systemctl show -p ActiveEnterTimestamp -p ExecMainPID containai-docker.service
ls -A /var/lib/containai-ops 2>/dev/null | grep -v '^update.lock' || true
{D} ps -a --format '{{{{.Names}}}} {{{{.State}}}}' | sort
{D} inspect -f '{{{{.Name}}}} {{{{.State.StartedAt}}}}' $({D} ps -aq) 2>/dev/null | sort
"""


def snapshot(host: Any) -> str:
    """Everything an update could change on the host, as text (the update lock, which every real run
    takes and releases, is not a change)."""
    return sh(host, SNAPSHOT, check=False)


def _host_env(host: Any, bundle: Path) -> dict[str, str]:
    return {"INVOKE_CAI_LIMA_HOME": host.lima_home, "INVOKE_CAI_BUNDLE_DIR": str(bundle)}


def inv(args: list[str], host: Any, bundle: Path, timeout: int = 900,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``inv <args>`` from the repository root against the lab host (no TTY)."""
    return _cli.inv(*args, env={**_host_env(host, bundle), **(extra_env or {})}, timeout=timeout)


def popen_inv(args: list[str], host: Any, bundle: Path) -> subprocess.Popen[str]:
    """Start ``inv <args>`` against the lab host in its own process group, stderr into stdout."""
    return _cli.popen_inv(*args, env=_host_env(host, bundle), merge_stderr=True)
