"""``inv shell`` and ``inv shell.run`` on a container of another host, reached as ``lima:<vm>`` (this
machine behaving as a Mac, with and without ``--target``) and as ``ssh://``.

The lab host runs an agent container on its own nested engine: a small image made there from the host's
own sshd, bash and tools, run with ``--network host`` (the nested engine has no bridge) and sshd on
``127.0.0.1:PORT``. The lab host shares this machine's network, so that port is on this machine's
loopback, exactly where Lima forwards a VM's published ports on a Mac; an ``ssh://`` target reaches it
through the host as a jump. The container and its SSH key are set up as ContainAI does it: the labels
``containai.managed=true`` and ``containai.ssh-port=PORT``, and the public key appended to
``/home/agent/.ssh/authorized_keys`` with ``docker exec`` (700/600, owner agent).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
from _cli import REPO, clean_env, inv, ssh_config

pytestmark = pytest.mark.lab

IMAGE = "cai-lab-sshd"
#: What an agent container needs for sshd, a login shell, ``shell.run`` and its detached runs.
PROGRAMS = ("sshd", "bash", "sh", "base64", "setsid", "nohup", "tail", "mkdir", "mv", "cat", "sleep", "id",
            "chown", "chmod", "touch", "grep", "ls", "rm", "tty", "stat")


def image_script(docker: str) -> str:
    """Shell run on the lab host: import ``cai-lab-sshd`` into its nested engine unless it is there
    (the host's own sshd, bash and tools with the libraries ldd names; users root, sshd, agent 1000)."""
    programs = " ".join(PROGRAMS)
    return f"""set -e
if ! {docker} image inspect {IMAGE} >/dev/null 2>&1; then
  r=$(mktemp -d); chmod 0755 "$r"
  mkdir -p "$r/bin" "$r/usr/sbin" "$r/etc/ssh" "$r/run/sshd" "$r/home/agent" "$r/tmp" "$r/root"
  ln -s ../bin "$r/usr/bin"
  chmod 1777 "$r/tmp"
  for p in {programs}; do
    b=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v "$p")
    cp -L "$b" "$r$b"
    for lib in $(ldd "$b" 2>/dev/null | grep -o '/[^ ]*'); do cp --parents -L "$lib" "$r"; done
  done
  printf '%s\\n' root:x:0:0:root:/root:/bin/sh sshd:x:100:65534::/run/sshd:/bin/false \\
    agent:x:1000:1000::/home/agent:/bin/bash > "$r/etc/passwd"
  printf 'root:x:0:\\nnogroup:x:65534:\\nagent:x:1000:\\n' > "$r/etc/group"
  ssh-keygen -q -t ed25519 -N '' -f "$r/etc/ssh/ssh_host_ed25519_key"
  printf '%s\\n' 'ListenAddress 127.0.0.1' 'HostKey /etc/ssh/ssh_host_ed25519_key' 'UsePAM no' \\
    'PasswordAuthentication no' 'KbdInteractiveAuthentication no' 'PermitRootLogin no' 'PidFile none' \\
    > "$r/etc/ssh/sshd_config"
  chown 1000:1000 "$r/home/agent"
  tar -C "$r" -c . | {docker} import - {IMAGE} >/dev/null
  rm -rf "$r"
fi
"""


def run_script(docker: str, name: str, port: int, pubkey: str) -> str:
    """Shell run on the lab host: start agent container ``name`` with sshd on 127.0.0.1:``port`` and
    the client's key appended to authorized_keys, as ContainAI's SSH setup does."""
    setup = ("mkdir -p /home/agent/.ssh && printf '%s\\n' \"$1\" >> /home/agent/.ssh/authorized_keys && "
             "chown -R 1000:1000 /home/agent/.ssh && chmod 700 /home/agent/.ssh && "
             "chmod 600 /home/agent/.ssh/authorized_keys")
    return (f"set -e\n{docker} run -d --name {name} --network host --runtime runc "
            f"--label containai.managed=true --label containai.ssh-port={port} {IMAGE} "
            f"/usr/sbin/sshd -D -e -p {port} >/dev/null\n"
            f"{docker} exec {name} sh -c {shlex.quote(setup)} cai {shlex.quote(pubkey)}\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def sh_host(lab_engine: str, lab_image: str, lima_home: Path) -> Iterator[Any]:
    """One lab host named ``sh-<hex>`` (booted with its nested engine), removed afterwards."""
    from ops.lab import hosts

    name = f"sh-{uuid.uuid4().hex[:8]}"
    index = hosts.reserve(name, owner_pid=os.getpid())
    try:
        yield hosts.up(name, index, lab_engine, lima_home, image=lab_image)
    finally:
        hosts.down(name, lab_engine)


@pytest.fixture
def client_key(tmp_path: Path) -> Path:
    key = tmp_path / "id_containai"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                   stdin=subprocess.DEVNULL)
    return key


def host_run(host: Any, script: str, timeout: int = 300) -> str:
    from ops.lab.hosts import run

    code, out, err = run(host, script, timeout=timeout)
    assert code == 0, f"on lab host {host.name}: {err.strip()[-600:]}"
    return out


Starter = Callable[..., tuple[str, int]]


@pytest.fixture
def agent_on(client_key: Path) -> Starter:
    """Start an agent container on a lab host; returns (name, port)."""

    def start(host: Any, port: int | None = None) -> tuple[str, int]:
        name = f"sh-agent-{uuid.uuid4().hex[:6]}"
        port = port or free_port()
        pubkey = client_key.with_suffix(".pub").read_text().strip()
        host_run(host, image_script(host.docker) + run_script(host.docker, name, port, pubkey))
        return name, port

    return start


def env_for(host: Any, key: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"INVOKE_CAI_LIMA_HOME": str(host.lima_home), "INVOKE_CAI_SSH_KEY": str(key),
            "INVOKE_CAI_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
            "INVOKE_CAI_SSH_CONFIG": str(ssh_config(tmp_path / "ssh_config", host.key)), **extra}


def interactive_tty(args: list[str], env: dict[str, str]) -> str:
    """Drive ``inv shell ARGS`` in a real pty: run ``tty`` in the remote shell, exit; return the tty."""
    child = pexpect.spawn(sys.executable, ["-m", "invoke", "shell", *args], cwd=str(REPO),
                          env=clean_env(env), timeout=90, encoding="utf-8")
    try:
        child.sendline("tty; echo CAI-DONE-$((40+2))")
        child.expect(r"(/dev/pts/\d+)\s+CAI-DONE-42")
        found = str(child.match.group(1))
        child.sendline("exit 0")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    return found


def detached_start(host: Any, container: str, args: list[str], env: dict[str, str]) -> None:
    """``shell.run --detach`` confirms a start, and the process really runs in the container."""
    result = inv("shell.run", "--container", container, *args, "--cmd", "sleep 300", "--detach", env=env,
                 timeout=180)
    assert result.returncode == 0, result.stderr
    match = re.search(r"^pid (\d+)$", result.stdout, re.M)
    assert match and re.search(r"^log /home/agent/\.containai/logs/\S+\.log$", result.stdout, re.M), result.stdout
    host_run(host, f"{host.docker} exec {container} bash -c 'kill -0 {match.group(1)}'")


def test_shell_on_a_lima_target_from_a_mac(sh_host: Any, agent_on: Starter, client_key: Path,
                                           tmp_path: Path) -> None:
    name, port = agent_on(sh_host)
    env = env_for(sh_host, client_key, tmp_path, INVOKE_CAI_PLATFORM="macos")
    # named target: the container list and port come from the VM's engine, ssh goes to 127.0.0.1:PORT
    assert interactive_tty(["--container", name, "--target", sh_host.target], env).startswith("/dev/pts/")
    detached_start(sh_host, name, ["--target", sh_host.target], env)
    # no --target on a Mac: the default Lima VM (cai.lima_vm), as doctor does
    mac = {**env, "INVOKE_CAI_LIMA_VM": sh_host.vm}
    assert interactive_tty(["--container", name], mac).startswith("/dev/pts/")
    result = inv("shell.run", "--container", name, "--cmd", "echo from-$((6*7))", env=mac, timeout=180)
    assert (result.returncode, result.stdout) == (0, "from-42\n"), result.stderr
    # the host key of a Lima-forwarded port is recorded as ContainAI records it
    assert f"[127.0.0.1]:{port} " in (tmp_path / "known_hosts").read_text()


def test_shell_on_an_ssh_target_through_a_jump(sh_host: Any, agent_on: Starter, client_key: Path,
                                               tmp_path: Path) -> None:
    name, port = agent_on(sh_host)
    target = f"ssh://root@{sh_host.address}:{sh_host.port}"
    env = env_for(sh_host, client_key, tmp_path)
    assert interactive_tty(["--container", name, "--target", target], env).startswith("/dev/pts/")
    detached_start(sh_host, name, ["--target", target], env)
    result = inv("shell.run", "--container", name, "--target", target, "--cmd", "exit 7", env=env, timeout=180)
    assert result.returncode == 7, result.stderr
    # the container's key is recorded under the target's name, not a bare 127.0.0.1 shared by every host
    assert f"[{sh_host.address}]:{port} " in (tmp_path / "known_hosts").read_text()
    # doctor's connect test reaches it the same way, through the host
    doctor = inv("doctor", "--json", "--target", target, env=env, timeout=300)
    reachable = [f for f in json.loads(doctor.stdout)["findings"] if f["code"] == "ssh.containers-reachable"]
    assert [f["data"]["containers"] for f in reachable] == [[name]], doctor.stderr[-600:]

    # a stopped container whose port another container now holds: that container and the way out
    host_run(sh_host, f"{sh_host.docker} stop -t 1 {name} >/dev/null")
    squatter, _ = agent_on(sh_host, port=port)
    result = inv("shell.run", "--container", name, "--target", target, "--cmd", "true", env=env, timeout=180)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: port {port} of stopped container {name!r} on {target} is held by running container "
        f"{squatter!r}: stop {squatter} first (docker stop {squatter}), or recreate {name} so that it gets a "
        "free port")
    state = host_run(sh_host, f"{sh_host.docker} inspect -f '{{{{.State.Status}}}}' {name}").strip()
    assert state == "exited"  # nothing was started


