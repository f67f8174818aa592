"""The stop hook really runs: on a systemd lab host whose units were installed by ``inv update``,
stopping or restarting containai-docker or Sysbox first stops the managed containers gracefully
(their SIGTERM trap writes a marker into their volume and they exit 0), and never touches unmanaged
ones; after a restart the hook starts the containers it stopped."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _update_lab import (
    exit_code_on_disk,
    inv,
    markers,
    run_container,
    sh,
    states,
)

from ops.lab import NEW_SYSBOX
from ops.lab.bundle import build_sysbox_deb, bundle_dir, docker_tarball

pytestmark = pytest.mark.lab


def wait_for(what: str, check: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def hook_runs(host: Any) -> int:
    """How many times the hook stopped managed containers (from the guard unit's journal)."""
    out = sh(host, "journalctl -u containai-docker-guard.service -o cat --no-pager | "
                   "grep -c '^containai-guard: stopped ' || true")
    return int(out.strip() or 0)


def active(host: Any, unit: str) -> str:
    return sh(host, f"systemctl is-active {unit} || true").strip()


def running(host: Any, name: str) -> bool:
    return states(host).get(name) == "running"


def test_stop_hook_on_engine_and_sysbox_stop_and_restart(lab_host: Any, lab_image: str, tmp_path: Path) -> None:
    host = lab_host()
    bundle = bundle_dir(tmp_path / "bundle", docker_tarball(host, lab_image),
                        build_sysbox_deb(NEW_SYSBOX, tmp_path / "debs"))
    sh(host, "apt-get update -q >/dev/null", timeout=600)  # the image has no package lists
    # install the units (and Sysbox, the dockerd bundle) exactly as a user would: nothing runs yet
    result = inv(["update", "--target", host.target], host, bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    for unit in ("containai-docker", "containai-docker-guard", "sysbox", "sysbox-mgr", "sysbox-fs"):
        assert active(host, unit) == "active", unit
    assert "/opt/containai/bin/dockerd" in sh(host, "systemctl show -p ExecStart --value containai-docker")

    run_container(host, "m1", managed=True, delay=2)
    run_container(host, "u1", managed=False)

    # 1. the hook alone (stop of the guard unit): managed stopped gracefully, unmanaged untouched
    before_u1 = markers(host, "u1")
    sh(host, "systemctl stop containai-docker-guard")
    assert states(host) == {"m1": "exited", "u1": "running"}
    assert markers(host, "m1") == 1 and markers(host, "u1") == before_u1
    assert exit_code_on_disk(host, "m1") == 0
    sh(host, "systemctl start containai-docker-guard")  # starts what the hook stopped
    wait_for("m1 running again", lambda: running(host, "m1"))
    assert running(host, "u1")

    # 2. systemctl stop containai-docker: the hook runs first, while the engine still answers
    runs = hook_runs(host)
    sh(host, "systemctl stop containai-docker")
    assert active(host, "containai-docker") == "inactive"
    assert active(host, "containai-docker-guard") == "inactive"
    assert markers(host, "m1") == 2 and exit_code_on_disk(host, "m1") == 0
    assert hook_runs(host) == runs + 1
    sh(host, "systemctl start containai-docker")
    wait_for("m1 running after start", lambda: running(host, "m1"))
    assert active(host, "containai-docker-guard") == "active"

    # 3. systemctl restart containai-docker: the hook runs, the containers come back
    runs = hook_runs(host)
    sh(host, "systemctl restart containai-docker")
    wait_for("guard active", lambda: active(host, "containai-docker-guard") == "active")
    wait_for("m1 running after restart", lambda: running(host, "m1"))
    assert markers(host, "m1") == 3 and hook_runs(host) == runs + 1

    # 4. systemctl restart sysbox: PartOf restarts the guard (hook runs) and the engine
    runs = hook_runs(host)
    sh(host, "systemctl restart sysbox")
    wait_for("engine active", lambda: active(host, "containai-docker") == "active")
    wait_for("guard active", lambda: active(host, "containai-docker-guard") == "active")
    wait_for("m1 running after sysbox restart", lambda: running(host, "m1"))
    assert markers(host, "m1") == 4 and hook_runs(host) == runs + 1

    # 5. systemctl stop sysbox: hook, then engine, then Sysbox stop
    runs = hook_runs(host)
    sh(host, "systemctl stop sysbox")
    for unit in ("containai-docker-guard", "containai-docker", "sysbox"):
        assert active(host, unit) == "inactive", unit
    assert markers(host, "m1") == 5 and exit_code_on_disk(host, "m1") == 0
    assert hook_runs(host) == runs + 1
    # PartOf never starts the engine again: starting it by hand brings the containers back
    sh(host, "systemctl start sysbox containai-docker")
    wait_for("m1 running after sysbox start", lambda: running(host, "m1"))

    # 6. a sysbox part alone (sysbox-fs) also stops the engine through PartOf, hook first
    runs = hook_runs(host)
    sh(host, "systemctl stop sysbox-fs")
    assert active(host, "containai-docker") == "inactive"
    assert markers(host, "m1") == 6 and exit_code_on_disk(host, "m1") == 0
    assert hook_runs(host) == runs + 1


#: ``<opt_dir>/bin/docker`` of the guard test: the real CLI, except that ``start`` hangs while
#: /run/cai-test-hang exists (an engine that never answers a start, a container that never comes up).
HANGING_DOCKER = """#!/bin/sh
if [ "$1" = start ] && [ -e /run/cai-test-hang ]; then exec sleep 100000; fi
exec /usr/bin/docker "$@"
"""


def put_text(host: Any, path: str, text: str, mode: int) -> None:
    import base64

    blob = base64.b64encode(text.encode()).decode()
    sh(host, f"mkdir -p $(dirname {path}) && echo {blob} | base64 -d > {path}.tmp && chmod {mode:o} {path}.tmp "
             f"&& mv -f {path}.tmp {path}")


def test_guard_whose_start_hangs_still_ends_active(lab_host: Any, tmp_path: Path) -> None:
    """A hung ``docker start`` cannot lose the stop hook: the guard unit ends ``active`` (its start hands
    the container start to a background worker and returns), the next stop still stops the managed
    containers (cancelling the hung start first), and doctor reports a guard that is not active.

    The drop-in gives the guard a 5 s start timeout so that the old unit's failure shows in seconds: the
    old unit ran ``docker start`` in ExecStart, timed out and ended ``failed``, and systemd never runs
    the ExecStop of a unit whose start failed."""
    from ops import units
    from ops.config import CaiConfig

    host = lab_host()
    rendered = {f.name: f for f in units.render(CaiConfig.from_mapping({"stop_timeout": 10}))}
    for name in ("containai-guard", units.GUARD_UNIT):
        put_text(host, rendered[name].path, rendered[name].text, rendered[name].mode)
    put_text(host, f"/etc/systemd/system/{units.GUARD_UNIT}.d/10-test-start-timeout.conf",
             "[Service]\nTimeoutStartSec=5\n", 0o644)
    put_text(host, "/opt/containai/bin/docker", HANGING_DOCKER, 0o755)
    sh(host, "systemctl daemon-reload")
    guard = "containai-docker-guard"

    run_container(host, "m1", managed=True)
    sh(host, f"systemctl start {guard}")
    assert active(host, guard) == "active"
    sh(host, f"systemctl stop {guard}")  # the hook stops m1 and remembers it
    assert states(host)["m1"] == "exited"

    sh(host, "touch /run/cai-test-hang")
    sh(host, f"systemctl start {guard}", check=False)
    assert active(host, guard) == "active"  # the old unit: "failed" (start timed out)
    wait_for("docker start to hang", lambda: "sleep 100000" in sh(host, "ps -eo args"))
    time.sleep(6)  # longer than the start timeout of the drop-in: nothing may time out now
    assert active(host, guard) == "active"

    run_container(host, "m2", managed=True, delay=1)  # started by hand meanwhile
    runs = hook_runs(host)
    sh(host, f"systemctl stop {guard}")  # the hook is armed: it cancels the hung start, then stops m2
    assert active(host, guard) == "inactive"
    assert hook_runs(host) == runs + 1 and states(host)["m2"] == "exited" and markers(host, "m2") == 1
    journal = sh(host, f"journalctl -u {guard} -o cat --no-pager")
    assert "cancelling the container start still running" in journal
    assert "sleep 100000" not in sh(host, "ps -eo args")

    result = inv(["doctor", "--json", "--target", host.target], host, tmp_path)  # guard stopped, engine up
    [finding] = [f for f in json.loads(result.stdout)["findings"] if f["code"] == "guard.unit-inactive"]
    assert finding["severity"] == "error" and "systemctl start containai-docker-guard" in finding["hint"]

    sh(host, f"rm -f /run/cai-test-hang && systemctl start {guard}")  # back to normal: both come back
    wait_for("m1 and m2 running", lambda: running(host, "m1") and running(host, "m2"))
    assert active(host, guard) == "active"
    result = inv(["doctor", "--json", "--target", host.target], host, tmp_path)
    assert "guard.unit-inactive" not in [f["code"] for f in json.loads(result.stdout)["findings"]]
