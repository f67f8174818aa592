"""Pure parts of the update's safety: time spans and budgets from ``systemctl show``, the privileged
file dump, the lock holder's answer, and one run per host in a fleet."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from ops.config import CaiConfig
from ops.fleet import dedupe, host_identity
from ops.update import lock
from ops.update import timeouts as tm
from ops.update.hostio import UNREADABLE, FileState, parse_dump

pytestmark = pytest.mark.unit

#: ``systemctl show -p Id -p TimeoutStartUSec -p TimeoutStopUSec containai-docker.service
#: containai-docker-guard.service`` on a lab host (systemd 252) with the rendered units, stop timeout 100.
SHOW = """TimeoutStartUSec=2min
TimeoutStopUSec=2min 10s
Id=containai-docker.service

TimeoutStartUSec=5min
TimeoutStopUSec=2min 10s
Id=containai-docker-guard.service
"""


@pytest.mark.parametrize("text,seconds", [
    ("2min", 120), ("1min 30s", 90), ("2min 10s", 130), ("100ms", 0.1), ("1h 2min 3s", 3723),
    ("45s", 45), ("1.5s", 1.5), ("infinity", None), ("", None), ("0", None), ("soon", None), ("2min x", None),
])
def test_parse_span(text: str, seconds: float | None) -> None:
    assert tm.parse_span(text) == seconds


def test_restart_budget_from_the_units() -> None:
    conf = CaiConfig.from_mapping({"stop_timeout": 100})
    shown = tm.parse_show(SHOW)
    assert shown["containai-docker.service"] == tm.UnitTimes(120, 130)
    assert tm.restart_budget(conf, shown) == 130 + 120 + tm.MARGIN
    assert tm.restart_budget(conf, shown) > 60  # never the probe default
    # the old installer's unit: TimeoutStartSec=0 (infinity), no guard yet
    old = tm.parse_show("TimeoutStartUSec=infinity\nTimeoutStopUSec=3min\nId=containai-docker.service\n")
    assert tm.restart_budget(conf, old) == 180 + tm.DEFAULT_START + tm.MARGIN
    # nothing readable: the containers' stop timeout still counts
    assert tm.restart_budget(CaiConfig.from_mapping({"stop_timeout": 300}), {}) == 330 + tm.DEFAULT_START + tm.MARGIN
    assert tm.apt_budget(310) == tm.APT_BASE + 310


def test_parse_dump_tells_missing_from_unreadable() -> None:
    body = base64.b64encode(b'{"bridge": "none"}\n').decode()
    text = ("\n@@CAI-FILE /etc/containai/docker/daemon.json\nfile 600 " + body +
            "\n@@CAI-FILE /etc/systemd/system/x.service\nmissing"
            "\n@@CAI-FILE /etc/secret\nunreadable"
            "\n@@CAI-FILE /etc/empty\nfile 644 \n")
    found = parse_dump(text)
    assert found["/etc/containai/docker/daemon.json"] == FileState(
        "/etc/containai/docker/daemon.json", True, '{"bridge": "none"}\n', 0o600)
    assert found["/etc/systemd/system/x.service"] == FileState("/etc/systemd/system/x.service", False)
    assert found["/etc/secret"] == UNREADABLE
    assert found["/etc/empty"] == FileState("/etc/empty", True, "", 0o644)
    assert "/etc/other" not in found  # no answer at all is not "missing" either


@pytest.mark.parametrize("line,answer", [
    ("LOCKED\n", ("locked", "")),
    ("BUSY pid 12 of root@mac (updating lima:x) since 2026-01-01T00:00:00Z",
     ("busy", "pid 12 of root@mac (updating lima:x) since 2026-01-01T00:00:00Z")),
    ("BUSY ", ("busy", "an unknown process")),
    ("NOFLOCK", ("noflock", "")),
    ("", ("error", "")),
])
def test_lock_answer(line: str, answer: tuple[str, str]) -> None:
    assert lock.parse_answer(line) == answer


def test_owner_line_names_process_and_time() -> None:
    line = lock.owner_line("lima:x")
    assert line.startswith("pid ") and "(updating lima:x) since 20" in line and line.endswith("Z")


def test_dedupe_keeps_the_first_spelling() -> None:
    ids = {"lima:a": "127.0.0.2:22", "ssh://root@127.0.0.2:22": "127.0.0.2:22", "lima:b": "127.0.0.3:22"}
    kept, dropped = dedupe(["lima:a", "lima:b", "ssh://root@127.0.0.2:22", "lima:a"], ids.__getitem__)
    assert kept == ["lima:a", "lima:b"]
    assert dropped == [("ssh://root@127.0.0.2:22", "lima:a"), ("lima:a", "lima:a")]


def test_host_identity_resolves_lima_and_ssh_forms(tmp_path: Path) -> None:
    vm = tmp_path / "lima" / "dev"
    vm.mkdir(parents=True)
    (vm / "ssh.config").write_text("Host lima-dev\n  Hostname 127.0.0.2\n  Port 60022\n  User me\n")
    user_config = tmp_path / "ssh_config"
    user_config.write_text("Host devbox\n  Hostname 127.0.0.2\n")
    conf = CaiConfig.from_mapping({"lima_home": str(tmp_path / "lima"), "ssh_config": str(user_config),
                                   "platform": "linux"})
    same = {host_identity(t, conf) for t in ("lima:dev", "ssh://root@127.0.0.2:60022",
                                              "ssh://me@devbox:60022", "ssh://localhost.invalid.:1")}
    assert "127.0.0.2:60022" in same and len(same) == 2
    assert host_identity("ssh://127.0.0.2:22", conf) == "127.0.0.2:22"  # another port: another sshd
    assert host_identity("local", conf) == "local"
    assert host_identity("lima:missing", conf) == "lima-missing:22"  # no config yet: its own identity
    assert host_identity("bogus:x", conf) == "unparsed:bogus:x"


def test_recovery_waits_for_the_units_job_to_finish() -> None:
    """``settle`` polls ``systemctl show -p Job -p ActiveState`` until systemd has no job for the unit
    (answers in the form systemd 252 prints them), and gives up with a clear error when it never ends."""
    from invoke import MockContext, Result

    from ops.errors import OpsError
    from ops.update.apply import settle
    from ops.update.hostio import Host

    busy = Result("ActiveState=activating\nJob=61\n")
    done = Result("ActiveState=active\nJob=\n")
    ctx = MockContext(run=[busy, busy, done], repeat=False)
    assert settle(Host(ctx, ""), "containai-docker.service", timeout=30) == "active"
    assert ctx.run.call_count == 3  # type: ignore[attr-defined]
    stuck = MockContext(run=busy, repeat=True)
    with pytest.raises(OpsError, match="a systemd job for containai-docker.service is still running after 1s"):
        settle(Host(stuck, ""), "containai-docker.service", timeout=1)