def test_unknown_container_on_a_target_is_named_there(sh_host: Any, client_key: Path, tmp_path: Path) -> None:
    env = env_for(sh_host, client_key, tmp_path)
    result = inv("shell.run", "--container", "sh-nope", "--target", sh_host.target, "--cmd", "true", env=env,
                 timeout=180)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no container named 'sh-nope'") and "Traceback" not in result.stderr


def test_doctor_fix_puts_the_key_back_into_a_container_in_the_vm(sh_host: Any, agent_on: Starter,
                                                                client_key: Path, tmp_path: Path) -> None:
    """From a Mac: a container in the VM whose authorized_keys was emptied is a doctor warning;
    ``doctor --fix`` puts the key back through the VM's engine and tests again; ``shell.run`` works."""
    name, _ = agent_on(sh_host)
    host_run(sh_host, f"{sh_host.docker} exec {name} sh -c ': > /home/agent/.ssh/authorized_keys'")
    env = env_for(sh_host, client_key, tmp_path, INVOKE_CAI_PLATFORM="macos", INVOKE_CAI_LIMA_VM=sh_host.vm)

    def ssh_codes(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {f["code"]: f for f in doc["findings"] if f["code"].startswith("ssh.container")}

    result = inv("doctor", "--json", env=env, timeout=300)
    refused = ssh_codes(json.loads(result.stdout))["ssh.container-key-refused"]
    assert (refused["target"], refused["data"]["container"]) == (sh_host.target, name), refused
    assert inv("shell.run", "--container", name, "--cmd", "true", env=env, timeout=180).returncode == 3

    result = inv("doctor", "--json", "--fix", env=env, timeout=300)
    doc = json.loads(result.stdout)
    assert doc["fix"]["ssh"] == [f"{sh_host.target}: container {name}: put the public key back into "
                                 "authorized_keys; SSH works again"], (doc["fix"], result.stderr[-600:])
    assert "ssh.container-key-refused" not in ssh_codes(doc)
    modes = host_run(sh_host, f"{sh_host.docker} exec {name} stat -c '%u %a' /home/agent/.ssh "
                              "/home/agent/.ssh/authorized_keys")
    assert modes.split("\n")[:2] == ["1000 700", "1000 600"]
    run = inv("shell.run", "--container", name, "--cmd", "echo back-$((40+2))", env=env, timeout=180)
    assert (run.returncode, run.stdout) == (0, "back-42\n"), run.stderr
