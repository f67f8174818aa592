"""The TCP connection of a direct SSH target: small packets are sent at once (TCP_NODELAY) and reads are
acknowledged at once (TCP_QUICKACK where Linux has it); a host that does not answer is the OSError of
the last address tried."""

from __future__ import annotations

import socket

import pytest

from ops.targets import quick_socket


def test_the_connection_sends_small_packets_at_once() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        sock = quick_socket("127.0.0.1", port, 5)
        try:
            peer, _ = server.accept()
            with peer:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                peer.sendall(b"SSH-2.0-test\r\n")
                assert sock.recv(64) == b"SSH-2.0-test\r\n"
        finally:
            sock.close()


def test_a_port_nobody_listens_on_is_an_oserror() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    with pytest.raises(OSError):
        quick_socket("127.0.0.1", port, 5)
