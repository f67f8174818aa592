"""``inv shell``: an interactive login shell with a real TTY, through a pty and with stdin piped."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pexpect
import pytest

from .conftest import INV, REPO, Agent, AgentFactory

pytestmark = pytest.mark.integration


def _spawn(agent: Agent, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(INV, ["shell", *args], cwd=str(REPO), env=agent.env(), timeout=60,
                          encoding="utf-8", dimensions=(40, 200))
    child.logfile_read = sys.stdout
    return child


def test_interactive_session_through_a_pty_gets_a_prompt_and_a_tty(agent: Agent) -> None:
    child = _spawn(agent, "--container", agent.name)
    child.expect(r"agent@[^\r\n]*\$ ")
    child.sendline("tty")
    child.expect(r"/dev/pts/\d+")
    child.expect(r"\$ ")
    child.sendline("exit 4")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 4


def test_piped_stdin_still_gets_a_tty_and_nothing_eats_the_input(agent: Agent) -> None:
    proc = subprocess.run([INV, "shell", "--container", agent.name], cwd=REPO, env=agent.env(),
                          input=b"tty\nexit\n", capture_output=True, timeout=120)
    out = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "/dev/pts/" in out


def test_piped_shell_exit_status_is_ours(agent: Agent) -> None:
    proc = agent.inv("shell", "--container", agent.name, stdin=b"exit 6\n")
    assert proc.returncode == 6


def test_without_container_the_only_running_one_is_used(agent_factory: AgentFactory) -> None:
    label = f"containai.managed=t-shell-{uuid.uuid4().hex[:8]}"
    only = agent_factory(label=label)
    agent_factory(label=label, start=False)  # stopped: does not count
    proc = only.inv("shell", stdin=b"echo on-$(hostname)-$(id -un)\nexit\n")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "on-" in proc.stdout.decode() and "-agent" in proc.stdout.decode()


def test_without_container_several_running_are_listed(agent_factory: AgentFactory) -> None:
    label = f"containai.managed=t-shell-{uuid.uuid4().hex[:8]}"
    one = agent_factory(label=label)
    two = agent_factory(label=label)
    proc = one.inv("shell", stdin=b"exit\n")
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert err.count("\n") == 1 and err.startswith("error: 2 managed containers are running")
    assert one.name in err and two.name in err and "--container" in err
