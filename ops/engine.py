"""Access to the containai-docker engine through the Docker SDK.

Reads return frozen dataclasses; the stop/start helpers act on many containers in parallel, each with
its own graceful timeout, and report per container what happened.

Connecting costs one request (``GET /version``, which also proves the engine answers), and a listing is
one ``GET /containers/json`` whatever the number of containers (no inspect per container). An engine
socket that is missing or refuses connections is told in microseconds, before the SDK is imported.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ops.errors import EngineError, NotFoundError, OpsError

SSH_PORT_LABEL = "containai.ssh-port"
#: How many container starts are in flight at once. dockerd does much of a start serially (containerd,
#: the shim, runc, the mounts) on a host's few cores: 20 starts sent at once on 2 cores ran the first
#: container 1.8 s after the engine answered and all of them within a few tenths of a second of each
#: other; 8 in flight, in the order the containers exited, runs the first ones about 1 s sooner and
#: the last one as soon (bench/update_downtime, interleaved runs).
START_WORKERS = 8


@dataclass(frozen=True)
class ManagedContainer:
    """One container on the engine, as read from ``docker inspect``."""

    id: str
    name: str
    image: str
    state: str
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    managed: bool = True
    #: Named volumes it mounts (``Mounts`` of type volume), in mount order.
    volumes: tuple[str, ...] = field(default=(), hash=False, compare=False)

    @property
    def running(self) -> bool:
        """True when the container's state is running (or restarting/paused: it holds mounts)."""
        return self.state in ("running", "restarting", "paused")

    @property
    def ssh_port(self) -> int | None:
        """The SSH port from the ``containai.ssh-port`` label, or None."""
        raw = self.labels.get(SSH_PORT_LABEL, "")
        return int(raw) if raw.isdigit() and 0 < int(raw) < 65536 else None


@dataclass(frozen=True)
class ActionResult:
    """What happened to one container in a parallel stop or start."""

    name: str
    ok: bool
    detail: str = ""


def _volume_names(mounts: Any) -> tuple[str, ...]:
    return tuple(str(m["Name"]) for m in mounts or [] if m.get("Type") == "volume" and m.get("Name"))


def _is_managed(labels: dict[str, str], label: str) -> bool:
    key, _, value = label.partition("=")
    return labels.get(key) == value


def container_from_attrs(attrs: dict[str, Any], label: str) -> ManagedContainer:
    """Pure parser: a ``docker inspect`` document to a ManagedContainer."""
    cfg = attrs.get("Config") or {}
    labels = dict(cfg.get("Labels") or {})
    name = str(attrs.get("Name", "")).lstrip("/")
    state = (attrs.get("State") or {}).get("Status", "unknown")
    return ManagedContainer(
        id=str(attrs.get("Id", "")),
        name=name,
        image=str(cfg.get("Image", "")),
        state=str(state),
        labels=labels,
        managed=_is_managed(labels, label),
        volumes=_volume_names(attrs.get("Mounts")),
    )


def container_from_summary(entry: dict[str, Any], label: str) -> ManagedContainer:
    """Pure parser: one entry of ``GET /containers/json`` (``docker ps``) to a ManagedContainer.

    ``Names`` holds ``/name`` plus ``/other/alias`` for each legacy link to it: the name is the one
    without a second slash.
    """
    labels = dict(entry.get("Labels") or {})
    names = [str(n).lstrip("/") for n in entry.get("Names") or []]
    name = next((n for n in names if "/" not in n), names[0] if names else "")
    return ManagedContainer(
        id=str(entry.get("Id", "")),
        name=name,
        image=str(entry.get("Image", "")),
        state=str(entry.get("State") or "unknown"),
        labels=labels,
        managed=_is_managed(labels, label),
        volumes=_volume_names(entry.get("Mounts")),
    )


def check_socket(docker_host: str, timeout: float = 5.0) -> None:
    """Raise EngineError at once when a ``unix://`` engine socket is missing, refuses connections or may
    not be opened; any other docker host passes (the SDK tells)."""
    if not docker_host.startswith("unix://"):
        return
    path = docker_host[len("unix://"):]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        why = {errno.ENOENT: "socket not found", errno.ECONNREFUSED: "connection refused",
               errno.EACCES: "permission denied on the socket", errno.ENOTSOCK: "not a socket"}
        raise EngineError(
            f"engine at {docker_host} is unreachable ({why.get(exc.errno or 0) or _short(exc)})",
            "start it (systemctl start containai-docker) or set cai.docker_host",
        ) from None
    finally:
        sock.close()


