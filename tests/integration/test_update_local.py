"""The update's building blocks with real tools on this machine: the local Context (no ``put``),
tar, atomic links, the journal, parallel stop/start on a real dockerd, and ``inv update`` on a host
whose PID 1 is not systemd."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import invoke
import pytest
from _cli import inv

from ops.config import CaiConfig
from ops.errors import OpsError
from ops.lab.bundle import build_sysbox_deb, write_sha256
from ops.update import journal as jr
from ops.update.apply import install_dockerd, start_containers, stop_containers
from ops.update.hostio import Host

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def fake_bundle(path: Path, version: str, members: tuple[str, ...] = ("dockerd", "docker", "runc")) -> Path:
    """A Docker-static-shaped tarball (top folder docker/) of small executables."""
    path.mkdir(parents=True, exist_ok=True)
    tgz = path / f"docker-{version}.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name in members:
            data = f"#!/bin/sh\necho {name} {version}\n".encode()
            info = tarfile.TarInfo(f"docker/{name}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    write_sha256(tgz)
    return tgz


def conf(tmp_path: Path, **over: Any) -> CaiConfig:
    return CaiConfig.from_mapping({"opt_dir": str(tmp_path / "opt"), "state_dir": str(tmp_path / "state"),
                                   **over})


def test_install_dockerd_bundle_locally_with_atomic_links(tmp_path: Path) -> None:
    c = conf(tmp_path)
    host = Host(invoke.Context(), "")
    try:
        install_dockerd(host, c, fake_bundle(tmp_path / "b1", "27.0.1", ("dockerd", "docker", "docker-init")),
                        "27.0.1")
        opt = tmp_path / "opt"
        assert (opt / "VERSION").read_text() == "27.0.1\n"
        assert os.readlink(opt / "bin" / "dockerd") == f"{opt}/docker/27.0.1/dockerd"
        assert subprocess.run([opt / "bin" / "dockerd"], capture_output=True, text=True).stdout == "dockerd 27.0.1\n"
        # a newer bundle without docker-init: links switch, the stale link goes, the old version stays
        install_dockerd(host, c, fake_bundle(tmp_path / "b2", "27.3.1"), "27.3.1")
        assert (opt / "VERSION").read_text() == "27.3.1\n"
        assert os.readlink(opt / "bin" / "docker") == f"{opt}/docker/27.3.1/docker"
        assert not (opt / "bin" / "docker-init").exists() and not (opt / "bin" / "docker-init").is_symlink()
        assert sorted(p.name for p in (opt / "bin").iterdir()) == ["docker", "dockerd", "runc"]
        assert not any(p.name.endswith(".cai-new") for p in (opt / "bin").iterdir())
        # a reinstall of the same version is fine
        install_dockerd(host, c, tmp_path / "b2" / "docker-27.3.1.tgz", "27.3.1")
        assert (opt / "docker" / "27.3.1" / "dockerd").is_file()
    finally:
        host.cleanup()


def test_bundle_checksum_wrong_or_missing(tmp_path: Path) -> None:
    c = conf(tmp_path)
    host = Host(invoke.Context(), "")
    tgz = fake_bundle(tmp_path / "b", "27.0.1")
    tgz.with_name(tgz.name + ".sha256").write_text(f"{'0' * 64}  {tgz.name}\n")
    with pytest.raises(OpsError, match="checksum mismatch"):
        install_dockerd(host, c, tgz, "27.0.1")
    tgz.with_name(tgz.name + ".sha256").unlink()
    with pytest.raises(OpsError, match="no checksum file"):
        install_dockerd(host, c, tgz, "27.0.1")
    assert not (tmp_path / "opt").exists()


def test_bundle_without_docker_folder_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "b" / "docker-27.0.1.tgz"
    bad.parent.mkdir()
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("dockerd")
        info.size = 0
        tar.addfile(info, io.BytesIO(b""))
    write_sha256(bad)
    host = Host(invoke.Context(), "")
    with pytest.raises(OpsError, match="installing the dockerd bundle 27.0.1 failed.*no docker/dockerd"):
        install_dockerd(host, conf(tmp_path), bad, "27.0.1")
    assert not (tmp_path / "opt" / "VERSION").exists()


def test_journal_on_the_local_host(tmp_path: Path) -> None:
    c = conf(tmp_path)
    host = Host(invoke.Context(), "")
    assert jr.read(host, c) is None
    jr.write(host, c, jr.Journal("local", ("a", "b"), ("stop-containers",)))
    assert oct((tmp_path / "state" / jr.NAME).stat().st_mode & 0o777) == "0o600"
    assert jr.read(host, c).containers == ("a", "b")  # type: ignore[union-attr]
    jr.clear(host, c)
    assert jr.read(host, c) is None
    blocked = conf(tmp_path, state_dir="/proc/version/nope")
    with pytest.raises(OpsError, match="nothing was stopped"):
        jr.write(host, blocked, jr.Journal("local", ("a",), ()))


@pytest.fixture
def fleet(lab_engine: str, tiny_image: str) -> Iterator[dict[str, Any]]:
    """Four managed containers that take 1 s to exit on SIGTERM, and an unmanaged one."""
    import docker

    client = docker.DockerClient(base_url=lab_engine)
    tag = uuid.uuid4().hex[:8]
    label = f"containai.managed=t{tag}"
    made = []
    trap = "trap 'sleep 1; exit 0' TERM; while :; do sleep 0.2; done"
    for i in range(4):
        made.append(client.containers.run(tiny_image, ["sh", "-c", trap], name=f"t-update-{tag}-m{i}",
                                          labels={"containai.managed": f"t{tag}"}, network_mode="none",
                                          detach=True))
    made.append(client.containers.run(tiny_image, ["sleep", "3600"], name=f"t-update-{tag}-u",
                                      network_mode="none", detach=True))
    try:
        yield {"label": label, "host": lab_engine, "names": [c.name for c in made[:4]], "client": client,
               "unmanaged": made[4].name}
    finally:
        for c in made:
            c.remove(force=True)
        client.close()


def test_stop_and_start_managed_in_parallel(fleet: dict[str, Any], tmp_path: Path) -> None:
    c = conf(tmp_path, label=fleet["label"], stop_timeout=30)
    lines: list[str] = []
    stop_containers(fleet["host"], c, fleet["names"], lines.append, progress=True)
    client = fleet["client"]
    for name in fleet["names"]:
        attrs = client.api.inspect_container(name)
        assert attrs["State"]["Status"] == "exited" and attrs["State"]["ExitCode"] == 0
    assert client.api.inspect_container(fleet["unmanaged"])["State"]["Status"] == "running"
    assert len([line for line in lines if "stopped" in line]) == 4
    assert start_containers(fleet["host"], c, fleet["names"]) == []
    assert all(client.api.inspect_container(n)["State"]["Status"] == "running" for n in fleet["names"])
    assert start_containers(fleet["host"], c, [*fleet["names"], "t-update-nonexistent"]) == ["t-update-nonexistent"]


def test_inv_update_local_bad_input_and_no_systemd(tmp_path: Path) -> None:
    env = {"INVOKE_CAI_BUNDLE_DIR": str(tmp_path / "missing"), "INVOKE_CAI_OPT_DIR": str(tmp_path / "opt")}
    r = inv("update", env=env)
    assert r.returncode == 1 and r.stderr.startswith("error: the bundle directory") and r.stderr.count("\n") == 1
    # a bundle with the fixture .deb and a tarball: this machine's PID 1 is not systemd -> refused, exit 1
    bundle = tmp_path / "bundle"
    fake_bundle(bundle, "27.3.1")
    build_sysbox_deb("0.6.7+containai.20260101", bundle)
    env["INVOKE_CAI_BUNDLE_DIR"] = str(bundle)
    r = inv("update", "--dry-run", env={**env, "INVOKE_CAI_PLATFORM": "wsl2"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "systemd is not PID 1 in this WSL2 distribution" in r.stderr and "wsl.conf" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_units_render_task(tmp_path: Path) -> None:
    out = tmp_path / "units"
    r = inv("units.render", "--out", str(out), env={"INVOKE_CAI_STOP_TIMEOUT": "60"})
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["containai-docker.service", "containai-docker-guard.service", "containai-guard", "daemon.json"])
    assert "TimeoutStopSec=90\n" in (out / "containai-docker-guard.service").read_text()
    from ops import units

    rendered = {f.name: f.text for f in units.render(CaiConfig.from_mapping({"stop_timeout": 60}))}
    assert all((out / name).read_text() == text for name, text in rendered.items())
    r = inv("units.render")
    assert r.returncode == 0 and "# ==> /etc/systemd/system/containai-docker.service" in r.stdout
