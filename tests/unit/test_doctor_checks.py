"""Pure doctor checks over golden probe output, and the fleet scheduler."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.doctor import platform_findings
from ops.errors import TargetError
from ops.facts import parse_apparmor_profiles
from ops.findings import Finding, has_error, to_document
from ops.fleet import TargetResult, fleet_exit_code, run_fleet
from ops.targets import Resolved, Target, parse_host_facts, platform_of

pytestmark = pytest.mark.unit
PROBE = Path(__file__).parent / "golden" / "probe"


LOCAL = Target("local")


def resolved(name: str, target: Target = LOCAL, override: str = "") -> Resolved:
    facts = parse_host_facts((PROBE / name).read_text())
    platform = "macos" if target.kind == "lima" else platform_of(facts, override)
    return Resolved(target, None, platform, facts)


def test_wsl2_without_systemd_gets_the_wsl_conf_hint() -> None:
    findings = platform_findings(resolved("wsl2-no-systemd.txt"))
    [pid1] = [f for f in findings if f.code == "systemd.not-pid1"]
    assert pid1.severity == "error" and "/etc/wsl.conf" in pid1.hint and "systemd=true" in pid1.hint
    assert pid1.platform == "wsl2"


def test_wsl2_with_systemd_is_fine() -> None:
    findings = platform_findings(resolved("wsl2-ubuntu.txt"))
    assert not has_error(findings)
    assert findings[0].message.startswith("wsl2 host: ubuntu 24.04")


def test_lima_vm_findings_name_the_vm_and_macos() -> None:
    findings = platform_findings(resolved("lima-vm-arm64.txt", Target("lima", vm="containai-docker")))
    assert findings[0].target == "lima:containai-docker" and findings[0].platform == "macos"
    assert "Lima VM containai-docker" in findings[0].message and "arm64" in findings[0].message


def test_apparmor_parser() -> None:
    text = "docker-default (enforce)\nfusermount3 (enforce)\n/usr/bin/man (complain)\n"
    assert parse_apparmor_profiles(text, "fusermount3") == "enforce"
    assert parse_apparmor_profiles("fusermount3 (complain)\n", "fusermount3") == "complain"
    assert parse_apparmor_profiles("", "fusermount3") == ""


def test_json_document_shape() -> None:
    doc = to_document([Finding("a.b", "warning", "local", "m", "h")], [{"target": "local"}])
    assert doc["schema"] == 1 and doc["ok"] is True and doc["summary"]["warning"] == 1
    assert doc["findings"][0] == {"code": "a.b", "severity": "warning", "target": "local", "message": "m",
                                  "hint": "h", "platform": "", "data": {}}


def op(target: str) -> TargetResult:
    if target == "down":
        raise TargetError("cannot reach down")
    if target == "refuses":
        return TargetResult(target, 2, "containers run")
    return TargetResult(target, 0, "ok")


def test_fleet_parallel_reports_every_target() -> None:
    results = run_fleet(["a", "down", "b"], op)
    assert [r.target for r in results] == ["a", "down", "b"]
    assert [r.ok for r in results] == [True, False, True]
    assert "cannot reach down" in results[1].summary
    assert fleet_exit_code(results) == 1


def test_fleet_serial_stops_at_first_failure() -> None:
    results = run_fleet(["a", "down", "b"], op, serial=True)
    assert [r.skipped for r in results] == [False, False, True]
    assert fleet_exit_code(results) == 1


def test_fleet_refusal_only_exits_2() -> None:
    assert fleet_exit_code(run_fleet(["a", "refuses"], op)) == 2
    assert fleet_exit_code(run_fleet(["a", "b"], op)) == 0
