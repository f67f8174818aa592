"""Stopping a repair: what SIGINT and SIGTERM do while ``inv repair`` runs (this process's side)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from ops.repair import remote

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def fresh_stop() -> Iterator[None]:
    remote.STOP.clear()
    yield
    remote.STOP.clear()


def test_without_a_remote_walk_a_signal_unwinds_at_once() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        with pytest.raises(remote.Interrupted) as caught, remote.interruptible():
            os.kill(os.getpid(), sig)
            for _ in range(1000):  # the handler runs between two bytecodes of this thread
                pass
        assert caught.value.signum == sig and isinstance(caught.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_with_a_remote_walk_the_first_signal_asks_and_closes_its_stdin() -> None:
    stream = remote.OpenUntilStop()
    with remote.interruptible(), remote.STOP.walking(object()):
        assert stream.read(1) is None  # Invoke polls: nothing yet, the command's stdin stays open
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
        assert remote.STOP.requested and remote.STOP.signum == signal.SIGTERM
        assert stream.read(1) == ""  # end of file: Invoke closes the command's stdin
        with pytest.raises(remote.Interrupted):  # asked again: stop waiting
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass


def test_the_line_and_exit_code_of_an_interrupted_repair() -> None:
    error = remote.interrupted("ssh://root@h:22", signal.SIGINT)
    assert error.exit_code == 130
    assert error.line() == ("the repair was interrupted on ssh://root@h:22 (the walk there stops with it; the "
                            "entries it reached are repaired, the others may still show 65534): run the same "
                            "repair again to finish it")
    assert remote.interrupted("lima:vm", signal.SIGTERM).exit_code == 143


def test_a_walk_whose_target_does_not_answer_has_its_connection_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the grace period the walk's Context is closed (Invoke's readers then end)."""
    import threading

    closed = threading.Event()

    class Ctx:
        def close(self) -> None:
            closed.set()

    monkeypatch.setattr(remote, "GRACE", 0.01)
    with remote.STOP.walking(Ctx()):
        assert remote.STOP.ask(signal.SIGINT)
        assert closed.wait(10)
    assert not remote.STOP.ask(signal.SIGINT)  # no walk in flight: the caller unwinds at once
