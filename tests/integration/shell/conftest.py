"""Agent containers with a real sshd for the shell tests.

An agent container is the lab image (Debian bookworm, openssh-server, bash, user ``agent`` 1000:1000) on
the private lab engine, run with ``--network host`` as
``/usr/sbin/sshd -D -e -p PORT -o ListenAddress=127.0.0.1`` with its own host key (mounted) and the test
client's public key copied into ``/home/agent/.ssh/authorized_keys``. It carries the labels
``containai.managed=<value>`` and ``containai.ssh-port=PORT``, exactly like a ContainAI container.

The CLI is run as ``inv`` from the repository root with ``INVOKE_CAI_*`` variables pointing the
toolkit at the lab engine, the test key and a per-test known_hosts file.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _sshd import free_port, keygen

REPO = Path(__file__).resolve().parents[3]
#: the ``inv`` console script of the interpreter running the tests (the venv's, not one on PATH)
INV = str(Path(sys.executable).parent / "inv")


@dataclass
class Agent:
    """One agent container and the settings the toolkit needs to reach it."""

    name: str
    port: int
    docker_host: str
    key: Path
    known_hosts: Path
    label: str = "containai.managed=true"
    client: Any = field(default=None, repr=False)

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment of a CLI run pointed at this agent's engine, key and known_hosts."""
        env = dict(os.environ)
        env.update({
            "INVOKE_CAI_DOCKER_HOST": self.docker_host,
            "INVOKE_CAI_SSH_KEY": str(self.key),
            "INVOKE_CAI_KNOWN_HOSTS": str(self.known_hosts),
            "INVOKE_CAI_SSH_USER": "agent",
            "INVOKE_CAI_LABEL": self.label,
        })
        env.pop("CAI_DEBUG", None)
        env.update(overrides)
        return env

    def conf(self) -> Any:
        """The typed config the library calls take."""
        from ops.config import CaiConfig

        return CaiConfig.from_mapping({
            "docker_host": self.docker_host, "ssh_key": str(self.key),
            "known_hosts": str(self.known_hosts), "ssh_user": "agent", "label": self.label,
        })

    def inv(self, *args: str, stdin: bytes | None = None, timeout: float = 120,
            **env: str) -> subprocess.CompletedProcess[bytes]:
        """Run ``inv ARGS`` from the repository root; stdin is /dev/null unless bytes are given."""
        return subprocess.run(
            [INV, *args], cwd=REPO, env=self.env(**env), timeout=timeout,
            input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL, capture_output=True,
        )

    def exec(self, *argv: str) -> tuple[int, str]:
        """docker exec as the agent user (for checking what the toolkit did)."""
        result = self.client.containers.get(self.name).exec_run(list(argv), user="agent")
        return int(result.exit_code), result.output.decode("utf-8", "replace")

    def state(self) -> str:
        """The container's state on the engine."""
        return str(self.client.api.inspect_container(self.name)["State"]["Status"])


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The key the agent containers trust."""
    return keygen(tmp_path_factory.mktemp("shell-keys") / "id_test")


def _tar_one(path: str, data: bytes, mode: int, uid: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(path)
        info.size, info.mode, info.uid, info.gid = len(data), mode, uid, uid
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


AgentFactory = Callable[..., Agent]


def _make_factory(lab_engine: str, lab_image: str, client_key: Path, workdir: Path,
                  created: list[str]) -> tuple[AgentFactory, Any]:
    import docker

    client = docker.DockerClient(base_url=lab_engine, timeout=120)

    def make(
        start: bool = True,
        sshd: bool = True,
        port: int | None = None,
        port_label: str | None = None,
        managed: bool = True,
        label: str = "containai.managed=true",
        host_key: Path | None = None,
        name: str | None = None,
        wait: bool = True,
        command: list[str] | None = None,
    ) -> Agent:
        name = name or f"t-shell-{uuid.uuid4().hex[:8]}"
        port = port or free_port()
        kdir = workdir / f"{name}-{uuid.uuid4().hex[:6]}"
        kdir.mkdir(parents=True, exist_ok=True)
        if host_key is None:
            host_key = keygen(kdir / "host_key")
        labels = {}
        if managed:
            key, _, value = label.partition("=")
            labels[key] = value
        if port_label != "-":  # "-": no port label at all
            labels["containai.ssh-port"] = str(port) if port_label is None else port_label
        if command is not None:
            sshd = False
        elif sshd:
            command = [
                "bash", "-c",
                "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e -p \"$0\" -o ListenAddress=127.0.0.1 "
                "-o HostKey=/etc/cai-test/host_key",
                str(port),
            ]
        else:
            command = ["sleep", "infinity"]
        client.containers.create(
            lab_image, command, name=name, network_mode="host", labels=labels,
            volumes={str(host_key): {"bind": "/etc/cai-test/host_key", "mode": "ro"}},
            stop_signal="SIGKILL",
        )
        created.append(name)
        pub = client_key.with_suffix(".pub").read_bytes()
        client.api.put_archive(name, "/home/agent", _tar_one(".ssh/authorized_keys", pub, 0o600, 1000))
        agent = Agent(name, port, lab_engine, client_key, workdir / f"{name}.known_hosts", label, client)
        if start:
            client.api.start(name)
            if sshd and wait:
                from ops.ssh import wait_for_sshd

                wait_for_sshd(port, 30, container=name)
        return agent

    return make, client


def _cleanup(client: Any, created: list[str]) -> None:
    for name in created:
        with contextlib.suppress(Exception):  # already gone
            client.api.remove_container(name, force=True)
    client.close()


@pytest.fixture
def agent_factory(lab_engine: str, lab_image: str, client_key: Path, tmp_path: Path) -> Iterator[AgentFactory]:
    """Factory of agent containers, removed at the end of the test."""
    created: list[str] = []
    make, client = _make_factory(lab_engine, lab_image, client_key, tmp_path, created)
    yield make
    _cleanup(client, created)


@pytest.fixture
def agent(agent_factory: AgentFactory) -> Agent:
    """A running agent container with sshd up."""
    return agent_factory()


@pytest.fixture(scope="module")
def shared_agent(lab_engine: str, lab_image: str, client_key: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """A running agent container shared by a module (for property tests with many examples)."""
    created: list[str] = []
    make, client = _make_factory(lab_engine, lab_image, client_key, tmp_path_factory.mktemp("shell"), created)
    yield make()
    _cleanup(client, created)
