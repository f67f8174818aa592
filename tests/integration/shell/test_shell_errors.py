"""Bad input to ``inv shell`` / ``inv shell.run``: one line with the cause and the fix, non-zero, no traceback."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from ops import ssh

from .conftest import Agent, AgentFactory, keygen

pytestmark = pytest.mark.integration


def one_line_error(proc: subprocess.CompletedProcess[bytes], code: int, *needles: str) -> str:
    """Assert the run failed with ``code`` and one ``error: ...`` line, the last on stderr (progress
    lines such as "starting container X ..." may come before it)."""
    err = proc.stderr.decode("utf-8", "replace")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == code, err
    assert [ln for ln in lines if ln.startswith("error: ")] == lines[-1:], err
    assert all(ln.startswith("starting container ") for ln in lines[:-1]), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def test_unknown_container(agent: Agent) -> None:
    proc = agent.inv("shell.run", "--container", "t-shell-no-such-container", "--cmd", "true")
    one_line_error(proc, 1, "no container named 't-shell-no-such-container'")
    proc = agent.inv("shell", "--container", "t-shell-no-such-container", stdin=b"exit\n")
    one_line_error(proc, 1, "no container named")


def test_unmanaged_container(agent_factory: AgentFactory) -> None:
    agent = agent_factory(managed=False)
    proc = agent.inv("shell.run", "--container", agent.name, "--cmd", "true")
    one_line_error(proc, 1, "is not managed by ContainAI")


@pytest.mark.parametrize(("label", "needle"), [("-", "no containai.ssh-port label"),
                                              ("ssh", "invalid containai.ssh-port label ('ssh')")])
def test_no_port_label(agent_factory: AgentFactory, label: str, needle: str) -> None:
    agent = agent_factory(port_label=label)
    proc = agent.inv("shell.run", "--container", agent.name, "--cmd", "true")
    one_line_error(proc, 1, needle, "recreate it")


def test_port_taken_by_another_process(agent_factory: AgentFactory) -> None:
    agent = agent_factory(start=False)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", agent.port))
        squatter.listen(1)
        proc = agent.inv("shell.run", "--container", agent.name, "--cmd", "true")
    one_line_error(proc, 1, f"port 127.0.0.1:{agent.port}", "already in use")
    assert agent.state() == "created"  # not started


def test_sshd_never_comes_up(agent_factory: AgentFactory) -> None:
    agent = agent_factory(sshd=False, start=False)
    proc = agent.inv("shell.run", "--container", agent.name, "--cmd", "true", "--wait", "3")
    one_line_error(proc, ssh.TRANSPORT_EXIT, "did not answer", "within 3s")
    assert agent.state() == "running"


def test_container_dies_before_sshd_answers(agent_factory: AgentFactory) -> None:
    agent = agent_factory(start=False, command=["true"])
    proc = agent.inv("shell.run", "--container", agent.name, "--cmd", "true", "--wait", "20")
    one_line_error(proc, ssh.TRANSPORT_EXIT, "stopped (exited)", "docker logs")


def test_wrong_key(agent: Agent, tmp_path: Path) -> None:
    other = keygen(tmp_path / "other")
    proc = agent.inv("shell.run", "--container", agent.name, "--cmd", "true", INVOKE_CAI_SSH_KEY=str(other))
    one_line_error(proc, ssh.TRANSPORT_EXIT, "refused the key", "cai.ssh_key")
    proc = agent.inv("shell", "--container", agent.name, stdin=b"exit\n", INVOKE_CAI_SSH_KEY=str(other))
    one_line_error(proc, ssh.TRANSPORT_EXIT, "refused the key")


def test_missing_key_file(agent: Agent, tmp_path: Path) -> None:
    proc = agent.inv("shell.run", "--container", agent.name, "--cmd", "true",
                     INVOKE_CAI_SSH_KEY=str(tmp_path / "nope"))
    one_line_error(proc, 1, "does not exist", "cai.ssh_key")


def test_unreachable_engine(agent: Agent, tmp_path: Path) -> None:
    proc = agent.inv("shell.run", "--container", agent.name, "--cmd", "true",
                     INVOKE_CAI_DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    one_line_error(proc, 1, "unreachable")


@pytest.mark.parametrize(("args", "needle"), [
    (["--cmd", "true", "--env", "NOVALUE"], "is not NAME=VALUE"),
    (["--cmd", "true", "--env", "1BAD=x"], "invalid environment variable name"),
    (["--cmd", ""], "no command given"),
])
def test_bad_flags(agent: Agent, args: list[str], needle: str) -> None:
    proc = agent.inv("shell.run", "--container", agent.name, *args)
    one_line_error(proc, 1, needle)


def test_no_container_flag_for_run(agent: Agent) -> None:
    one_line_error(agent.inv("shell.run", "--cmd", "true"), 1, "no container given", "--container")


def test_port_held_by_another_container(agent_factory: AgentFactory) -> None:
    """A stopped container whose port a running container now holds: that container is named, with the
    ways out, and nothing is started."""
    stopped = agent_factory(start=False)
    holder = agent_factory(port=stopped.port)
    proc = stopped.inv("shell.run", "--container", stopped.name, "--cmd", "true")
    one_line_error(proc, 1, f"port {stopped.port} of stopped container {stopped.name!r} is held by running "
                   f"container {holder.name!r}", f"docker stop {holder.name}", f"recreate {stopped.name}")
    assert stopped.state() == "created"
