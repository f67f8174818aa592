"""Target parsing and platform detection from probe output."""

from __future__ import annotations

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
