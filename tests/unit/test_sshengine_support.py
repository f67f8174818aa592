"""The streamlocal channel needs paramiko internals; without them the callers fall back (no failure)."""

from __future__ import annotations

import socket

import pytest

from ops import sshengine

pytestmark = pytest.mark.unit


def test_this_paramiko_has_what_open_streamlocal_uses() -> None:
    import paramiko

    left, right = socket.socketpair()
    try:
        transport = paramiko.Transport(left)  # not started: only its attributes are looked at
        assert sshengine.streamlocal_supported(transport)
    finally:
        left.close()
        right.close()


def test_a_transport_without_them_is_not_used() -> None:
    class Other:
        lock = None

    assert not sshengine.streamlocal_supported(Other())
