"""doctor: one evaluation per target, returning findings; text and JSON are rendered from the list.

Every check reads the target it describes through that target's Context (inside the Lima VM on a
macOS host) and turns what it read into findings. A target that cannot be reached is itself a
finding, so one bad host never hides the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ops import facts as probes
from ops.config import CaiConfig
from ops.errors import OpsError
from ops.findings import Finding
from ops.targets import Resolved, engine_host, resolve
from ops.versions import Action, Observed, State, decide

#: Extra checks contributed by feature modules: (resolved target, engine or None, config) -> findings.
Check = Callable[[Resolved, Any, CaiConfig], list[Finding]]


@dataclass
class TargetReport:
    """The findings of one target plus what was learnt about it."""

    target: str
    platform: str = ""
    reachable: bool = False
    facts: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The JSON description of the target."""
        return {"target": self.target, "platform": self.platform, "reachable": self.reachable, **self.facts}


def _f(r: Resolved, code: str, severity: str, message: str, hint: str = "", **data: Any) -> Finding:
    return Finding(code, severity, r.name, message, hint, r.platform, data)  # type: ignore[arg-type]


def platform_findings(r: Resolved) -> list[Finding]:
    """Platform, kernel and systemd-as-PID-1 checks."""
    f = r.facts
    distro = f"{f.distro} {f.distro_version}".strip() or "unknown distribution"
    where = f"Lima VM {r.target.vm} ({distro})" if r.platform == "macos" else distro
    out = [_f(r, "platform.detected", "info", f"{r.platform} host: {where}, kernel {f.kernel}, {f.arch}",
              kernel=f.kernel, arch=f.arch, distro=f.distro, distro_version=f.distro_version)]
    if not f.systemd_pid1:
        message = f"PID 1 is {f.pid1 or 'unknown'}, not systemd"
        if r.platform == "wsl2" and f.wsl_conf_systemd == "true":
            message += " although /etc/wsl.conf sets [boot] systemd=true (not applied yet)"
            hint = "run `wsl --shutdown` from Windows and reopen the distribution to boot it with systemd"
        elif r.platform == "wsl2":
            message += " (/etc/wsl.conf does not set [boot] systemd=true)"
            hint = ("enable systemd in /etc/wsl.conf ([boot] systemd=true), then run `wsl --shutdown` "
                    "from Windows and reopen the distribution")
        else:
            hint = "ContainAI needs a host booted with systemd; containai-docker and Sysbox run as units"
        out.append(_f(r, "systemd.not-pid1", "error", message, hint, wsl_conf_systemd=f.wsl_conf_systemd))
    if r.platform == "wsl2" and f.seccomp == "2":
        out.append(_f(r, "wsl2.seccomp-filter", "warning",
                      "PID 1 runs under a seccomp filter (Seccomp: 2 in /proc/1/status): Sysbox cannot trap "
                      "the system calls it emulates and its containers may fail to start",
                      "update WSL from Windows (`wsl --update`), run `wsl --shutdown`, and check that "
                      "nothing starts the distribution under a seccomp profile", seccomp=f.seccomp))
    if r.platform == "wsl2" and f.distro not in ("debian", "ubuntu") and "debian" not in f.distro_like:
        out.append(_f(r, "wsl2.distro-unsupported", "warning",
                      f"WSL2 distribution {f.distro or 'unknown'} is not Debian or Ubuntu",
                      "use a Debian or Ubuntu WSL2 distribution for ContainAI"))
    major = _kernel_major_minor(f.kernel)
    if major is not None and major < (5, 5):
        out.append(_f(r, "kernel.too-old", "error", f"kernel {f.kernel} is older than 5.5",
                      "Sysbox needs Linux 5.5 or newer (5.12+ recommended for id-mapped mounts)"))
    return out


def _kernel_major_minor(kernel: str) -> tuple[int, int] | None:
    parts = kernel.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return None


def version_findings(r: Resolved, conf: CaiConfig, layout: Any = None) -> list[Finding]:
    """Sysbox and dockerd bundle: installed (read on the target) vs bundled. The dockerd bundle only
    where the host layout runs it (not in the macOS VM, whose engine is docker.service)."""
    out: list[Finding] = []
    sysbox = probes.sysbox_installed(r.ctx)
    try:
        bundled, deb = probes.bundled_sysbox(conf.bundle_dir, r.facts.arch)
    except OpsError as exc:
        bundled, deb = None, None
        out.append(_f(r, "sysbox.bundle-unreadable", "warning", exc.message, exc.hint))
    out.append(_component(r, "sysbox", "Sysbox", sysbox, bundled, str(deb or "")))
    if layout is not None and not layout.uses_bundle:
        return out
    dockerd = probes.bundle_installed(r.ctx, conf.opt_dir)
    try:
        bundled_d, tarball = probes.bundled_dockerd(conf.bundle_dir)
    except OpsError as exc:
        bundled_d, tarball = None, None
        out.append(_f(r, "dockerd.bundle-unreadable", "warning", exc.message, exc.hint))
    out.append(_component(r, "dockerd", "dockerd bundle", dockerd, bundled_d, str(tarball or "")))
    return out


