"""Target parsing and platform detection from probe output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ops.config import CaiConfig
from ops.errors import TargetError
from ops.targets import Target, lima_ssh_config, make_context, parse_host_facts, parse_target, platform_of

pytestmark = pytest.mark.unit
PROBE = Path(__file__).parent / "golden" / "probe"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("local", Target("local")),
        ("", Target("local")),
        ("lima", Target("lima", vm="containai-docker")),
        ("lima:dev", Target("lima", vm="dev")),
        ("ssh://agent@host.example:2200", Target("ssh", user="agent", host="host.example", port=2200)),
        ("ssh://127.0.0.2", Target("ssh", host="127.0.0.2", port=22)),
    ],
)
def test_parse_target(text: str, expected: Target) -> None:
    assert parse_target(text) == expected
    assert parse_target(expected.name) == expected


@pytest.mark.parametrize("bad", ["docker://x", "lima:../etc", "ssh://", "ssh://h:99999", "ssh://h/path"])
def test_bad_targets(bad: str) -> None:
    with pytest.raises(TargetError):
        parse_target(bad)


def test_wsl2_detected_from_kernel_and_distro_name() -> None:
    facts = parse_host_facts((PROBE / "wsl2-ubuntu.txt").read_text())
    assert facts.is_wsl and facts.systemd_pid1 and facts.arch == "amd64"
    assert platform_of(facts) == "wsl2"
    assert platform_of(facts, "linux") == "linux"  # explicit override wins


def test_wsl2_without_systemd() -> None:
    facts = parse_host_facts((PROBE / "wsl2-no-systemd.txt").read_text())
    assert platform_of(facts) == "wsl2" and not facts.systemd_pid1


def test_lima_vm_arch_is_mapped() -> None:
    facts = parse_host_facts((PROBE / "lima-vm-arm64.txt").read_text())
    assert facts.arch == "arm64" and platform_of(facts) == "linux"


def test_macos_host() -> None:
    facts = parse_host_facts((PROBE / "macos.txt").read_text())
    assert facts.is_macos and platform_of(facts) == "macos"


def test_probe_parser_rejects_garbage() -> None:
    with pytest.raises(TargetError):
        parse_host_facts("nonsense")


def test_missing_lima_vm_is_a_clear_error(tmp_path: Path) -> None:
    conf = CaiConfig.from_mapping({"lima_home": str(tmp_path)})
    assert lima_ssh_config(conf, "vm1") == tmp_path / "vm1" / "ssh.config"
    with pytest.raises(TargetError, match="Lima VM 'vm1' not found"):
        make_context(Target("lima", vm="vm1"), conf)


@pytest.mark.parametrize(("value", "mode"), [(None, "yes"), ("ask", "yes"), ("yes", "yes"), ("no", "no"),
                                             ("off", "no"), ("accept-new", "accept-new"), ("bogus", "yes")])
def test_host_key_mode_from_ssh_config(value: str | None, mode: str) -> None:
    from ops.hostkeys import policy_from_ssh_config

    options = {} if value is None else {"stricthostkeychecking": value}
    assert policy_from_ssh_config(options, "h", 22).mode == mode


def test_known_hosts_files_as_openssh_reads_them() -> None:
    from ops.hostkeys import policy_from_ssh_config

    home = os.path.expanduser("~")
    default = policy_from_ssh_config({}, "10.0.0.1", 2222)
    assert default.user_files == (f"{home}/.ssh/known_hosts", f"{home}/.ssh/known_hosts2")
    assert default.global_files == ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
    assert default.lookup_name("10.0.0.1", 2222) == "[10.0.0.1]:2222" and default.lookup_name("h", 22) == "h"
    lima = policy_from_ssh_config({"stricthostkeychecking": "no", "userknownhostsfile": "/dev/null"}, "h", 60022)
    assert lima.user_files == ("/dev/null",)
    custom = policy_from_ssh_config({"userknownhostsfile": "~/a %d/b_%h_%p", "globalknownhostsfile": "none",
                                     "hostkeyalias": "[127.0.0.1]:2222", "hashknownhosts": "yes"}, "h", 22)
    assert custom.user_files == (f"{home}/a", f"{home}/b_h_22") and custom.global_files == ()
    assert custom.lookup_name("h", 22) == "[127.0.0.1]:2222" and custom.hash_new
    assert custom.ssh_options() == ["-o", "StrictHostKeyChecking=yes",
                                    "-o", f"UserKnownHostsFile={home}/a {home}/b_h_22",
                                    "-o", "GlobalKnownHostsFile=none", "-o", "HostKeyAlias=[127.0.0.1]:2222"]


def test_lima_tunnel_gets_the_lima_config_policy(tmp_path: Path) -> None:
    from ops.targets import ssh_base_args

    vm = tmp_path / "vm1"
    vm.mkdir()
    (vm / "ssh.config").write_text("Host lima-vm1\n  Hostname 127.0.0.1\n  Port 60022\n"
                                   "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
    conf = CaiConfig.from_mapping({"lima_home": str(tmp_path)})
    args = ssh_base_args(Target("lima", vm="vm1"), conf)
    assert args[-1] == "lima-vm1" and "StrictHostKeyChecking=no" in args and "UserKnownHostsFile=/dev/null" in args
    assert "BatchMode=yes" in args


def test_known_hosts_name_matching() -> None:
    """OpenSSH host patterns: ``[host]:port`` is literal (not a character class), ``*``/``?`` wildcards,
    ``!`` negation, hashed names."""
    from paramiko.hostkeys import HostKeys

    from ops.hostkeys import _name_matches

    assert _name_matches(["[127.0.0.1]:2222"], "[127.0.0.1]:2222")
    assert not _name_matches(["[127.0.0.1]:2222"], "1")
    assert _name_matches(["*.example.com", "!bad.example.com"], "a.example.com")
    assert not _name_matches(["*.example.com", "!bad.example.com"], "bad.example.com")
    assert _name_matches(["10.0.0.?"], "10.0.0.5") and not _name_matches(["10.0.0.?"], "10.0.0.55")
    hashed = HostKeys.hash_host("[127.0.0.1]:2222")
    assert _name_matches([hashed], "[127.0.0.1]:2222") and not _name_matches([hashed], "[127.0.0.1]:2223")
