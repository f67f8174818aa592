"""Host layouts: the pure parser and decision over goldens of the layout probe, captured on lab hosts in
the states the ContainAI installer leaves (and in the broken states a user can reach)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ops import layout as lay
from ops.config import CaiConfig
from ops.errors import ConfigError

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden" / "layout"


def facts(name: str) -> lay.LayoutFacts:
    return lay.parse_probe((GOLDEN / f"{name}.txt").read_text())


def test_the_installers_linux_host_is_the_containai_layout() -> None:
    f = facts("containai-installer")
    got = lay.decide(f, "lima:h")
    assert got.name == "containai" and not got.forced
    assert (got.engine_unit, got.socket, got.daemon_json) == (
        "containai-docker.service", "/var/run/containai-docker.sock", "/etc/containai/docker/daemon.json")
    assert got.docker_host == "unix:///var/run/containai-docker.sock"
    assert got.data_root == "/var/lib/containai-docker"  # the engine's DockerRootDir
    assert got.bundle and f.bundle_version == "20.10.24"
    assert set(f.bundle_links) == set(lay.BUNDLE_BINARIES)
    assert (got.bridge, got.bridge_address, got.bridge_present) == ("cai0", "172.30.0.1/16", True)
    assert got.bridge_addresses == ("172.30.0.1/16",)
    assert got.default_runtime == got.observed_default_runtime == "sysbox-runc"
    assert "sysbox-runc" in got.runtimes
    assert got.engine_state == "active" and got.engine_answered
    assert got.installer_unit  # ExecStopPre= in the unit: written by the bash installer
    assert got.uses_bundle and got.stop_hook_part_of[0] == "containai-docker.service"
    assert lay.bridge_conflict(got, f) == ""


def test_the_macos_vm_is_the_lima_vm_layout() -> None:
    for name in ("lima-vm", "lima-vm-managed-container"):
        f = facts(name)
        got = lay.decide(f, "lima:vm")
        assert got.name == "lima-vm", name
        assert (got.engine_unit, got.socket, got.daemon_json, got.data_root) == (
            "docker.service", "/var/run/docker.sock", "/etc/docker/daemon.json", "/var/lib/docker")
        assert got.companion_units == ("containerd.service",)
        assert not got.bundle and not got.uses_bundle
        assert got.default_runtime == got.observed_default_runtime == "runc"
        assert "sysbox-runc" in got.runtimes
        assert (got.bridge, got.bridge_address, got.bridge_present) == ("docker0", "", True)
        assert got.bridge_addresses == ("172.20.0.1/16",)  # the sysbox-ce postinst's bip
        assert not got.installer_unit
        assert got.stop_hook_part_of[0] == "docker.service"
        assert lay.bridge_conflict(got, f) == ""
    assert facts("lima-vm-managed-container").engine("/var/run/docker.sock").managed == 1


def test_the_labs_older_install_is_containai_without_bundle_or_bridge() -> None:
    got = lay.decide(facts("lab-older-install"), "lima:old")
    assert got.name == "containai"
    assert not got.bundle and got.bridge == "" and got.bridge_address == ""
    assert not got.installer_unit
    assert got.observed_default_runtime == "runc"


def test_both_engines_holding_managed_containers_is_refused_unless_forced() -> None:
    f = facts("both-engines")
    with pytest.raises(lay.LayoutError) as err:
        lay.decide(f, "lima:vm")
    line = err.value.line()
    assert line.startswith("lima:vm has both engines") and "1 managed container" in line
    assert "cai.layout" in line and "\n" not in line
    assert lay.decide(f, "lima:vm", "lima-vm").name == "lima-vm"
    forced = lay.decide(f, "lima:vm", "containai")
    assert forced.name == "containai" and forced.forced


def test_a_host_with_neither_engine_matches_no_layout() -> None:
    with pytest.raises(lay.LayoutError) as err:
        lay.decide(facts("docker-without-sysbox"), "ssh://h:22")
    assert err.value.line().startswith("ssh://h:22 matches no host layout: docker.service exists but has no "
                                       "sysbox-runc runtime")
    empty = lay.parse_probe("load:containai-docker.service=not-found\nload:docker.service=not-found\n")
    with pytest.raises(lay.LayoutError, match="neither containai-docker.service nor"):
        lay.decide(empty, "local")


def test_an_invalid_or_unreadable_daemon_json_is_one_clear_error() -> None:
    with pytest.raises(lay.LayoutError) as err:
        lay.decide(facts("containai-daemon-json-invalid"), "lima:h")
    assert err.value.line().startswith("lima:h: /etc/containai/docker/daemon.json is not valid JSON (line 3")
    text = (GOLDEN / "lima-vm.txt").read_text()
    lines = [("file:/etc/docker/daemon.json=unreadable" if line.startswith("file:/etc/docker/daemon.json=")
              else line) for line in text.splitlines()]
    unreadable = lay.parse_probe("\n".join(lines))
    assert unreadable.unreadable == ("/etc/docker/daemon.json",)
    with pytest.raises(lay.LayoutError, match="exists but cannot be read; nothing was changed"):
        lay.decide(unreadable, "lima:vm")


def test_a_bridge_address_that_overlaps_another_interface_is_a_conflict() -> None:
    f = facts("containai-address-conflict")
    got = lay.decide(f, "lima:h")
    assert lay.bridge_conflict(got, f) == "the bridge cai0 needs 172.30.0.1/16, which overlaps 172.30.5.1/24 on lo"


def test_a_bridge_with_another_address_is_reported() -> None:
    f = facts("containai-installer")
    moved = lay.parse_probe((GOLDEN / "containai-installer.txt").read_text().replace(
        "inet 172.30.0.1/16 scope global cai0", "inet 172.31.0.1/16 scope global cai0"))
    got = lay.decide(moved, "h")
    assert lay.bridge_conflict(got, moved) == "the bridge cai0 carries 172.31.0.1/16 instead of 172.30.0.1/16"
    assert lay.bridge_conflict(lay.decide(f, "h"), f) == ""


def test_forced_layout_names_are_checked() -> None:
    with pytest.raises(lay.LayoutError, match="cai.layout 'vm' is not one of containai, lima-vm"):
        lay.decide(facts("lima-vm"), "h", "vm")
    with pytest.raises(ConfigError, match="cai.layout 'vm' is not one of"):
        CaiConfig.from_mapping({"layout": "vm"})
    assert CaiConfig.from_mapping({"layout": " LIMA-VM "}).layout == "lima-vm"
    assert CaiConfig.from_mapping({}).layout == ""


def test_conf_for_points_the_engine_code_at_the_layouts_engine() -> None:
    got = lay.conf_for(CaiConfig.from_mapping({}), lay.decide(facts("lima-vm"), "h"))
    assert (got.docker_host, got.data_root) == ("unix:///var/run/docker.sock", "/var/lib/docker")


def test_daemon_defaults_add_the_installers_keys_and_keep_the_hosts_values() -> None:
    assert lay.daemon_defaults({}) == {"bridge": "cai0", "default-runtime": "sysbox-runc"}
    assert lay.daemon_defaults({"bip": "10.1.0.1/16"}) == {"default-runtime": "sysbox-runc"}  # bip excludes bridge
    assert lay.daemon_defaults({"bridge": "none", "default-runtime": "runc"}) == {}


def test_unit_values_name_the_bridge_the_unit_creates() -> None:
    assert lay.unit_values('{"bridge": "cai0"}') == {"BRIDGE": "cai0", "BRIDGE_ADDRESS": "172.30.0.1/16"}
    for text in ('{"bridge": "none"}', "{}", '{"bridge": "docker0"}', ""):
        assert lay.unit_values(text) == {"BRIDGE": "", "BRIDGE_ADDRESS": ""}, text
    with pytest.raises(lay.LayoutError, match="not a network interface name"):
        lay.unit_values('{"bridge": "cai0; rm -rf /"}')


def test_the_probe_is_posix_shell() -> None:
    out = subprocess.run(["sh", "-n", "-c", lay.probe_command()], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _bridge_script(unit_text: str) -> str:
    """The shell of the engine unit's bridge step, as systemd hands it to /bin/sh -c."""
    line = next(x for x in unit_text.splitlines() if x.startswith("ExecStartPre=/bin/sh -c "))
    quoted = line[len("ExecStartPre=/bin/sh -c "):]
    assert quoted.startswith('"') and quoted.endswith('"')
    return quoted[1:-1].replace('\\"', '"').replace("$$", "$").replace("\\t", "\t").replace("\\n", "\n")


