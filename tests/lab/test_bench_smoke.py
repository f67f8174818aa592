"""Every bench script runs from the checkout in a small size: ``bench/compare --small`` (what CI runs)
exits 0 and its table has a line from each bench. Behaviour only: no figure is judged here."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from _cli import REPO, clean_env

pytestmark = pytest.mark.lab

BENCHES = ("cli_latency", "repair_throughput", "update_downtime", "update_noop", "fleet_doctor")


def test_compare_small_runs_every_bench(lab_engine: str, lab_image: str, tiny_image: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "compare"), "--small"], cwd=REPO,
                            env=clean_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=3600)
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-2000:]
    assert "ModuleNotFoundError" not in out and "Traceback" not in out, out[-4000:]
    _, _, table = out.partition("\nratios and figures")
    assert table, out[-2000:]
    for bench in BENCHES:
        assert re.search(rf"^{bench}\s+\S.*\s\d+(?:\.\d+)?(?:x| s| ms)\b", table, re.MULTILINE), (bench, table)
    assert "FAILED" not in table, table
