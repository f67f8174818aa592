"""Debian packages the lab image lacks (python3, strace), put into a lab host the way a user would get
them: what this machine's apt would install on a system with the image's dpkg status (a simulation),
downloaded with apt, then installed on the host with apt from the copied .debs."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any


def download(folder: Path, lab_engine: str, lab_image: str, packages: list[str]) -> Path:
    """Download ``packages`` and what they need beyond the lab image into ``folder``."""
    import docker

    # the file itself, through the archive API of a container never started (its output read back from
    # the log of a container that ran `cat` came back cut short once on a busy machine: a broken status)
    client = docker.DockerClient(base_url=lab_engine, timeout=120)
    try:
        container = client.containers.create(lab_image, ["true"], network_mode="none")
        try:
            stream, _stat = container.get_archive("/var/lib/dpkg/status")
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.extractfile("status")
                assert member is not None, "no /var/lib/dpkg/status in the lab image"
                status = member.read()
        finally:
            container.remove(force=True)
    finally:
        client.close()
    (folder / "status").write_bytes(status)
    sim = subprocess.run(["apt-get", "install", "-s", "-o", f"Dir::State::status={folder / 'status'}", *packages],
                         capture_output=True, text=True, check=False)
    need = [line.split()[1] for line in sim.stdout.splitlines() if line.startswith("Inst ")]
    assert sim.returncode == 0 and set(packages) <= set(need), sim.stdout[-600:] + sim.stderr[-600:]
    got = subprocess.run(["apt-get", "download", *need], cwd=folder, capture_output=True, text=True, check=False)
    missing = [p for p in packages if not list(folder.glob(f"{p}_*.deb"))]
    assert got.returncode == 0 and not missing, f"{missing} not downloaded: {got.stderr[-600:]}"
    return folder


def install(host: Any, debs: Path, lab_engine: str, check: str) -> None:
    """Put the .debs into the host (the Docker archive API), install them with apt, then run ``check``
    there (it must exit 0)."""
    import docker

    from ops.lab.hosts import run

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for deb in sorted(debs.glob("*.deb")):
            tar.add(deb, arcname=f"lab-debs/{deb.name}")
    client = docker.DockerClient(base_url=lab_engine, timeout=300)
    try:
        assert client.containers.get(host.container).put_archive("/tmp", data.getvalue())
    finally:
        client.close()
    command = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/lab-debs/*.deb >/dev/null && "
               f"rm -rf /tmp/lab-debs && {check}")
    code, out, err = run(host, command, timeout=600)
    assert code == 0, f"installing {debs.name} exited {code} on {host.name}: {err.strip()[-600:]} {out.strip()[-300:]}"
