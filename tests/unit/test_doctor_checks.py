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


# --- one round trip, one listing, one tar header -----------------------------------------------------

def _as_printed(outputs: list[tuple[int, str]], token: str) -> str:
    """What ``batch_script`` prints for these (exit status, stdout) answers (the shell's own output)."""
    return "".join(f"@@CAI-PROBE {token} {i}\n{out}\n@@CAI-RC {token} {i} {code}\n"
                   for i, (code, out) in enumerate(outputs))


def test_batch_answers_come_back_exactly() -> None:
    from ops.facts import parse_batch

    outputs = [(0, "a\nb\n"), (0, "no newline"), (3, ""), (0, "\n\nx"), (0, "tail\n\n"),
               (0, "@@CAI-RC other 5 0\n@@CAI-PROBE other 1\n"), (1, "@@CAI-RC tok 9 0\n")]
    assert parse_batch(_as_printed(outputs, "tok"), "tok", len(outputs)) == dict(enumerate(outputs))


def test_batch_cut_short_leaves_the_rest_out() -> None:
    """A script that died half way: the answers it printed are kept, the others are run on their own."""
    from ops.facts import parse_batch

    text = _as_printed([(0, "one\n"), (0, "two\n")], "tok") + "@@CAI-PROBE tok 2\npartial"
    assert parse_batch(text, "tok", 3) == {0: (0, "one\n"), 1: (0, "two\n")}
    assert parse_batch(text, "another", 3) == {}


def test_batch_script_holds_every_command_once() -> None:
    """Each command once per way of running (all at once, or one after the other where no temporary
    folder can be made), in a subshell of its own."""
    from ops.facts import batch_script

    script = batch_script(["echo a", "exit 3"], "tok")
    assert script.count("@@CAI-PROBE tok 0") == 2 and script.count("@@CAI-RC tok 1 %s") == 2
    assert script.count("(\necho a\n)") == 2 and script.count("(\nexit 3\n)") == 2


def test_batch_runs_a_command_given_plain_and_conditional_unconditionally() -> None:
    from ops.facts import OnlyIf, unique

    guarded = OnlyIf("cat /proc/1/comm", "false")
    assert unique([guarded, "echo", "cat /proc/1/comm", "echo"]) == ["cat /proc/1/comm", "echo"]
    assert [type(c) for c in unique([guarded, "echo", "cat /proc/1/comm"])] == [str, str]
    assert [type(c) for c in unique([guarded, "echo"])] == [OnlyIf, str]


def test_container_from_a_listing_entry() -> None:
    """One entry of GET /containers/json (API 1.41), a legacy link naming it a second time."""
    from ops.engine import container_from_summary

    entry = {
        "Id": "4f0c" * 16, "Names": ["/web/agent", "/agent-1"], "Image": "containai/agent:latest",
        "State": "exited", "Status": "Exited (0) 2 hours ago",
        "Labels": {"containai.managed": "true", "containai.ssh-port": "2301"},
        "Mounts": [{"Type": "volume", "Name": "agent-1-data", "Source": "/var/lib/containai-docker/volumes/"
                    "agent-1-data/_data", "Destination": "/mnt/agent-data", "Driver": "local", "RW": True},
                   {"Type": "bind", "Source": "/home/u/src", "Destination": "/home/agent/workspace", "RW": True}],
    }
    c = container_from_summary(entry, "containai.managed=true")
    assert (c.name, c.state, c.running, c.managed, c.ssh_port) == ("agent-1", "exited", False, True, 2301)
    assert c.volumes == ("agent-1-data",) and c.image == "containai/agent:latest"
    assert not container_from_summary({**entry, "Labels": {}}, "containai.managed=true").managed


