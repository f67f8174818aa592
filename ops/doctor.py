"""doctor: one evaluation per target, returning findings; text and JSON are rendered from the list.

Every check reads the target it describes through that target's Context (inside the Lima VM on a
macOS host) and turns what it read into findings. A target that cannot be reached is itself a
finding, so one bad host never hides the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ops import facts as probes
from ops.config import CaiConfig
from ops.errors import OpsError
from ops.findings import Finding
from ops.targets import Resolved, effective_target, engine_host, parse_target, resolve
from ops.update.rollback import left_findings
from ops.update.rollback import left_probe as rollback_left_probe
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


def host_readiness_findings(r: Resolved, states: dict[str, Any] | None = None) -> list[Finding]:
    """fusermount3, the fuse 2 package, the fusermount3 AppArmor profile, the Sysbox units.

    ``states``: the units as the layout probe read them; Sysbox's unit state is read from there when it
    holds it, else asked on the target."""
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
        read = (states or {}).get("sysbox.service")
        state = read.active if read is not None and read.load else probes.unit_active(r.ctx, "sysbox.service")
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


def _extra_checks(layout: Any = None, client: Any = None, states: dict[str, Any] | None = None) -> list[Check]:
    """Checks contributed by the feature modules: units (drift, engine and guard units, of the host
    layout; ``states``: the units as the layout probe read them), ownership/taint (only with an engine:
    the repair modules are imported then) and SSH (``client``: this machine's ``ssh -V``, started while
    the target runs its probe)."""
    from ops import ssh_health, units

    def unit_checks(r: Resolved, engine: Any, conf: CaiConfig) -> list[Finding]:
        return units.doctor_findings(r.ctx, conf, r.name, r.platform, layout, states)

    def ownership(r: Resolved, engine: Any, conf: CaiConfig) -> list[Finding]:
        if engine is None:
            return []
        from ops import repair

        return repair.doctor_findings(engine, conf, r.name, r.platform, where=r)

    def ssh_checks(r: Resolved, engine: Any, conf: CaiConfig) -> list[Finding]:
        return ssh_health.doctor_findings(r, engine, conf, client.text() if client is not None else None)

    return [unit_checks, ownership, ssh_checks]


def host_probes(conf: CaiConfig) -> list[str]:
    """Every command the checks run on a target, so that they all run in one round trip with the
    platform probe (a check whose command is not listed here still works: it runs on its own).

    The probes that only mean something where systemd is PID 1 (the unit checks, Sysbox's unit) are
    :class:`ops.facts.OnlyIf` that: elsewhere the round trip skips them, and the checks, which read
    PID 1 first, never ask for them."""
    from ops import units
    from ops.layout import LayoutFacts, lima_vm_layout, probe_command

    def systemd_only(layout: Any) -> list[str]:
        # units.doctor_commands: PID 1's name, the installed files (only under systemd), then the engine's
        # and the guard's unit states, which the layout probe's one systemctl show reads (with Sysbox's):
        # the checks read them there (units.doctor_findings, host_readiness_findings)
        pid1, dump, *_states = units.doctor_commands(conf, layout)
        return [pid1, probes.OnlyIf(dump, probes.IF_PID1_SYSTEMD)]

    return [probe_command(conf.label),
            probes.SYSBOX_PROBE, probes.bundle_probe(conf.opt_dir), probes.has_command_probe("fusermount3"),
            probes.dpkg_probe("fuse"), probes.APPARMOR_PROBE, probes.has_command_probe("sysbox-runc"),
            rollback_left_probe(conf),
            *systemd_only(None),  # the unit checks of either layout
            *systemd_only(lima_vm_layout(LayoutFacts(), ""))]


def _warm_up(texts: list[str], conf: CaiConfig, alone: bool, probing: threading.Event) -> None:
    """Import the modules of the checks, and the Docker SDK (the longest import of all, so it starts
    first): for a local target when its engine socket answers (without the SDK's SSH transport when this
    is the only target: nothing imports paramiko meanwhile), with the repair modules; for a remote one
    always (its engine is reached through its SSH connection). The checks' own modules wait until a target runs
    its probe (``probing``), so that they do not slow the way there."""
    from ops.engine import check_socket, import_docker
    from ops.errors import TargetError
    from ops.targets import on_macos, parse_target

    try:
        try:
            remote = any(parse_target(text, conf.lima_vm).kind != "local" for text in texts) or on_macos(conf)
        except TargetError:
            remote = True  # a target that cannot be parsed is told by its check; the others need the SDK
        if remote:
            import_docker()  # off the main thread: paramiko is imported as usual, Fabric needs it
        else:
            check_socket(conf.docker_host)
            import_docker(alone=alone)
        import ops.repair  # noqa: F401 - the ownership and taint checks, which need an engine
    except OpsError:
        pass  # the checks tell it
    finally:
        probing.wait(timeout=2)
        _extra_checks()


class WarmUp:
    """What the checks of some targets need, prepared off the main thread while the targets run their
    probe: the imports (:func:`_warm_up`), and this machine's ``ssh -V``
    (:class:`ops.ssh_health.ClientVersion`, one for all targets: it describes this machine)."""

    def __init__(self, texts: list[str], conf: CaiConfig, alone: bool) -> None:
        self.probing = threading.Event()
        self.client: Any = None
        self.thread = threading.Thread(target=self._run, args=(texts, conf, alone), daemon=True)
        self.thread.start()

    def _run(self, texts: list[str], conf: CaiConfig, alone: bool) -> None:
        try:
            _warm_up(texts, conf, alone, self.probing)
        finally:
            from ops.ssh_health import ClientVersion

            self.client = ClientVersion()

    def join(self) -> None:
        """Wait until everything is ready."""
        self.probing.set()
        self.thread.join()


def layout_findings(r: Resolved, conf: CaiConfig) -> tuple[Any, dict[str, Any], list[Finding]]:
    """The target's host layout (None when it matches none, or both), the units' states the layout probe
    read (:class:`ops.layout.Unit` by name; empty when the probe failed) and the layout's findings."""
    from ops import layout as lay

    try:
        facts = lay.read_facts(r.ctx, conf, r.name)
    except lay.LayoutError as exc:
        return None, {}, [lay.layout_error_finding(exc, r.name, r.platform)]
    try:
        layout = lay.decide(facts, r.name, conf.layout)
    except lay.LayoutError as exc:
        return None, facts.units, [lay.layout_error_finding(exc, r.name, r.platform)]
    return layout, facts.units, lay.findings(layout, facts, r.name, r.platform)


def check_target(text: str, conf: CaiConfig, base: Any = None, alone: bool = False,
                 warm: WarmUp | None = None) -> TargetReport:
    """Evaluate one target; unreachable targets become an error finding, not an exception.

    ``alone``: this is the only target evaluated (nothing else runs meanwhile). ``warm``: what the
    checks need, prepared once for all targets (:class:`WarmUp`; started here when not given).

    One command on the target reads everything the checks need (:func:`host_probes`); the engine is
    asked for its version once and lists its containers once (:meth:`ops.engine.Engine.snapshot`).
    """
    report = TargetReport(target=text)
    warm = warm or WarmUp([text], conf, alone)  # imports what the checks need while the target runs the probe
    prefetch = host_probes(conf)
    return _check(report, text, conf, base, prefetch, warm)


def _check(report: TargetReport, text: str, conf: CaiConfig, base: Any, prefetch: list[str],
           warm: WarmUp) -> TargetReport:
    from ops.engine import Engine

    warm.probing.set()
    try:
        # over SSH the layout probe's engines are asked through the Docker API on the same connection
        alongside = None
        if effective_target(parse_target(text, conf.lima_vm), conf).remote:
            from ops.sshengine import layout_alongside

            alongside = layout_alongside(conf.label)
        r = resolve(text, conf, base, prefetch=prefetch, alongside=alongside)
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
        layout, states, found = layout_findings(r, conf)
        findings += found
        if layout is not None:  # the engine, socket and data root of the layout
            from ops.layout import conf_for

            conf = conf_for(conf, layout)
            report.facts["layout"] = layout.name
        findings += version_findings(r, conf, layout)
        findings += host_readiness_findings(r, states)
        findings += left_findings(probes.run(r.ctx, rollback_left_probe(conf))[1], conf, r.name, r.platform)
        # a remote engine: through channels of the connection the probes used (one SSH connection)
        with engine_host(r.target, conf, r.ctx) as docker_host:
            engine, error = None, None
            try:
                engine = Engine.connect(docker_host, conf.label, timeout=15)
            except OpsError as exc:
                error = exc
            try:
                if engine is not None:
                    engine.snapshot()  # every check below reads this one listing
                findings += engine_findings(r, engine, error)
                for check in _extra_checks(layout, warm.client, states):
                    findings += check(r, engine, conf)
            finally:
                if engine is not None:
                    engine.close()
    except OpsError as exc:
        findings.append(_f(r, "target.check-failed", "error", exc.message, exc.hint))
    return report


def run_doctor(targets: list[str], conf: CaiConfig, base: Any = None, parallel: int = 8) -> list[TargetReport]:
    """Evaluate every target, in the order given: one target directly, several through the fleet
    primitive (:func:`ops.fleet.run_fleet`, bounded parallel), each with its own result."""
    warm = WarmUp(targets, conf, alone=len(targets) == 1)  # the Docker SDK first: the longest import
    if len(targets) == 1:
        return [check_target(targets[0], conf, base, alone=True, warm=warm)]
    results = fleet_results(targets, conf, base, parallel, warm)
    return [result.detail.get("report") or _failed_report(result) for result in results]


def fleet_results(targets: list[str], conf: CaiConfig, base: Any = None, parallel: int = 8,
                  warm: WarmUp | None = None) -> list[Any]:
    """Doctor over several targets with :func:`ops.fleet.run_fleet`: one ``TargetResult`` per target,
    exit 1 when it has an error-level finding, its report in ``detail["report"]``."""
    from ops.findings import has_error
    from ops.fleet import TargetResult, run_fleet

    def one(text: str) -> TargetResult:
        report = check_target(text, conf, base, warm=warm)
        errors = sum(f.severity == "error" for f in report.findings)
        warnings = sum(f.severity == "warning" for f in report.findings)
        return TargetResult(text, 1 if has_error(report.findings) else 0,
                            f"{errors} error(s), {warnings} warning(s)", {"report": report})

    return run_fleet(targets, one, parallel=parallel)


def _failed_report(result: Any) -> TargetReport:
    """The report of a target whose evaluation itself failed (the fleet primitive caught the error)."""
    return TargetReport(target=result.target, findings=[Finding(
        "target.check-failed", "error", result.target, result.summary or f"exit {result.exit_code}",
        "rerun with CAI_DEBUG=1 and report it")])
