"""Targets: parsing ``local`` / ``lima:<vm>`` / ``ssh://user@host:port``, building the Context for each,
detecting the platform on the target itself, and reaching the target's engine socket.

A local target is driven through ``invoke.Context``; Lima VMs and remote WSL2/Linux hosts through
``fabric.Connection`` (a ``Context`` too), so the code above this module has no ``if remote:`` branches.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias
from urllib.parse import urlparse

import invoke

from ops.config import CaiConfig
from ops.errors import OpsError, TargetError

if TYPE_CHECKING:
    from fabric import Connection

Kind = Literal["local", "lima", "ssh"]
_VM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Target:
    """Where a command acts: the local host, a Lima VM, or an SSH host."""

    kind: Kind
    vm: str = ""
    user: str = ""
    host: str = ""
    port: int = 22

    @property
    def name(self) -> str:
        """The target as a user writes it."""
        if not self.remote:
            return "local"
        if self.kind == "lima":
            return f"lima:{self.vm}"
        user = f"{self.user}@" if self.user else ""
        return f"ssh://{user}{self.host}:{self.port}"

    @property
    def remote(self) -> bool:
        """True when reached over SSH."""
        return self.kind != "local"


def parse_target(text: str, default_vm: str = "containai-docker") -> Target:
    """Parse ``local``, ``lima``, ``lima:<vm>`` or ``ssh://[user@]host[:port]``."""
    raw = (text or "").strip()
    if raw in ("", "local"):
        return Target("local")
    if raw == "lima" or raw.startswith("lima:"):
        vm = raw.partition(":")[2] or default_vm
        if not _VM_RE.match(vm):
            raise TargetError(f"invalid Lima VM name {vm!r}", "use lima:<vm>, e.g. lima:containai-docker")
        return Target("lima", vm=vm)
    if raw.startswith("ssh://"):
        url = urlparse(raw)
        try:
            port = url.port or 22
        except ValueError:
            raise TargetError(f"invalid port in target {raw!r}", "use ssh://user@host:port") from None
        if not url.hostname or url.path not in ("", "/"):
            raise TargetError(f"invalid SSH target {raw!r}", "use ssh://user@host:port")
        return Target("ssh", user=url.username or "", host=url.hostname, port=port)
    raise TargetError(
        f"unknown target {raw!r}", "use local, lima:<vm> or ssh://user@host:port (see docs/fleet.md)"
    )


def lima_ssh_config(conf: CaiConfig, vm: str) -> Path:
    """The ssh config Lima writes for a VM: ``<LIMA_HOME>/<vm>/ssh.config``."""
    home = os.environ.get("LIMA_HOME") or conf.lima_home
    return Path(os.path.expanduser(home)) / vm / "ssh.config"


def lima_alias(vm: str) -> str:
    """The Host alias Lima uses in its ssh config."""
    return f"lima-{vm}"


def host_ssh_config(conf: CaiConfig) -> Path | None:
    """The ssh config file for ``ssh://`` targets (``cai.ssh_config``), or None for the user's default.

    Fabric and the OpenSSH engine tunnel both read this one file, so keys and host options agree.
    """
    if not conf.ssh_config:
        return None
    path = conf.expand(conf.ssh_config)
    if not path.is_file():
        raise TargetError(f"cai.ssh_config {conf.ssh_config!r} does not exist",
                          "point cai.ssh_config (INVOKE_CAI_SSH_CONFIG) at an ssh config file, or leave it empty")
    return path


class LocalContext(invoke.Context):
    """The local host's Context: an ``invoke.Context`` that also copies files like a
    ``fabric.Connection`` (``put``/``get``), so code handed either needs no branch."""

    def put(self, local: str | os.PathLike[str], remote: str | None = None,
            preserve_mode: bool = True) -> None:
        """Copy a local file to ``remote`` (a path, or a directory to copy into) on this host."""
        _copy(os.fspath(local), remote or os.path.basename(os.fspath(local)), preserve_mode)

    def get(self, remote: str, local: str | os.PathLike[str] | None = None,
            preserve_mode: bool = True) -> None:
        """Copy ``remote`` on this host to ``local`` (a path, or a directory to copy into)."""
        _copy(remote, os.fspath(local) if local is not None else os.path.basename(remote), preserve_mode)