def test_tar_header_only_even_behind_a_pax_header() -> None:
    """The archive API's tar of /usr/bin/sudo: the owner is read from the header (PAX records included),
    and the rest of the file is never read (one buffer of the stream may hold its first bytes)."""
    import io
    import tarfile

    from ops.repair.taint import first_member

    class HeaderOnly(io.BytesIO):
        """Fails a read that starts past the header blocks."""

        def read(self, size: int | None = -1) -> bytes:
            if self.tell() >= 3 * 512:
                raise AssertionError("read into the file's content")
            return super().read(size)

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("sudo")
        info.size, info.uid, info.gid, info.mode = 512 * 40, 65534, 65534, 0o4755
        info.pax_headers = {"SCHILY.xattr.security.capability": "x"}
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    member = first_member(HeaderOnly(raw.getvalue()))
    assert member is not None and (member.name, member.uid, member.gid) == ("sudo", 65534, 65534)


def test_wsl2_seccomp_filter_at_pid1_is_a_warning() -> None:
    findings = platform_findings(resolved("wsl2-seccomp-filter.txt"))
    [seccomp] = [f for f in findings if f.code == "wsl2.seccomp-filter"]
    assert seccomp.severity == "warning" and "Seccomp: 2" in seccomp.message and "wsl --update" in seccomp.hint
    assert not has_error(findings)


def test_no_seccomp_finding_off_wsl2_or_without_a_filter() -> None:
    assert not [f for f in platform_findings(resolved("wsl2-ubuntu.txt")) if f.code == "wsl2.seccomp-filter"]
    conf_not_applied = platform_findings(resolved("wsl2-conf-not-applied.txt"))
    assert not [f for f in conf_not_applied if f.code == "wsl2.seccomp-filter"]


def test_wsl2_systemd_set_but_not_applied_says_to_restart_wsl() -> None:
    findings = platform_findings(resolved("wsl2-conf-not-applied.txt"))
    [pid1] = [f for f in findings if f.code == "systemd.not-pid1"]
    assert "not applied yet" in pid1.message and "wsl --shutdown" in pid1.hint
    assert "enable systemd" not in pid1.hint


def test_wsl2_systemd_not_set_names_wsl_conf() -> None:
    text = (PROBE / "wsl2-no-systemd.txt").read_text() + "wsl_conf_systemd=absent\n"
    facts = parse_host_facts(text)
    [pid1] = [f for f in platform_findings(Resolved(LOCAL, None, "wsl2", facts)) if f.code == "systemd.not-pid1"]
    assert "does not set [boot] systemd=true" in pid1.message


def test_doctor_over_several_targets_goes_through_the_fleet_primitive(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """Several targets: one ``ops.fleet.run_fleet`` call, one result per target in the order given (exit
    1 and the counts for a target with an error finding), the report of each in its result; no host is
    reached (the ssh config named does not exist)."""
    from ops import doctor, fleet
    from ops.config import CaiConfig

    calls: list[list[str]] = []

    def spy(targets: list[str], op: object, parallel: int = 8, serial: bool = False) -> list[TargetResult]:
        calls.append(list(targets))
        return run_fleet(targets, op, parallel=parallel, serial=serial)  # type: ignore[arg-type]

    monkeypatch.setattr(fleet, "run_fleet", spy)
    conf = CaiConfig.from_mapping({"ssh_config": str(tmp_path / "absent")})
    targets = ["ssh://root@127.0.0.254:2222", "ssh://root@127.0.0.253:2222"]
    results = doctor.fleet_results(targets, conf)
    assert calls == [targets]
    assert [(r.target, r.exit_code, r.summary) for r in results] == [
        (t, 1, "1 error(s), 0 warning(s)") for t in targets]
    assert [[f.code for f in r.detail["report"].findings] for r in results] == [["target.unreachable"]] * 2
    reports = doctor.run_doctor(targets, conf)
    assert [r.target for r in reports] == targets and len(calls) == 2


def test_a_target_whose_evaluation_failed_still_has_a_report() -> None:
    from ops.doctor import _failed_report

    report = _failed_report(TargetResult("ssh://h:22", 1, "unexpected KeyError: 'x'"))
    assert [(f.code, f.severity, f.target) for f in report.findings] == [("target.check-failed", "error", "ssh://h:22")]
    assert not report.reachable
