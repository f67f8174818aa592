"""The Docker API of a remote target through the SSH connection its probes already use.

A remote target's engine socket is reached through ``direct-streamlocal@openssh.com`` channels of the
target's own SSH transport (the channel ``ssh -L local.sock:/remote.sock`` asks sshd for, with the same
sshd setting, ``AllowStreamLocalForwarding``, deciding), so one SSH connection per target carries both
the probes and every Docker API request: no second handshake, no ``ssh`` process, no local socket file.

The Docker SDK is pointed at it through a docker host URL of its own (``ssh-channel://<id><socket>``,
see :func:`register`), which :meth:`ops.engine.Engine.connect` recognises; each HTTP connection of the
SDK's pool is one channel.

paramiko opens channels of the kinds it knows (session, direct-tcpip, forwarded-tcpip, x11); the
streamlocal one differs only in its type-specific fields (RFC 4254 section 5.1 layout, fields as
OpenSSH's PROTOCOL file names them: socket path, reserved string, reserved uint32), so
:func:`open_streamlocal` builds that message and registers the channel as ``Transport.open_channel``
does.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ops.errors import EngineError

#: The docker host URL scheme of an engine socket reached through a target's SSH transport.
SCHEME = "ssh-channel://"
STREAMLOCAL = "direct-streamlocal@openssh.com"

Opener = Callable[[], Any]
_OPENERS: dict[str, Opener] = {}
_LOCK = threading.Lock()


def open_streamlocal(transport: Any, path: str, timeout: float = 15.0) -> Any:
    """A channel of ``transport`` (a connected ``paramiko.Transport``) to the unix socket ``path`` on the
    server; ``paramiko.ChannelException`` when sshd refuses it (forwarding disabled: code 1; the socket
    is missing or refuses: code 2), ``paramiko.SSHException`` when the transport is gone."""
    from paramiko.channel import Channel
    from paramiko.common import cMSG_CHANNEL_OPEN
    from paramiko.message import Message
    from paramiko.ssh_exception import SSHException

    if not transport.is_active():
        raise SSHException("SSH session not active")
    _quiet_refusals()
    with transport.lock:
        window = transport._sanitize_window_size(None)
        packet = transport._sanitize_packet_size(None)
        chanid = transport._next_channel()
        m = Message()
        m.add_byte(cMSG_CHANNEL_OPEN)
        m.add_string(STREAMLOCAL)
        m.add_int(chanid)
        m.add_int(window)
        m.add_int(packet)
        m.add_string(path)
        m.add_string("")  # reserved
        m.add_int(0)  # reserved
        chan = Channel(chanid)
        transport._channels.put(chanid, chan)
        transport.channel_events[chanid] = event = threading.Event()
        transport.channels_seen[chanid] = True
        chan._set_transport(transport)  # type: ignore[attr-defined]
        chan._set_window(window, packet)  # type: ignore[attr-defined]
    transport._send_user_message(m)
    deadline = time.monotonic() + timeout
    while not event.wait(0.1):
        if not transport.is_active():
            raise transport.get_exception() or SSHException("the SSH connection closed")
        if time.monotonic() > deadline:
            raise SSHException("timed out opening a channel to the engine socket")
    found = transport._channels.get(chanid)
    if found is not None:
        return found
    raise transport.get_exception() or SSHException("the server refused the channel")


def transport_of(ctx: Any) -> Any:
    """The connected paramiko transport behind a Context (a ``fabric.Connection``, possibly wrapped, e.g.
    by :class:`ops.facts.Batched`), opening the connection if needed; None for any other Context."""
    import sys

    if "fabric" not in sys.modules:  # no Connection can exist (and a local run never imports Fabric here)
        return None
    from fabric import Connection

    conn = ctx
    while not isinstance(conn, Connection) and hasattr(conn, "ctx"):
        conn = conn.ctx
    if not isinstance(conn, Connection):
        return None
    if not conn.is_connected:
        conn.open()
    transport = conn.client.get_transport()
    if transport is None or not transport.is_active() or not streamlocal_supported(transport):
        return None
    return transport


#: The ``paramiko.Transport`` and ``Channel`` internals :func:`open_streamlocal` uses, as
#: ``Transport.open_channel`` itself does (paramiko has no public way to open a channel of another kind).
TRANSPORT_INTERNALS = ("lock", "_sanitize_window_size", "_sanitize_packet_size", "_next_channel", "_channels",
                       "channel_events", "channels_seen", "_send_user_message")
CHANNEL_INTERNALS = ("_set_transport", "_set_window")


def streamlocal_supported(transport: Any) -> bool:
    """True when this paramiko has the internals :func:`open_streamlocal` uses; with another paramiko
    the callers fall back to what they did without it (an ``ssh -N`` forward, the docker CLI on the
    target) instead of failing."""
    from paramiko.channel import Channel

    return (all(hasattr(transport, name) for name in TRANSPORT_INTERNALS)
            and all(hasattr(Channel, name) for name in CHANNEL_INTERNALS))


@contextlib.contextmanager
def register(transport: Any, path: str, where: str) -> Iterator[str]:
    """A docker host URL (``ssh-channel://<id><path>``) whose connections are channels of ``transport``
    to ``path``; valid until the block ends. ``where`` names the target in error messages."""
    url = f"{SCHEME}{os.urandom(6).hex()}{path}"

    def opener() -> Any:
        from paramiko.ssh_exception import ChannelException, SSHException

        try:
            return open_streamlocal(transport, path)
        except ChannelException as exc:
            # OpenSSH's sshd answers "connect failed" (2) both when the socket does not answer and when
            # its config forbids the forward; other servers may say "administratively prohibited" (1)
            why = ("the SSH server does not allow forwarding to unix sockets" if exc.code == 1
                   else "socket not found, engine stopped, or socket forwarding disabled in sshd" if exc.code == 2
                   else exc.text)
            raise ChannelOpenError(f"engine socket {path} of {where} is unreachable ({why})",
                                   _hint(exc.code, where)) from None
        except SSHException as exc:
            raise ChannelOpenError(f"engine socket {path} of {where} is unreachable ({exc})",
                                   "check the SSH access to the target") from None

    with _LOCK:
        _OPENERS[url] = opener
    try:
        yield url
    finally:
        with _LOCK:
            _OPENERS.pop(url, None)


def _refusal(record: Any) -> bool:
    """A logging filter: False for paramiko's own line about a refused channel (the error we raise for
    it says what failed and what to do; paramiko's line would reach stderr as a second, rawer message)."""
    return "open FAILED" not in str(record.msg)


def _quiet_refusals() -> None:
    import logging

    log = logging.getLogger("paramiko.transport")
    if _refusal not in log.filters:
        log.addFilter(_refusal)


def _hint(code: int, where: str) -> str:
    allow = "AllowStreamLocalForwarding yes and no DisableForwarding in its sshd_config"
    if code == 1:
        return f"allow it on {where}: {allow}"
    return f"start the engine on {where} (systemctl start containai-docker), set cai.docker_host, or check {allow}"


class ChannelOpenError(EngineError, OSError):
    """A channel to the engine socket could not be opened (an OSError too, so HTTP clients treat it as a
    connection failure)."""

    def __init__(self, message: str, hint: str = "") -> None:
        EngineError.__init__(self, message, hint)


def opener_of(url: str) -> Opener:
    """The channel opener of an ``ssh-channel://`` docker host URL from :func:`register`."""
    with _LOCK:
        found = _OPENERS.get(url)
    if found is None:
        raise EngineError(f"the docker host {url} is no longer open", "report this: the engine was used too late")
    return found


def socket_of(url: str) -> str:
    """The remote socket path of an ``ssh-channel://`` URL."""
    rest = url[len(SCHEME):]
    return rest[rest.index("/"):] if "/" in rest else ""


def mount(api: Any, opener: Opener, timeout: int, max_pool_size: int = 10, first: Any = None) -> None:
    """Make a docker ``APIClient`` send every request over channels from ``opener`` (``first``: an open
    channel used by the first connection)."""
    adapter = _adapter_class()(opener, timeout, max_pool_size, first)
    api.mount("http+docker://", adapter)
    api._custom_adapter = adapter


_ADAPTER: Any = None


def _adapter_class() -> Any:
    """The requests adapter class (built on first use: it subclasses the Docker SDK's SSH pool, whose
    pool avoids ``fileno()`` on channels, and so needs docker's modules)."""
    global _ADAPTER
    if _ADAPTER is not None:
        return _ADAPTER
    from docker.transport.basehttpadapter import BaseHTTPAdapter
    from docker.transport.sshconn import SSHConnection, SSHConnectionPool

    class ChannelConnection(SSHConnection):
        def __init__(self, opener: Opener, timeout: int, first: list[Any]) -> None:
            super().__init__(None, timeout, None)
            self._opener = opener
            self._first = first

        def connect(self) -> None:
            sock = self._first.pop() if self._first else self._opener()
            sock.settimeout(self.timeout)
            self.sock = sock

    class ChannelPool(SSHConnectionPool):
        def __init__(self, opener: Opener, timeout: int, maxsize: int, first: list[Any]) -> None:
            super().__init__(None, timeout, maxsize, None)
            self._opener = opener
            self._first = first

        def _new_conn(self) -> Any:
            return ChannelConnection(self._opener, self.timeout, self._first)

    class ChannelAdapter(BaseHTTPAdapter):
        def __init__(self, opener: Opener, timeout: int, max_pool_size: int, first: Any) -> None:
            self.opener = opener
            self.timeout = timeout
            self.max_pool_size = max_pool_size
            self.first: list[Any] = [first] if first is not None else []
            self.pool: Any = None
            self.pools: dict[str, Any] = {}
            super().__init__()

        def get_connection(self, url: Any, proxies: Any = None) -> Any:
            if self.pool is None:
                self.pool = ChannelPool(self.opener, self.timeout, self.max_pool_size, self.first)
            return self.pool

        def close(self) -> None:
            super().close()
            if self.pool is not None:
                self.pool.close()
                self.pool = None
            for chan in self.first:
                chan.close()
            self.first.clear()

    _ADAPTER = ChannelAdapter
    return _ADAPTER


# --- the engines' part of the layout probe, through the Docker API ----------------------------------

def api_get(transport: Any, socket: str, path: str, timeout: float = 15.0) -> Any:
    """The JSON answer of ``GET path`` on the engine socket ``socket``, through one channel of
    ``transport`` (``http.client`` over the channel); OSError/ValueError/SSHException when it fails."""
    import http.client
    import json

    chan = open_streamlocal(transport, socket, timeout)
    try:
        chan.settimeout(timeout)
        conn = http.client.HTTPConnection("docker", timeout=timeout)
        conn.sock = chan
        conn.request("GET", path)
        reply = conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise OSError(f"GET {path} answered {reply.status}")
        return json.loads(body)
    finally:
        chan.close()


def engine_probe_lines(transport: Any, label: str) -> str:
    """The layout probe's engine lines (:func:`ops.layout.engine_lines`), asked through the Docker API
    of each engine socket at the same time: ``GET /info`` (what the probe's ``docker info`` reads), and
    on the VM's socket the managed containers (``GET /containers/json`` with the label filter, what its
    ``docker ps -aq --filter`` counts). A socket that is missing or does not answer has no lines, as in
    the probe."""
    import json
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import quote

    from ops.layout import ENGINE_SOCKETS, VM_SOCKET, engine_lines

    listing = "/containers/json?all=1&filters=" + quote(json.dumps({"label": [label]}))

    def one(socket: str) -> str:
        try:
            info = api_get(transport, socket, "/info")
        except Exception:  # noqa: BLE001 - not answering is a fact here, as the probe's docker call failing
            return ""
        managed: int | None = None
        if socket == VM_SOCKET:
            with contextlib.suppress(Exception):
                managed = len(api_get(transport, socket, listing))
        return engine_lines(socket, info if isinstance(info, dict) else {}, managed)

    with ThreadPoolExecutor(len(ENGINE_SOCKETS)) as pool:
        return "".join(pool.map(one, ENGINE_SOCKETS))


def layout_alongside(label: str) -> dict[str, Any]:
    """For :func:`ops.facts.batched`: over SSH, the layout probe runs on the target without its docker
    calls, while this process asks the engines through the Docker API on the same connection
    (:func:`engine_probe_lines`): no docker CLI process on the target, and the two at the same time.
    A local Context runs the whole probe as it is."""
    from ops.layout import probe_command

    def start(ctx: Any) -> Callable[[], str] | None:
        try:
            transport = transport_of(ctx)
        except Exception:  # noqa: BLE001 - the batch's own run tells why the target is unreachable
            return None
        if transport is None:
            return None
        answer: list[str] = []
        thread = threading.Thread(target=lambda: answer.append(engine_probe_lines(transport, label)),
                                  daemon=True)
        thread.start()

        def join() -> str:
            thread.join()
            return answer[0] if answer else ""

        return join

    return {probe_command(label): (probe_command(label, engines=False), start)}
