"""SSH into agent containers: an interactive shell that always gets a TTY, and runs whose start is confirmed.

How a container is reached:

1. The container is looked up by name on the target's engine (``cai.docker_host`` there, reached through
   the same forwarded socket as doctor: ``ops.targets.engine_host``; it must carry ``cai.label``); its
   SSH port is the ``containai.ssh-port`` label. On a Mac the local target is the Lima VM.
2. ssh goes where the target makes that port reachable (:func:`route_of`): this machine's 127.0.0.1 for
   the local engine and for a Lima VM (Lima forwards guest ports to the Mac's loopback), or through an
   ``ssh://`` host as a jump (``ProxyCommand ssh ... -W 127.0.0.1:PORT``, with the host's own ssh config).
3. A stopped container is started, after checking that no running container holds its port (and, for a
   port on this machine, no process listens on it); then sshd is awaited with a growing back-off, up to
   ``wait`` seconds.
4. A pre-flight ``ssh ... true`` (BatchMode, stdin from /dev/null) proves that the transport works before
   any session that matters starts. A host key that changed (the container was recreated) is removed from
   the dedicated known_hosts file once, with a message, and the probe is retried once.
5. Only then does the real session start, exactly once. Failures before it are ``SshTransportError``
   (exit code 3); what happens after it is the remote command's business (its status is passed through).

Every ssh invocation into a container uses explicit options (``-F /dev/null``): the user's
``~/.ssh/config``, agent and global known_hosts are never consulted for it (only the jump through an
``ssh://`` host reads that host's ssh config, as every command reaching the host does).

Remote programs are sent as one base64 blob that the remote side decodes and evaluates with bash, so no
byte of a command, an argument or an environment value is ever parsed by the login shell; inside the
blob every piece is quoted with ``shlex.quote``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import select
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.config import CaiConfig
from ops.engine import SSH_PORT_LABEL
from ops.errors import ConfigError, EngineError, NotFoundError, OpsError
from ops.targets import Target

#: Our exit code for a failure before the SSH session started (ssh's own 255 is ambiguous: it is also
#: what a remote command exiting 255 produces).
TRANSPORT_EXIT = 3
#: Where detached runs write their logs, relative to the remote user's home.
LOG_DIR = ".containai/logs"
#: Lines of a failed detached run's log shown in the error.
TAIL_LINES = 20
LOOPBACK = "127.0.0.1"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Notice = Callable[[str], None]


class SshTransportError(OpsError):
    """SSH could not reach or log into the container; no session was started."""

    exit_code = TRANSPORT_EXIT


@dataclass(frozen=True)
class RunResult:
    """What a run did: exit status, and for detached runs the confirmed PID and the remote log path."""

    exit_code: int
    pid: int | None = None
    log_path: str | None = None
    #: Last lines of a detached run's log when it did not stay alive.
    tail: str = ""
    #: Human-readable outcome ("running", "exited with status 127", ...).
    detail: str = ""
    #: A captured foreground run's output (``capture=True``), decoded with surrogateescape.
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class Endpoint:
    """Everything ssh needs to reach one container."""

    container: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    host: str = LOOPBACK
    #: ssh arguments reaching the target the container runs on (``ops.targets.ssh_base_args``), when
    #: the container's port is reached through it as a jump; empty when the port is on this machine.
    jump: tuple[str, ...] = ()
    #: The name the host key is recorded under when it is not ``[host]:port`` (a jumped endpoint:
    #: ``[<target host>]:PORT``, so equal ports on two hosts never share a known_hosts entry).
    host_key_alias: str = ""
    #: The target the container runs on, for messages (``lima:<vm>``, ``ssh://...``; "" when local).
    where: str = ""

    @property
    def known_hosts_entry(self) -> str:
        """The exact known_hosts host pattern of this endpoint (``[127.0.0.1]:PORT``)."""
        if self.host_key_alias:
            return self.host_key_alias
        return f"[{self.host}]:{self.port}" if self.port != 22 else self.host

    def jump_argv(self) -> list[str]:
        """The ssh command that connects this machine to the container's port through the target
        (``-W host:port``, as ProxyJump does, but with the target's own ssh config and host-key policy)."""
        if not self.jump:
            return []
        return [self.jump[0], "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ConnectTimeout=15",
                "-W", f"{self.host}:{self.port}", *self.jump[1:]]

    @property
    def label(self) -> str:
        """The container and where it runs, for messages."""
        return f"{self.container!r} on {self.where}" if self.where else repr(self.container)


@dataclass(frozen=True)
class Route:
    """How ssh reaches the published ports of one target's containers (see :func:`route_of`)."""

    host: str = LOOPBACK
    jump: tuple[str, ...] = ()
    alias_host: str = ""  # the target's host name, for the known_hosts alias of a jumped endpoint
    where: str = ""
    local_ports: bool = True  # the ports are on this machine's loopback (local engine, or Lima forwards)


# --------------------------------------------------------------------------------------------- pure parts


def ssh_options(ep: Endpoint) -> list[str]:
    """The explicit ssh options used for every connection (no user config, exact known_hosts)."""
    return [
        "-F", "/dev/null",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={ep.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "HashKnownHosts=no",
        "-o", "CheckHostIP=no",
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", "PreferredAuthentications=publickey",
        "-o", "ControlMaster=no",
        "-o", "ControlPath=none",
        "-o", "LogLevel=ERROR",
        *(["-o", f"HostKeyAlias={ep.host_key_alias}"] if ep.host_key_alias else []),
        *(["-o", "ProxyCommand=" + shlex.join(ep.jump_argv()).replace("%", "%%")] if ep.jump else []),
        "-i", str(ep.key),
        "-p", str(ep.port),
        "-l", ep.user,
    ]


def ssh_argv(
    ep: Endpoint,
    remote: str | None = None,
    tty: bool = False,
    batch: bool = False,
    connect_timeout: int = 10,
) -> list[str]:
    """A complete ssh command line; ``remote`` None means the login shell."""
    argv = ["ssh", *ssh_options(ep), "-o", f"ConnectTimeout={connect_timeout}"]
    if batch:
        argv += ["-o", "BatchMode=yes"]
    argv.append("-tt" if tty else "-T")
    argv.append(ep.host)
    if remote is not None:
        argv.append(remote)
    return argv


def parse_env_pairs(pairs: Sequence[str] | None) -> dict[str, str]:
    """Pure parser of ``--env K=V`` flags (the value is everything after the first ``=``)."""
    env: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--env {pair!r} is not NAME=VALUE", "write e.g. --env FOO=bar")
        env[name] = value
    check_env(env)
    return env


def check_env(env: Mapping[str, str]) -> None:
    """Refuse variable names bash cannot export and values that cannot travel (NUL bytes)."""
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise ConfigError(
                f"invalid environment variable name {name!r}",
                "use letters, digits and underscores, not starting with a digit",
            )
        if "\0" in value:
            raise ConfigError(f"the value of {name} contains a NUL byte", "environment values cannot hold NUL")


def command_script(command: str | None = None, argv: Sequence[str] | None = None,
                   env: Mapping[str, str] | None = None) -> str:
    """The bash script a run executes: exports, then the command (a string, or argv quoted word by word).

    The exports come first inside the login shell, so profile files cannot override them (Debian's
    /etc/profile resets PATH, for example).
    """
    if (command is None) == (argv is None):
        raise ConfigError("give exactly one of a command string or an argv list", "e.g. --cmd 'ls -l'")
    if argv is not None:
        if not argv:
            raise ConfigError("the argv list is empty", "give the program to run")
        command = shlex.join(argv)
    assert command is not None
    if "\0" in command:
        raise ConfigError("the command contains a NUL byte", "remove it")
    env = dict(env or {})
    check_env(env)
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    lines.append(command)
    return "\n".join(lines)


def remote_blob(program: str) -> str:
    """Wrap a bash program so that the remote login shell sees only base64 and fixed words.

    The line is parsed the same way by sh, dash, bash, zsh, fish and csh: single quotes, no newline.
    """
    blob = base64.b64encode(program.encode("utf-8", "surrogateescape")).decode("ascii")
    return f"exec bash -c 'eval \"$(printf %s {blob} | base64 -d)\"'"


def foreground_program(script: str) -> str:
    """The remote program of a foreground run: the script under ``bash -lc``, stdin left to the caller."""
    return f"exec bash -lc {shlex.quote(script)}"


def log_name(now: float | None = None, ident: str | None = None) -> str:
    """The file name of a detached run's log: ``<UTC timestamp>-<id>.log``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{ident or uuid.uuid4().hex[:8]}.log"


def detach_program(script: str, name: str, settle: float = 0.5) -> str:
    """The remote program of a detached run.

    It starts ``bash -lc SCRIPT`` in its own session (setsid, nohup), stdin from /dev/null, stdout and
    stderr to ``~/.containai/logs/NAME``; when the command ends, its status goes to ``NAME.status``
    (written to a temporary file and renamed, so a reader never sees it half written). The program waits
    up to ``settle`` seconds, then reports on stdout with marker lines: ``CAI-LOG path``, and either
    ``CAI-PID pid`` (``kill -0`` says it is alive) or ``CAI-EXIT status`` plus ``CAI-TAIL`` and the last
    lines of the log. It never waits for the job, so the SSH session closes at once.
    """
    steps = max(1, int(round(settle / 0.05)))
    return "\n".join([
        f'log_dir="$HOME/{LOG_DIR}"',
        f'log="$log_dir/{name}"',
        'if ! mkdir -p "$log_dir" 2>/dev/null; then echo "CAI-ERROR cannot create $log_dir"; exit 0; fi',
        f"inner={shlex.quote(script)}",
        'if command -v setsid >/dev/null 2>&1; then set -- setsid; else set --; fi',
        '"$@" nohup bash -c \'bash -lc "$1"; s=$?; echo "$s" > "$2.status.tmp"; '
        'mv -f "$2.status.tmp" "$2.status"\' cai-detached "$inner" "$log" </dev/null >"$log" 2>&1 &',
        "pid=$!",
        "i=0",
        f'while [ "$i" -lt {steps} ] && [ ! -e "$log.status" ]; do sleep 0.05; i=$((i+1)); done',
        'echo "CAI-LOG $log"',
        'if [ ! -e "$log.status" ] && kill -0 "$pid" 2>/dev/null; then echo "CAI-PID $pid"; exit 0; fi',
        'wait "$pid" 2>/dev/null',
        'echo "CAI-EXIT $(cat "$log.status" 2>/dev/null || echo unknown)"',
        'echo "CAI-TAIL"',
        f'tail -n {TAIL_LINES} "$log" 2>/dev/null',
        "exit 0",
    ])


@dataclass(frozen=True)
class DetachReport:
    """What the remote detach program reported."""

    log_path: str | None = None
    pid: int | None = None
    status: int | None = None
    ended: bool = False
    tail: str = ""
    error: str = ""


def parse_detach_report(text: str) -> DetachReport:
    """Pure parser of the detach program's stdout (noise from rc files before the markers is ignored)."""
    log_path: str | None = None
    pid: int | None = None
    status: int | None = None
    ended = False
    error = ""
    tail_lines: list[str] = []
    in_tail = False
    for line in text.splitlines():
        if in_tail:
            tail_lines.append(line)
        elif line.startswith("CAI-LOG "):
            log_path = line[len("CAI-LOG "):]
        elif line.startswith("CAI-PID "):
            raw = line[len("CAI-PID "):].strip()
            pid = int(raw) if raw.isdigit() else None
        elif line.startswith("CAI-EXIT "):
            ended = True
            raw = line[len("CAI-EXIT "):].strip()
            status = int(raw) if raw.isdigit() else None
        elif line == "CAI-TAIL":
            in_tail = True
        elif line.startswith("CAI-ERROR "):
            error = line[len("CAI-ERROR "):]
    return DetachReport(log_path, pid, status, ended, "\n".join(tail_lines), error)


def classify_probe_failure(stderr: str) -> str:
    """Pure classifier of a failed pre-flight probe's stderr.

    Returns one of ``hostkey-changed``, ``hostkey``, ``auth``, ``key-perms``, ``key-unreadable``,
    ``refused``, ``timeout``, ``other``.
    """
    text = stderr.lower()
    if "remote host identification has changed" in text:
        return "hostkey-changed"
    if "unprotected private key file" in text or "bad permissions" in text:
        return "key-perms"
    if "no such identity" in text or "load key" in text:
        return "key-unreadable"
    if "host key verification failed" in text:
        return "hostkey"
    if "permission denied" in text:
        return "auth"
    if "connection refused" in text or "connection reset" in text or "connection closed" in text:
        return "refused"
    if "timed out" in text:
        return "timeout"
    return "other"


def last_line(text: str) -> str:
    """The last non-empty line of a tool's output."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def choose_running(running: Sequence[str], stopped: Sequence[str]) -> str:
    """Pure choice of the container for ``inv shell`` without ``--container``."""
    if len(running) == 1:
        return running[0]
    if not running:
        extra = f" (stopped: {', '.join(stopped)})" if stopped else ""
        raise NotFoundError(f"no managed container is running{extra}", "pick one with --container NAME")
    raise ConfigError(
        f"{len(running)} managed containers are running: {', '.join(running)}",
        "pick one with --container NAME",
    )


def port_holders(summaries: Sequence[Mapping[str, Any]], name: str, port: int) -> list[str]:
    """Pure: the running containers other than ``name`` that hold ``port`` (by their
    ``containai.ssh-port`` label or a published host port), from the engine's container list
    (``GET /containers/json``: ``Names``, ``State``, ``Labels``, ``Ports``)."""
    held: list[str] = []
    for item in summaries:
        names = [str(n).lstrip("/") for n in item.get("Names") or []]
        if name in names or str(item.get("State", "")) != "running":
            continue
        labels = item.get("Labels") or {}
        published = {int(p.get("PublicPort") or 0) for p in item.get("Ports") or []}
        if str(labels.get(SSH_PORT_LABEL, "")) == str(port) or port in published:
            held.append(names[0] if names else str(item.get("Id", ""))[:12])
    return sorted(held)


def port_taken_error(name: str, port: int, holders: Sequence[str], where: str = "") -> OpsError:
    """The error for a stopped container whose port is held: who holds it and the ways out."""
    on = f" on {where}" if where else ""
    if holders:
        other = holders[0]
        return OpsError(
            f"port {port} of stopped container {name!r}{on} is held by running container {other!r}",
            f"stop {other} first (docker stop {other}), or recreate {name} so that it gets a free port",
        )
    return OpsError(
        f"port {LOOPBACK}:{port} of stopped container {name!r} is already in use by another process",
        f"free it (ss -ltnp 'sport = :{port}' or lsof -iTCP:{port} shows who holds it) or recreate the container",
    )


# ----------------------------------------------------------------------------------------- reaching it


def _stderr_notice(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True when something accepts connections on host:port or the address cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect((host, port))
            return True
        except OSError:
            pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def sshd_answers(port: int, host: str = LOOPBACK, timeout: int = 2) -> bool:
    """True when ``ssh-keyscan`` gets a host key from host:port."""
    try:
        proc = subprocess.run(
            ["ssh-keyscan", "-T", str(timeout), "-p", str(port), host],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout + 5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(ln and not ln.startswith("#") for ln in proc.stdout.splitlines())


def banner_through(argv: Sequence[str], timeout: float = 10.0) -> bool:
    """True when the stream ``argv`` opens (``ssh -W host:port`` through a target) starts with an SSH
    server's identification line (``SSH-2.0-...``): sshd answers behind the jump."""
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        return False
    assert proc.stdout is not None
    try:
        seen = b""
        deadline = time.monotonic() + timeout
        while len(seen) < 4:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                return False
            chunk = os.read(proc.stdout.fileno(), 64)
            if not chunk:
                return False
            seen += chunk
        return seen.startswith(b"SSH-")
    finally:
        proc.kill()
        with contextlib.suppress(Exception):
            proc.communicate(timeout=5)


def endpoint_answers(ep: Endpoint, timeout: int = 2) -> bool:
    """True when sshd answers on the endpoint (directly, or behind its jump)."""
    if ep.jump:
        return banner_through(ep.jump_argv(), timeout=timeout + 8)
    return sshd_answers(ep.port, ep.host, timeout)


def wait_for_sshd(
    port: int,
    wait: float,
    host: str = LOOPBACK,
    alive: Callable[[], str | None] | None = None,
    container: str = "",
    answers: Callable[[], bool] | None = None,
) -> None:
    """Wait for sshd with a growing back-off; ``alive`` returns a reason to stop early (container died);
    ``answers`` replaces the direct ``ssh-keyscan`` of host:port (an endpoint behind a jump)."""
    deadline = time.monotonic() + max(0.0, wait)
    delay = 0.1
    check = answers or (lambda: sshd_answers(port, host))
    while True:
        if check():
            return
        if alive is not None:
            reason = alive()
            if reason:
                raise SshTransportError(
                    f"container {container!r} {reason} before sshd answered on {host}:{port}",
                    f"see its log: docker logs {container}",
                )
        now = time.monotonic()
        if now >= deadline:
            raise SshTransportError(
                f"sshd in container {container!r} did not answer on {host}:{port} within {wait:g}s",
                f"check that sshd runs in it (docker logs {container}) or retry with a longer --wait",
            )
        time.sleep(min(delay, max(0.0, deadline - now)))
        delay = min(delay * 2, 2.0)


def _require_tools() -> None:
    for tool in ("ssh", "ssh-keyscan", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise OpsError(f"{tool} is not installed", "install the OpenSSH client (apt-get install openssh-client)")


def check_key(conf: CaiConfig) -> Path:
    """The private key ``cai.ssh_key``: it must exist and be readable."""
    key = conf.expand(conf.ssh_key)
    if not key.is_file():
        raise ConfigError(
            f"SSH key {key} does not exist",
            "set cai.ssh_key (INVOKE_CAI_SSH_KEY) to the private key whose public half the containers trust",
        )
    if not os.access(key, os.R_OK):
        raise ConfigError(f"SSH key {key} is not readable", "run as its owner or fix its permissions")
    return key


def endpoint(conf: CaiConfig, name: str, port: int, route: Route | None = None, key: Path | None = None,
             create_known_hosts: bool = True) -> Endpoint:
    """The endpoint of container ``name`` whose SSH port is ``port``, reached by ``route``."""
    key = key if key is not None else check_key(conf)
    known = conf.expand(conf.known_hosts)
    if create_known_hosts:
        try:
            known.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            known.touch(exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot use known_hosts file {known} ({exc.strerror})",
                "set cai.known_hosts (INVOKE_CAI_KNOWN_HOSTS) to a writable path",
            ) from None
    route = route or Route()
    alias = f"[{route.alias_host}]:{port}" if route.jump and route.alias_host else ""
    return Endpoint(container=name, port=port, user=conf.ssh_user, key=key, known_hosts=known, host=route.host,
                    jump=route.jump, host_key_alias=alias, where=route.where)


def route_of(target: Target, conf: CaiConfig) -> Route:
    """How ssh reaches the containers of a target (already :func:`ops.targets.effective_target`).

    - local: the ports are on this machine's 127.0.0.1.
    - ``lima:<vm>``: Lima forwards every guest port to the Mac's 127.0.0.1, so the same.
    - ``ssh://``: the port is published on the host's interfaces; ssh jumps through the host (its own
      ssh config and host-key policy) to ``127.0.0.1:PORT`` there.
    """
    from ops.targets import ssh_base_args

    if not target.remote:
        return Route()
    if target.kind == "lima":
        return Route(where=target.name)
    return Route(jump=tuple(ssh_base_args(target, conf)), alias_host=target.host, where=target.name,
                 local_ports=False)


def connect_engine(conf: CaiConfig, docker_host: str | None = None, where: str = "") -> Any:
    """The engine at ``docker_host`` (default ``cai.docker_host``; a lazily imported ``ops.engine.Engine``)."""
    from ops.engine import Engine

    try:
        return Engine.connect(docker_host or conf.docker_host, conf.label)
    except EngineError as exc:
        if not where:
            raise
        raise EngineError(f"the engine of {where} does not answer ({exc.message})",
                          f"check it on {where}: systemctl status containai-docker") from None


def pick_container(engine: Any, name: str | None) -> Any:
    """The managed container named ``name``, or the only running one when no name is given."""
    if name:
        return engine.get(name)
    managed = engine.managed()
    running = [c.name for c in managed if c.running]
    stopped = [c.name for c in managed if not c.running]
    return engine.get(choose_running(running, stopped))


def _state_watch(engine: Any, name: str) -> Callable[[], str | None]:
    """A check that says why a container we just started is no longer running (None while it runs)."""

    def check() -> str | None:
        try:
            state = engine.get(name).state
        except OpsError:
            return "disappeared"
        return None if state == "running" else f"stopped ({state})"

    return check


def shell_target(conf: CaiConfig, target: str = "") -> Target:
    """The target ``inv shell`` acts on: ``--target``, else ``cai.target``; on a Mac the local target
    is the Lima VM ``cai.lima_vm`` (as for doctor)."""
    from ops.targets import effective_target, parse_target

    return effective_target(parse_target(target or conf.target, conf.lima_vm), conf)


def reach(
    conf: CaiConfig,
    container: str | None,
    wait: float = 30.0,
    notice: Notice = _stderr_notice,
    target: str = "",
) -> Endpoint:
    """Resolve the container on the target's engine, start it if it is stopped, wait for sshd, and prove
    SSH works. The engine is the target's (through the same forwarded socket as doctor); ssh goes to the
    container's port where the target forwards it, or through the target (see :func:`route_of`)."""
    from ops.targets import engine_host

    _require_tools()
    tgt = shell_target(conf, target)
    route = route_of(tgt, conf)
    with engine_host(tgt, conf) as docker_host:
        engine = connect_engine(conf, docker_host, route.where)
        try:
            ep = _reach_on(engine, conf, container, wait, notice, route)
        finally:
            engine.close()
    preflight(ep, notice)
    return ep


def _reach_on(engine: Any, conf: CaiConfig, container: str | None, wait: float, notice: Notice,
              route: Route) -> Endpoint:
    found = pick_container(engine, container)
    name = found.name
    port = found.ssh_port
    if port is None:
        raw = found.labels.get(SSH_PORT_LABEL)
        what = f"an invalid {SSH_PORT_LABEL} label ({raw!r})" if raw else f"no {SSH_PORT_LABEL} label"
        raise OpsError(
            f"container {name!r} has {what}",
            "recreate it with ContainAI, which publishes its SSH port on 127.0.0.1",
        )
    ep = endpoint(conf, name, port, route)
    alive: Callable[[], str | None] | None = None
    if not found.running:
        holders = port_holders(engine.client.api.containers(filters={"status": "running"}), name, port)
        if holders or (route.local_ports and port_in_use(port)):
            raise port_taken_error(name, port, holders, route.where)
        notice(f"starting container {name} ...")
        results = engine.start_all([name])
        if not results or not results[0].ok:
            detail = results[0].detail if results else "no result"
            raise EngineError(f"cannot start container {name!r} ({detail})", f"see: docker logs {name}")
        alive = _state_watch(engine, name)
    wait_for_sshd(port, wait, host=ep.host, alive=alive, container=name,
                  answers=(lambda: endpoint_answers(ep)) if ep.jump else None)
    return ep


@dataclass(frozen=True)
class Probe:
    """One BatchMode ``ssh ... true``: whether it worked, and if not, why (``classify_probe_failure``)."""

    ok: bool
    kind: str = ""
    code: int = 0
    stderr: str = ""


def probe(ep: Endpoint, connect_timeout: int = 10, timeout: float = 60) -> Probe:
    """Run ``true`` over SSH once, with BatchMode and no stdin."""
    try:
        proc = subprocess.run(
            ssh_argv(ep, "true", batch=True, connect_timeout=connect_timeout), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return Probe(False, "timeout", 255, f"did not finish within {timeout:g}s")
    if proc.returncode == 0:
        return Probe(True)
    return Probe(False, classify_probe_failure(proc.stderr), proc.returncode, proc.stderr)


def preflight(ep: Endpoint, notice: Notice = _stderr_notice, attempts: int = 3) -> None:
    """Run ``true`` over SSH with BatchMode and no stdin; fix a changed host key once; else raise."""
    key_replaced = False
    tries = 0
    while True:
        tries += 1
        result = probe(ep)
        if result.ok:
            return
        if result.kind == "timeout" and result.code == 255 and "did not finish" in result.stderr:
            raise SshTransportError(
                f"SSH to container {ep.label} ({ep.host}:{ep.port}) did not finish within 60s",
                f"check that sshd in it is healthy (docker logs {ep.container})",
            )
        if result.kind == "hostkey-changed" and not key_replaced:
            forget_host_key(ep)
            notice(
                f"the host key of {ep.known_hosts_entry} changed (container {ep.container} was recreated?); "
                f"removed the old entry from {ep.known_hosts}"
            )
            key_replaced = True
            continue
        if result.kind in ("refused", "timeout") and tries < attempts:
            time.sleep(0.5 * tries)
            continue
        raise _probe_error(ep, result.kind, result.code, result.stderr)


def forget_host_key(ep: Endpoint) -> None:
    """Remove the endpoint's entry from the dedicated known_hosts file."""
    proc = subprocess.run(
        ["ssh-keygen", "-R", ep.known_hosts_entry, "-f", str(ep.known_hosts)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise SshTransportError(
            f"cannot remove the old host key of {ep.known_hosts_entry} from {ep.known_hosts} "
            f"({last_line(proc.stderr) or proc.returncode})",
            f"remove it by hand: ssh-keygen -R '{ep.known_hosts_entry}' -f {ep.known_hosts}",
        )


def _probe_error(ep: Endpoint, kind: str, code: int, stderr: str) -> SshTransportError:
    where = f"container {ep.label} ({ep.host}:{ep.port})"
    if kind == "auth":
        return SshTransportError(
            f"{where} refused the key {ep.key} for user {ep.user!r}",
            "set cai.ssh_key to the key the container trusts, or cai.ssh_user to its user",
        )
    if kind == "key-perms":
        return SshTransportError(f"ssh refuses the key {ep.key}: its permissions are too open",
                                 f"chmod 600 {ep.key}")
    if kind == "key-unreadable":
        return SshTransportError(f"ssh cannot load the key {ep.key}", "set cai.ssh_key to a valid private key")
    if kind in ("hostkey-changed", "hostkey"):
        return SshTransportError(
            f"the host key of {where} does not match {ep.known_hosts} even after replacing it",
            f"check what listens on port {ep.port}; remove the entry with "
            f"ssh-keygen -R '{ep.known_hosts_entry}' -f {ep.known_hosts}",
        )
    if kind in ("refused", "timeout"):
        return SshTransportError(f"cannot connect to {where} ({last_line(stderr)})",
                                 f"check that sshd runs in it (docker logs {ep.container})")
    detail = last_line(stderr) or f"ssh exited {code}"
    return SshTransportError(f"SSH to {where} failed ({detail})",
                             f"check sshd in it (docker logs {ep.container})")


# ----------------------------------------------------------------------------------------------- actions


def shell_argv(ep: Endpoint) -> list[str]:
    """The ssh command line of the interactive login shell (TTY forced)."""
    return ssh_argv(ep, None, tty=True)


def shell(
    conf: CaiConfig,
    container: str | None = None,
    wait: float = 30.0,
    replace_process: bool = True,
    notice: Notice = _stderr_notice,
    target: str = "",
) -> int:
    """Open an interactive login shell; with ``replace_process`` this process becomes ssh (never returns)."""
    ep = reach(conf, container, wait, notice, target)
    argv = shell_argv(ep)
    if replace_process:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvp(argv[0], argv)
    return subprocess.call(argv)


def run(
    conf: CaiConfig,
    container: str,
    argv: list[str] | None = None,
    command: str | None = None,
    env: dict[str, str] | None = None,
    detach: bool = False,
    wait: float = 30.0,
    settle: float = 0.5,
    forward_stdin: bool = False,
    capture: bool = False,
    notice: Notice = _stderr_notice,
    target: str = "",
) -> RunResult:
    """Run a command (a string for ``bash -lc``, or an argv list) in a container, exactly once.

    Foreground: output streams to this process's stdout/stderr (or is captured with ``capture`` into
    ``RunResult.stdout``/``stderr``) and ``exit_code`` is the remote status. Detached: ``pid`` and
    ``log_path`` are set when the process was confirmed alive; otherwise ``exit_code`` is non-zero
    (the command's own status when it ended with one) and ``tail`` holds the end of its log.
    Failures before the session started raise ``SshTransportError`` (or another ``OpsError``).
    """
    script = command_script(command=command, argv=argv, env=env)
    ep = reach(conf, container, wait, notice, target)
    return run_on(ep, script, detach=detach, settle=settle, forward_stdin=forward_stdin, capture=capture,
                  notice=notice)


def run_on(
    ep: Endpoint,
    script: str,
    detach: bool = False,
    settle: float = 0.5,
    forward_stdin: bool = False,
    capture: bool = False,
    notice: Notice = _stderr_notice,
) -> RunResult:
    """Run a ``command_script`` on an endpoint that ``reach`` proved reachable (one session, no retry)."""
    container = ep.container
    if not detach:
        remote = remote_blob(foreground_program(script))
        stdin = None if forward_stdin else subprocess.DEVNULL
        if capture:
            proc = subprocess.run(ssh_argv(ep, remote), stdin=stdin, capture_output=True)
            return RunResult(proc.returncode, detail=f"exited with status {proc.returncode}",
                             stdout=proc.stdout.decode("utf-8", "surrogateescape"),
                             stderr=proc.stderr.decode("utf-8", "surrogateescape"))
        code = subprocess.call(ssh_argv(ep, remote), stdin=stdin)
        if code == 255:
            notice("ssh exited 255: the command exited 255 or the connection was lost (not retried)")
        return RunResult(code, detail=f"exited with status {code}")
    name = log_name()
    remote = remote_blob(detach_program(script, name, settle))
    proc = subprocess.run(ssh_argv(ep, remote), stdin=subprocess.DEVNULL, capture_output=True)
    out = proc.stdout.decode("utf-8", "replace")
    report = parse_detach_report(out)
    if report.pid is not None:
        return RunResult(0, pid=report.pid, log_path=report.log_path, detail="running")
    if not report.ended and not report.error:
        raise OpsError(
            f"the detached start in {container!r} did not report back (ssh exited {proc.returncode}: "
            f"{last_line(proc.stderr.decode('utf-8', 'replace')) or 'no message'}); it was not retried",
            f"look for ~/{LOG_DIR}/{name} in the container before starting it again",
        )
    if report.error:
        raise OpsError(f"cannot start the detached command in {container!r}: {report.error}",
                       "make the user's home directory writable")
    if report.status == 0:
        return RunResult(0, log_path=report.log_path, tail=report.tail,
                         detail="finished with status 0 before it could be confirmed running")
    status = report.status if report.status is not None else 1
    what = f"exited with status {report.status}" if report.status is not None else "died without a status"
    return RunResult(status if status != 0 else 1, log_path=report.log_path, tail=report.tail, detail=what)
