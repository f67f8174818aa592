"""A private dockerd (Debian's docker.io) on its own socket and data-root, started on demand."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from ops.errors import OpsError

LAB_ROOT = Path(os.environ.get("CAI_LAB_ROOT", "/var/lib/cai-lab"))
LAB_RUN = Path(os.environ.get("CAI_LAB_RUN", "/run/cai-lab"))
SOCKET = LAB_RUN / "docker.sock"
DOCKER_HOST = f"unix://{SOCKET}"
LOG = LAB_ROOT / "dockerd.log"


@contextlib.contextmanager
def lab_lock(name: str) -> Iterator[None]:
    """An exclusive lock ``<LAB_ROOT>/<name>.lock``, shared by concurrent sessions and their CI runs."""
    LAB_ROOT.mkdir(parents=True, exist_ok=True)
    with open(LAB_ROOT / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ping(docker_host: str = DOCKER_HOST, timeout: float = 3) -> bool:
    """True when the engine at docker_host answers a ping."""
    import docker

    try:
        client = docker.DockerClient(base_url=docker_host, timeout=int(max(1, timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def ensure_engine(wait: float = 60) -> str:
    """Start the private dockerd unless it already answers; return its docker host URL."""
    if ping():
        return DOCKER_HOST
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise OpsError("dockerd is not installed", "run ./bootstrap.sh deps (installs Debian's docker.io)")
    if os.geteuid() != 0:
        raise OpsError("the lab engine needs root", "run as root (sudo)")
    LAB_RUN.mkdir(parents=True, exist_ok=True)
    (LAB_ROOT / "docker").mkdir(parents=True, exist_ok=True)
    pidfile = LAB_RUN / "docker.pid"
    if pidfile.exists():
        pidfile.unlink()
    argv = [
        dockerd,
        "--host", DOCKER_HOST,
        "--data-root", str(LAB_ROOT / "docker"),
        "--exec-root", str(LAB_RUN / "exec"),
        "--pidfile", str(pidfile),
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--storage-driver=overlay2",
    ]
    with open(LOG, "ab") as log:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if ping():
            return DOCKER_HOST
        time.sleep(0.3)
    tail = LOG.read_text(errors="replace").splitlines()[-5:] if LOG.exists() else []
    raise OpsError(f"the lab dockerd did not answer within {wait:.0f}s: {' | '.join(tail)[-300:]}",
                   f"see {LOG}")


def stop_engine(wait: float = 30) -> None:
    """Stop the private dockerd if it runs."""
    pidfile = LAB_RUN / "docker.pid"
    if not pidfile.exists():
        return
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 15)
    except (ValueError, ProcessLookupError):
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
