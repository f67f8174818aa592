"""Host keys of SSH targets against a real sshd on loopback: Fabric connections and the OpenSSH engine
tunnel refuse unknown and changed keys unless the target's ssh config says ``accept-new`` or ``no``.

The sshd is OpenSSH's own, started by the test on 127.0.0.1 with a host key the test controls (and can
change, as a reinstalled or impersonated host would); the client logs in as root with a test key.
Before the fix, Fabric accepted any key (paramiko's AutoAddPolicy, no known_hosts loaded).
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _cli import inv
from _sshd import config_text, free_port, keygen, start
from paramiko.hostkeys import HostKeys

from ops.config import CaiConfig
from ops.errors import TargetError
from ops.targets import engine_host, make_context, parse_target, run

pytestmark = pytest.mark.integration


@dataclass
class Sshd:
    """A real sshd on 127.0.0.1:port with a host key of the test's choosing."""

    dir: Path
    port: int
    client_key: Path
    host_key: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_host_keys: tuple[Path, ...] = ()

    @property
    def name(self) -> str:
        return f"[127.0.0.1]:{self.port}"

    @property
    def target(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"

    def start(self) -> None:
        config = self.dir / "sshd_config"
        config.write_text(config_text(self.port, [self.host_key, *self.extra_host_keys],
                                      self.dir / "authorized_keys"))
        self.proc = start(config, self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def new_host_key(self) -> None:
        """The host now presents another key (reinstalled, or someone else answering)."""
        self.stop()
        for suffix in ("", ".pub"):
            Path(f"{self.host_key}{suffix}").unlink()
        keygen(self.host_key)
        self.start()

    def known_line(self, name: str | None = None) -> str:
        kind, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"{name or self.name} {kind} {blob}\n"

    def ssh_config(self, strict: str | None, known_hosts: Path, extra: tuple[str, ...] = (),
                   log_level: str = "ERROR") -> Path:
        path = self.dir / f"ssh_config-{strict}-{log_level}"
        lines = ["Host 127.0.0.1", f"  IdentityFile {self.client_key}", "  IdentitiesOnly yes",
                 f"  UserKnownHostsFile {known_hosts}", f"  GlobalKnownHostsFile {self.dir / 'global_known_hosts'}",
                 "  BatchMode yes", f"  LogLevel {log_level}", *extra]
        if strict is not None:
            lines.insert(1, f"  StrictHostKeyChecking {strict}")
        path.write_text("\n".join(lines) + "\n")
        return path


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    client_key = keygen(tmp_path / "id_client")
    (tmp_path / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    server = Sshd(tmp_path, free_port(), client_key, keygen(tmp_path / "host_key"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def connect(server: Sshd, ssh_config: Path) -> str:
    """One command over a fresh Fabric connection, as every command of the toolkit reaches a target."""
    conf = CaiConfig.from_mapping({"ssh_config": str(ssh_config)})
    ctx = make_context(parse_target(server.target), conf)
    try:
        code, out, _err = run(ctx, "echo reached")
    finally:
        ctx.close()
    assert code == 0
    return out.strip()


def test_unknown_key_is_refused_by_default_and_with_yes(sshd: Sshd) -> None:
    known = sshd.dir / "known_hosts"
    for strict in (None, "yes", "ask"):
        with pytest.raises(TargetError) as refused:
            connect(sshd, sshd.ssh_config(strict, known))
        line = refused.value.line()
        assert "\n" not in line and sshd.target in line and "is not known" in line
        assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known}" in line
    assert not known.exists()  # nothing was recorded
    known.write_text(sshd.known_line())
    assert connect(sshd, sshd.ssh_config(None, known)) == "reached"


def test_changed_key_is_refused(sshd: Sshd) -> None:
    known = sshd.dir / "known_hosts"
    known.write_text(sshd.known_line())
    config = sshd.ssh_config("yes", known)
    assert connect(sshd, config) == "reached"
    sshd.new_host_key()
    with pytest.raises(TargetError) as refused:
        connect(sshd, config)
    line = refused.value.line()
    assert "has CHANGED" in line and sshd.target in line
    assert f"ssh-keygen -R '{sshd.name}' -f {known}" in line


def test_strict_host_key_checking_no_accepts_unknown_and_changed_keys(sshd: Sshd) -> None:
    """What Lima writes for its own VMs (with UserKnownHostsFile /dev/null)."""
    known = sshd.dir / "known_hosts"
    assert connect(sshd, sshd.ssh_config("no", Path("/dev/null"))) == "reached"
    known.write_text(sshd.known_line().replace(sshd.known_line().split()[2], "AAAAC3NzaC1lZDI1NTE5AAAAI" + "A" * 43))
    assert connect(sshd, sshd.ssh_config("no", known)) == "reached"


def test_accept_new_records_the_key_then_refuses_a_changed_one(sshd: Sshd) -> None:
    known = sshd.dir / "ssh" / "known_hosts"  # the directory does not exist yet either
    config = sshd.ssh_config("accept-new", known)
    assert connect(sshd, config) == "reached"
    assert known.read_text() == sshd.known_line()
    assert connect(sshd, config) == "reached"  # recorded: accepted again, nothing appended
    assert known.read_text().count("\n") == 1
    sshd.new_host_key()
    with pytest.raises(TargetError, match="has CHANGED"):
        connect(sshd, config)


def test_hashed_names_and_host_key_alias(sshd: Sshd) -> None:
    """HashKnownHosts (Debian's default) writes hashed names, and they are read back; a HostKeyAlias
    (the WSL2 Docker-over-SSH entry uses one) is the name looked up."""
    known = sshd.dir / "known_hosts"
    config = sshd.ssh_config("accept-new", known, ("  HashKnownHosts yes",))
    assert connect(sshd, config) == "reached"
    label = known.read_text().split()[0]
    assert label.startswith("|1|") and HostKeys.hash_host(sshd.name, label) == label
    assert connect(sshd, sshd.ssh_config("yes", known)) == "reached"

    aliased = sshd.dir / "aliased_known_hosts"
    aliased.write_text(sshd.known_line("containai-docker-daemon-key"))
    alias = ("  HostKeyAlias containai-docker-daemon-key",)
    assert connect(sshd, sshd.ssh_config("yes", aliased, alias)) == "reached"
    with pytest.raises(TargetError, match="is not known"):  # the real name alone does not count then
        connect(sshd, sshd.ssh_config("yes", known, alias))


def test_a_recorded_rsa_key_is_what_is_negotiated(sshd: Sshd) -> None:
    """A host recorded with only its RSA key is checked against that key, not refused for offering its
    ed25519 key first (OpenSSH prefers the recorded types too)."""
    rsa = keygen(sshd.dir / "host_rsa", "rsa")
    sshd.stop()
    sshd.extra_host_keys = (rsa,)
    sshd.start()
    known = sshd.dir / "known_hosts"
    kind, blob = rsa.with_suffix(".pub").read_text().split()[:2]
    known.write_text(f"{sshd.name} {kind} {blob}\n")
    assert connect(sshd, sshd.ssh_config("yes", known)) == "reached"


def test_the_engine_tunnel_uses_the_same_policy_and_never_blocks(sshd: Sshd, lab_engine: str) -> None:
    """The OpenSSH tunnel to the target's engine socket refuses a changed key as Fabric does, and its
    diagnostics never block it: with LogLevel DEBUG3 ssh writes a few KiB per forwarded connection, which
    filled the pipe nobody read (64 KiB) and froze the tunnel before the fix."""
    known = sshd.dir / "known_hosts"
    known.write_text(sshd.known_line())
    config = sshd.ssh_config("yes", known, log_level="DEBUG3")
    conf = CaiConfig.from_mapping({"ssh_config": str(config), "docker_host": lab_engine})
    target = parse_target(sshd.target)
    with engine_host(target, conf) as url:
        path = url[len("unix://"):]
        for _ in range(400):  # a new connection each time, as docker clients open them
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(15)
                s.connect(path)
                s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
                assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"OK"), reply[:200]
    sshd.new_host_key()
    with pytest.raises(TargetError) as refused, engine_host(target, conf):
        pass
    line = refused.value.line()
    assert sshd.target in line and "REMOTE HOST IDENTIFICATION HAS CHANGED" in line
    assert f"ssh-keygen -f \"{known}\" -R \"{sshd.name}\"" in line


def test_doctor_reports_a_refused_host_key_through_the_cli(sshd: Sshd) -> None:
    known = sshd.dir / "known_hosts"
    env = {"INVOKE_CAI_SSH_CONFIG": str(sshd.ssh_config(None, known))}
    result = inv("doctor", "--json", "--target", sshd.target, env=env, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [finding] = [f for f in json.loads(result.stdout)["findings"] if f["code"] == "target.unreachable"]
    assert "is not known" in finding["message"] and "ssh-keyscan" in finding["hint"]
    known.write_text(sshd.known_line())
    result = inv("doctor", "--json", "--target", sshd.target, env=env, timeout=300)
    codes = [f["code"] for f in json.loads(result.stdout)["findings"]]
    assert "target.unreachable" not in codes and "platform.detected" in codes
