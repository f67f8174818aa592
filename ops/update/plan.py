"""The update planner: a pure function from facts to an ordered list of steps, each with its reason.

Containers are stopped only when a step restarts the engine or Sysbox (a new dockerd bundle, a new
Sysbox package, a changed engine unit or daemon.json). A change of the stop hook alone is installed
with a daemon-reload and stops nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ops.engine import ManagedContainer
from ops.units import DAEMON_JSON, ENGINE_UNIT, GUARD_UNIT
from ops.update.facts import UpdateFacts
from ops.versions import Action, Decision, decide

# Step actions, in the order they are applied.
STOP = "stop-containers"
DOCKERD = "install-dockerd"
SYSBOX = "install-sysbox"
UNITS = "write-units"
RELOAD = "daemon-reload"
RESTART_SYSBOX = "restart-sysbox"
RESTART_ENGINE = "restart-engine"
START_GUARD = "start-guard"
START = "start-containers"
ORDER = (STOP, DOCKERD, SYSBOX, UNITS, RELOAD, RESTART_SYSBOX, RESTART_ENGINE, START_GUARD, START)


@dataclass(frozen=True)
class Step:
    """One thing the applier does, with the reason shown to the user."""

    action: str
    summary: str  # imperative: "install dockerd bundle 27.3.1"
    reason: str
    data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of a step."""
        return {"action": self.action, "summary": self.summary, "reason": self.reason, **self.data}


@dataclass(frozen=True)
class Plan:
    """The ordered steps of an update, the containers it must stop, and what blocks it."""

    steps: tuple[Step, ...]
    stop: tuple[ManagedContainer, ...] = ()
    blockers: tuple[tuple[str, str], ...] = ()  # (message, hint)
    notes: tuple[str, ...] = ()

    @property
    def nothing_to_do(self) -> bool:
        """True when no step is planned and nothing blocks."""
        return not self.steps and not self.blockers

    @property
    def needs_stop(self) -> bool:
        """True when running managed containers must be stopped first."""
        return bool(self.stop)

    def actions(self) -> list[str]:
        """The step actions in order."""
        return [s.action for s in self.steps]

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of the plan."""
        return {
            "steps": [s.as_dict() for s in self.steps],
            "stop": [{"name": c.name, "image": c.image, "state": c.state} for c in self.stop],
            "blockers": [{"message": m, "hint": h} for m, h in self.blockers],
            "notes": list(self.notes),
        }


def component_decisions(facts: UpdateFacts) -> tuple[Any, Any]:
    """The Sysbox and dockerd-bundle decisions (install / upgrade / current / ...); on lima-vm the
    dockerd bundle is never installed (the VM runs its distribution's docker.service)."""
    sysbox = decide("Sysbox", facts.sysbox_installed, facts.sysbox_bundled)
    if not facts.uses_bundle:
        return sysbox, Decision(Action.NO_BUNDLE, f"the VM's engine is its own {facts.engine_unit}: no dockerd "
                                "bundle or containai-docker is installed there")
    return sysbox, decide("dockerd bundle", facts.dockerd_installed, facts.dockerd_bundled)


def restart_reasons(facts: UpdateFacts) -> list[str]:
    """Pure: why the engine must restart (empty: no restart, so no container needs to stop)."""
    sysbox, dockerd = component_decisions(facts)
    reasons = []
    if dockerd.needs_change:
        reasons.append(dockerd.reason)
    if sysbox.needs_change:
        reasons.append(sysbox.reason)
    for d in facts.drift:
        if d.path.endswith("/" + ENGINE_UNIT) or d.path == DAEMON_JSON:
            reasons.append(f"{d.name} {'is missing' if d.missing else 'changed'}")
    return reasons


def plan(facts: UpdateFacts) -> Plan:
    """Pure planner: facts in, ordered steps with reasons out."""
    blockers: list[tuple[str, str]] = []
    notes: list[str] = []
    if not facts.host.systemd:
        if facts.platform == "wsl2":
            blockers.append(("systemd is not PID 1 in this WSL2 distribution",
                             "add [boot] systemd=true to /etc/wsl.conf, run `wsl --shutdown` in Windows, "
                             "reopen the distribution and rerun"))
        else:
            blockers.append(("systemd is not PID 1 on this host",
                             "the containai-docker units need systemd; boot the host with systemd"))
    sysbox, dockerd = component_decisions(facts)
    for name, decision in (("Sysbox", sysbox), ("dockerd bundle", dockerd)):
        if decision.action is Action.CANNOT_TELL:
            blockers.append((decision.reason, f"check the installed {name} by hand; update never guesses"))
        elif decision.action in (Action.KEEP_NEWER, Action.NO_BUNDLE, Action.CURRENT):
            notes.append(decision.reason)
    if blockers:
        return Plan((), (), tuple(blockers), tuple(notes))

    restart = restart_reasons(facts)
    running = tuple(facts.running or ()) if restart else ()
    steps: list[Step] = []
    if running:
        steps.append(Step(STOP, f"stop {len(running)} running managed container(s) in parallel",
                          "restarting the engine or Sysbox under running containers breaks their "
                          "id-mapped mounts (" + "; ".join(restart) + ")",
                          {"containers": [c.name for c in running]}))
    if dockerd.needs_change and facts.dockerd_bundled is not None:
        steps.append(Step(DOCKERD, f"install dockerd bundle {facts.dockerd_bundled}", dockerd.reason,
                          {"version": str(facts.dockerd_bundled), "tarball": facts.dockerd_tarball}))
    if sysbox.needs_change and facts.sysbox_bundled is not None:
        steps.append(Step(SYSBOX, f"install Sysbox {facts.sysbox_bundled} with apt-get", sysbox.reason,
                          {"version": str(facts.sysbox_bundled), "deb": facts.sysbox_deb}))
    if facts.drift:
        names = ", ".join(d.name for d in facts.drift)
        steps.append(Step(UNITS, f"write {names}",
                          "; ".join(f"{d.name} {'is missing' if d.missing else 'differs from the rendered file'}"
                                    for d in facts.drift),
                          {"files": [d.path for d in facts.drift]}))
        steps.append(Step(RELOAD, "systemctl daemon-reload", "systemd must read the new unit files"))
    if sysbox.needs_change:
        steps.append(Step(RESTART_SYSBOX, "restart sysbox.service",
                          "run the new Sysbox (a package script may leave it stopped or old)"))
    if restart:
        why = ("; ".join(restart) + "; PartOf= never starts the engine again after Sysbox" if facts.uses_bundle
               else "; ".join(restart) + "; the engine must load the new Sysbox runtime and the daemon.json the "
               "package edits (its script restarts docker only without containers, else sends SIGHUP)")
        steps.append(Step(RESTART_ENGINE, f"restart {facts.engine_unit} and wait for a ping", why))
    elif facts.drift and facts.host.engine_state == "active":
        steps.append(Step(START_GUARD, f"start {GUARD_UNIT}", "the stop hook must be active to run on stop"))
    if running:
        steps.append(Step(START, f"start the {len(running)} container(s) that were running",
                          "they were running before the update"))
    return Plan(tuple(steps), running, (), tuple(notes))


def step_lines(p: Plan, dry_run: bool) -> list[str]:
    """Human lines for the plan: ``would <step>`` on a dry run, ``<step>`` otherwise, with reasons."""
    lines = []
    for i, s in enumerate(p.steps, 1):
        lead = f"would {s.summary}" if dry_run else s.summary
        lines.append(f"  {i}. {lead}")
        lines.append(f"     because {s.reason}")
    return lines
