"""How much doctor asks of a host: one command on the target, and on the engine one version request,
one listing of the containers and one archive header per managed container (no inspect, no exec).

The engine is the real lab engine behind a counting proxy on a unix socket (it relays every byte and
records the request lines); the target's commands are counted by a real local Context that counts its
``run`` calls.
"""

from __future__ import annotations

import json
import os
import re
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _cli import REPO, clean_env

from ops.targets import LocalContext

pytestmark = pytest.mark.integration

#: A request line; not anchored at a line start, since a request may follow a body with no newline.
_REQUEST_LINE = re.compile(rb"(?:GET|HEAD|POST|PUT|DELETE) (/\S*) HTTP/1\.[01]\r\n")


class _Relay(socketserver.BaseRequestHandler):
    """One client connection: relay both ways to the engine, recording the client's request lines."""

    server: CountingProxy

    def handle(self) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self.server.upstream)
        back = threading.Thread(target=self._pump, args=(upstream, self.request), daemon=True)
        back.start()
        seen = b""  # the bytes not yet matched (a request line may arrive in two pieces)
        try:
            while True:
                data = self.request.recv(65536)
                if not data:
                    break
                seen += data
                end = 0
                for match in _REQUEST_LINE.finditer(seen):
                    self.server.record(match.group(1).decode())
                    end = match.end()
                seen = seen[max(end, len(seen) - 8192):]
                upstream.sendall(data)
        finally:
            with _suppress():
                upstream.shutdown(socket.SHUT_WR)
            back.join(timeout=30)
            upstream.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with _suppress():
            while data := source.recv(65536):
                sink.sendall(data)
        with _suppress():
            sink.shutdown(socket.SHUT_WR)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)


class CountingProxy(socketserver.ThreadingUnixStreamServer):
    """A unix socket relaying to the engine socket ``upstream``; ``paths`` are the requests seen."""

    daemon_threads = True
    request_queue_size = 128  # a unix socket refuses connections beyond its backlog instead of queueing them

    def __init__(self, path: str, upstream: str) -> None:
        self.upstream = upstream
        self.paths: list[str] = []
        self._lock = threading.Lock()
        super().__init__(path, _Relay)

    def record(self, path: str) -> None:
        with self._lock:
            self.paths.append(path)

    def taken(self) -> list[str]:
        """The request paths so far (API version prefix removed), and forget them."""
        with self._lock:
            out, self.paths = [re.sub(r"^/v[0-9.]+/", "/", p) for p in self.paths], []
        return out


class CountingContext(LocalContext):
    """The local Context, counting the commands it runs."""

    commands: list[str]

    def run(self, command: str, **kwargs: Any) -> Any:
        self.commands.append(command)
        return super().run(command, **kwargs)


@dataclass
class Fleet:
    proxy: CountingProxy
    host: str
    label: str
    tag: str
    names: list[str] = field(default_factory=list)


@pytest.fixture
def fleet(lab_engine: str, tiny_image: str) -> Iterator[Fleet]:
    """Three managed containers (one with a tainted /usr/bin/sudo, one stopped) and one unmanaged, on the
    lab engine, seen through a counting proxy."""
    import docker

    client = docker.DockerClient(base_url=lab_engine)
    tag = uuid.uuid4().hex[:8]
    made = []
    folder = tempfile.mkdtemp(prefix="cai-proxy-")
    proxy = CountingProxy(f"{folder}/docker.sock", lab_engine[len("unix://"):])
    serving = threading.Thread(target=proxy.serve_forever, daemon=True)
    serving.start()
    try:
        for what, managed in (("a", True), ("b", True), ("c", True), ("u", False)):
            labels = {"containai.managed": f"t{tag}"} if managed else {"other": "x"}
            made.append(client.containers.run(tiny_image, ["sleep", "600"], name=f"perf-calls-{tag}-{what}",
                                              labels=labels, network_mode="none", detach=True))
        code, out = made[0].exec_run(["sh", "-c", "mkdir -p /usr/bin && touch /usr/bin/sudo && "
                                      "chown 65534:65534 /usr/bin/sudo"])
        assert code == 0, out
        made[2].stop(timeout=0)
        yield Fleet(proxy, f"unix://{folder}/docker.sock", f"containai.managed=t{tag}", tag,
                    [c.name for c in made])
    finally:
        proxy.shutdown()
        proxy.server_close()
        for c in made:
            c.remove(force=True)
        client.close()
        Path(folder, "docker.sock").unlink(missing_ok=True)
        Path(folder).rmdir()


def _context(docker_host: str, label: str) -> CountingContext:
    import invoke

    from ops.config import DEFAULTS

    ctx = CountingContext(config=invoke.Config(overrides={"cai": {
        **DEFAULTS, "docker_host": docker_host, "label": label, "bundle_dir": "/nonexistent/bundle"}}))
    ctx.commands = []
    return ctx


