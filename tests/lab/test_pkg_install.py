"""The fuse3 fix proven by a real install: apt-get install ./sysbox-ce_*.deb in a systemd lab host.

The host (Debian 12, systemd as PID 1, apt reaching Debian's mirror) is reached with Fabric through a
Lima-format ssh.config, as a macOS VM would be. The package is the one ``inv pkg.build-sysbox`` builds
from the Sysbox sources fixture (laid out like upstream's); its stand-in sysbox-fs fails without
``fusermount3`` like the real one.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from _cli import inv
from _sysbox_fixture import Sources, git, make_sources

pytestmark = pytest.mark.lab

SUFFIX = "+containai.20260127"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    return make_sources(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def fixed_deb(sources: Sources, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package ``inv pkg.build-sysbox`` builds from the Sysbox sources fixture at v0.7.0 (a real
    recursive git clone, the required sysbox-fs commit checked, the marker written into VERSION)."""
    out = tmp_path_factory.mktemp("dist")
    res = inv("pkg.build-sysbox", "--sysbox-url", sources.url, "--sysbox-ref", "v0.7.0",
              "--require", f"sysbox-fs:{sources.fix}", "--version-suffix", SUFFIX, "--out", str(out))
    assert res.returncode == 0, res.stderr + res.stdout
    (deb,) = out.glob("sysbox-ce_*.deb")
    return deb


@pytest.fixture(scope="module")
def upstream_deb(sources: Sources, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Upstream's own build of v0.7.0 (Depends names fuse, Version 0.7.0.linux): a recursive clone, its
    packager's sources/sysbox linked to it, make generic."""
    src = tmp_path_factory.mktemp("upstream") / "sysbox"
    git(src.parent, "-c", "protocol.file.allow=always", "clone", "-q", "--recursive", "--branch", "v0.7.0",
        sources.url, str(src))
    pkgr = src / "sysbox-pkgr"
    (pkgr / "sources").mkdir()
    (pkgr / "sources" / "sysbox").symlink_to(src)
    subprocess.run(["make", "-C", "deb", "generic", "EDITION=ce"], cwd=pkgr, check=True, capture_output=True)
    (deb,) = (pkgr / "deb" / "build").glob("*/ubuntu-jammy/sysbox-ce_*.deb")
    return deb


def sh(host: Any, command: str, timeout: int = 120) -> tuple[int, str, str]:
    from ops.lab import hosts

    return hosts.run(host, command, timeout=timeout)


def install(host: Any, deb: Path) -> str:
    """Copy the .deb into the host with Fabric and install it with apt (so its dependencies resolve)."""
    from ops.lab import hosts

    conn = hosts.connection(host)
    try:
        conn.put(str(deb), f"/root/{deb.name}")
    finally:
        conn.close()
    code, out, err = sh(
        host,
        f"cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y -q {shlex.quote('./' + deb.name)} 2>&1",
        timeout=600,
    )
    assert code == 0, out + err
    return out


def apt_update(host: Any) -> None:
    code, out, err = sh(host, "apt-get update -q 2>&1", timeout=600)
    assert code == 0, out + err


def unit_state(host: Any, unit: str) -> str:
    _, out, _ = sh(host, f"systemctl is-active {unit}")
    return out.strip()


def running_past_check(host: Any, unit: str, timeout: float = 60) -> str:
    """Wait until the stand-in sysbox-fs either failed or passed its fusermount3 check.

    The stand-in exits 1 without fusermount3 and otherwise execs ``sleep``, so a main process named
    ``sleep`` means it is past the check; returns the unit state then ("active" or "failed").
    """
    deadline = time.monotonic() + timeout
    while True:
        state = unit_state(host, unit)
        if state == "failed":
            return state
        _, comm, _ = sh(host, f'ps -o comm= -p "$(systemctl show -p MainPID --value {unit})"')
        if state == "active" and comm.strip() == "sleep":
            return state
        if time.monotonic() > deadline:
            return f"{state} (main process {comm.strip() or 'none'})"
        time.sleep(0.5)


def test_fixed_package_installs_fuse3_and_sysbox_fs_runs(lab_host: Any, fixed_deb: Path) -> None:
    host = lab_host(sysbox_version=None, wait_for_engine=False)
    apt_update(host)
    install(host, fixed_deb)

    code, status, _ = sh(host, "dpkg -s sysbox-ce")
    assert code == 0 and "Status: install ok installed" in status
    depends = next(ln for ln in status.splitlines() if ln.startswith("Depends:"))
    assert "fuse3" in [c.strip().split(" ")[0] for c in depends.removeprefix("Depends:").split(",")]
    assert f"Version: 0.7.0.linux{SUFFIX}" in status

    code, path, _ = sh(host, "command -v fusermount3")
    assert code == 0 and path.strip().endswith("/fusermount3")
    code, out, err = sh(host, "dpkg -s fuse")
    assert code != 0 and "is not installed" in err, out + err

    assert running_past_check(host, "sysbox-fs") == "active"
    assert unit_state(host, "sysbox") == "active"
    assert_update_sees_it_current(host, fixed_deb)


def upstream_then_bundled(host: Any, deb: Path) -> str:
    """What update decides for the installed Sysbox against ``deb``."""
    from ops.facts import deb_version, sysbox_installed
    from ops.lab import hosts
    from ops.versions import decide

    conn = hosts.connection(host)
    try:
        return decide("sysbox", sysbox_installed(conn), deb_version(deb)).action.value
    finally:
        conn.close()


def assert_update_sees_it_current(host: Any, deb: Path) -> None:
    """The installed binary names the .deb's build, so update decides CURRENT (no endless reinstall)."""
    from ops.facts import deb_version, sysbox_installed
    from ops.lab import hosts
    from ops.versions import Action, State, decide

    conn = hosts.connection(host)
    try:
        installed = sysbox_installed(conn)  # reads sysbox-runc --version through Fabric, as update does
    finally:
        conn.close()
    bundled = deb_version(deb)
    assert installed.state is State.INSTALLED and installed.version is not None, installed
    assert str(installed.version) == f"0.7.0{SUFFIX}"
    assert installed.version.same_as(bundled)
    decision = decide("sysbox", installed, bundled)
    assert decision.action is Action.CURRENT, decision.reason


def test_unpatched_package_leaves_sysbox_fs_failed_then_the_fix_repairs_it(
    lab_host: Any, upstream_deb: Path, fixed_deb: Path
) -> None:
    host = lab_host(sysbox_version=None, wait_for_engine=False)
    apt_update(host)
    install(host, upstream_deb)

    code, out, _ = sh(host, "dpkg -s fuse")
    assert code == 0 and "Status: install ok installed" in out  # apt pulled fuse 2
    code, _, _ = sh(host, "command -v fusermount3")
    assert code != 0
    assert running_past_check(host, "sysbox-fs") == "failed"
    _, journal, _ = sh(host, "journalctl -u sysbox-fs --no-pager -n 20 2>&1")
    assert "fusermount3" in journal
    assert upstream_then_bundled(host, fixed_deb) == "upgrade"  # upstream 0.7.0 installed, ContainAI build bundled

    # upgrading to the fixed package replaces fuse with fuse3 and sysbox-fs starts
    install(host, fixed_deb)
    code, out, err = sh(host, "dpkg -s fuse")
    assert code != 0 or "Status: install ok installed" not in out
    code, _, _ = sh(host, "command -v fusermount3")
    assert code == 0
    assert running_past_check(host, "sysbox-fs") == "active"
    assert_update_sees_it_current(host, fixed_deb)
