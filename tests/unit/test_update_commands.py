"""Update steps are commands: every command a full update runs, per host layout, against a golden file;
the dry run's listing is exactly what a run executes; the safety order of a run is a pure value.

The golden files ``tests/unit/golden/update-commands/<layout>.txt`` hold every command an update runs from
a fixed set of facts (a full upgrade: a new dockerd bundle where the layout has one, a new Sysbox, drifted
files, running containers). A step whose commands change without its golden file fails here; regenerate
the files with ``CAI_REGEN_GOLDEN=1`` (see docs/development.md) and review the diff.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from ops import layout as lay
from ops import units
from ops.config import CaiConfig
from ops.engine import ManagedContainer
from ops.errors import OpsError
from ops.targets import LocalContext
from ops.update import journal as jr
from ops.update import plan as pl
from ops.update import steps as st
from ops.update.facts import HostState, UpdateFacts
from ops.update.hostio import STAGING_TEMPLATE, Host
from ops.versions import Observed, State, parse_version

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden"
COMMANDS = GOLDEN / "update-commands"
REGEN = os.environ.get("CAI_REGEN_GOLDEN") == "1"
#: 2026-01-01T00:00:00Z: the journal's start time in the goldens.
STARTED = 1767225600.0
DIGESTS = {"/bundle/docker-27.3.1.tgz": "1" * 64,
           "/bundle/sysbox-ce_0.6.7+containai.20260127-0_amd64.deb": "2" * 64}


def vm_layout() -> lay.Layout:
    """The lima-vm layout read from a real VM's layout probe output."""
    return lay.decide(lay.parse_probe((GOLDEN / "layout" / "lima-vm.txt").read_text()), "lima:containai-docker")


def full_upgrade(layout: str) -> tuple[UpdateFacts, CaiConfig]:
    """The fixed facts of a full upgrade of a host of ``layout``: an older Sysbox (and dockerd bundle on
    containai), every managed file drifted (one missing), two managed containers running."""
    conf = CaiConfig.from_mapping({})
    vm = vm_layout() if layout == lay.LIMA_VM else None
    if vm is not None:
        conf = lay.conf_for(conf, vm)
    paths = units.managed_paths(conf, vm)
    # fixed file contents (the facts of this test, not the templates of the day)
    rendered = tuple(units.RenderedFile(p, f"# {Path(p).name} as rendered\n", 0o755 if "libexec" in p else 0o644,
                                        "script" if "libexec" in p else "unit") for p in paths)
    installed: dict[str, str | None] = {p: "# older\n" for p in paths}
    installed[paths[0]] = None
    running = tuple(ManagedContainer(id=n * 12, name=n, image="containai/agent:1", state="running")
                    for n in ("agent-a", "agent-b"))
    facts = UpdateFacts(
        target="local" if vm is None else "lima:containai-docker", platform="linux" if vm is None else "macos",
        arch="amd64", host=HostState(systemd=True, engine_state="active", engine_loaded=True, socket=True),
        sysbox_installed=Observed(State.INSTALLED, parse_version("0.6.6+containai.20250101")),
        sysbox_bundled=parse_version("0.6.7+containai.20260127"),
        sysbox_deb="/bundle/sysbox-ce_0.6.7+containai.20260127-0_amd64.deb",
        dockerd_installed=Observed(State.INSTALLED, parse_version("26.1.0")),
        dockerd_bundled=parse_version("27.3.1"), dockerd_tarball="/bundle/docker-27.3.1.tgz",
        rendered=rendered, drift=tuple(units.detect_drift(list(rendered), installed)), running=running)
    if vm is not None:
        facts = replace(facts, layout=lay.LIMA_VM, engine_unit=vm.engine_unit, dockerd_installed=Observed(
            State.NOT_INSTALLED), dockerd_bundled=None, dockerd_tarball=None)
    return facts, conf


def ops_of(layout: str) -> tuple[list[st.Op], st.Env]:
    facts, conf = full_upgrade(layout)
    vm = layout == lay.LIMA_VM
    p = pl.plan(facts)
    digests = {k: v for k, v in DIGESTS.items() if k in (facts.sysbox_deb, facts.dockerd_tarball)}
    ops = st.sequence(p, facts, conf, digests, STARTED, vm=vm, engine_unit=facts.engine_unit)
    return ops, st.Env(conf, facts.engine_unit, vm)


