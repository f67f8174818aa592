"""``inv shell.run`` and ``ops.ssh.run``: foreground status, env values, confirmed detached starts."""

from __future__ import annotations

import time

import pytest

from ops import ssh

from .conftest import Agent, AgentFactory

pytestmark = pytest.mark.integration

TRICKY = {
    "QUOTES": "it's \"quoted\" `tick` \\back",
    "DOLLAR": "$HOME ${PATH} $(id) $$ !bang",
    "SPACES": "  two  spaces  ",
    "NEWLINES": "line1\nline2\n\n",
    "EQUALS": "a=b=c",
    "UNICODE": "snow \u2603 caf\u00e9",
    "EMPTY": "",
}


def test_foreground_remote_status_is_the_exit_status(agent: Agent) -> None:
    proc = agent.inv("shell.run", "--container", agent.name, "--cmd", "echo out; echo err >&2; exit 7")
    assert proc.returncode == 7
    assert proc.stdout == b"out\n"
    assert b"err" in proc.stderr


def test_foreground_env_values_arrive_byte_for_byte_through_the_cli(agent: Agent) -> None:
    names = list(TRICKY)
    args = ["shell.run", "--container", agent.name,
            "--cmd", "printf '%s\\0' " + " ".join(f'"${n}"' for n in names)]
    for name in names:
        args += ["--env", f"{name}={TRICKY[name]}"]
    proc = agent.inv(*args)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split("\0")[:-1] == [TRICKY[n] for n in names]


def test_foreground_gets_piped_stdin(agent: Agent) -> None:
    proc = agent.inv("shell.run", "--container", agent.name, "--cmd", "tr a-z A-Z", stdin=b"hello\n")
    assert proc.returncode == 0
    assert proc.stdout == b"HELLO\n"


def test_detached_sleep_returns_with_a_live_pid(agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    proc = agent.inv("shell.run", "--container", agent.name, "--detach", "--cmd", "sleep 600")
    elapsed = time.monotonic() - start
    with capsys.disabled():
        print(f"\n[figure] detached 'sleep 600' returned in {elapsed:.2f}s (whole inv run)")
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("pid ") and lines[1].startswith("log ")
    pid = lines[0].split()[1]
    log = lines[1].split(" ", 1)[1]
    assert log.startswith("/home/agent/.containai/logs/") and log.endswith(".log")
    assert agent.exec("kill", "-0", pid)[0] == 0
    code, out = agent.exec("ps", "-o", "args=", "--ppid", pid)
    assert "sleep 600" in out
    assert agent.exec("test", "-e", log)[0] == 0
    assert agent.exec("test", "-e", log + ".status")[0] != 0  # still running: no status yet
    code, out = agent.exec("ps", "-o", "pgid=,sid=", "-p", pid)
    assert out.split() == [pid, pid]  # its own session and process group
    assert agent.exec("bash", "-c", f"kill -- -{pid}")[0] == 0  # so one kill stops the whole job
    for _ in range(50):
        if agent.exec("kill", "-0", pid)[0] != 0:
            break
        time.sleep(0.1)
    assert agent.exec("kill", "-0", pid)[0] != 0


def test_detached_env_reaches_the_command_and_the_status_file_is_written(agent: Agent) -> None:
    proc = agent.inv("shell.run", "--container", agent.name, "--detach", "--env", "MSG=hello 'there' $x",
                     "--cmd", 'sleep 1; echo "got:$MSG"; exit 3')
    assert proc.returncode == 0, proc.stderr.decode()
    log = proc.stdout.decode().splitlines()[1].split(" ", 1)[1]
    for _ in range(100):
        if agent.exec("test", "-e", log + ".status")[0] == 0:
            break
        time.sleep(0.1)
    assert agent.exec("cat", log)[1] == "got:hello 'there' $x\n"
    assert agent.exec("cat", log + ".status")[1].strip() == "3"


@pytest.mark.parametrize(
    ("cmd", "code", "message"),
    [
        ("no-such-program", 127, "no-such-program: command not found"),
        ("cd /nonexistent && true", 1, "/nonexistent: No such file or directory"),
    ],
)
def test_detached_command_that_fails_at_once_is_a_failure(agent: Agent, cmd: str, code: int,
                                                         message: str) -> None:
    proc = agent.inv("shell.run", "--container", agent.name, "--detach", "--cmd", cmd)
    err = proc.stderr.decode()
    assert proc.returncode == code
    assert proc.stdout == b""  # no PID printed
    assert message in err
    assert "error: the detached command failed at once" in err
    assert "Traceback" not in err


def test_stopped_container_is_started_and_reached(agent_factory: AgentFactory) -> None:
    agent = agent_factory(start=False)
    assert agent.state() == "created"
    proc = agent.inv("shell.run", "--container", agent.name, "--cmd", "echo reached as $(id -un)")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"reached as agent\n"
    assert f"starting container {agent.name}" in proc.stderr.decode()
    assert agent.state() == "running"


def test_changed_host_key_is_replaced_once_with_a_message(agent_factory: AgentFactory) -> None:
    first = agent_factory()
    assert first.inv("shell.run", "--container", first.name, "--cmd", "true").returncode == 0
    entry = f"[127.0.0.1]:{first.port}"
    old = first.known_hosts.read_text()
    assert old.startswith(entry + " ssh-ed25519 ")
    first.client.api.remove_container(first.name, force=True)
    # recreated: same name and port, new host key
    second = agent_factory(name=first.name, port=first.port)
    proc = second.inv("shell.run", "--container", second.name, "--cmd", "echo again",
                      INVOKE_CAI_KNOWN_HOSTS=str(first.known_hosts))
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert proc.stdout == b"again\n"
    assert f"the host key of {entry} changed" in err
    new = [ln for ln in first.known_hosts.read_text().splitlines() if ln.startswith(entry + " ")]
    assert len(new) == 1 and new[0] + "\n" != old


def test_library_api_keeps_argv_as_a_list(agent: Agent) -> None:
    conf = agent.conf()
    result = ssh.run(conf, agent.name, argv=["bash", "-c", 'exit "$1"', "x", "9"], notice=lambda _: None)
    assert result.exit_code == 9 and result.pid is None
    detached = ssh.run(conf, agent.name, argv=["sleep", "300"], env={"A": "b c"}, detach=True,
                       notice=lambda _: None)
    assert detached.exit_code == 0 and detached.pid is not None
    assert detached.log_path and detached.log_path.startswith("/home/agent/.containai/logs/")
    assert agent.exec("kill", "-0", str(detached.pid))[0] == 0