#: A Context that also copies files: the local :class:`LocalContext` or a ``fabric.Connection`` (both
#: ``invoke.Context``).
FileContext: TypeAlias = "LocalContext | Connection"


def _copy(source: str, dest: str, preserve_mode: bool) -> None:
    import shutil  # here: a doctor's way to its probe does not pay for shutil (bz2, lzma)

    if os.path.isdir(dest):
        dest = os.path.join(dest, os.path.basename(source))
    if preserve_mode:
        shutil.copy(source, dest)
    else:
        shutil.copyfile(source, dest)


def local_context(base: Any = None, overrides: dict[str, Any] | None = None) -> invoke.Context:
    """The local Context: a :class:`LocalContext` sharing the config of ``base`` (a task's plain
    ``invoke.Context``), else one of ``overrides``; any other Context given (a LocalContext already, or
    a test's ``MockContext``) is used as it is."""
    if base is None:
        return LocalContext(config=invoke.Config(overrides=overrides or {}))
    if type(base) is invoke.Context:
        return LocalContext(config=base.config)
    return base


def on_macos(conf: CaiConfig) -> bool:
    """True when this machine is a Mac (detected, or ``cai.platform=macos``): its engine is in Lima."""
    return conf.platform == "macos" or (not conf.platform and os.uname().sysname == "Darwin")


def effective_target(target: Target, conf: CaiConfig) -> Target:
    """The target a command acts on: on a Mac the local target is the Lima VM ``cai.lima_vm``."""
    if not target.remote and on_macos(conf):
        return Target("lima", vm=conf.lima_vm)
    return target


def remote_target(text: str, conf: CaiConfig) -> bool:
    """True when the target ``text`` is reached over SSH (False too when it cannot be parsed: resolving
    it tells why)."""
    try:
        return effective_target(parse_target(text, conf.lima_vm), conf).remote
    except TargetError:
        return False


def make_context(target: Target, conf: CaiConfig, base: Any = None) -> invoke.Context:
    """The Context for a target: a :class:`LocalContext` locally, ``fabric.Connection`` otherwise.

    The ``cai`` section of ``base`` (the task's context) is carried over so the core sees one config.
    A connection checks the target's host key as its ssh config says (``ops.hostkeys``): unknown and
    changed keys are refused unless ``StrictHostKeyChecking`` is ``accept-new`` or ``no`` for it.
    """
    overrides: dict[str, Any] = {}
    if base is not None:
        with contextlib.suppress(Exception):
            overrides["cai"] = dict(base.config["cai"])
    if not target.remote:
        return local_context(base, overrides)
    from ops import hostkeys

    conn = _connection(target, conf, overrides)
    hostkeys.install(conn, host_key_policy_of(conn), target.name)
    return conn


def quick_socket(host: str, port: int, timeout: float | None) -> Any:
    """A TCP connection to ``host:port`` (each address in turn, as paramiko tries them; the last OSError
    when none answers) that sends small packets at once (``TCP_NODELAY``) and acknowledges what it
    reads at once (``TCP_QUICKACK`` before each read, where Linux has it).

    SSH is a conversation of small packets: with Nagle's algorithm on one side and delayed ACKs on the
    other, a reply waits for the peer's delayed ACK (about 40 ms on Linux) at each turn where the
    previous packet is not acknowledged yet. sshd leaves Nagle on for sessions without a terminal, so
    the client's immediate ACKs are what removes that wait (measured on a lab host: the handshake 67-110
    ms -> 25-30 ms, the first session 48 ms -> 5 ms)."""
    import socket

    quickack = getattr(socket, "TCP_QUICKACK", None)

    class QuickAckSocket(socket.socket):
        def recv(self, bufsize: int, flags: int = 0) -> bytes:
            if quickack is not None:
                with contextlib.suppress(OSError):
                    self.setsockopt(socket.IPPROTO_TCP, quickack, 1)
            return super().recv(bufsize, flags)

    error: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _name, address in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = QuickAckSocket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


