"""A dry run lists the same damaged entries in the same order whichever walk worker finished first."""

from __future__ import annotations

import pytest

from ops.repair.walk import Example, WalkStats, _merge

pytestmark = pytest.mark.unit


def stats(*paths: bytes) -> WalkStats:
    return WalkStats(scanned=len(paths), damaged=len(paths),
                     examples=[Example(p, "file", 65534, 65534) for p in paths])


@pytest.mark.parametrize("max_examples", [5, 3])
def test_merged_examples_do_not_depend_on_which_worker_finished_first(max_examples: int) -> None:
    a, b = stats(b"top", b"z/1"), stats(b"d", b"d/f1", b"d/f2")
    merged = []
    for parts in ((a, b), (b, a)):
        total = WalkStats()
        for part in parts:
            _merge(total, {}, part, {}, max_examples)
        merged.append([e.path for e in total.examples])
    assert merged[0] == merged[1] == sorted([b"top", b"z/1", b"d", b"d/f1", b"d/f2"])[:max_examples]
