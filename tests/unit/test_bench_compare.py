"""bench/compare's reading of the bench scripts' output: the ratio and figure lines, the goals, the table."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "compare"


def load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("bench_compare", str(SCRIPT))
    spec = importlib.util.spec_from_loader("bench_compare", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_compare"] = module
    loader.exec_module(module)
    return module


def test_reads_every_form_the_benches_print() -> None:
    m = load()
    out = "\n".join([
        "tree: 2000 files in 20 dirs",
        "cai repair walk (2 threads): 0.22s (9,090 entries/s)",
        "ratio find -xdev ! -type l -uid 65534 -exec chown -h {} + / cai repair walk (2 threads): 1.42x",
        "ratio chown -hR (every entry) / cai repair walk (2 threads): 0.66x",
        "  docker stop -t 100 (all at once):   2.30 s",
        "figure inv doctor --json (20 containers) = 0.812 s",
        "figure inv --list - import invoke = 41 ms",
        "ratio stop_all / docker stop (20 containers) = 1.02",
    ])
    rows = m.ratios("x", out)
    assert [(r.what, r.value, r.unit) for r in rows] == [
        ("find -xdev ! -type l -uid 65534 -exec chown -h {} + / cai repair walk (2 threads)", 1.42, "x"),
        ("chown -hR (every entry) / cai repair walk (2 threads)", 0.66, "x"),
        ("inv doctor --json (20 containers)", 0.812, "s"),
        ("inv --list - import invoke", 41.0, "ms"),
        ("stop_all / docker stop (20 containers)", 1.02, "x"),
    ]


def test_table_judges_the_goals_and_names_failed_benches() -> None:
    m = load()
    rows = [*m.ratios("repair_throughput", "ratio find -xdev / cai repair walk (4 workers): 1.42x\n"
                                           "ratio chown -hR (every entry) / cai repair walk (4 workers): 0.70x"),
            *m.ratios("cli_latency", "figure inv doctor --json (20 containers) = 0.812 s\n"
                                     "ratio inv doctor --json (20 containers) / import invoke = 3.10")]
    text = m.table(rows, {"fleet_doctor": "exit 1"})
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["bench", "ratio"]
    assert any("find -xdev" in line and "1.42x" in line and line.rstrip().endswith("yes") for line in lines)
    assert any("chown -hR" in line and "0.70x" in line and line.rstrip().endswith("NO") for line in lines)
    assert any("inv doctor --json" in line and "0.81 s" in line and line.rstrip().endswith("yes") for line in lines)
    assert any("inv doctor --json" in line and "3.10x" in line and line.rstrip().endswith("3.10x")
               for line in lines)  # a goal in seconds is not a goal on the ratio
    assert any(line.startswith("fleet_doctor") and "FAILED (exit 1)" in line for line in lines)


def test_unknown_bench_is_one_line_and_exit_2() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--only", "nope"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "unknown bench nope" in result.stderr


def test_the_bash_doctor_ratio_has_its_goal() -> None:
    """doctor with no engine is no slower than the bash doctor on the same host (a ratio, not seconds)."""
    m = load()
    rows = m.ratios("cli_latency", "figure bash cai doctor (no engine) = 0.320 s\n"
                                   "ratio inv doctor (no engine) / bash cai doctor = 0.91\n"
                                   "ratio inv doctor (no engine) / import invoke = 1.60")
    judged = {r.what: m.goal_of(r) for r in rows}
    assert judged["bash cai doctor (no engine)"] is None
    assert judged["inv doctor (no engine) / import invoke"] is None
    goal = judged["inv doctor (no engine) / bash cai doctor"]
    assert goal is not None and goal.check(0.91) and not goal.check(1.2)
