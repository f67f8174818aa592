"""The engine of a remote target through the target's own SSH connection, against a real sshd on
loopback forwarding to the real lab engine's socket.

One SSH connection per target carries the probes and every Docker API request (channels of kind
``direct-streamlocal@openssh.com``). Before the change, doctor opened a second connection (an
``ssh -N -L`` forward) for the engine: sshd logged two accepted logins per doctor run.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _cli import inv
from _sshd import config_text, free_port, keygen, start

from ops.config import CaiConfig
from ops.engine import Engine
from ops.errors import EngineError
from ops.targets import engine_host, make_context, parse_target, run

pytestmark = pytest.mark.integration


class Sshd:
    """OpenSSH's sshd on 127.0.0.1:port, logging every accepted login to a file."""

    def __init__(self, folder: Path, streamlocal: bool = True) -> None:
        self.dir = folder
        self.port = free_port()
        self.client_key = keygen(folder / "id_client")
        (folder / "authorized_keys").write_text(self.client_key.with_suffix(".pub").read_text())
        self.log = folder / "sshd.log"
        config = folder / "sshd_config"
        config.write_text(config_text(self.port, [keygen(folder / "host_key")], folder / "authorized_keys",
                                      streamlocal=streamlocal, log_level="INFO"))
        self.proc = start(config, self.port, self.log)

    @property
    def target(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"

    def ssh_config(self) -> Path:
        path = self.dir / "ssh_config"
        path.write_text("\n".join(["Host 127.0.0.1", f"  IdentityFile {self.client_key}", "  IdentitiesOnly yes",
                                   "  StrictHostKeyChecking no", "  UserKnownHostsFile /dev/null",
                                   "  BatchMode yes", ""]))
        return path

    def logins(self) -> int:
        """How many SSH connections logged in so far."""
        return self.log.read_text(errors="replace").count("Accepted publickey")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = Sshd(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def lab_socket(lab_engine: str) -> str:
    assert lab_engine.startswith("unix://"), lab_engine
    return lab_engine


def test_the_engine_answers_through_channels_of_the_targets_connection(sshd: Sshd, lab_engine: str) -> None:
    conf = CaiConfig.from_mapping({"ssh_config": str(sshd.ssh_config()), "docker_host": lab_socket(lab_engine)})
    target = parse_target(sshd.target)
    ctx = make_context(target, conf)
    try:
        assert run(ctx, "echo reached")[1].strip() == "reached"
        with engine_host(target, conf, ctx) as url:
            assert url.startswith("ssh-channel://") and url.endswith(lab_engine[len("unix://"):])
            engine = Engine.connect(url, conf.label, timeout=15)
            try:
                assert engine.version()["ApiVersion"]
                assert engine.ping()
                listed = engine.containers(managed_only=False)
                # many requests, some at once: every HTTP connection of the pool is a channel
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(8) as pool:
                    again = list(pool.map(lambda _: engine.containers(managed_only=False), range(40)))
                assert all({c.id for c in a} >= {c.id for c in listed if c.running} for a in again)
            finally:
                engine.close()
        assert sshd.logins() == 1
    finally:
        ctx.close()


def test_a_missing_engine_socket_is_one_clear_error(sshd: Sshd) -> None:
    conf = CaiConfig.from_mapping({"ssh_config": str(sshd.ssh_config()),
                                   "docker_host": f"unix://{sshd.dir / 'no-such.sock'}"})
    target = parse_target(sshd.target)
    ctx = make_context(target, conf)
    try:
        with engine_host(target, conf, ctx) as url, pytest.raises(EngineError) as failed:
            Engine.connect(url, conf.label, timeout=15)
        assert "socket not found" in failed.value.message
        assert sshd.target in failed.value.message and "no-such.sock" in failed.value.message
    finally:
        ctx.close()


def test_sshd_refusing_socket_forwarding_is_named(tmp_path: Path, lab_engine: str) -> None:
    server = Sshd(tmp_path, streamlocal=False)
    try:
        conf = CaiConfig.from_mapping({"ssh_config": str(server.ssh_config()), "docker_host": lab_socket(lab_engine)})
        target = parse_target(server.target)
        ctx = make_context(target, conf)
        try:
            with engine_host(target, conf, ctx) as url, pytest.raises(EngineError) as failed:
                Engine.connect(url, conf.label, timeout=15)
            assert "AllowStreamLocalForwarding" in failed.value.line()
        finally:
            ctx.close()
    finally:
        server.stop()


def test_doctor_over_ssh_logs_in_once(sshd: Sshd, lab_engine: str) -> None:
    """The probes and the engine's checks of one target share one SSH connection (two before)."""
    env = {"INVOKE_CAI_SSH_CONFIG": str(sshd.ssh_config()), "INVOKE_CAI_DOCKER_HOST": lab_socket(lab_engine)}
    result = inv("doctor", "--json", "--target", sshd.target, env=env, timeout=300)
    assert "Traceback" not in result.stderr and "Secsh" not in result.stderr, result.stderr
    doc = json.loads(result.stdout)
    codes = {f["code"]: f for f in doc["findings"]}
    assert "target.unreachable" not in codes and "target.check-failed" not in codes, codes
    assert "engine.version" in codes, [(f["code"], f["message"]) for f in doc["findings"]]
    assert sshd.logins() == 1


def test_the_layout_probe_reads_the_same_engine_facts_through_the_api(sshd: Sshd, lab_engine: str) -> None:
    """What the layout probe read with ``docker info --format`` / ``docker ps -aq --filter`` on the
    target, the Docker API through the target's connection answers: the same parsed facts."""
    from ops.layout import engine_lines, parse_probe
    from ops.sshengine import api_get, transport_of

    sock = lab_engine[len("unix://"):]
    label = "containai.managed=true"
    cli = subprocess.run(["docker", "-H", lab_engine, "info", "--format",
                          "{{.DockerRootDir}}|{{.DefaultRuntime}}|{{range $k, $v := .Runtimes}}{{$k}},{{end}}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    count = len(subprocess.run(["docker", "-H", lab_engine, "ps", "-aq", "--filter", f"label={label}"],
                               capture_output=True, text=True, check=True).stdout.split())
    conf = CaiConfig.from_mapping({"ssh_config": str(sshd.ssh_config()), "docker_host": lab_engine})
    ctx = make_context(parse_target(sshd.target), conf)
    try:
        transport = transport_of(ctx)
        info = api_get(transport, sock, "/info")
        from urllib.parse import quote

        listed = api_get(transport, sock, "/containers/json?all=1&filters=" + quote(json.dumps({"label": [label]})))
    finally:
        ctx.close()
    by_api = parse_probe(engine_lines(sock, info, len(listed))).engine(sock)
    by_cli = parse_probe(f"info:{sock}={cli}\nmanaged:{sock}={count}\n").engine(sock)
    assert by_api == by_cli and by_api.answered and by_api.runtimes
