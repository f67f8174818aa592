"""inv doctor through the Lima path: a systemd lab host reached with a Lima-format ssh.config."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _cli import inv

pytestmark = pytest.mark.lab


def test_doctor_reports_the_vm_not_the_local_machine(lab_host: Any, tmp_path: Path) -> None:
    host = lab_host(sysbox_version="0.6.6+containai.20250101")
    env = {"INVOKE_CAI_LIMA_HOME": str(host.lima_home), "INVOKE_CAI_BUNDLE_DIR": str(tmp_path)}
    result = inv("doctor", "--json", "--target", f"lima:{host.vm}", env=env, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1
    assert doc["targets"][0]["target"] == f"lima:{host.vm}"
    assert doc["targets"][0]["platform"] == "macos"
    by_code = {f["code"]: f for f in doc["findings"]}
    # the stand-in sysbox-runc inside the VM prints the multi-line format; nothing is installed locally
    assert by_code["sysbox.installed"]["data"]["installed"] == "0.6.6+containai.20250101"
    assert all(f["target"] == f"lima:{host.vm}" and f["platform"] == "macos" for f in doc["findings"])
    assert "systemd.not-pid1" not in by_code  # systemd is PID 1 in the VM (not on this machine)
    assert "engine.version" in by_code  # the VM's engine answers through the forwarded socket
    local = subprocess.run(["sh", "-c", "command -v sysbox-runc"], capture_output=True)
    assert local.returncode != 0
