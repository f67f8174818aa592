"""Facts of an update: what a target has installed, what the bundle holds, which units drifted,
and which managed containers run. Gathering reads only; the planner works on these values."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.config import CaiConfig
from ops.engine import ManagedContainer
from ops.errors import EngineError, OpsError
from ops.layout import CONTAINAI, LIMA_VM, Layout
from ops.targets import run
from ops.units import ENGINE_UNIT, Drift, RenderedFile
from ops.versions import Observed, State, SysboxVersion

_HOST_PROBE = (
    "echo pid1=$(cat /proc/1/comm 2>/dev/null); "
    "echo engine_state=$(systemctl is-active {unit} 2>/dev/null); "
    "echo engine_load=$(systemctl show -p LoadState --value {unit} 2>/dev/null); "
    "if [ -S {sock} ]; then echo socket=yes; else echo socket=no; fi"
)


@dataclass(frozen=True)
class HostState:
    """systemd and engine unit state of a target, from one probe."""

    systemd: bool
    engine_state: str  # active, inactive, failed, activating, ... or "unknown"
    engine_loaded: bool  # the unit file exists
    socket: bool  # the engine socket exists


def parse_host_state(text: str) -> HostState:
    """Pure parser of the host-state probe output."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return HostState(
        systemd=values.get("pid1") == "systemd",
        engine_state=values.get("engine_state") or "unknown",
        engine_loaded=values.get("engine_load") == "loaded",
        socket=values.get("socket") == "yes",
    )


