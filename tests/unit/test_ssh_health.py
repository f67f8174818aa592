"""Doctor's SSH judgement (pure), the ``ssh -V`` parser on real output, and the pure parts of reaching a
container on another target (the jump options, who holds a stopped container's port)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ops import ssh
from ops.config import CaiConfig
from ops.findings import Finding
from ops.ssh_health import (
    KEY_REFUSED,
    ContainerProbe,
    KeyFacts,
    KnownHostsFacts,
    judge_client,
    judge_containers,
    parse_ssh_version,
)
from ops.targets import HostFacts, Resolved, Target

GOLDEN = Path(__file__).parent / "golden" / "ssh-V"
CONF = CaiConfig.from_mapping({})
FACTS = HostFacts("Linux", "6.1.0", "x86_64", "", "systemd", "debian", "12", "", False)
R = Resolved(Target("local"), None, "linux", FACTS)
GOOD_KEY = KeyFacts("/h/.config/containai/id_containai", True, True, 0o600, True)
GOOD_KNOWN = KnownHostsFacts("/h/.config/containai/known_hosts", True, True)
VERSION = (GOLDEN / "debian-12.txt").read_text()


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


def test_ssh_version_of_real_output() -> None:
    assert VERSION.startswith("OpenSSH_9.2p1 Debian")  # `ssh -V` of Debian 12, as printed
    assert parse_ssh_version(VERSION) == (9, 2)


@pytest.mark.parametrize(("text", "expected"), [
    ("OpenSSH_7.6p1 Ubuntu-4ubuntu0.7, OpenSSL 1.0.2n  7 Dec 2017", (7, 6)),
    ("OpenSSH_7.5p1, OpenSSL 1.0.2k  26 Jan 2017", (7, 5)),
    ("OpenSSH_9.8p1, LibreSSL 3.3.6", (9, 8)),
    ("OpenSSH_for_Windows_8.1p1, LibreSSL 3.0.2", (8, 1)),
    ("OpenSSH_10.0", (10, 0)),
    ("Sun_SSH_1.1", None),
    ("", None),
])
def test_ssh_version_shapes(text: str, expected: tuple[int, int] | None) -> None:
    assert parse_ssh_version(text) == expected


def test_healthy_client_is_one_info() -> None:
    found = judge_client(R, GOOD_KEY, GOOD_KNOWN, VERSION)
    assert codes(found) == ["ssh.client-version"] and found[0].severity == "info"
    assert found[0].data == {"version": "9.2"}


def test_openssh_older_than_accept_new() -> None:
    found = judge_client(R, GOOD_KEY, GOOD_KNOWN, "OpenSSH_7.5p1, OpenSSL 1.0.2k  26 Jan 2017")
    assert codes(found) == ["ssh.client-too-old"] and "7.6" in found[0].message
    assert codes(judge_client(R, GOOD_KEY, GOOD_KNOWN, "")) == ["ssh.client-missing"]


@pytest.mark.parametrize(("key", "code", "hint"), [
    (KeyFacts("/k", False), "ssh.key-missing", "set cai.ssh_key"),
    (KeyFacts("/k", True, False, 0o600, True), "ssh.key-unreadable", "owner"),
    (KeyFacts("/k", True, True, 0o644, True), "ssh.key-permissions", "chmod 600 /k"),
    (KeyFacts("/k", True, True, 0o640, True), "ssh.key-permissions", "chmod 600 /k"),
    (KeyFacts("/k", True, True, 0o400, False), "ssh.public-key-missing", "ssh-keygen -y -f /k > /k.pub"),
])
def test_key_problems(key: KeyFacts, code: str, hint: str) -> None:
    found = [f for f in judge_client(R, key, GOOD_KNOWN, VERSION) if f.code != "ssh.client-version"]
    assert codes(found) == [code] and found[0].severity == "warning"
    assert hint in found[0].hint


def test_known_hosts_that_cannot_be_written() -> None:
    found = judge_client(R, GOOD_KEY, KnownHostsFacts("/ro/known_hosts", False, False), VERSION)
    assert codes(found) == ["ssh.client-version", "ssh.known-hosts-unwritable"]
    assert "cannot be created" in found[1].message
    # a missing file whose folder lets ssh create it is fine
    assert codes(judge_client(R, GOOD_KEY, KnownHostsFacts("/h/kh", False, True), VERSION)) == ["ssh.client-version"]


def test_container_probes_are_judged_one_by_one() -> None:
    probes = [
        ContainerProbe("a", 2301, True),
        ContainerProbe("b", 2302, False, "auth", "agent@127.0.0.1: Permission denied (publickey)."),
        ContainerProbe("c", 2303, False, "refused", "connect to host 127.0.0.1 port 2303: Connection refused"),
        ContainerProbe("d", 2304, False, "hostkey-changed", "REMOTE HOST IDENTIFICATION HAS CHANGED"),
        ContainerProbe("e", None, False, "no-port", "no valid containai.ssh-port label"),
    ]
    found = judge_containers(R, probes, CONF)
    assert codes(found) == ["ssh.containers-reachable", KEY_REFUSED, "ssh.container-unreachable",
                            "ssh.container-host-key", "ssh.container-no-port"]
    assert all(f.severity == "warning" for f in found[1:])
    assert found[0].data["containers"] == ["a"]
    assert found[1].data["container"] == "b" and "doctor --fix" in found[1].hint
    assert judge_containers(R, [], CONF) == []


def _ep(**kw: object) -> ssh.Endpoint:
    return ssh.Endpoint("agent-1", 2301, "agent", Path("/k"), Path("/kh"), **kw)  # type: ignore[arg-type]


def test_a_jumped_endpoint_goes_through_the_target() -> None:
    jump = ("ssh", "-F", "/cfg 100%", "-p", "2222", "-o", "BatchMode=yes", "root@host.example")
    ep = _ep(jump=jump, host_key_alias="[host.example]:2301", where="ssh://root@host.example:2222")
    opts = ssh.ssh_options(ep)
    proxy = next(o for o in opts if o.startswith("ProxyCommand="))
    # the target's own ssh arguments, -W to the container's port on the target's loopback; % escaped
    assert proxy == ("ProxyCommand=ssh -o ControlMaster=no -o ControlPath=none -o ConnectTimeout=15 -W "
                     "127.0.0.1:2301 -F '/cfg 100%%' -p 2222 -o BatchMode=yes root@host.example")
    assert "HostKeyAlias=[host.example]:2301" in opts
    assert ep.known_hosts_entry == "[host.example]:2301"
    assert ep.label == "'agent-1' on ssh://root@host.example:2222"


def test_a_forwarded_endpoint_is_plain_loopback() -> None:
    opts = ssh.ssh_options(_ep())
    assert not any(o.startswith(("ProxyCommand=", "HostKeyAlias=")) for o in opts)
    assert _ep().known_hosts_entry == "[127.0.0.1]:2301"


def test_route_of_local_and_lima_targets_is_this_machines_loopback() -> None:
    assert ssh.route_of(Target("local"), CONF) == ssh.Route()
    lima = ssh.route_of(Target("lima", vm="containai-docker"), CONF)
    assert (lima.host, lima.jump, lima.local_ports, lima.where) == ("127.0.0.1", (), True, "lima:containai-docker")


def test_who_holds_a_stopped_containers_port() -> None:
    listing: list[dict[str, Any]] = [
        {"Names": ["/mine"], "State": "exited", "Labels": {"containai.ssh-port": "2301"}, "Ports": []},
        {"Names": ["/other"], "State": "running", "Labels": {"containai.ssh-port": "2301"}, "Ports": []},
        {"Names": ["/web"], "State": "running", "Labels": {},
         "Ports": [{"PrivatePort": 22, "PublicPort": 2301, "Type": "tcp"}]},
        {"Names": ["/gone"], "State": "exited", "Labels": {"containai.ssh-port": "2301"}, "Ports": []},
        {"Names": ["/elsewhere"], "State": "running", "Labels": {"containai.ssh-port": "2302"}, "Ports": []},
    ]
    assert ssh.port_holders(listing, "mine", 2301) == ["other", "web"]
    assert ssh.port_holders(listing, "mine", 2399) == []
    err = ssh.port_taken_error("mine", 2301, ["other", "web"], "lima:vm")
    assert err.line() == ("port 2301 of stopped container 'mine' on lima:vm is held by running container 'other': "
                          "stop other first (docker stop other), or recreate mine so that it gets a free port")