def test_one_command_one_listing_and_archive_headers_only(fleet: Fleet) -> None:
    """Before: ten commands on the target, and per container an inspect (three listings of the
    containers), a ping and a second version request; a running container was asked by exec."""
    from ops.config import from_context
    from ops.doctor import run_doctor

    ctx = _context(fleet.host, fleet.label)
    fleet.proxy.taken()
    [report] = run_doctor(["local"], from_context(ctx), ctx)
    paths = fleet.proxy.taken()

    by_code = {f.code: f for f in report.findings}
    managed = by_code["containers.managed"]
    assert sorted(managed.data["running"]) == [fleet.names[0], fleet.names[1]]
    assert managed.data["stopped"] == [fleet.names[2]] and managed.data["unmanaged"] >= 1
    assert "engine.version" in by_code
    tainted = [f for f in report.findings if f.code == "rootfs.tainted"]
    assert [(f.data["container"], f.data["uid"], f.data["source"]) for f in tainted] == [
        (fleet.names[0], 65534, "archive")]

    assert len(ctx.commands) == 1, ctx.commands  # the platform probe and every check's probe, together
    assert [p for p in paths if p.startswith("/containers/json")] == [paths[1]], paths
    assert [p for p in paths if p == "/version"] == [paths[0]], paths
    archives = [p for p in paths if re.fullmatch(r"/containers/[0-9a-f]{64}/archive\?path=%2Fusr%2Fbin%2Fsudo", p)]
    assert len(archives) == 3, paths  # one per managed container, running or stopped
    assert len(paths) == 2 + len(archives), paths  # nothing else: no ping, no inspect, no exec


def test_no_engine_is_told_without_the_sdk(tmp_path: Path) -> None:
    """A host with no engine: one command on the target, and the missing socket is a finding before the
    Docker SDK is even imported; nothing else the answer does not need is imported either (paramiko,
    Fabric, rich, the repair modules), and the SSH client's version is still read and told.

    Before: the repair modules were imported for a check that needs an engine."""
    script = (
        "import json, sys\n"
        "from ops.config import from_context\n"
        "from ops.doctor import run_doctor\n"
        "from test_doctor_calls import _context\n"
        f"ctx = _context('unix://{tmp_path}/nobody.sock', 'containai.managed=true')\n"
        "[report] = run_doctor(['local'], from_context(ctx), ctx)\n"
        "print(json.dumps({'commands': len(ctx.commands), 'docker': 'docker' in sys.modules,\n"
        "                  'imported': sorted(m for m in ('paramiko', 'fabric', 'rich', 'ops.repair')\n"
        "                                     if m in sys.modules),\n"
        "                  'codes': [f.code for f in report.findings]}))\n"
    )
    env = clean_env({"PYTHONPATH": f"{REPO}:{REPO / 'tests'}:{Path(__file__).parent}"})
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert "engine.unreachable" in seen["codes"]
    assert seen["commands"] == 1
    assert seen["docker"] is False
    assert seen["imported"] == []
    assert "ssh.client-version" in seen["codes"] or "ssh.client-missing" in seen["codes"]


# --- the probes of one round trip, run at the same time ---------------------------------------------

SHELLS = ["sh", "bash"]


def _run_batch(shell: str, commands: list[str], env: dict[str, str] | None = None) -> tuple[dict[int, Any], str]:
    from ops.facts import batch_script, parse_batch

    token = uuid.uuid4().hex[:16]
    result = subprocess.run([shell, "-c", batch_script(commands, token)], capture_output=True, text=True,
                            input="the user's input\n", env=env, timeout=60)
    return parse_batch(result.stdout, token, len(commands)), result.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_batched_probes_run_at_the_same_time_and_answer_exactly(shell: str, tmp_path: Path) -> None:
    """The first probe waits (up to 10 s) for a file that only the last one creates: run one after the
    other, it would give up and print nothing. Every answer still comes back exactly, in order, with
    its exit status; stdin is never read; the temporary folder is gone afterwards."""
    flag = tmp_path / "flag"
    waits = (f"i=0; while [ ! -e {flag} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; "
             f"[ -e {flag} ] && echo saw-it")
    commands = [waits, "printf 'a\\nb\\n'", "printf 'no newline'", "exit 3", "printf '\\n\\nx'",
                "echo to-stderr >&2; false", "cat", f"touch {flag}"]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    answers, stderr = _run_batch(shell, commands, {**os.environ, "TMPDIR": str(tmp)})
    assert answers == {0: (0, "saw-it\n"), 1: (0, "a\nb\n"), 2: (0, "no newline"), 3: (3, ""),
                       4: (0, "\n\nx"), 5: (1, ""), 6: (0, ""), 7: (0, "")}
    assert stderr == "to-stderr\n"
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("shell", SHELLS)
def test_batch_without_a_temporary_folder_runs_one_after_the_other(shell: str, tmp_path: Path) -> None:
    answers, _ = _run_batch(shell, ["echo one", "exit 4", "printf two"],
                            {**os.environ, "TMPDIR": str(tmp_path / "missing")})
    assert answers == {0: (0, "one\n"), 1: (4, ""), 2: (0, "two")}


@pytest.mark.parametrize("shell", SHELLS)
def test_a_conditional_probe_has_no_answer_when_its_condition_fails(shell: str, tmp_path: Path) -> None:
    """Skipped is no answer at all (the check that asks for it runs it on its own), never an empty one;
    the systemd condition follows PID 1 of the host the batch runs on."""
    from ops.facts import IF_PID1_SYSTEMD, OnlyIf

    pid1 = Path("/proc/1/comm").read_text().strip()
    for tmpdir in (str(tmp_path), str(tmp_path / "missing")):  # at the same time, and one after the other
        answers, _ = _run_batch(shell, ["echo plain", OnlyIf("echo yes", "true"), OnlyIf("echo no", "false"),
                                        OnlyIf("echo systemd", IF_PID1_SYSTEMD)], {**os.environ, "TMPDIR": tmpdir})
        expected = {0: (0, "plain\n"), 1: (0, "yes\n")}
        if pid1 == "systemd":
            expected[3] = (0, "systemd\n")
        assert answers == expected

