"""SSH round trips per target, on a systemd lab host reached like a Lima VM: doctor logs in once (the
probes and the Docker API share the connection; two logins before, the second an ``ssh -N`` forward),
and a dry-run update reads the host in one command (nine commands one after the other before)."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from _cli import inv

from ops.config import CaiConfig
from ops.lab.bundle import build_sysbox_deb, write_sha256

pytestmark = pytest.mark.lab


def logins(host: Any, lab_engine: str) -> int:
    """The SSH logins the host's sshd accepted so far (read with docker exec: no login of its own)."""
    out = subprocess.run(["docker", "-H", lab_engine, "exec", host.container, "sh", "-c",
                          "journalctl -q --no-pager -o cat _COMM=sshd | grep -c 'Accepted publickey' || true"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def bundle(folder: Path) -> Path:
    """A bundle folder the plan reads: a Docker-static-shaped tarball and a small real sysbox-ce .deb."""
    folder.mkdir(parents=True, exist_ok=True)
    tgz = folder / "docker-27.3.1.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        data = b"#!/bin/sh\necho dockerd 27.3.1\n"
        info = tarfile.TarInfo("docker/dockerd")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    write_sha256(tgz)
    build_sysbox_deb("0.6.7+containai.20260101", folder)
    return folder


def test_doctor_logs_in_once_per_target(lab_host: Any, lab_engine: str, tmp_path: Path) -> None:
    host = lab_host(prefix="ssh")
    env = {"INVOKE_CAI_LIMA_HOME": str(host.lima_home), "INVOKE_CAI_BUNDLE_DIR": str(tmp_path)}
    before = logins(host, lab_engine)
    result = inv("doctor", "--json", "--target", f"lima:{host.vm}", env=env, timeout=300)
    assert "Traceback" not in result.stderr and "Secsh" not in result.stderr, result.stderr
    codes = {f["code"]: f for f in json.loads(result.stdout)["findings"]}
    assert "engine.version" in codes and "layout.detected" in codes, sorted(codes)
    # the layout's engine facts came through the API: the stand-in engine has no sysbox-runc runtime
    assert "engine.sysbox-runtime-missing" in codes
    assert logins(host, lab_engine) - before == 1


def test_a_dry_run_update_reads_the_host_in_one_command(lab_host: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import fabric

    from ops.update.apply import Options, run_update

    host = lab_host(prefix="ssh")
    conf = CaiConfig.from_mapping({"lima_home": str(host.lima_home), "bundle_dir": str(bundle(tmp_path / "b"))})
    commands: list[str] = []
    real_run = fabric.Connection.run

    def counted(self: Any, command: str, **kwargs: Any) -> Any:
        commands.append(command)
        return real_run(self, command, **kwargs)

    monkeypatch.setattr(fabric.Connection, "run", counted)
    lines: list[str] = []
    report = run_update(None, conf, f"lima:{host.vm}", Options(dry_run=True), lines.append)
    assert report["target"] == f"lima:{host.vm}" and report["layout"] == "containai", report
    assert report["before"]["sysbox"]["installed"] and report["plan"], report
    assert len(commands) == 1, [c[:80] for c in commands]
