"""The fleet primitive: per-target results, the exit code, and each target's lines told apart."""

from __future__ import annotations

import threading

import pytest

from ops.errors import OpsError
from ops.fleet import TargetOutput, TargetResult, fleet_exit_code, run_fleet

pytestmark = pytest.mark.unit


def test_each_target_gets_its_own_result_and_one_bad_host_does_not_stop_the_others() -> None:
    def op(target: str) -> TargetResult:
        if target == "b":
            raise OpsError("cannot reach b", "check the host")
        if target == "c":
            raise RuntimeError("boom")
        return TargetResult(target, 0, "done")

    results = run_fleet(["a", "b", "c", "d"], op, parallel=4)
    assert [(r.target, r.exit_code, r.ok) for r in results] == [("a", 0, True), ("b", 1, False), ("c", 1, False),
                                                                ("d", 0, True)]
    assert results[2].summary == "unexpected RuntimeError: boom"
    assert fleet_exit_code(results) == 1


def test_serial_stops_at_the_first_failure_and_skips_the_rest() -> None:
    seen: list[str] = []

    def op(target: str) -> TargetResult:
        seen.append(target)
        return TargetResult(target, 2 if target == "b" else 0, "")

    results = run_fleet(["a", "b", "c"], op, serial=True)
    assert seen == ["a", "b"]
    assert [r.skipped for r in results] == [False, False, True]
    assert fleet_exit_code(results) == 2  # the only failure is a refusal (the skipped target is not a success)


def test_refusals_only_give_exit_2() -> None:
    assert fleet_exit_code([TargetResult("a", 2), TargetResult("b", 0)]) == 2


def test_a_targets_lines_are_prefixed_progress_to_its_stream_warnings_to_stderr(
        capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    lock = threading.Lock()
    out = TargetOutput("lima:vm", lock, sys.stderr)  # as with --json: stdout keeps the document
    other = TargetOutput("ssh://me@h:22", lock, sys.stdout)
    out.emit("volume v: scanned 3")
    other.emit("up to date")
    out.warn("warning: volume v: x: Permission denied")
    captured = capsys.readouterr()
    assert captured.out == "[ssh://me@h:22] up to date\n"
    assert captured.err == ("[lima:vm] volume v: scanned 3\n"
                            "[lima:vm] warning: volume v: x: Permission denied\n")