@pytest.mark.parametrize("layout", [lay.CONTAINAI, lay.LIMA_VM])
def test_every_command_of_a_full_upgrade_matches_its_golden_file(layout: str) -> None:
    ops, env = ops_of(layout)
    text = "\n".join(st.render(ops, env)) + "\n"
    golden = COMMANDS / f"{layout}.txt"
    if REGEN:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"{golden} is missing: run with CAI_REGEN_GOLDEN=1 and review it"
    assert text == golden.read_text(), (f"the commands of a {layout} update changed: review the difference, then "
                                        "regenerate with CAI_REGEN_GOLDEN=1 (docs/development.md)")


def test_a_changed_step_command_fails_the_golden_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden comparison sees one changed command of one step (here: the restart of a unit)."""
    ops, env = ops_of(lay.CONTAINAI)
    before = st.render(ops, env)
    monkeypatch.setattr(st, "restart_command", lambda unit: f"systemctl restart {unit}")
    after = st.render(ops, env)
    assert before != after
    assert "\n".join(after) + "\n" != (COMMANDS / "containai.txt").read_text()


def test_the_lima_vm_update_never_touches_the_bundle_or_containai_docker() -> None:
    ops, env = ops_of(lay.LIMA_VM)
    text = "\n".join(st.render(ops, env))
    assert "/opt/containai" not in text and "containai-docker.service" not in text
    assert "systemctl restart docker.service" in text and "docker -H unix:///var/run/docker.sock stop" in text
    assert "systemctl enable containai-docker-guard.service" in text
    assert not any(isinstance(op, (st.Backup, st.Unpack, st.SwitchDockerd)) for op in ops)


# --- the safety order, read from the pure sequence -----------------------------------------------------

def kinds(ops: list[st.Op]) -> list[str]:
    return [type(op).__name__ for op in ops]


def test_the_order_of_a_full_upgrade_keeps_every_safety_property() -> None:
    ops, _env = ops_of(lay.CONTAINAI)
    k = kinds(ops)
    stop = k.index("StopContainers")
    # everything that does not need the containers down happens before the stop
    for before in ("MakeStaging", "Stage", "StageSysbox", "ReadBudget", "WriteJournal", "Backup", "Unpack",
                   "WriteFiles", "Reload"):
        assert k.index(before) < stop, before
    # the journal before any stop, the rollback copy before the first change
    assert k.index("WriteJournal") < k.index("Backup") < k.index("Unpack") < k.index("WriteFiles")
    assert all(op.region == st.PREPARE for op in ops[:k.index("WriteJournal")])
    first = next(op for op in ops if isinstance(op, st.WriteJournal))
    assert first.region == st.JOURNAL and first.journal.done == () and first.journal.started == STARTED
    # after the stop: renames, install from apt's cache, restarts, start
    assert k[stop:] == ["StopContainers", "WriteJournal", "SwitchDockerd", "WriteJournal", "InstallSysbox",
                        "WriteJournal", "RestartSysbox", "WriteJournal", "RestartEngine",
                        "StartContainers", "WriteJournal", "ArmGuard", "Cleanup"]
    last = [op for op in ops if isinstance(op, st.WriteJournal)][-1]
    assert last.journal.done == ("write-units", "daemon-reload", "stop-containers", "install-dockerd",
                                 "install-sysbox", "restart-sysbox", "restart-engine", "start-containers")
    # the rollback copy is dropped only once the new engine answered, and (with the stop hook's start)
    # only once the containers run again: nothing waits while they are down that can wait until after
    engine = next(op for op in ops if isinstance(op, st.RestartEngine))
    arm = next(op for op in ops if isinstance(op, st.ArmGuard))
    assert not engine.finish and arm.drop_backup


def test_nothing_running_no_journal_and_the_files_in_plan_order() -> None:
    facts, conf = full_upgrade(lay.CONTAINAI)
    facts = replace(facts, running=())
    p = pl.plan(facts)
    ops = st.sequence(p, facts, conf, DIGESTS, STARTED)
    k = kinds(ops)
    assert "WriteJournal" not in k and "StopContainers" not in k and "StartContainers" not in k
    assert k == ["MakeStaging", "Stage", "StageSysbox", "ReadBudget", "Backup", "Unpack", "SwitchDockerd",
                 "InstallSysbox", "WriteFiles", "Reload", "RestartSysbox", "RestartEngine", "Cleanup"]


def test_a_stop_hook_change_alone_stages_nothing_and_restarts_nothing() -> None:
    facts, conf = full_upgrade(lay.CONTAINAI)
    guard_only = tuple(d for d in facts.drift if d.path.endswith("-guard.service") or "libexec" in d.path)
    facts = replace(facts, sysbox_installed=Observed(State.INSTALLED, facts.sysbox_bundled),
                    dockerd_installed=Observed(State.INSTALLED, facts.dockerd_bundled), drift=guard_only)
    ops = st.sequence(pl.plan(facts), facts, conf, {}, STARTED)
    assert kinds(ops) == ["Backup", "WriteFiles", "Reload", "StartGuard"]
    text = "\n".join(st.render(ops, st.Env(conf)))
    assert "systemctl restart" not in text and "mktemp" not in text


# --- the dry run's listing is what a run executes ----------------------------------------------------

class Recorder(Host):
    """A host that records every command and answers like a host that has it all (nothing runs)."""

    def __init__(self, answers: dict[str, str] | None = None, fail: str = "") -> None:
        super().__init__(LocalContext(), "")
        self.seen: list[tuple[str, str]] = []
        self.answers = answers or {}
        self.fail = fail

    def run(self, command: str, what: str = "", timeout: int = 60) -> tuple[int, str, str]:
        self.seen.append((st.ROOT, command))
        if self.fail and self.fail in command:
            return 1, "", "Job for unit failed.\n"
        for needle, out in self.answers.items():
            if needle in command:
                return 0, out, ""
        return 0, "", ""

    def put(self, local: str | Path, remote: str) -> None:
        self.seen.append((st.PUT, remote))


class RecordingRunner(st.Runner):
    def run(self, cmd: st.Command) -> None:
        if cmd.kind == st.USER:  # as the login user: mktemp and the cleanup
            assert isinstance(self.host, Recorder)
            self.host.seen.append((st.USER, cmd.text))
            out = "/tmp/containai-ops.Ab12Cd\n" if cmd.text.startswith("mktemp") else ""
            assert cmd.check is not None
            cmd.check(st.Result(0, out, "", self.host.name))
            return
        super().run(cmd)


class Engine:
    def __init__(self, host: Recorder) -> None:
        self.host = host

    def stop(self, names: list[str]) -> None:
        self.host.seen.append((st.ENGINE, "stop " + " ".join(names)))

    def start(self, names: list[str]) -> None:
        self.host.seen.append((st.ENGINE, "start " + " ".join(names)))

    def wait(self) -> None:
        self.host.seen.append((st.ENGINE, "wait"))


def digest_answers(digests: dict[str, str]) -> dict[str, str]:
    return {f"sha256sum /tmp/containai-ops.Ab12Cd/{Path(k).name}": f"{v}  x\n" for k, v in digests.items()}


def executed(layout: str, answers: dict[str, str] | None = None, fail: str = "") -> tuple[Recorder, st.Env]:
    ops, dry = ops_of(layout)
    host = Recorder({**digest_answers(DIGESTS), **(answers or {})}, fail)
    env = st.Env(dry.conf, dry.engine_unit, dry.vm, engine=Engine(host), host=host)
    runner = RecordingRunner(host, env)
    for op in ops:
        runner.run_op(op)
    return host, env


def listed(layout: str) -> list[tuple[str, str]]:
    ops, env = ops_of(layout)
    out = []
    for _op, cmds in st.listing(ops, env):
        for c in cmds:
            # mktemp made /tmp/containai-ops.Ab12Cd of its template: later commands name it
            text = c.text if c.text.startswith("mktemp") else c.text.replace(STAGING_TEMPLATE,
                                                                              "/tmp/containai-ops.Ab12Cd")
            if c.kind == st.ENGINE:  # docker -H SOCKET verb ...: as the recording engine writes it
                words = text.split()
                text = {"version": "wait", "stop": "stop " + " ".join(words[6:]),
                        "start": "start " + " ".join(words[4:])}[words[3]]
            out.append((c.kind, text))
    return out


@pytest.mark.parametrize("layout", [lay.CONTAINAI, lay.LIMA_VM])
def test_a_run_executes_exactly_the_listed_commands(layout: str) -> None:
    host, env = executed(layout)
    assert host.seen == listed(layout)
    assert env.budget is not None and not env.sysbox_restarted and env.engine_ok


def test_restart_once_when_the_package_scripts_restarted_sysbox() -> None:
    mark = f"{st.SYSBOX_MARK} before=aaa after=bbb state=active\n"
    host, env = executed(lay.CONTAINAI, {f"{st.SYSBOX_MARK} before=": mark})
    assert env.sysbox_restarted
    ran = [text for _k, text in host.seen]
    assert not any("systemctl restart sysbox.service" in t for t in ran)
    assert sum("systemctl restart containai-docker.service" in t for t in ran) == 1
    expected = [t for t in listed(lay.CONTAINAI) if "restart sysbox.service" not in t[1]]
    assert host.seen == expected


def test_a_failed_restart_is_one_line_naming_the_unit() -> None:
    with pytest.raises(OpsError) as err:
        executed(lay.CONTAINAI, fail="systemctl restart containai-docker.service")
    assert err.value.message == "containai-docker.service did not (re)start: Job for unit failed."


@pytest.mark.parametrize("text,restarted", [
    (f"Setting up sysbox-ce ...\n{st.SYSBOX_MARK} before=1a2b after=3c4d state=active\n", True),
    (f"{st.SYSBOX_MARK} before=1a2b after=1a2b state=active\n", False),
    (f"{st.SYSBOX_MARK} before= after=3c4d state=active\n", True),  # Sysbox was not installed before
    (f"{st.SYSBOX_MARK} before=1a2b after=3c4d state=failed\n", False),
    (f"{st.SYSBOX_MARK} before=1a2b after= state=inactive\n", False),
    ("no mark at all\n", False),
])
def test_sysbox_mark_parser(text: str, restarted: bool) -> None:
    assert st.parse_sysbox_mark(text) is restarted


def test_the_journal_in_the_commands_is_the_journal_format() -> None:
    ops, _env = ops_of(lay.CONTAINAI)
    first = next(op for op in ops if isinstance(op, st.WriteJournal))
    back = jr.loads(jr.dumps(first.journal))
    assert back.containers == ("agent-a", "agent-b") and back.steps[0] == "stop-containers"



# --- facts read by the steps, on real output (a systemd lab host, Debian 12, systemd 252) -----------------

FACTS = GOLDEN / "update-facts"


def test_sysbox_mark_on_real_apt_output() -> None:
    """The Sysbox install command's output on a lab host: apt's own lines, then the mark. The package's
    scripts started Sysbox on a first install and restarted it on an upgrade: both count as restarted,
    so the update does not restart it a second time."""
    first = (FACTS / "apt-sysbox-first-install.txt").read_text()
    upgrade = (FACTS / "apt-sysbox-upgrade.txt").read_text()
    assert "Setting up sysbox-ce" in first and f"{st.SYSBOX_MARK} before= after=" in first
    assert st.parse_sysbox_mark(first) and st.parse_sysbox_mark(upgrade)
    # the same host, had the scripts not restarted it: the invocation would be the one before
    before = upgrade.split("before=")[1].split()[0]
    assert not st.parse_sysbox_mark(upgrade.replace(upgrade.split("after=")[1].split()[0], before))


def test_host_state_probe_on_a_real_host() -> None:
    from ops.update.facts import parse_host_state

    assert parse_host_state((FACTS / "host-state-lab-active.txt").read_text()) == HostState(
        systemd=True, engine_state="active", engine_loaded=True, socket=True)