_CONNECTION: Any = None


def _connection_class() -> Any:
    """``fabric.Connection`` whose direct TCP connections use :func:`quick_socket` (a connection through
    a gateway, e.g. a ProxyCommand, is made by Fabric as before). A host that does not answer is left to
    paramiko, so its error is the one it always was."""
    global _CONNECTION
    if _CONNECTION is not None:
        return _CONNECTION
    import fabric

    class Connection(fabric.Connection):
        def open(self) -> Any:
            if self.is_connected or self.gateway or "sock" in self.connect_kwargs:
                return super().open()
            try:
                self.connect_kwargs["sock"] = quick_socket(str(self.host), int(self.port), self.connect_timeout)
            except OSError:
                return super().open()
            try:
                return super().open()
            finally:
                self.connect_kwargs.pop("sock", None)

    _CONNECTION = Connection
    return _CONNECTION


def _connection(target: Target, conf: CaiConfig, overrides: dict[str, Any] | None = None) -> Any:
    """A ``fabric.Connection`` for a remote target (not connected yet), reading the right ssh config."""
    import fabric

    connection = _connection_class()
    if target.kind == "lima":
        path = lima_ssh_config(conf, target.vm)
        if not path.is_file():
            raise TargetError(
                f"Lima VM {target.vm!r} not found: {path} does not exist",
                f"check `limactl list`; create or start it with `limactl start {target.vm}`",
            )
        config = fabric.Config(runtime_ssh_path=str(path), overrides=overrides or {})
        return connection(lima_alias(target.vm), config=config, connect_timeout=15)
    ssh_config = host_ssh_config(conf)
    if ssh_config is not None:
        config = fabric.Config(runtime_ssh_path=str(ssh_config), overrides=overrides or {})
    else:
        config = fabric.Config(overrides=overrides or {})
    return connection(
        target.host, user=target.user or None, port=target.port, config=config, connect_timeout=15
    )


def host_key_policy_of(conn: Any) -> Any:
    """The ``ops.hostkeys.HostKeyPolicy`` a connection's ssh config gives its host."""
    from ops import hostkeys

    return hostkeys.policy_from_ssh_config(conn.ssh_config, str(conn.host), int(conn.port), str(conn.user or ""))


def host_key_policy(target: Target, conf: CaiConfig) -> Any:
    """The host-key policy of a remote target (its ssh config read as Fabric reads it; no connection)."""
    return host_key_policy_of(_connection(target, conf))


def run(ctx: invoke.Context, command: str, timeout: int | None = 60) -> tuple[int, str, str]:
    """Run a probe on a target: never reads our stdin, never raises on a non-zero exit.

    Transport failures (host down, wrong key) become TargetError.
    """
    try:
        result = ctx.run(command, hide=True, warn=True, in_stream=False, timeout=timeout, pty=False)
    except OpsError:
        raise  # already one line naming the host and the fix (e.g. a refused host key)
    except Exception as exc:
        from invoke.exceptions import CommandTimedOut

        if isinstance(exc, CommandTimedOut):
            raise TargetError(f"command timed out on {describe(ctx)}: {command.split()[0]}") from None
        raise TargetError(f"cannot reach {describe(ctx)} ({_first_line(exc)})",
                          "check that the host is up and the SSH key is right") from None
    if result is None:  # only a disowned run returns nothing; probes never disown
        raise TargetError(f"no result from {describe(ctx)}: {command.split()[0]}")
    return int(result.exited), str(result.stdout), str(result.stderr)


def describe(ctx: invoke.Context) -> str:
    """A short name of a context for messages."""
    host = getattr(ctx, "original_host", None) or getattr(ctx, "host", None)
    return str(host) if host else "local host"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


# --- platform detection ---------------------------------------------------------------------------

