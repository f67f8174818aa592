"""The stop-hook script (``containai-guard``) as ``update`` installs it, run with the real docker CLI
against the lab engine: only container IDs are acted on, more than 50 containers are stopped in
parallel batches, and ``start`` returns at once and is cancelled by the next ``stop``.

The docker CLI the script runs is ``<opt_dir>/bin/docker``, as on a host; here it is a small wrapper
around the real CLI that logs its calls and, where a test says so, prints a warning or hangs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ops import units
from ops.config import CaiConfig

pytestmark = pytest.mark.integration

WRAPPER = """#!/bin/sh
echo "begin $$ $*" >> {log}
case "$1" in
  ps) [ -f {dir}/warn ] && echo "WARNING: API is accessible on http://0.0.0.0:2375 without encryption." >&2 ;;
  start) [ -f {dir}/hang ] && exec sleep 100000 ;;
esac
{docker} "$@"
rc=$?
echo "end $$ $1" >> {log}
exit $rc
"""


@dataclass
class Guard:
    dir: Path
    script: Path
    run_dir: Path
    label: str
    client: Any
    image: str
    names: list[str]

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the script as its unit does; output to files (systemd's journal stream does not wait
        for a detached worker to close it, a pipe would)."""
        env = {**os.environ, "RUNTIME_DIRECTORY": str(self.run_dir)}
        out, err = self.dir / "out.txt", self.dir / "err.txt"
        with out.open("w") as o, err.open("w") as e:
            code = subprocess.run(["sh", str(self.script), *args], env=env, stdout=o, stderr=e,
                                  timeout=timeout, stdin=subprocess.DEVNULL).returncode
        return subprocess.CompletedProcess(args, code, out.read_text(), err.read_text())

    def calls(self) -> list[str]:
        log = self.dir / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def container(self, name: str) -> str:
        key, _, value = self.label.partition("=")
        c = self.client.containers.run(self.image, ["sleep", "600"], name=name, labels={key: value},
                                       network_mode="none", detach=True, stop_signal="SIGTERM")
        self.names.append(name)
        return str(c.id)

    def state(self) -> list[str]:
        path = self.run_dir / "stopped"
        return path.read_text().split() if path.exists() else []


@pytest.fixture
def guard(lab_engine: str, tiny_image: str, tmp_path: Path) -> Iterator[Guard]:
    import docker

    client = docker.DockerClient(base_url=lab_engine, timeout=300)
    tag = uuid.uuid4().hex[:8]
    label = f"containai.managed=t{tag}"
    opt = tmp_path / "opt"
    (opt / "bin").mkdir(parents=True)
    real = shutil.which("docker")
    assert real, "the docker CLI is needed"
    wrapper = opt / "bin" / "docker"
    wrapper.write_text(WRAPPER.format(log=tmp_path / "calls.log", dir=tmp_path, docker=real))
    wrapper.chmod(0o755)
    conf = CaiConfig.from_mapping({"opt_dir": str(opt), "docker_host": lab_engine, "label": label,
                                   "stop_timeout": 3})
    [rendered] = [f for f in units.render(conf) if f.name == "containai-guard"]
    script = opt / "libexec" / "containai-guard"
    script.parent.mkdir()
    script.write_text(rendered.text)
    script.chmod(0o755)
    g = Guard(tmp_path, script, tmp_path / "run", label, client, tiny_image, [])
    try:
        yield g
    finally:
        (tmp_path / "hang").unlink(missing_ok=True)
        g("stop", timeout=120)  # ends a start worker still running
        for name in g.names:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(name, force=True)
        client.close()


def running(g: Guard) -> set[str]:
    return {c.name for c in g.client.containers.list(filters={"label": g.label})}


def test_only_container_ids_are_taken_from_docker(guard: Guard) -> None:
    """A warning docker prints on stderr is not a container ID (before: ``2>&1`` put it into the list,
    ``docker stop`` failed on it and the hook exited 1 with the junk in its state file)."""
    ids = sorted(guard.container(f"t-guard-{uuid.uuid4().hex[:6]}-{i}") for i in range(2))
    (guard.dir / "warn").write_text("")
    result = guard("stop")
    assert result.returncode == 0, result.stderr
    assert "containai-guard: docker: WARNING: API is accessible" in result.stderr
    assert "stopped 2 managed container(s)" in result.stdout
    assert guard.state() == ids
    assert running(guard) == set()


def test_more_than_50_containers_stop_in_parallel_batches(guard: Guard) -> None:
    """The docker CLI stops at most 50 containers at a time, so one ``docker stop`` of 60 would take
    two stop timeouts: the hook runs one ``docker stop`` per batch of 50, all at once (both batches
    begin before either ends: each waits the full 3 s stop timeout, PID 1 ignores SIGTERM)."""
    prefix = f"t-guard-{uuid.uuid4().hex[:6]}"
    ids = sorted(guard.container(f"{prefix}-{i:02d}") for i in range(60))
    result = guard("stop")
    assert result.returncode == 0, result.stderr
    stops = [line.split() for line in guard.calls() if " stop" in line]
    begins = [words for words in stops if words[0] == "begin"]
    assert sorted(len(words) - 5 for words in begins) == [10, 50]  # "begin PID stop -t 3 ID..."
    order = [words[0] for words in stops]
    assert order[:2] == ["begin", "begin"] and order[2:] == ["end", "end"]
    assert guard.state() == ids and running(guard) == set()


def test_start_returns_at_once_and_a_stop_cancels_it(guard: Guard) -> None:
    """``start`` hands the container start to a background worker: with a ``docker start`` that hangs
    it still returns (before, it hung as long as docker did, and the unit's start timed out into
    failed, losing the hook); the next ``stop`` cancels the worker and keeps the containers to start."""
    name = f"t-guard-{uuid.uuid4().hex[:6]}"
    cid = guard.container(name)
    assert guard("stop").returncode == 0 and guard.state() == [cid]
    (guard.dir / "hang").write_text("")
    result = guard("start", timeout=60)
    assert result.returncode == 0, result.stderr
    worker = int((guard.run_dir / "start.pid").read_text())
    deadline = time.monotonic() + 60
    while not any(line.startswith("begin") and " start " in f"{line} " for line in guard.calls()):
        assert time.monotonic() < deadline, "the worker never ran docker start"
        time.sleep(0.1)
    os.kill(worker, 0)  # still running: docker start hangs
    stopped = guard("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"cancelling the container start still running (pid {worker})" in stopped.stdout
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
    assert guard.state() == [cid]  # still to be started
    (guard.dir / "hang").unlink()
    assert guard("start").returncode == 0
    deadline = time.monotonic() + 120
    while name not in running(guard) or (guard.run_dir / "stopped").exists():
        assert time.monotonic() < deadline, "the container did not start again"
        time.sleep(0.2)
