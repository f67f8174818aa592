"""A batched probe answered partly in this process (``alongside``): the target runs the lighter command,
and the answer of the original command is its output followed by what the process read meanwhile."""

from __future__ import annotations

from typing import Any

from ops.facts import OnlyIf, batched
from ops.targets import LocalContext, run


def test_the_lighter_command_runs_and_the_rest_is_added() -> None:
    full, light = "echo full-part; echo engine-part", "echo full-part"
    started: list[Any] = []

    def start(ctx: Any) -> Any:
        started.append(ctx)
        return lambda: "engine=api\n"

    ctx = batched(LocalContext(), [full, "echo other"], alongside={full: (light, start)})
    code, out, _err = run(ctx, full)
    assert (code, out) == (0, "full-part\nengine=api\n")
    assert run(ctx, "echo other")[1] == "other\n"
    assert len(started) == 1  # one round trip for both


def test_a_start_that_declines_runs_the_whole_command() -> None:
    full = "echo a; echo b"
    ctx = batched(LocalContext(), [full], alongside={full: ("echo a", lambda ctx: None)})
    assert run(ctx, full)[1] == "a\nb\n"


def test_the_condition_of_the_original_command_is_kept() -> None:
    full = OnlyIf("echo whole", "false")
    ctx = batched(LocalContext(), [full], alongside={full: ("echo light", lambda ctx: (lambda: "x\n"))})
    # skipped by its condition: no batched answer, so the command runs on its own (the whole of it)
    assert run(ctx, full)[1].strip() == "whole"