PROBE = (
    # one uname for the three fields (it prints them in this order whatever the flags' order), and the
    # files of /proc read by the shell itself: fewer processes, on every target, every command
    "set -- $(uname -srm); echo os=$1; echo kernel=$2; echo arch=$3; "
    'echo wsl_distro="${WSL_DISTRO_NAME:-}"; '
    "{ read -r p1 < /proc/1/comm; } 2>/dev/null || p1=; echo pid1=$p1; "
    "if [ -r /etc/os-release ]; then . /etc/os-release; echo distro=\"$ID\"; "
    'echo distro_version="$VERSION_ID"; echo distro_like="${ID_LIKE:-}"; fi; '
    "if [ -f /.dockerenv ] || grep -qa container= /proc/1/environ 2>/dev/null; "
    "then echo container=yes; else echo container=no; fi; "
    # WSL2: the seccomp mode of PID 1 (2 = a filter is applied) and [boot] systemd= of /etc/wsl.conf
    "sc=; { while read -r k v; do [ \"$k\" != Seccomp: ] || sc=$v; done < /proc/1/status; } 2>/dev/null; "
    "echo seccomp=$sc; "
    "if [ -r /etc/wsl.conf ]; then echo wsl_conf_systemd=$(awk -F= "
    "'/^[[:space:]]*\\[/{s=$0; gsub(/[[:space:]]/, \"\", s)} "
    "s == \"[boot]\" && $1 ~ /^[[:space:]]*systemd[[:space:]]*$/ "
    "{v=$2; gsub(/[[:space:]]/, \"\", v); print tolower(v)}' "
    "/etc/wsl.conf | tail -n 1); else echo wsl_conf_systemd=absent; fi"
)

ARCH_MAP = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class HostFacts:
    """What the platform probe read on a target."""

    os: str
    kernel: str
    machine: str
    wsl_distro: str
    pid1: str
    distro: str
    distro_version: str
    distro_like: str
    in_container: bool
    #: ``Seccomp:`` of /proc/1/status: 0 none, 1 strict, 2 filter; "" when unreadable
    seccomp: str = ""
    #: ``[boot] systemd=`` of /etc/wsl.conf (lower case), "" when unset, "absent" without the file
    wsl_conf_systemd: str = ""

    @property
    def arch(self) -> str:
        """Debian architecture name (amd64, arm64), or the raw machine name."""
        return ARCH_MAP.get(self.machine, self.machine)

    @property
    def is_wsl(self) -> bool:
        """WSL2: the kernel release names microsoft, or WSL_DISTRO_NAME is set."""
        return "microsoft" in self.kernel.lower() or bool(self.wsl_distro)

    @property
    def is_macos(self) -> bool:
        """Darwin kernel."""
        return self.os == "Darwin"

    @property
    def systemd_pid1(self) -> bool:
        """PID 1 is systemd."""
        return self.pid1 == "systemd"


def parse_host_facts(text: str) -> HostFacts:
    """Pure parser of the PROBE output."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    if not values.get("os"):
        raise TargetError("the platform probe returned nothing readable", "is this a POSIX host?")
    return HostFacts(
        os=values.get("os", ""),
        kernel=values.get("kernel", ""),
        machine=values.get("arch", ""),
        wsl_distro=values.get("wsl_distro", ""),
        pid1=values.get("pid1", ""),
        distro=values.get("distro", ""),
        distro_version=values.get("distro_version", ""),
        distro_like=values.get("distro_like", ""),
        in_container=values.get("container") == "yes",
        seccomp=values.get("seccomp", ""),
        wsl_conf_systemd=values.get("wsl_conf_systemd", ""),
    )


def probe_host(ctx: invoke.Context) -> HostFacts:
    """Read HostFacts on a target."""
    code, out, err = run(ctx, PROBE)
    if code != 0 and not out:
        raise TargetError(f"platform probe failed on {describe(ctx)}: {err.strip()[:200]}")
    return parse_host_facts(out)


def platform_of(facts: HostFacts, override: str = "") -> str:
    """The platform name: the override if set, else macos / wsl2 / linux from the facts."""
    if override:
        return override
    if facts.is_macos:
        return "macos"
    return "wsl2" if facts.is_wsl else "linux"


@dataclass
class Resolved:
    """A target ready to use: its Context, its platform and the facts read on it."""

    target: Target
    ctx: Any
    platform: str
    facts: HostFacts

    @property
    def name(self) -> str:
        """The target's display name."""
        return self.target.name


