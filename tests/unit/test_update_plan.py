"""The pure update planner, the journal format and the checksum parser."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ops import layout as lay
from ops import units
from ops.config import CaiConfig
from ops.engine import ManagedContainer
from ops.errors import OpsError
from ops.layout import Layout
from ops.update import apply
from ops.update import journal as jr
from ops.update import plan as pl
from ops.update.apply import parse_sha256_file, verify_converged
from ops.update.facts import HostState, UpdateFacts, parse_host_state
from ops.versions import Observed, State, parse_version

pytestmark = pytest.mark.unit

CONF = CaiConfig.from_mapping({})
RENDERED = tuple(units.render(CONF))
ENGINE = "/etc/systemd/system/containai-docker.service"
GUARD = "/etc/systemd/system/containai-docker-guard.service"
SCRIPT = "/opt/containai/libexec/containai-guard"


def running(*names: str) -> tuple[ManagedContainer, ...]:
    return tuple(ManagedContainer(id=n * 3, name=n, image="img", state="running") for n in names)


def drift_of(*paths: str) -> tuple[units.Drift, ...]:
    installed: dict[str, str | None] = {f.path: f.text for f in RENDERED}
    for p in paths:
        installed[p] = "old\n"
    return tuple(units.detect_drift(list(RENDERED), installed))


def facts(sysbox: str | None = "0.6.7+containai.20260101", bundled_sysbox: str = "0.6.7+containai.20260101",
          dockerd: str | None = "27.3.1", bundled_dockerd: str = "27.3.1", drift: tuple[str, ...] = (),
          run: tuple[str, ...] = ("a", "b"), systemd: bool = True, platform: str = "linux",
          engine_state: str = "active") -> UpdateFacts:
    def obs(v: str | None) -> Observed:
        return Observed(State.NOT_INSTALLED) if v is None else Observed(State.INSTALLED, parse_version(v))

    return UpdateFacts(
        target="local", platform=platform, arch="amd64",
        host=HostState(systemd=systemd, engine_state=engine_state, engine_loaded=True, socket=True),
        sysbox_installed=obs(sysbox), sysbox_bundled=parse_version(bundled_sysbox),
        sysbox_deb="/b/sysbox-ce_x_amd64.deb",
        dockerd_installed=obs(dockerd), dockerd_bundled=parse_version(bundled_dockerd),
        dockerd_tarball=f"/b/docker-{bundled_dockerd}.tgz",
        rendered=RENDERED, drift=drift_of(*drift), running=running(*run),
    )


def test_nothing_to_do_is_empty_and_stops_nothing() -> None:
    p = pl.plan(facts())
    assert p.nothing_to_do and p.steps == () and p.stop == ()


def test_sysbox_upgrade_full_order_with_reasons() -> None:
    p = pl.plan(facts(sysbox="0.6.6+containai.20250101"))
    assert p.actions() == [pl.STOP, pl.SYSBOX, pl.RESTART_SYSBOX, pl.RESTART_ENGINE, pl.START]
    assert [c.name for c in p.stop] == ["a", "b"]
    assert all(s.reason for s in p.steps)
    assert "0.6.6+containai.20250101 -> 0.6.7+containai.20260101" in p.steps[1].reason
    assert "id-mapped" in p.steps[0].reason


def test_all_three_in_order() -> None:
    p = pl.plan(facts(sysbox="0.6.6", dockerd="26.1.0", drift=(ENGINE,)))
    assert p.actions() == [pl.STOP, pl.DOCKERD, pl.SYSBOX, pl.UNITS, pl.RELOAD, pl.RESTART_SYSBOX,
                           pl.RESTART_ENGINE, pl.START]
    assert p.steps[1].data["version"] == "27.3.1"


def test_dockerd_not_installed_is_installed() -> None:
    p = pl.plan(facts(dockerd=None, run=()))
    assert p.actions() == [pl.DOCKERD, pl.RESTART_ENGINE]
    assert p.stop == ()


def test_guard_or_script_drift_alone_stops_nothing() -> None:
    p = pl.plan(facts(drift=(GUARD, SCRIPT)))
    assert p.actions() == [pl.UNITS, pl.RELOAD, pl.START_GUARD]
    assert not p.needs_stop


def test_engine_unit_or_daemon_json_drift_restarts() -> None:
    for path in (ENGINE, units.DAEMON_JSON):
        p = pl.plan(facts(drift=(path,)))
        assert p.actions() == [pl.STOP, pl.UNITS, pl.RELOAD, pl.RESTART_ENGINE, pl.START], path


def test_never_downgrades() -> None:
    p = pl.plan(facts(sysbox="0.6.8", dockerd="28.0.0"))
    assert p.nothing_to_do
    assert any("not downgrading" in n for n in p.notes)


def test_containai_rebuild_ordering_by_date() -> None:
    older_rebuild = pl.plan(facts(sysbox="0.6.7+containai.20260201"))
    assert older_rebuild.nothing_to_do  # the bundled 20260101 rebuild is older: keep
    upstream = pl.plan(facts(sysbox="0.6.7"))
    assert pl.SYSBOX in upstream.actions()  # a ContainAI build beats upstream at equal numbers


def test_cannot_tell_blocks() -> None:
    f = replace(facts(), sysbox_installed=Observed(State.UNKNOWN, reason="no version line"))
    p = pl.plan(f)
    assert p.steps == () and p.blockers and "cannot tell" in p.blockers[0][0]


def test_no_systemd_blocks_with_platform_hint() -> None:
    p = pl.plan(facts(systemd=False, platform="wsl2", sysbox="0.6.6"))
    assert p.steps == ()
    assert "wsl.conf" in p.blockers[0][1] and "systemd=true" in p.blockers[0][1]
    p = pl.plan(facts(systemd=False, platform="linux"))
    assert "wsl" not in p.blockers[0][1]


def test_no_running_containers_no_stop_step() -> None:
    p = pl.plan(facts(sysbox="0.6.6", run=()))
    assert pl.STOP not in p.actions() and pl.START not in p.actions()


def test_dry_run_lines_say_would() -> None:
    lines = pl.step_lines(pl.plan(facts(sysbox="0.6.6")), dry_run=True)
    steps = [line for line in lines if line.strip()[:2].rstrip(".").isdigit()]
    assert steps and all("would " in line for line in steps)


def test_verify_converged() -> None:
    before = pl.plan(facts(sysbox="0.6.6"))
    assert verify_converged(before, facts(), ["a", "b"]) == []
    assert verify_converged(before, facts(run=("a",)), ["a", "b"]) == ["not running again: b"]
    left = verify_converged(before, facts(sysbox="0.6.6"), ["a", "b"])
    assert left and "still needed" in left[0]
    assert "is failed" in verify_converged(before, facts(engine_state="failed"), [])[0]


def test_host_state_parser() -> None:
    s = parse_host_state("pid1=systemd\nengine_state=active\nengine_load=loaded\nsocket=yes\n")
    assert s == HostState(True, "active", True, True)
    s = parse_host_state("pid1=init\nengine_state=\nengine_load=not-found\nsocket=no\n")
    assert s == HostState(False, "unknown", False, False)


def test_journal_round_trip_and_damage() -> None:
    j = jr.Journal("lima:x", ("a", "b"), (pl.STOP, pl.SYSBOX)).with_done(pl.STOP)
    back = jr.loads(jr.dumps(j))
    assert back.containers == ("a", "b") and back.done == (pl.STOP,)
    with pytest.raises(OpsError, match="damaged"):
        jr.loads("{}")
    with pytest.raises(OpsError, match="damaged"):
        jr.loads('{"schema": 1, "containers": [1]}')
    assert jr.path(CaiConfig.from_mapping({"state_dir": "/s/"})) == "/s/update-journal.json"


def test_sha256_file_parser() -> None:
    digest = "a" * 64
    assert parse_sha256_file(f"{digest}  docker-27.3.1.tgz\n", "docker-27.3.1.tgz") == digest
    assert parse_sha256_file(f"{digest} *dir/docker-27.3.1.tgz\n", "docker-27.3.1.tgz") == digest
    assert parse_sha256_file(f"{'B' * 64}\n", "x") == "b" * 64
    two = f"{'1' * 64}  a.deb\n{'2' * 64}  b.deb\n"
    assert parse_sha256_file(two, "b.deb") == "2" * 64
    with pytest.raises(OpsError):
        parse_sha256_file(two, "c.deb")
    with pytest.raises(OpsError):
        parse_sha256_file("garbage\n", "c.deb")


APT_UNMET = """Reading package lists...
Building dependency tree...
Some packages could not be installed. This may mean that you have
requested an impossible situation or if you are using the unstable
distribution that some required packages have not yet been created
or been moved out of Incoming.
The following information may help to resolve the situation:

