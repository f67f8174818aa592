"""Fleet doctor in the lab: a Lima VM (local side behaving as macOS), a plain Linux host and a WSL2 host
(reached over ssh://), plus an unreachable target. Every version is read on the host it describes.

``cai.platform`` is one value per run, so the WSL2 host is checked in its own run with
``cai.platform=wsl2`` (the kernel cannot be faked); the macOS run keeps SSH hosts detected.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _cli import inv, ssh_config

pytestmark = pytest.mark.lab
#: Outside the lab's address range (127.0.0.10 .. 127.0.0.250): nothing listens there.
UNREACHABLE = "ssh://root@127.0.0.254:2222"
VERSIONS = {"vm": "0.6.4+containai.20241115", "linux": "0.6.5", "wsl": "0.6.6+containai.20250101"}


def doctor(env: dict[str, str], *targets: str) -> tuple[int, dict[str, Any], str]:
    result = inv("doctor", "--json", *(a for t in targets for a in ("--target", t)), env=env, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    try:
        doc = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"doctor printed no JSON (exit {result.returncode}): {result.stderr[-800:]}", pytrace=False)
    return result.returncode, doc, result.stderr


def findings_of(doc: dict[str, Any], target: str) -> dict[str, dict[str, Any]]:
    return {f["code"]: f for f in doc["findings"] if f["target"] == target}


def assert_complete(doc: dict[str, Any], target: str, platform: str, version: str) -> None:
    """The target was checked to the end, on itself, and every finding names it and its platform."""
    summary = next(t for t in doc["targets"] if t["target"] == target)
    assert summary["reachable"] and summary["platform"] == platform, summary
    mine = [f for f in doc["findings"] if f["target"] == target]
    assert mine and all(f["platform"] == platform for f in mine), mine
    by_code = findings_of(doc, target)
    assert "target.check-failed" not in by_code, by_code.get("target.check-failed")
    assert "systemd.not-pid1" not in by_code  # systemd is PID 1 on the lab host (not on this machine)
    assert by_code["platform.detected"]["data"]["distro"] == "debian"
    # the Sysbox version comes from that host's own sysbox-runc (each host has a different one)
    assert by_code["sysbox.installed"]["data"]["installed"] == version
    assert "engine.version" in by_code  # the host's engine answered through the forwarded socket


def test_fleet_doctor_reads_every_host_on_itself(lab_host: Any, tmp_path: Path) -> None:
    vm = lab_host(sysbox_version=VERSIONS["vm"])
    linux = lab_host(sysbox_version=VERSIONS["linux"])
    wsl = lab_host(sysbox_version=VERSIONS["wsl"])
    assert len({vm.address, linux.address, wsl.address}) == 3
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    config = ssh_config(tmp_path / "ssh_config", vm.key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_CAI_")}
    env.update({"INVOKE_CAI_LIMA_HOME": str(vm.lima_home), "INVOKE_CAI_BUNDLE_DIR": str(bundle),
                "INVOKE_CAI_SSH_CONFIG": str(config)})
    linux_t = f"ssh://root@{linux.address}:{linux.port}"
    wsl_t = f"ssh://root@{wsl.address}:{wsl.port}"

    # 1. this machine behaves as a Mac: `local` is the Lima VM; SSH hosts keep their detected platform
    mac_env = {**env, "INVOKE_CAI_PLATFORM": "macos", "INVOKE_CAI_LIMA_VM": vm.vm}
    code, doc, _ = doctor(mac_env, "local", linux_t, UNREACHABLE)
    assert code == 1
    assert [t["target"] for t in doc["targets"]] == [f"lima:{vm.vm}", linux_t, UNREACHABLE]
    assert_complete(doc, f"lima:{vm.vm}", "macos", VERSIONS["vm"])
    assert_complete(doc, linux_t, "linux", VERSIONS["linux"])
    down = [f for f in doc["findings"] if f["target"] == UNREACHABLE]
    assert [f["code"] for f in down] == ["target.unreachable"] and down[0]["severity"] == "error"
    assert "127.0.0.254" in down[0]["message"]
    assert not next(t for t in doc["targets"] if t["target"] == UNREACHABLE)["reachable"]
    assert doc["ok"] is False

    # 2. the WSL2 host in its own run (cai.platform=wsl2); a lima: target stays macos beside it
    wsl_env = {**env, "INVOKE_CAI_PLATFORM": "wsl2"}
    code, doc, _ = doctor(wsl_env, wsl_t, f"lima:{vm.vm}")
    assert [(t["target"], t["platform"]) for t in doc["targets"]] == [(wsl_t, "wsl2"), (f"lima:{vm.vm}", "macos")]
    assert_complete(doc, wsl_t, "wsl2", VERSIONS["wsl"])
    assert_complete(doc, f"lima:{vm.vm}", "macos", VERSIONS["vm"])
    assert "wsl2.distro-unsupported" not in findings_of(doc, wsl_t)  # Debian is supported
    assert code == (1 if any(f["severity"] == "error" for f in doc["findings"]) else 0)

    # 3. wrong key for one host: that host is unreachable (named, with the cause), the other completes
    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    # Paramiko adds up the IdentityFile lines of every matching Host block: keep the patterns disjoint
    wrong = ssh_config(tmp_path / "wrong_config", str(other_key), pattern=linux.address)
    with wrong.open("a") as handle:
        handle.write(ssh_config(tmp_path / "right", vm.key, pattern=wsl.address).read_text())
    code, doc, _ = doctor({**env, "INVOKE_CAI_SSH_CONFIG": str(wrong)}, linux_t, wsl_t)
    assert code == 1
    bad = findings_of(doc, linux_t)
    assert list(bad) == ["target.unreachable"] and linux.address in bad["target.unreachable"]["message"]
    assert_complete(doc, wsl_t, "linux", VERSIONS["wsl"])


def test_missing_ssh_config_is_one_finding_per_target(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_CAI_")}
    env["INVOKE_CAI_SSH_CONFIG"] = str(tmp_path / "nope")
    code, doc, stderr = doctor(env, "ssh://root@127.0.0.254:2222", "ssh://root@127.0.0.253:2222")
    assert code == 1
    assert [f["code"] for f in doc["findings"]] == ["target.unreachable", "target.unreachable"]
    assert all("cai.ssh_config" in f["message"] and f["hint"] for f in doc["findings"])