def resolve(text: str, conf: CaiConfig, base: Any = None, prefetch: Sequence[str] = (),
            alongside: Mapping[str, Any] | None = None) -> Resolved:
    """Parse a target, connect, and detect its platform there.

    On a macOS host (detected, or ``cai.platform=macos``) the local target becomes the Lima VM
    ``cai.lima_vm`` and the platform is ``macos``; versions are then read inside the VM.
    ``prefetch``: probe commands run in the same round trip as the platform probe; the Resolved's
    Context answers them from that output (:func:`ops.facts.batched`, with ``alongside``).
    """
    target = effective_target(parse_target(text, conf.lima_vm), conf)
    if not target.remote:
        local_ctx = _prefetching(make_context(target, conf, base), prefetch, alongside)
        facts = probe_host(local_ctx)
        return Resolved(target, local_ctx, platform_of(facts, conf.platform), facts)
    ctx = _prefetching(make_context(target, conf, base), prefetch, alongside)
    if target.kind == "lima":
        try:
            facts = probe_host(ctx)
        except TargetError as exc:  # ssh.config is there, but the VM does not answer: stopped, most likely
            raise TargetError(f"Lima VM {target.vm!r} does not answer ({exc.message})",
                              f"is it running? check `limactl list`; start it with `limactl start {target.vm}`"
                              ) from None
        return Resolved(target, ctx, "macos", facts)
    facts = probe_host(ctx)
    # "macos" describes the machine running the toolkit (its local target is the Lima VM); an SSH
    # host is never that Mac, so its platform is detected there (or forced to linux / wsl2).
    override = "" if conf.platform == "macos" else conf.platform
    return Resolved(target, ctx, platform_of(facts, override), facts)


def _prefetching(ctx: Any, prefetch: Sequence[str], alongside: Mapping[str, Any] | None = None) -> Any:
    if not prefetch:
        return ctx
    from ops.facts import batched

    return batched(ctx, [PROBE, *prefetch], alongside)


# --- engine socket --------------------------------------------------------------------------------

def socket_path(docker_host: str) -> str:
    """The filesystem path of a ``unix://`` docker host."""
    if not docker_host.startswith("unix://"):
        raise TargetError(f"cai.docker_host {docker_host!r} is not a unix:// socket",
                          "use unix:///var/run/containai-docker.sock")
    return docker_host[len("unix://"):]


def ssh_base_args(target: Target, conf: CaiConfig) -> list[str]:
    """OpenSSH arguments reaching a remote target the same way Fabric does, host-key policy included
    (given explicitly, so ``ssh`` decides exactly as the Fabric connection does)."""
    policy = host_key_policy(target, conf).ssh_options()
    if target.kind == "lima":
        return ["ssh", "-F", str(lima_ssh_config(conf, target.vm)), "-o", "BatchMode=yes", *policy,
                lima_alias(target.vm)]
    if target.kind == "ssh":
        dest = f"{target.user}@{target.host}" if target.user else target.host
        ssh_config = host_ssh_config(conf)
        extra = ["-F", str(ssh_config)] if ssh_config is not None else []
        return ["ssh", *extra, "-p", str(target.port), "-o", "BatchMode=yes", *policy, dest]
    raise TargetError("the local target needs no SSH")


def command_argv(target: Target, conf: CaiConfig, command: str, ssh_options: tuple[str, ...] = ()) -> list[str]:
    """The argv of a process that runs a shell ``command`` on the target: ``sh -c`` locally, else
    ``ssh`` reaching the host as the engine tunnel does (``ssh_options`` go before the destination)."""
    if not target.remote:
        return ["sh", "-c", command]
    base = ssh_base_args(target, conf)
    return [base[0], *ssh_options, *base[1:], command]