@dataclass(frozen=True)
class UpdateFacts:
    """Everything the planner needs about one target."""

    target: str
    platform: str
    arch: str
    host: HostState
    sysbox_installed: Observed
    sysbox_bundled: SysboxVersion | None
    sysbox_deb: str | None  # local path of the bundled .deb
    dockerd_installed: Observed
    dockerd_bundled: SysboxVersion | None
    dockerd_tarball: str | None  # local path of the bundled tarball
    rendered: tuple[RenderedFile, ...]
    drift: tuple[Drift, ...]
    running: tuple[ManagedContainer, ...] | None = None  # None: not gathered (no stop needed)
    engine_error: str = ""  # why the engine could not be listed, when it could not
    notes: tuple[str, ...] = field(default_factory=tuple)
    layout: str = CONTAINAI  # the host layout (ops.layout): containai, or lima-vm (no bundle there)
    engine_unit: str = ENGINE_UNIT  # the unit of the engine that serves the managed containers

    @property
    def uses_bundle(self) -> bool:
        """The layout runs the dockerd bundle (containai); lima-vm never gets one."""
        return self.layout != LIMA_VM

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (also used to show that a dry run changed nothing)."""
        return {
            "target": self.target,
            "platform": self.platform,
            "layout": self.layout,
            "engine": self.engine_unit,
            "arch": self.arch,
            "systemd": self.host.systemd,
            "engine_unit": self.host.engine_state,
            "sysbox": {"installed": str(self.sysbox_installed),
                       "bundled": str(self.sysbox_bundled) if self.sysbox_bundled else None},
            "dockerd": {"installed": str(self.dockerd_installed),
                        "bundled": str(self.dockerd_bundled) if self.dockerd_bundled else None},
            "drift": [d.path for d in self.drift],
            "running": None if self.running is None else [c.name for c in self.running],
        }


def dry_run_probes(conf: CaiConfig) -> list[str]:
    """Every read-only command a dry run reads a root-login target with before it plans (the privilege
    check, the layout probe, the journal, the rollback copy, the host state, the managed files, the
    installed Sysbox and bundle; those of either layout), so that they all run in the round trip of
    the platform probe (``ops.targets.resolve`` with ``prefetch``). A command not listed here, or that
    differs (a ``sudo`` login), still runs on its own."""
    from ops.facts import SYSBOX_PROBE, bundle_probe
    from ops.filedump import dump_command
    from ops.layout import CONTAINAI, LayoutFacts, conf_for, containai_layout, lima_vm_layout, probe_command
    from ops.units import managed_paths
    from ops.update import journal as jr
    from ops.update.hostio import PRIVILEGE_PROBE
    from ops.update.rollback import left_probe

    layouts = [containai_layout(LayoutFacts(), "", forced=True), lima_vm_layout(LayoutFacts(), "", forced=True)]
    out = [PRIVILEGE_PROBE, probe_command(conf.label), dump_command([jr.path(conf)]), left_probe(conf)]
    for layout in layouts:
        lconf = conf_for(conf, layout) if layout.name != CONTAINAI else conf
        out.append(_HOST_PROBE.format(unit=layout.engine_unit, sock=shlex.quote(lconf.docker_host[len("unix://"):])))
        out.append(dump_command(managed_paths(lconf, layout)))
    return [*out, SYSBOX_PROBE, bundle_probe(conf.opt_dir)]


def probe_host_state(ctx: Any, conf: CaiConfig, engine_unit: str = ENGINE_UNIT) -> HostState:
    """Read the host state in one command (``conf.docker_host`` is the engine's socket)."""
    from ops.targets import socket_path

    sock = shlex.quote(socket_path(conf.docker_host))
    _code, out, _err = run(ctx, _HOST_PROBE.format(unit=engine_unit, sock=sock))
    return parse_host_state(out)


def bundle_of(conf: CaiConfig, arch: str, where: str = "", dockerd: bool = True
              ) -> tuple[SysboxVersion, Path, SysboxVersion | None, Path | None]:
    """The bundled sysbox .deb (for the target's architecture) and dockerd tarball; a missing one is a
    clear error naming the target (``where``) and its architecture. Without ``dockerd`` (lima-vm) the
    tarball is not needed (None when absent)."""
    from ops.facts import bundled_dockerd, bundled_sysbox

    bundle = Path(conf.expand(conf.bundle_dir))
    if not bundle.is_dir():
        raise OpsError(f"the bundle directory {bundle} does not exist",
                       "set cai.bundle_dir (INVOKE_CAI_BUNDLE_DIR) to the directory holding the "
                       "sysbox-ce .deb and the docker-<version>.tgz")
    sysbox_v, deb = bundled_sysbox(str(bundle), arch)
    if sysbox_v is None or deb is None:
        others = sorted(p.name for p in bundle.glob("sysbox-ce_*.deb"))
        found = f" (it holds only {', '.join(others)})" if others else ""
        raise OpsError(f"{where or 'the target'} is {arch} but {bundle} has no sysbox-ce_*_{arch}.deb{found}; "
                       "nothing was changed",
                       f"put the {arch} sysbox-ce .deb (and its .sha256) there or fix cai.bundle_dir")
    dockerd_v, tarball = bundled_dockerd(str(bundle))
    if (dockerd_v is None or tarball is None) and dockerd:
        raise OpsError(f"no docker-<version>.tgz in {bundle}",
                       "put the dockerd bundle tarball (and its .sha256) there or fix cai.bundle_dir")
    return sysbox_v, deb, dockerd_v, tarball


def drift_as_root(reader: Any, conf: CaiConfig, layout: Layout | None = None
                  ) -> tuple[list[RenderedFile], list[Drift]]:
    """Render for a target (of ``layout``) and compare with what it has installed, reading the
    installed files through ``reader`` (an ``ops.update.hostio.Host``: as root, the way they are
    written): a file only root can read is read, and one that cannot be read is an error, never
    "missing"."""
    from ops.units import DAEMON_JSON, detect_drift, managed_paths, render

    paths = managed_paths(conf, layout)
    files = reader.read_files(paths)
    installed = {p: files[p].text if files[p].exists else None for p in paths}
    rendered = render(conf, installed.get(DAEMON_JSON), layout=layout)
    return rendered, detect_drift(rendered, installed)


#: The dockerd bundle of a lima-vm host: not ours to install (the VM runs its distribution's engine).
NO_BUNDLE_HERE = Observed(State.NOT_INSTALLED, reason="lima-vm: the VM's docker.service, no dockerd bundle")


def gather(resolved: Any, conf: CaiConfig, reader: Any, layout: Layout | None = None) -> UpdateFacts:
    """Gather the host-side facts of a resolved target of ``layout`` (None: nothing installed yet, the
    containai layout); containers are gathered separately; managed files are read through ``reader``
    (see :func:`drift_as_root`). ``conf.docker_host`` must be the layout's engine socket."""
    from ops.facts import bundle_installed, sysbox_installed

    ctx = resolved.ctx
    vm = layout is not None and layout.name == LIMA_VM
    engine_unit = layout.engine_unit if layout is not None else ENGINE_UNIT
    host = probe_host_state(ctx, conf, engine_unit)
    sysbox_v, deb, dockerd_v, tarball = bundle_of(conf, resolved.facts.arch, resolved.name, dockerd=not vm)
    rendered, drift = drift_as_root(reader, conf, layout)
    return UpdateFacts(
        target=resolved.name,
        platform=resolved.platform,
        arch=resolved.facts.arch,
        host=host,
        sysbox_installed=sysbox_installed(ctx),
        sysbox_bundled=sysbox_v,
        sysbox_deb=str(deb),
        dockerd_installed=NO_BUNDLE_HERE if vm else bundle_installed(ctx, conf.opt_dir),
        dockerd_bundled=None if vm else dockerd_v,
        dockerd_tarball=None if vm or tarball is None else str(tarball),
        rendered=tuple(rendered),
        drift=tuple(drift),
        layout=LIMA_VM if vm else CONTAINAI,
        engine_unit=engine_unit,
    )


#: Engine unit states in which no container can run: the update may proceed to install a fix.
DOWN_STATES = ("failed", "inactive")


def running_containers(docker_host: str, conf: CaiConfig, host: HostState,
                       where: str = "", allow_down: bool = False,
                       engine_unit: str = ENGINE_UNIT) -> tuple[ManagedContainer, ...]:
    """The running managed containers; an engine that should answer and does not is an error.

    A host without the engine unit and without its socket has no engine yet: nothing runs. With
    ``allow_down`` (``--stop-containers``), an engine whose unit is failed or inactive runs nothing
    either, so a fixed bundle can still be installed.
    """
    from ops.engine import Engine

    if not host.engine_loaded and not host.socket:
        return ()
    try:
        engine = Engine.connect(docker_host, conf.label, timeout=30)
    except EngineError:
        if allow_down and host.engine_state in DOWN_STATES:
            return ()
        state = f"{engine_unit} is {host.engine_state}"
        more = (" or `inv update --stop-containers` to install the update with the engine down"
                if host.engine_state in DOWN_STATES else "")
        raise EngineError(f"the engine of {where or 'the target'} ({conf.docker_host}) does not answer "
                          f"({state})", f"start it with `systemctl start {engine_unit}`{more} "
                          "(or `inv update --resume` after an interrupted update), then rerun") from None
    try:
        return tuple(engine.running_managed())
    finally:
        engine.close()