def _component(r: Resolved, code: str, label: str, installed: Observed, bundled: Any, source: str) -> Finding:
    decision = decide(label, installed, bundled)
    data = {"installed": str(installed.version) if installed.version else None,
            "state": installed.state.value, "bundled": str(bundled) if bundled else None, "bundle": source}
    if installed.state is State.NOT_INSTALLED and installed.missing:
        return _f(r, f"{code}.incomplete", "error",
                  f"{label} is incomplete: missing or not executable: {', '.join(installed.missing)}",
                  "reinstall it with: inv update --stop-containers", missing=list(installed.missing), **data)
    if installed.state is State.NOT_INSTALLED:
        return _f(r, f"{code}.not-installed", "error", f"{label} is not installed",
                  "install it with: inv update --stop-containers", **data)
    if installed.state is State.UNKNOWN:
        return _f(r, f"{code}.unknown", "warning", decision.reason,
                  f"check the {label} installation on the target", **data)
    if decision.action is Action.UPGRADE:
        return _f(r, f"{code}.outdated", "warning", f"{label} {installed} is older than bundled {bundled}",
                  "upgrade with: inv update --stop-containers", **data)
    if decision.action is Action.KEEP_NEWER:
        return _f(r, f"{code}.newer", "info", decision.reason, "", **data)
    if decision.action is Action.NO_BUNDLE:
        return _f(r, f"{code}.installed", "info", f"{label} {installed} installed (no bundle to compare in "
                  "cai.bundle_dir)", "", **data)
    return _f(r, f"{code}.current", "info", f"{label} {installed} is current", "", **data)


def host_readiness_findings(r: Resolved) -> list[Finding]:
    """fusermount3, the fuse 2 package, the fusermount3 AppArmor profile, the Sysbox units."""
    out: list[Finding] = []
    if not probes.has_command(r.ctx, "fusermount3"):
        out.append(_f(r, "fuse.fusermount3-missing", "error", "fusermount3 is missing (sysbox-fs needs it)",
                      "install fuse3: apt-get install fuse3"))
    if probes.dpkg_installed(r.ctx, "fuse"):
        out.append(_f(r, "fuse.fuse2-installed", "warning",
                      "the fuse (fuse 2) package is installed; on Ubuntu 24.04 it removes fuse3 and fusermount3",
                      "apt-get install fuse3 (it replaces fuse); never install fuse beside Sysbox"))
    mode = probes.apparmor_mode(r.ctx, "fusermount3")
    if mode == "enforce":
        out.append(_f(r, "apparmor.fusermount3-enforce", "warning",
                      "the AppArmor profile for fusermount3 is in enforce mode; sysbox-fs fails with "
                      "'fusermount3: mount failed: Permission denied'",
                      "aa-complain /etc/apparmor.d/fusermount3 (apt-get install apparmor-utils)"))
    if r.facts.systemd_pid1 and probes.has_command(r.ctx, "sysbox-runc"):
        state = probes.unit_active(r.ctx, "sysbox.service")
        if state != "active":
            out.append(_f(r, "sysbox.unit-inactive", "error", f"sysbox.service is {state}",
                          "systemctl start sysbox; journalctl -u sysbox-fs -u sysbox-mgr for the cause"))
    return out


def engine_findings(r: Resolved, engine: Any, error: OpsError | None) -> list[Finding]:
    """Engine reachability and version, managed containers running/stopped."""
    if engine is None:
        assert error is not None
        return [_f(r, "engine.unreachable", "error", error.message,
                   error.hint or "start containai-docker: systemctl start containai-docker")]
    version = engine.version()
    out = [_f(r, "engine.version", "info", f"engine {version.get('Version', '?')} answers "
              f"(API {version.get('ApiVersion', '?')})", version=version.get("Version"))]
    managed = engine.managed()
    everything = engine.containers(managed_only=False)
    running = [c for c in managed if c.running]
    stopped = [c for c in managed if not c.running]
    out.append(_f(r, "containers.managed", "info",
                  f"{len(managed)} managed containers: {len(running)} running, {len(stopped)} stopped",
                  running=[c.name for c in running], stopped=[c.name for c in stopped],
                  unmanaged=len(everything) - len(managed)))
    return out