@contextlib.contextmanager
def engine_host(target: Target, conf: CaiConfig, ctx: Any = None) -> Iterator[str]:
    """A docker host URL for the target's engine: the socket itself locally; for a Lima VM or remote
    host, the socket reached over SSH (as Lima itself forwards the Docker socket).

    With ``ctx``, the target's Context (a ``fabric.Connection``, also wrapped by
    :func:`ops.facts.batched`), the engine is reached through channels of that connection
    (``ops.sshengine``): no second SSH connection. Without it, an ``ssh -N`` forwards the socket to a
    local one; that ``ssh`` writes its diagnostics to a file, never to a pipe nobody reads (a full pipe
    would stop it, and with it every request through the tunnel); the file is shown when it fails.
    """
    if not target.remote:
        yield conf.docker_host
        return
    remote = socket_path(conf.docker_host)
    if ctx is not None:
        from ops import sshengine

        try:
            transport = sshengine.transport_of(ctx)
        except OpsError:
            raise
        except Exception as exc:
            raise TargetError(f"cannot reach {target.name} ({_first_line(exc)})",
                              "check that the host is up and the SSH key is right") from None
        if transport is not None:
            with sshengine.register(transport, remote, target.name) as url:
                yield url
            return
    import shutil
    import tempfile

    if shutil.which("ssh") is None:
        raise TargetError("the ssh client is not installed", "install openssh-client")
    base = ssh_base_args(target, conf)
    tmp = tempfile.mkdtemp(prefix="cai-engine-")
    local = os.path.join(tmp, "docker.sock")
    errors = os.path.join(tmp, "ssh.err")
    argv = [base[0], "-N", "-o", "ExitOnForwardFailure=yes", "-o", "ControlMaster=no",
            "-o", "ControlPath=none", "-o", "ConnectTimeout=15", "-L", f"{local}:{remote}", *base[1:]]
    with open(errors, "wb") as err_file:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err_file, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(local):
            if proc.poll() is not None:
                raise tunnel_error(target.name, errors)
            if time.monotonic() > deadline:
                raise TargetError(f"timed out forwarding the engine socket of {target.name}: {tunnel_tail(errors)}",
                                  "check the SSH access to the target")
            time.sleep(0.05)
        yield f"unix://{local}"
    finally:
        proc.terminate()
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


def _read(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [line.strip() for line in fh.read().splitlines()]
    except OSError:
        return []


def tunnel_tail(path: str, limit: int = 300) -> str:
    """The meaningful last lines of the tunnel's diagnostics, on one line."""
    lines = [line for line in _read(path) if line and not set(line) <= {"@"} and not line.startswith("debug")]
    return (" ".join(lines[-4:]) or "ssh exited without a message")[-limit:]


def tunnel_error(name: str, path: str) -> TargetError:
    """One line for a tunnel that ``ssh`` refused or could not open (host key refusals named as such)."""
    lines = _read(path)
    text = "\n".join(lines)
    if "IDENTIFICATION HAS CHANGED" in text:
        fix = next((line for line in lines if line.startswith("ssh-keygen ") and " -R " in line),
                   "ssh-keygen -R <host>")
        return TargetError(f"host key of {name} has CHANGED (REMOTE HOST IDENTIFICATION HAS CHANGED): ssh "
                           "refused to forward the engine socket (someone may be intercepting the connection)",
                           f"if the host was reinstalled, remove the old key with `{fix}` and connect again")
    if "Host key verification failed" in text:
        return TargetError(f"host key of {name} is not known: ssh refused to forward the engine socket",
                           "check the fingerprint, then record it (ssh-keyscan -p PORT HOST >> known_hosts), "
                           "or set `StrictHostKeyChecking accept-new` for this host in its ssh config")
    return TargetError(f"cannot forward the engine socket of {name}: {tunnel_tail(path)}",
                       "check the SSH access to the target")
