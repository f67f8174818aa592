"""bootstrap.sh on a machine whose Docker engine comes from Docker's own packages (docker-ce with
containerd.io, as on Docker's apt repository; GitHub's runners carry the moby-* equivalents): it uses
that dockerd and never installs Debian's docker.io, which conflicts with them.

The lab host (Debian, systemd as PID 1) is turned into such a machine first: Debian's docker.io is
purged and two packages with the control fields Docker's own packages carry are installed, docker-ce
shipping the real dockerd binary (so ``dockerd --version`` is the real one).
"""

from __future__ import annotations

from typing import Any

import pytest
from _cli import REPO

pytestmark = pytest.mark.lab

#: Docker's packages as their control files declare them (download.docker.com, bookworm).
CONTAINERD_IO = """Package: containerd.io
Version: 1.7.27-1
Architecture: all
Maintainer: Containerd team <help@containerd.io>
Provides: containerd, runc
Conflicts: containerd, runc
Replaces: containerd, runc
Description: An open and reliable container runtime (stand-in with Docker's control fields)
"""
DOCKER_CE = """Package: docker-ce
Version: 5:26.1.3-1~debian.12~bookworm
Architecture: all
Maintainer: Docker <support@docker.com>
Depends: containerd.io (>= 1.6.24)
Conflicts: docker (<< 1.5~), docker-engine, docker.io
Replaces: docker-engine
Description: Docker: the open-source application container engine (stand-in with Docker's control fields)
"""

MAKE_DOCKER_CE_HOST = f"""set -e
export DEBIAN_FRONTEND=noninteractive
install -D -m 0755 /usr/sbin/dockerd /tmp/pkgs/docker-ce/usr/bin/dockerd
apt-get purge -y -q docker.io containerd runc >/dev/null
mkdir -p /tmp/pkgs/containerd.io/DEBIAN /tmp/pkgs/docker-ce/DEBIAN
cat > /tmp/pkgs/containerd.io/DEBIAN/control <<'CONTROL'
{CONTAINERD_IO}CONTROL
cat > /tmp/pkgs/docker-ce/DEBIAN/control <<'CONTROL'
{DOCKER_CE}CONTROL
dpkg-deb -b /tmp/pkgs/containerd.io /tmp/containerd.io.deb >/dev/null
dpkg-deb -b /tmp/pkgs/docker-ce /tmp/docker-ce.deb >/dev/null
dpkg -i /tmp/containerd.io.deb /tmp/docker-ce.deb >/dev/null
command -v dockerd
dockerd --version
"""


def _run(host: Any, command: str, timeout: int = 600) -> tuple[int, str, str]:
    from ops.lab.hosts import run

    return run(host, command, timeout=timeout)


def _status(host: Any, *packages: str) -> dict[str, str]:
    code, out, _ = _run(host, "dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' " + " ".join(packages)
                        + " 2>/dev/null")
    found = {}
    for line in out.splitlines():
        name, _, status = line.partition(" ")
        found[name] = status.strip()
    return {p: found.get(p, "") for p in packages}


def test_bootstrap_uses_the_dockerd_of_docker_ce(lab_host: Any) -> None:
    from ops.lab.hosts import connection

    host = lab_host(sysbox_version=None, wait_for_engine=False)
    code, out, err = _run(host, MAKE_DOCKER_CE_HOST, timeout=600)
    assert code == 0, err[-2000:]
    assert out.splitlines()[0] == "/usr/bin/dockerd" and "Docker version 20.10" in out, out
    before = _status(host, "docker-ce", "containerd.io", "docker.io")
    assert before["docker-ce"] == "ii" and before["containerd.io"] == "ii", before
    assert not before["docker.io"].startswith("i"), before

    conn = connection(host)
    try:
        conn.run("mkdir -p /root/bootstrap", hide=True, in_stream=False)
        conn.put(str(REPO / "bootstrap.sh"), remote="/root/bootstrap/bootstrap.sh")
    finally:
        conn.close()
    code, out, err = _run(host, "cd /root/bootstrap && bash bootstrap.sh system", timeout=1800)
    assert code == 0, (out + err)[-3000:]
    assert "using the installed dockerd 20.10" in out + err, out + err
    assert "docker.io" not in out.split("apt packages:", 1)[1].splitlines()[0], out

    status = _status(host, "docker-ce", "containerd.io", "docker.io", "debootstrap", "debian-archive-keyring")
    assert status["docker-ce"] == "ii" and status["containerd.io"] == "ii", status
    assert not status["docker.io"].startswith("i"), status  # never installed over Docker's packages
    assert status["debootstrap"] == "ii" and status["debian-archive-keyring"] == "ii", status