@pytest.mark.parametrize(("config", "calls"), [
    ('{\n  "bridge": "cai0",\n  "hosts": []\n}\n',
     ["link show cai0", "link add name cai0 type bridge", "-4 addr show dev cai0",
      "addr add 172.30.0.1/16 dev cai0", "link set cai0 up"]),
    ('{"hosts":[],"bridge" : "cai0"}', None),
    ('{"bridge": "none"}', []),
    ('{"hosts": []}', []),
])
def test_the_engine_unit_makes_the_bridge_daemon_json_names(tmp_path: Path, config: str,
                                                            calls: list[str] | None) -> None:
    """The step runs with a stand-in ``ip`` that logs its arguments and finds no bridge."""
    from ops import units

    text = next(f.text for f in units.render(CaiConfig.from_mapping({})) if f.name == "containai-docker.service")
    assert "ExecStartPre=-/bin/rm -f /var/run/containai-docker.pid\n" in text
    assert text.index("ExecStartPre=-/bin/rm") < text.index("ExecStartPre=/bin/sh") < text.index("ExecStart=")
    daemon = tmp_path / "daemon.json"
    daemon.write_text(config)
    script = _bridge_script(text).replace("/etc/containai/docker/daemon.json", str(daemon))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ip.log"
    (bin_dir / "ip").write_text(f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in "link show"*) exit 1;; esac\n')
    (bin_dir / "ip").chmod(0o755)
    import os

    run = subprocess.run(["/bin/sh", "-c", script], env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    got = log.read_text().splitlines() if log.exists() else []
    expected = calls if calls is not None else [
        "link show cai0", "link add name cai0 type bridge", "-4 addr show dev cai0",
        "addr add 172.30.0.1/16 dev cai0", "link set cai0 up"]
    assert got == expected


def codes(found: list[object]) -> dict[str, str]:
    return {f.code: f.severity for f in found}  # type: ignore[attr-defined]


def test_doctor_findings_of_the_installers_hosts() -> None:
    f = facts("containai-installer")
    got = lay.findings(lay.decide(f, "lima:h"), f, "lima:h", "linux")
    assert codes(got) == {"layout.detected": "info", "units.installer-unit": "warning"}
    assert got[0].message == ("containai layout (read on the target): containai-docker.service on "
                              "/var/run/containai-docker.sock, data /var/lib/containai-docker, bundle 20.10.24, "
                              "bridge cai0")
    assert "its stop hook (ExecStopPre=) never runs" in got[1].message
    vm = facts("lima-vm")
    got = lay.findings(lay.decide(vm, "lima:vm"), vm, "lima:vm", "macos")
    assert codes(got) == {"layout.detected": "info"}  # docker.service, runc default: nothing wrong


def test_doctor_findings_of_broken_hosts() -> None:
    f = facts("containai-address-conflict")
    assert codes(lay.findings(lay.decide(f, "h"), f, "h"))["bridge.address"] == "warning"
    gone = lay.parse_probe((GOLDEN / "containai-installer.txt").read_text().replace(
        "link=2: cai0:", "link=2: other0:"))
    got = codes(lay.findings(lay.decide(gone, "h"), gone, "h"))
    assert got["bridge.missing"] == "error"
    old = facts("lab-older-install")  # runc default, no sysbox-runc registered in the old engine
    got = codes(lay.findings(lay.decide(old, "h"), old, "h"))
    assert got["engine.default-runtime"] == "warning" and got["engine.sysbox-runtime-missing"] == "error"
    with pytest.raises(lay.LayoutError) as err:
        lay.decide(facts("both-engines"), "lima:vm")
    finding = lay.layout_error_finding(err.value, "lima:vm", "macos")
    assert (finding.code, finding.severity) == ("layout.unknown", "error")


class _Ctx:
    """A Context whose ``run`` returns a captured probe output (the seam read_facts runs through)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def run(self, command: str, **kwargs: object) -> object:
        from types import SimpleNamespace

        return SimpleNamespace(exited=0, stdout=self.text, stderr="")


def test_update_layout_refuses_what_it_must_not_touch() -> None:
    conf = CaiConfig.from_mapping({})
    got = lay.update_layout(_Ctx((GOLDEN / "containai-installer.txt").read_text()), conf, "h")
    assert got is not None and got.name == "containai"
    assert lay.update_layout(_Ctx((GOLDEN / "docker-without-sysbox.txt").read_text()), conf, "h") is None
    # the macOS VM's docker.service: update acts on it (Sysbox and the stop hook only)
    vm = lay.update_layout(_Ctx((GOLDEN / "lima-vm.txt").read_text()), conf, "lima:x")
    assert vm is not None and vm.name == "lima-vm" and vm.engine_unit == "docker.service" and not vm.uses_bundle
    for name, kind, words in (("both-engines", "both", "both engines"),
                              ("containai-daemon-json-invalid", "unreadable", "not valid JSON"),
                              ("containai-address-conflict", "bridge", "overlaps 172.30.5.1/24 on lo")):
        with pytest.raises(lay.LayoutError) as err:
            lay.update_layout(_Ctx((GOLDEN / f"{name}.txt").read_text()), conf, "lima:x")
        assert err.value.kind == kind and words in err.value.message and "nothing was changed" in err.value.message
    forced = CaiConfig.from_mapping({"layout": "containai"})
    got = lay.update_layout(_Ctx((GOLDEN / "both-engines.txt").read_text()), forced, "h")
    assert got is not None and got.name == "containai"


def test_a_host_without_systemd_and_nothing_installed_has_no_layout_yet() -> None:
    """Read without systemd (unit files found on disk): Debian's docker.io unit, no ContainAI."""
    f = facts("no-systemd-nothing-installed")
    assert f.unit("docker.service").present and not f.unit("containai-docker.service").present
    with pytest.raises(lay.LayoutError) as err:
        lay.decide(f, "local")
    assert err.value.kind == "none"
    conf = CaiConfig.from_mapping({})
    assert lay.update_layout(_Ctx((GOLDEN / "no-systemd-nothing-installed.txt").read_text()), conf, "local") is None
