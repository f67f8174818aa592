"""Doctor's SSH checks against real sshd containers: a container whose authorized_keys was emptied is a
warning, ``doctor --fix`` puts the key back through the engine (as root, owner agent, 700/600) and tests
again, and ``shell.run`` then works. Each test uses a label of its own, so doctor sees (and the fix
touches) only its containers on the shared engine."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import pytest

from .conftest import Agent, AgentFactory

pytestmark = pytest.mark.integration


def doctor(agent: Agent, *args: str) -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any]]:
    proc = agent.inv("doctor", "--json", *args, timeout=300)
    err = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    try:
        return proc, json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"doctor printed no JSON (exit {proc.returncode}): {err[-800:]}", pytrace=False)


def ssh_findings(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["code"]: f for f in doc["findings"] if f["code"].startswith("ssh.")}


def root_exec(agent: Agent, script: str) -> str:
    result = agent.client.containers.get(agent.name).exec_run(["sh", "-c", script], user="root")
    assert result.exit_code == 0, result.output
    return str(result.output.decode())


def test_emptied_authorized_keys_is_warned_and_fixed(agent_factory: AgentFactory) -> None:
    label = f"containai.managed=sh-{uuid.uuid4().hex[:8]}"
    broken = agent_factory(label=label)
    healthy = agent_factory(label=label)
    root_exec(broken, ": > /home/agent/.ssh/authorized_keys")
    # and make the folder's mode and owner wrong too: the fix sets them
    root_exec(broken, "chown root:root /home/agent/.ssh && chmod 755 /home/agent/.ssh")

    _, doc = doctor(broken)
    found = ssh_findings(doc)
    refused = found["ssh.container-key-refused"]
    assert refused["severity"] == "warning" and refused["data"]["container"] == broken.name, refused
    assert found["ssh.containers-reachable"]["data"]["containers"] == [healthy.name]
    assert found["ssh.client-version"]["severity"] == "info"  # this machine's OpenSSH is new enough
    assert broken.inv("shell.run", "--container", broken.name, "--cmd", "true").returncode == 3

    before = root_exec(healthy, "stat -c '%U %a %s' /home/agent/.ssh /home/agent/.ssh/authorized_keys")
    proc, doc = doctor(broken, "--fix")
    assert doc["fix"]["ssh"] == [f"local: container {broken.name}: put the public key back into authorized_keys; "
                                 "SSH works again"], doc["fix"]
    found = ssh_findings(doc)  # the findings after the fix
    assert "ssh.container-key-refused" not in found, found
    assert sorted(found["ssh.containers-reachable"]["data"]["containers"]) == sorted([broken.name, healthy.name])
    assert root_exec(broken, "stat -c '%U:%G %a' /home/agent/.ssh /home/agent/.ssh/authorized_keys").split("\n")[
        :2] == ["agent:agent 700", "agent:agent 600"]
    assert root_exec(broken, "cat /home/agent/.ssh/authorized_keys") == broken.key.with_suffix(".pub").read_text()
    # the healthy container was not touched
    assert root_exec(healthy, "stat -c '%U %a %s' /home/agent/.ssh /home/agent/.ssh/authorized_keys") == before

    run = broken.inv("shell.run", "--container", broken.name, "--cmd", "echo ok-$((40+2))")
    assert (run.returncode, run.stdout) == (0, b"ok-42\n"), run.stderr

    # a second --fix has nothing to do
    _, doc = doctor(broken, "--fix")
    assert doc["fix"]["ssh"] == []


def test_a_key_others_can_read_is_named(agent_factory: AgentFactory, tmp_path: Any) -> None:
    label = f"containai.managed=sh-{uuid.uuid4().hex[:8]}"
    agent = agent_factory(label=label)
    loose = tmp_path / "id_loose"
    loose.write_bytes(agent.key.read_bytes())
    loose.chmod(0o644)
    proc = agent.inv("doctor", "--json", timeout=300, INVOKE_CAI_SSH_KEY=str(loose))
    found = ssh_findings(json.loads(proc.stdout))
    perms = found["ssh.key-permissions"]
    assert perms["severity"] == "warning" and perms["hint"] == f"chmod 600 {loose}", perms
    assert "ssh.containers-reachable" not in found  # no connect test with a key ssh would refuse