The following packages have unmet dependencies:
 sysbox-ce : Depends: fuse3 but it is not installable
             Depends: containai-no-such-package but it is not installable
"""


def test_apt_reason_names_the_first_unmet_dependency() -> None:
    err = "E: Unable to correct problems, you have held broken packages.\n"
    assert apply.apt_reason(100, APT_UNMET, err) == "sysbox-ce : Depends: fuse3 but it is not installable"


def test_apt_reason_falls_back_to_the_last_error_line() -> None:
    assert apply.apt_reason(100, "Reading package lists...\n", "W: a\nE: Could not open lock file\n") == \
        "E: Could not open lock file"
    assert apply.apt_reason(100, "", "") == "exit 100"


# --- the lima-vm layout: Sysbox and the stop hook only ---------------------------------------------------

def vm_layout() -> Layout:
    from pathlib import Path

    text = (Path(__file__).parent / "golden" / "layout" / "lima-vm.txt").read_text()
    return lay.decide(lay.parse_probe(text), "lima:vm")


def test_lima_vm_renders_only_the_stop_hook_on_the_vms_docker_service() -> None:
    vm = vm_layout()
    files = {f.name: f for f in units.render(CONF, None, layout=vm)}
    assert sorted(files) == ["containai-docker-guard.service", "containai-guard"]
    assert [f.path for f in units.render(CONF, layout=vm)] == units.managed_paths(CONF, vm)
    assert not any(p.startswith("/opt/containai") for p in units.managed_paths(CONF, vm))
    unit = files["containai-docker-guard.service"].text
    lines = unit.splitlines()
    want = "docker.service sysbox.service sysbox-mgr.service sysbox-fs.service"
    assert f"PartOf={want}" in lines and f"After={want}" in lines
    assert "ExecStop=/usr/local/libexec/containai-guard stop" in lines
    assert unit.endswith("\n[Install]\nWantedBy=docker.service\n") and "containai-docker.service" not in unit
    script = files["containai-guard"].text
    assert "DOCKER_HOST='unix:///var/run/docker.sock'" in script and "docker='/usr/bin/docker'" in script
    assert "/opt/containai" not in script and "@" not in script.replace("$@", "")


def vm_facts(sysbox: str = "0.6.6+containai.20250101", drift: tuple[str, ...] = (),
             run: tuple[str, ...] = ("a",)) -> UpdateFacts:
    vm = vm_layout()
    rendered = tuple(units.render(CONF, layout=vm))
    installed: dict[str, str | None] = {f.path: f.text for f in rendered}
    for p in drift:
        installed[p] = None
    return replace(facts(sysbox=sysbox, run=run), layout="lima-vm", engine_unit="docker.service",
                   dockerd_installed=Observed(State.NOT_INSTALLED), dockerd_bundled=None, dockerd_tarball=None,
                   rendered=rendered, drift=tuple(units.detect_drift(list(rendered), installed)))


def test_lima_vm_sysbox_upgrade_restarts_sysbox_then_docker_service_never_installs_dockerd() -> None:
    p = pl.plan(vm_facts(drift=("/etc/systemd/system/containai-docker-guard.service",)))
    assert p.actions() == [pl.STOP, pl.SYSBOX, pl.UNITS, pl.RELOAD, pl.RESTART_SYSBOX, pl.RESTART_ENGINE, pl.START]
    assert [c.name for c in p.stop] == ["a"]
    assert p.steps[5].summary == "restart docker.service and wait for a ping"
    assert "SIGHUP" in p.steps[5].reason
    assert any("no dockerd bundle or containai-docker" in n for n in p.notes)
    assert not any("containai-docker.service" in s.summary for s in p.steps)


def test_lima_vm_current_sysbox_with_a_new_stop_hook_stops_nothing() -> None:
    p = pl.plan(vm_facts(sysbox="0.6.7+containai.20260101", drift=("/usr/local/libexec/containai-guard",)))
    assert p.actions() == [pl.UNITS, pl.RELOAD, pl.START_GUARD] and p.stop == ()
    assert pl.plan(vm_facts(sysbox="0.6.7+containai.20260101")).nothing_to_do
