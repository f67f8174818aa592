"""bootstrap.sh's choice of Docker engine, before it changes anything: a dockerd older than 20.10 is
refused with one line naming it (the real ``dockerd --version`` format, from a stand-in first on PATH);
usage errors are one line too. Installing beside docker-ce is proven in tests/lab/test_bootstrap_lab.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from _cli import REPO

pytestmark = pytest.mark.integration


def bootstrap(*args: str, path_first: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(["bash", str(REPO / "bootstrap.sh"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120)


def test_an_old_dockerd_is_refused_before_apt(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("bootstrap.sh runs as root; run the integration tier as root", pytrace=False)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dockerd").write_text("#!/bin/sh\necho 'Docker version 19.03.15, build 99e3ed8'\n")
    (fake / "dockerd").chmod(0o755)
    # apt-get stand-in that records a call: the refusal must come before any apt command
    (fake / "apt-get").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/apt-calls\nexit 1\n")
    (fake / "apt-get").chmod(0o755)
    result = bootstrap("system", path_first=fake)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"bootstrap: dockerd 19.03.15 ({fake}/dockerd) is older than 20.10: upgrade it, or remove it so that "
        "Debian's docker.io is installed"]
    assert not (tmp_path / "apt-calls").exists()


def test_usage_error_is_one_line() -> None:
    result = bootstrap("nonsense")
    assert result.returncode == 1
    assert result.stderr == "bootstrap: usage: ./bootstrap.sh demo | test [pytest args] | deps | system\n"