def _extra_checks(layout: Any = None) -> list[Check]:
    """Checks contributed by the feature modules: units (drift, engine and guard units, of the host
    layout) and ownership/taint."""
    from ops import repair, ssh_health, units

    def unit_checks(r: Resolved, engine: Any, conf: CaiConfig) -> list[Finding]:
        return units.doctor_findings(r.ctx, conf, r.name, r.platform, layout)

    def ownership(r: Resolved, engine: Any, conf: CaiConfig) -> list[Finding]:
        if engine is None:
            return []
        return repair.doctor_findings(engine, conf, r.name, r.platform, where=r)

    return [unit_checks, ownership, ssh_health.doctor_findings]


def host_probes(conf: CaiConfig) -> list[str]:
    """Every command the checks run on a target, so that they all run in one round trip with the
    platform probe (a check whose command is not listed here still works: it runs on its own)."""
    from ops import units
    from ops.layout import LayoutFacts, lima_vm_layout, probe_command

    return [probe_command(conf.label),
            probes.SYSBOX_PROBE, probes.bundle_probe(conf.opt_dir), probes.has_command_probe("fusermount3"),
            probes.dpkg_probe("fuse"), probes.APPARMOR_PROBE, probes.has_command_probe("sysbox-runc"),
            probes.unit_active_probe("sysbox.service"), *units.doctor_commands(conf),
            *units.doctor_commands(conf, lima_vm_layout(LayoutFacts(), ""))]  # the unit checks of either layout


def _warm_up(text: str, conf: CaiConfig, alone: bool) -> None:
    """Import the modules of the checks, and the Docker SDK: for a local target when its engine socket
    answers (without the SDK's SSH transport when this is the only target: nothing imports paramiko
    meanwhile); for a remote one always (its engine is reached after the probe, through a forward)."""
    from ops.engine import check_socket, import_docker
    from ops.targets import on_macos, parse_target

    _extra_checks()
    try:
        if parse_target(text, conf.lima_vm).kind == "local" and not on_macos(conf):
            check_socket(conf.docker_host)
            import_docker(alone=alone)
        else:
            import_docker()  # off the main thread: paramiko is imported as usual, Fabric needs it
    except OpsError:
        pass  # the checks tell it


def layout_findings(r: Resolved, conf: CaiConfig) -> tuple[Any, list[Finding]]:
    """The target's host layout (None when it matches none, or both) and its findings."""
    from ops import layout as lay

    try:
        facts = lay.read_facts(r.ctx, conf, r.name)
        layout = lay.decide(facts, r.name, conf.layout)
    except lay.LayoutError as exc:
        return None, [lay.layout_error_finding(exc, r.name, r.platform)]
    return layout, lay.findings(layout, facts, r.name, r.platform)


def check_target(text: str, conf: CaiConfig, base: Any = None, alone: bool = False) -> TargetReport:
    """Evaluate one target; unreachable targets become an error finding, not an exception.

    ``alone``: this is the only target evaluated (nothing else runs meanwhile).

    One command on the target reads everything the checks need (:func:`host_probes`); the engine is
    asked for its version once and lists its containers once (:meth:`ops.engine.Engine.snapshot`).
    """
    from ops.engine import Engine

    report = TargetReport(target=text)
    warm = threading.Thread(target=_warm_up, args=(text, conf, alone), daemon=True)
    warm.start()  # imports what the checks need while the target runs the probe
    try:
        r = resolve(text, conf, base, prefetch=host_probes(conf))
    except OpsError as exc:
        report.findings.append(Finding("target.unreachable", "error", text, exc.message, exc.hint))
        return report
    finally:
        warm.join()
    report.target, report.platform, report.reachable = r.name, r.platform, True
    report.facts = {"kernel": r.facts.kernel, "arch": r.facts.arch, "distro": r.facts.distro}
    findings = report.findings
    try:
        findings += platform_findings(r)
        layout, found = layout_findings(r, conf)
        findings += found
        if layout is not None:  # the engine, socket and data root of the layout
            from ops.layout import conf_for

            conf = conf_for(conf, layout)
            report.facts["layout"] = layout.name
        findings += version_findings(r, conf, layout)
        findings += host_readiness_findings(r)
        with engine_host(r.target, conf) as docker_host:
            engine, error = None, None
            try:
                engine = Engine.connect(docker_host, conf.label, timeout=15)
            except OpsError as exc:
                error = exc
            try:
                if engine is not None:
                    engine.snapshot()  # every check below reads this one listing
                findings += engine_findings(r, engine, error)
                for check in _extra_checks(layout):
                    findings += check(r, engine, conf)
            finally:
                if engine is not None:
                    engine.close()
    except OpsError as exc:
        findings.append(_f(r, "target.check-failed", "error", exc.message, exc.hint))
    return report


def run_doctor(targets: list[str], conf: CaiConfig, base: Any = None, parallel: int = 8) -> list[TargetReport]:
    """Evaluate every target, in parallel (bounded), in the order given."""
    if len(targets) == 1:
        return [check_target(targets[0], conf, base, alone=True)]
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(targets)))) as pool:
        return list(pool.map(lambda t: check_target(t, conf, base), targets))
