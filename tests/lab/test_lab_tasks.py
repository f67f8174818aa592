"""The lab's own tasks as a person uses them (what ``./bootstrap.sh demo`` runs): ``inv lab.up``,
``inv lab.bundle``, ``inv lab.container``, then ``inv update`` refusing and upgrading the host."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
from _cli import inv

pytestmark = pytest.mark.lab



def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr


def test_lab_tasks_bring_up_a_host_a_bundle_and_a_container_that_update_handles(
        lab_engine: str, lab_image: str, tmp_path: Path) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    home, bundle = tmp_path / "lima", tmp_path / "bundle"
    try:
        r = inv("lab.up", "--name", name, "--lima-home", str(home))
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"--target lima:{name}" in r.stdout
        r = inv("lab.bundle", "--host", name, "--out", str(bundle))
        assert r.returncode == 0, r.stdout + r.stderr
        files = sorted(p.name for p in bundle.iterdir())
        assert files == ["docker-20.10.99.tgz", "docker-20.10.99.tgz.sha256",
                         "sysbox-ce_0.6.7.linux+containai.20260101_amd64.deb",
                         "sysbox-ce_0.6.7.linux+containai.20260101_amd64.deb.sha256"], files
        r = inv("pkg.verify-deb", str(bundle / files[2]))
        assert r.returncode == 0, r.stdout + r.stderr  # the lab bundle's package is a correct one
        for container, extra in (("agent-1", []), ("other", ["--unmanaged"])):
            r = inv("lab.container", "--host", name, "--name", container, *extra)
            assert r.returncode == 0, r.stdout + r.stderr

        env = {"INVOKE_CAI_LIMA_HOME": str(home), "INVOKE_CAI_BUNDLE_DIR": str(bundle)}
        r = inv("update", "--target", f"lima:{name}", env=env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "agent-1" in r.stdout and "other" not in r.stdout and "--stop-containers" in r.stderr
        r = inv("update", "--stop-containers", "--json", "--target", f"lima:{name}", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        report = json.loads(r.stdout)
        assert report["result"] == "updated" and report["restarted"] == ["agent-1"], report
        r = inv("doctor", "--json", "--target", f"lima:{name}", env=env)
        assert r.returncode == 0, r.stdout + r.stderr

        # bad input: one line each, nothing built
        assert "no lab host named 'no-such-host'" in one_line(inv("lab.bundle", "--host", "no-such-host"))
        assert "malformed version" in one_line(inv("lab.bundle", "--host", name, "--sysbox", "x.y",
                                                   "--out", str(tmp_path / "never")))
        assert not (tmp_path / "never").exists()
        assert "invalid container name" in one_line(inv("lab.container", "--host", name, "--name", "a b"))
        assert "unknown lab layout 'mac'" in one_line(inv("lab.up", "--name", "never", "--layout", "mac"))
    finally:
        r = inv("lab.down", "--name", name)
        assert r.returncode == 0, r.stdout + r.stderr