_IMPORT_LOCK = threading.Lock()


def import_docker(alone: bool = False) -> Any:
    """The ``docker`` package, imported without its SSH transport when nothing else needs paramiko.

    Every engine here is reached on a unix socket (a remote one through a forwarded socket), never
    through docker's own ``ssh://`` transport, whose import of paramiko (and its cryptography) costs
    more than the rest of the SDK. docker skips that transport when paramiko cannot be imported; paramiko
    is hidden only before anything has imported it, and only while nothing else can import it: on the
    main thread with no other thread alive, or when the caller says so (``alone``). Fabric imports it
    normally afterwards.
    """
    with _IMPORT_LOCK:
        if "docker" in sys.modules:
            return sys.modules["docker"]
        hide = "paramiko" not in sys.modules and (alone or (
            threading.current_thread() is threading.main_thread() and threading.active_count() == 1))
        if hide:
            sys.modules["paramiko"] = None  # type: ignore[assignment]
        try:
            import docker
        finally:
            if hide and sys.modules.get("paramiko", False) is None:
                del sys.modules["paramiko"]
        return docker


class Engine:
    """A connected Docker SDK client for one engine socket."""

    def __init__(self, client: Any, docker_host: str, label: str, version: dict[str, Any] | None = None) -> None:
        self.client = client
        self.docker_host = docker_host
        self.label = label
        self._version = version
        self._snapshot: list[ManagedContainer] | None = None

    @classmethod
    def connect(cls, docker_host: str, label: str, timeout: int = 30) -> Engine:
        """Connect with one ``GET /version`` (the engine answers, and with which API version); raise
        EngineError with a hint when the engine does not answer."""
        if docker_host.startswith("ssh-channel://"):
            return cls._connect_channel(docker_host, label, timeout)
        check_socket(docker_host, min(5.0, float(timeout)))
        docker = import_docker()
        from docker.errors import DockerException

        try:
            # the version is asked unversioned, so the probe's API version is never used
            probe = docker.APIClient(base_url=docker_host, timeout=timeout,
                                     version=docker.constants.MINIMUM_DOCKER_API_VERSION)
            try:
                version = dict(probe.version(api_version=False))
            finally:
                probe.close()
            client = docker.DockerClient(base_url=docker_host, timeout=timeout, max_pool_size=64,
                                         version=str(version["ApiVersion"]))
        except (DockerException, OSError, ValueError, KeyError) as exc:
            raise EngineError(
                f"engine at {docker_host} is unreachable ({_short(exc)})",
                "start it (systemctl start containai-docker) or set cai.docker_host",
            ) from None
        return cls(client, docker_host, label, version)

    @classmethod
    def _connect_channel(cls, docker_host: str, label: str, timeout: int) -> Engine:
        """Connect to an engine socket reached through a target's SSH transport (``ops.sshengine``): the
        first channel is opened here (a refused one is told as the socket check tells it), and the
        ``GET /version`` goes through it; the client then asks with that API version."""
        from ops import sshengine

        opener = sshengine.opener_of(docker_host)
        first = opener()  # raises EngineError naming the socket and the target
        docker = import_docker()
        from docker.errors import DockerException

        # the SDK's unix:// client, whose every request is then sent through the channels
        placeholder = "unix://" + (sshengine.socket_of(docker_host) or "/var/run/docker.sock")
        try:
            client = docker.DockerClient(base_url=placeholder, timeout=timeout, max_pool_size=64,
                                         version=docker.constants.MINIMUM_DOCKER_API_VERSION)
            sshengine.mount(client.api, opener, timeout, 64, first)
            version = dict(client.api.version(api_version=False))
            client.api._version = str(version["ApiVersion"])
        except (DockerException, OSError, ValueError, KeyError) as exc:
            first.close()
            raise EngineError(
                f"engine at {sshengine.socket_of(docker_host)} is unreachable ({_short(exc)})",
                "start it (systemctl start containai-docker) or set cai.docker_host",
            ) from None
        return cls(client, docker_host, label, version)

    def close(self) -> None:
        """Close the client's connections."""
        with contextlib.suppress(Exception):
            self.client.close()

    def ping(self) -> bool:
        """True when the engine answers a ping."""
        try:
            return bool(self.client.ping())
        except Exception:
            return False

    def version(self) -> dict[str, Any]:
        """The engine's version document (the one read when connecting)."""
        if self._version is None:
            self._version = dict(self.client.version())
        return dict(self._version)

    def snapshot(self) -> list[ManagedContainer]:
        """List every container once (one request) and answer :meth:`containers` from that list from now on.

        For read-only evaluations (doctor) whose checks each ask for the containers.
        """
        self._snapshot = None
        self._snapshot = self.containers(managed_only=False)
        return list(self._snapshot)

    def containers(self, managed_only: bool = True) -> list[ManagedContainer]:
        """Containers on the engine, running and stopped (managed ones only by default)."""
        if self._snapshot is not None:
            return [c for c in self._snapshot if c.managed or not managed_only]
        filters = {"label": self.label} if managed_only else None
        try:
            found = self.client.api.containers(all=True, filters=filters)
        except Exception as exc:
            raise EngineError(f"cannot list containers on {self.docker_host} ({_short(exc)})") from None
        return sorted((container_from_summary(c, self.label) for c in found), key=lambda c: c.name)

    def managed(self) -> list[ManagedContainer]:
        """Managed containers (label ``cai.label``), running and stopped."""
        return self.containers(managed_only=True)

    def running_managed(self) -> list[ManagedContainer]:
        """Managed containers that are running."""
        return [c for c in self.managed() if c.running]

    def get(self, name: str, require_managed: bool = True) -> ManagedContainer:
        """Exact lookup by name or id; unknown and unmanaged containers are clear errors."""
        from docker.errors import NotFound

        try:
            attrs = self.client.api.inspect_container(name)
        except NotFound:
            raise NotFoundError(
                f"no container named {name!r} on {self.docker_host}",
                "list managed containers with: inv doctor",
            ) from None
        except Exception as exc:
            raise EngineError(f"cannot inspect {name!r} ({_short(exc)})") from None
        found = container_from_attrs(attrs, self.label)
        if found.name != name and not found.id.startswith(name):
            raise NotFoundError(f"no container named {name!r} on {self.docker_host}")
        if require_managed and not found.managed:
            raise OpsError(
                f"container {name!r} is not managed by ContainAI (no label {self.label})",
                "only ContainAI containers are handled; pick one listed by inv doctor",
            )
        return found

    def inspect(self, name: str) -> dict[str, Any]:
        """The raw inspect document of a container."""
        return dict(self.client.api.inspect_container(name))

    def stop_all(
        self,
        names: Sequence[str],
        timeout: int,
        on_done: Callable[[ActionResult], None] | None = None,
    ) -> list[ActionResult]:
        """Stop containers in parallel, each given ``timeout`` seconds to exit after SIGTERM."""
        return self._parallel(names, lambda n: self.client.api.stop(n, timeout=timeout), on_done)

    def start_all(
        self, names: Sequence[str], on_done: Callable[[ActionResult], None] | None = None,
        workers: int | None = None,
    ) -> list[ActionResult]:
        """Start containers, ``workers`` at a time (default :data:`START_WORKERS`), in the order given:
        one ``POST /containers/NAME/start`` each (a container that already runs answers 304, a no-op)."""
        return self._parallel(names, lambda n: self.client.api.start(n), on_done,
                              workers or START_WORKERS)

    def _parallel(
        self,
        names: Iterable[str],
        action: Callable[[str], Any],
        on_done: Callable[[ActionResult], None] | None,
        workers: int = 64,
    ) -> list[ActionResult]:
        names = list(names)
        if not names:
            return []

        def one(name: str) -> ActionResult:
            try:
                action(name)
                result = ActionResult(name, True)
            except Exception as exc:
                result = ActionResult(name, False, _short(exc))
            if on_done is not None:
                on_done(result)
            return result

        with ThreadPoolExecutor(max_workers=max(1, min(workers, 64, len(names)))) as pool:
            return list(pool.map(one, names))


def _short(exc: BaseException) -> str:
    raw = str(exc)
    for needle, meaning in (("No such file or directory", "socket not found"),
                            ("Permission denied", "permission denied on the socket"),
                            ("Connection refused", "connection refused"),
                            ("timed out", "timed out")):
        if needle in raw:
            return meaning
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


@contextlib.contextmanager
def connected(docker_host: str, label: str) -> Iterator[Engine]:
    """Context manager: a connected Engine, closed afterwards."""
    engine = Engine.connect(docker_host, label)
    try:
        yield engine
    finally:
        engine.close()
