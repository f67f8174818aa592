"""doctor findings of the units module, against a mocked Context (no host touched)."""

from __future__ import annotations

import base64
import re

import pytest
from invoke import MockContext, Result

from ops import units
from ops.config import CaiConfig

pytestmark = pytest.mark.unit
CONF = CaiConfig.from_mapping({})


def dump(contents: dict[str, str | None]) -> str:
    out = []
    for path, text in contents.items():
        body = "missing" if text is None else "file 644 " + base64.b64encode(text.encode()).decode()
        out.append(f"\n@@CAI-FILE {path}\n{body}")
    return "".join(out) + "\n"


def ctx(pid1: str, files: dict[str, str | None], active: str, guard: str = "loaded active exited") -> MockContext:
    load, state, sub = guard.split()
    return MockContext(run={
        re.compile(r"^\{ read -r p < /proc/1/comm"): Result(stdout=pid1 + "\n"),
        re.compile(r"^for f in "): Result(stdout=dump(files)),
        re.compile(r"^systemctl is-active"): Result(stdout=active + "\n", exited=0 if active == "active" else 3),
        re.compile(r"^systemctl show -p LoadState -p ActiveState -p SubState containai-docker-guard.service"):
            Result(stdout=f"LoadState={load}\nActiveState={state}\nSubState={sub}\n"),
    })


def current_files() -> dict[str, str | None]:
    return {f.path: f.text for f in units.render(CONF)}


def test_clean_host_has_no_findings() -> None:
    assert units.doctor_findings(ctx("systemd", current_files(), "active"), CONF, "local", "linux") == []


def test_drift_and_inactive_engine() -> None:
    files = current_files()
    engine = "/etc/systemd/system/containai-docker.service"
    files[engine] = "[Service]\nExecStopPre=/bin/true\n"
    files["/etc/systemd/system/containai-docker-guard.service"] = None
    found = units.doctor_findings(ctx("systemd", files, "failed"), CONF, "lima:vm", "macos")
    codes = [(f.code, f.severity) for f in found]
    assert codes.count(("units.drift", "warning")) == 2
    assert ("engine.unit-inactive", "error") in codes
    drift = next(f for f in found if f.data.get("path") == engine)
    assert "-ExecStopPre=/bin/true" in drift.data["diff"] and drift.target == "lima:vm"
    assert "inv update" in drift.hint
    inactive = next(f for f in found if f.code == "engine.unit-inactive")
    assert "is failed" in inactive.message and "systemctl start containai-docker.service" in inactive.hint


def test_no_systemd_no_unit_findings() -> None:
    assert units.doctor_findings(ctx("init", {}, "unknown"), CONF, "local", "wsl2") == []


@pytest.mark.parametrize(("engine", "guard", "reported"), [
    ("active", "loaded inactive dead", True),
    ("active", "loaded failed failed", True),
    ("active", "loaded active exited", False),
    ("active", "loaded activating start", False),
    ("active", "not-found inactive dead", False),  # not installed: units.drift says so
    ("inactive", "loaded inactive dead", False),  # went down with the engine (engine.unit-inactive)
    ("inactive", "loaded failed failed", True),
])
def test_guard_inactive_or_failed_is_an_error(engine: str, guard: str, reported: bool) -> None:
    found = units.doctor_findings(ctx("systemd", current_files(), engine, guard), CONF, "local", "linux")
    hooks = [f for f in found if f.code == "guard.unit-inactive"]
    assert bool(hooks) == reported
    if hooks:
        [hook] = hooks
        state = guard.split()[1]
        assert hook.severity == "error" and hook.message.startswith(f"containai-docker-guard.service is {state}")
        assert "systemctl start containai-docker-guard" in hook.hint and hook.data["state"] == state


@pytest.mark.parametrize(("engine", "guard", "reported"), [
    ("active", "loaded failed failed", True),
    ("active", "loaded active exited", False),
    ("inactive", "loaded failed failed", True),
])
def test_unit_states_come_from_the_layout_probe(engine: str, guard: str, reported: bool) -> None:
    """Given the states the layout probe's one systemctl show read, the checks ask systemctl nothing more
    (the context answers no systemctl call) and find the same."""
    from ops.layout import parse_probe

    load, state, sub = guard.split()
    probe = (f"load:containai-docker.service=loaded\nactive:containai-docker.service={engine}\n"
             f"sub:containai-docker.service={'running' if engine == 'active' else 'dead'}\n"
             f"load:containai-docker-guard.service={load}\nactive:containai-docker-guard.service={state}\n"
             f"sub:containai-docker-guard.service={sub}\n")
    states = parse_probe(probe).units
    assert states["containai-docker-guard.service"].sub == sub
    quiet = MockContext(run={
        re.compile(r"^\{ read -r p < /proc/1/comm"): Result(stdout="systemd\n"),
        re.compile(r"^for f in "): Result(stdout=dump(current_files())),
    })
    found = units.doctor_findings(quiet, CONF, "local", "linux", None, states)
    assert bool([f for f in found if f.code == "guard.unit-inactive"]) == reported
    assert bool([f for f in found if f.code == "engine.unit-inactive"]) == (engine != "active")
