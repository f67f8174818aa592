"""The systemd units of a ContainAI host: render them from config, detect drift, install them.

Rendered files (all from templates in ``systemd/``):

- ``<unit_dir>/containai-docker.service``: the bundled dockerd, configured by daemon.json only.
- ``<unit_dir>/containai-docker-guard.service``: the stop hook. Ordered after the engine and the
  Sysbox units and ``PartOf=`` each of them, so systemd stops it first whenever any of them is
  stopped or restarted; its ``ExecStop=`` stops the managed containers while the engine still answers.
- ``<opt_dir>/libexec/containai-guard``: the script the hook runs (docker CLI of the bundle).
- ``/etc/containai/docker/daemon.json``: the keys the engine needs (hosts, data-root, exec-root,
  pidfile, the sysbox-runc runtime) merged into whatever else the host's file holds.

On the *lima-vm* layout (``ops.layout``: the macOS VM's own ``docker.service``) only the stop hook is
rendered: the guard unit (``PartOf=``/``After=`` docker.service and the Sysbox units, enabled as
``WantedBy=docker.service``) and its script in ``/usr/local/libexec`` (DOCKER_HOST the VM's
``/var/run/docker.sock``, the VM's docker CLI). The engine, its unit and daemon.json are the
distribution's and the Sysbox package's; nothing goes to ``/opt/containai`` there.

Rendering and drift detection are pure; ``install`` is the only writer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.config import CaiConfig
from ops.errors import ConfigError, OpsError
from ops.filedump import UNREADABLE, FileState, dump_command, parse_dump
from ops.layout import GUARD_UNIT, LIMA_VM, VM_GUARD_SCRIPT, Layout, Unit, daemon_defaults

ENGINE_UNIT = "containai-docker.service"
SYSBOX_UNITS = ("sysbox.service", "sysbox-mgr.service", "sysbox-fs.service")
DAEMON_JSON = "/etc/containai/docker/daemon.json"
EXEC_ROOT = "/var/run/containai-docker"
PIDFILE = "/var/run/containai-docker.pid"
SYSBOX_RUNC = "/usr/bin/sysbox-runc"
#: Seconds the stop hook and the engine get beyond the per-container stop timeout: the hook may first
#: cancel a container start still running (``GUARD_CANCEL_WAIT``), then lists the containers and stops
#: them all at once (batches of ``GUARD_BATCH`` in parallel), SIGKILL after the stop timeout.
STOP_MARGIN = 30
#: The docker CLI stops at most 50 containers at a time; the hook runs one ``docker stop`` per batch.
GUARD_BATCH = 50
#: Seconds the hook waits for a cancelled container start to end.
GUARD_CANCEL_WAIT = 10
#: Upper bound of the hook's background container start (``timeout``), in seconds.
GUARD_START_WORK_TIMEOUT = 600
#: The templates: ``systemd/`` of the repository, shipped inside an installed package as ``ops/systemd``.
TEMPLATE_DIR = next((d for d in (Path(__file__).resolve().parent / "systemd",
                                 Path(__file__).resolve().parent.parent / "systemd") if d.is_dir()),
                    Path(__file__).resolve().parent.parent / "systemd")


@dataclass(frozen=True)
class RenderedFile:
    """One file as the toolkit installs it on a host."""

    path: str  # absolute path on the target
    text: str
    mode: int
    kind: str  # "unit", "script" or "config"

    @property
    def name(self) -> str:
        """The file name (e.g. ``containai-docker.service``)."""
        return Path(self.path).name


@dataclass(frozen=True)
class Drift:
    """A file whose installed content differs from the rendered one (or is missing)."""

    path: str
    kind: str
    missing: bool
    diff: str

    @property
    def name(self) -> str:
        """The file name."""
        return Path(self.path).name


def is_vm(layout: Layout | None) -> bool:
    """True for the lima-vm layout (None, a host with no layout yet, renders the containai files)."""
    return layout is not None and layout.name == LIMA_VM


def guard_script_path(conf: CaiConfig, layout: Layout | None = None) -> str:
    """Where the stop-hook script is installed (``/usr/local/libexec`` on lima-vm: no /opt/containai)."""
    if is_vm(layout):
        return VM_GUARD_SCRIPT
    return f"{conf.opt_dir.rstrip('/')}/libexec/containai-guard"


def _template(name: str, template_dir: Path | None = None) -> str:
    path = (template_dir or TEMPLATE_DIR) / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OpsError(f"unit template {path} is missing ({exc.strerror})",
                       "reinstall containai-ops; the systemd/ templates ship with it") from None


def _substitute(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    if "@" in text:
        import re

        left = re.findall(r"@[A-Z_]+@", text)
        if left:
            raise OpsError(f"unit template has unknown placeholders {sorted(set(left))}",
                           "this is a bug in the templates")
    return text


def _check_conf(conf: CaiConfig) -> None:
    for key in ("opt_dir", "unit_dir"):
        value = getattr(conf, key)
        if not value.startswith("/") or any(c in value for c in " \t\n'\"$`\\%"):
            example = "/opt/containai" if key == "opt_dir" else "/etc/systemd/system"
            raise ConfigError(f"cai.{key} {value!r} must be an absolute path without spaces or quotes",
                              f"set cai.{key} to e.g. {example}")
    if not conf.docker_host.startswith("unix:///") or "'" in conf.docker_host:
        raise ConfigError(f"cai.docker_host {conf.docker_host!r} is not a unix:// socket path",
                          "use unix:///var/run/containai-docker.sock")
    if any(c in conf.label for c in "'\n\\"):
        raise ConfigError(f"cai.label {conf.label!r} contains quotes or newlines", "use containai.managed=true")


def template_values(conf: CaiConfig, layout: Layout | None = None) -> dict[str, str]:
    """The placeholder values of the templates (the guard's engine per layout)."""
    _check_conf(conf)
    stop = int(conf.stop_timeout)
    opt = conf.opt_dir.rstrip("/")
    vm = is_vm(layout)
    engine = layout.engine_unit if vm and layout is not None else ENGINE_UNIT
    return {
        "OPT_DIR": opt,
        "DAEMON_JSON": DAEMON_JSON,
        "DOCKER_HOST": layout.docker_host if vm and layout is not None else conf.docker_host,
        "DOCKER_BIN_DIR": "/usr/bin" if vm else f"{opt}/bin",
        "ENGINE_NAME": engine.removesuffix(".service"),
        "GUARD_UNITS": " ".join((engine, *SYSBOX_UNITS)),
        "GUARD_SCRIPT": guard_script_path(conf, layout),
        # containai: the engine unit Wants= the guard; lima-vm: the distribution's docker.service is
        # not ours, so the guard is enabled into it
        "GUARD_INSTALL": f"\n[Install]\nWantedBy={engine}\n" if vm else "",
        "LABEL": conf.label,
        "STOP_TIMEOUT": str(stop),
        "ENGINE_STOP_TIMEOUT": str(stop + STOP_MARGIN),
        "GUARD_STOP_TIMEOUT": str(stop + STOP_MARGIN),
        "STOP_MARGIN": str(STOP_MARGIN),
        "GUARD_BATCH": str(GUARD_BATCH),
        "GUARD_CANCEL_WAIT": str(GUARD_CANCEL_WAIT),
        "GUARD_START_WORK_TIMEOUT": str(GUARD_START_WORK_TIMEOUT),
    }


def daemon_required(conf: CaiConfig) -> dict[str, Any]:
    """The daemon.json keys the engine needs; they win over the host's values."""
    return {
        "hosts": [conf.docker_host],
        "data-root": conf.data_root,
        "exec-root": EXEC_ROOT,
        "pidfile": PIDFILE,
        "runtimes": {"sysbox-runc": {"path": SYSBOX_RUNC}},
    }


def merge_daemon_json(installed: str | None, conf: CaiConfig) -> str:
    """Pure: the daemon.json to install, keeping the host's other keys and runtimes.

    An installed file that is not a JSON object is an error (never silently replaced).
    """
    current: dict[str, Any] = {}
    if installed is not None and installed.strip():
        try:
            loaded = json.loads(installed)
        except json.JSONDecodeError as exc:
            raise OpsError(f"{DAEMON_JSON} is not valid JSON (line {exc.lineno}: {exc.msg})",
                           "fix or remove the file, then rerun") from None
        if not isinstance(loaded, dict):
            raise OpsError(f"{DAEMON_JSON} is not a JSON object", "fix or remove the file, then rerun")
        current = loaded
    merged = dict(current)
    merged.update(daemon_defaults(current))  # the installer's bridge and default runtime, unless the host set its own
    required = daemon_required(conf)
    for key, value in required.items():
        if key == "runtimes":
            runtimes = dict(current.get("runtimes") or {})
            runtimes.update(value)
            merged["runtimes"] = runtimes
        else:
            merged[key] = value
    if installed is not None and installed.strip():
        try:
            if json.loads(installed) == merged:
                return installed  # semantically identical: keep the host's formatting, no drift
        except json.JSONDecodeError:
            pass
    return json.dumps(merged, indent=2, sort_keys=True) + "\n"


def render(conf: CaiConfig, installed_daemon_json: str | None = None,
           template_dir: Path | None = None, layout: Layout | None = None) -> list[RenderedFile]:
    """Pure: every file as ``update`` installs it, in install order (for ``layout``: lima-vm gets the
    stop hook only)."""
    values = template_values(conf, layout)
    unit_dir = conf.unit_dir.rstrip("/")
    if is_vm(layout):
        return [
            RenderedFile(guard_script_path(conf, layout),
                         _substitute(_template("containai-guard.in", template_dir), values), 0o755, "script"),
            RenderedFile(f"{unit_dir}/{GUARD_UNIT}",
                         _substitute(_template(f"{GUARD_UNIT}.in", template_dir), values), 0o644, "unit"),
        ]
    return [
        RenderedFile(guard_script_path(conf),
                     _substitute(_template("containai-guard.in", template_dir), values), 0o755, "script"),
        RenderedFile(DAEMON_JSON, merge_daemon_json(installed_daemon_json, conf), 0o644, "config"),
        RenderedFile(f"{unit_dir}/{ENGINE_UNIT}",
                     _substitute(_template(f"{ENGINE_UNIT}.in", template_dir), values), 0o644, "unit"),
        RenderedFile(f"{unit_dir}/{GUARD_UNIT}",
                     _substitute(_template(f"{GUARD_UNIT}.in", template_dir), values), 0o644, "unit"),
    ]


def managed_paths(conf: CaiConfig, layout: Layout | None = None) -> list[str]:
    """The paths of every file the toolkit manages on a host (of ``layout``)."""
    unit_dir = conf.unit_dir.rstrip("/")
    if is_vm(layout):
        return [guard_script_path(conf, layout), f"{unit_dir}/{GUARD_UNIT}"]
    return [guard_script_path(conf), DAEMON_JSON, f"{unit_dir}/{ENGINE_UNIT}", f"{unit_dir}/{GUARD_UNIT}"]


# --- reading installed files ----------------------------------------------------------------------

def read_installed(ctx: Any, paths: list[str]) -> tuple[dict[str, str | None], list[str]]:
    """Read installed files on a target in one command, as the user ``ctx`` runs as: (path -> content,
    None when missing; the paths that exist but could not be read)."""
    from ops.targets import run

    code, out, err = run(ctx, dump_command(paths))
    found = parse_dump(out)
    if code != 0 and not found:
        raise OpsError(f"cannot read the installed units: {err.strip()[:200]}", "check access to the host")
    installed: dict[str, str | None] = {}
    unreadable: list[str] = []
    for p in paths:
        state = found.get(p, UNREADABLE)
        if isinstance(state, FileState):
            installed[p] = state.text
        else:
            installed[p] = None
            unreadable.append(p)
    return installed, unreadable


def unified_diff(path: str, installed: str | None, rendered: str) -> str:
    """A unified diff from the installed file to the rendered one."""
    before = (installed or "").splitlines(keepends=True)
    after = rendered.splitlines(keepends=True)
    label = path if installed is not None else "/dev/null"
    import difflib

    return "".join(difflib.unified_diff(before, after, fromfile=f"installed:{label}",
                                        tofile=f"rendered:{path}"))


def detect_drift(rendered: list[RenderedFile], installed: dict[str, str | None]) -> list[Drift]:
    """Pure: the rendered files whose installed content differs (or which are missing)."""
    drifts = []
    for f in rendered:
        have = installed.get(f.path)
        if have == f.text:
            continue
        drifts.append(Drift(f.path, f.kind, have is None, unified_diff(f.path, have, f.text)))
    return drifts


def drift_on(ctx: Any, conf: CaiConfig, layout: Layout | None = None) -> tuple[list[RenderedFile], list[Drift]]:
    """Render for a target (of ``layout``; merging its daemon.json) and compare with what it has installed.

    A file that exists but cannot be read here is an error naming it, never "missing": comparing against
    nothing would report drift that is not there (and render a daemon.json without the host's keys).
    """
    installed, unreadable = read_installed(ctx, managed_paths(conf, layout))
    if unreadable:
        raise OpsError(f"cannot read {', '.join(unreadable)} as this user",
                       "run inv doctor as root (sudo) to compare the installed units")
    rendered = render(conf, installed.get(DAEMON_JSON), layout=layout)
    return rendered, detect_drift(rendered, installed)


# --- writing ----------------------------------------------------------------------------------------

def write_out(files: list[RenderedFile], out_dir: str | Path) -> list[Path]:
    """Write rendered files into a local directory (flat, by file name), with their modes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f in files:
        dest = out / f.name
        tmp = dest.with_name(f".{f.name}.tmp")
        tmp.write_text(f.text, encoding="utf-8")
        tmp.chmod(f.mode)
        tmp.replace(dest)
        written.append(dest)
    return written


def install(host: Any, files: list[RenderedFile], enable: bool = True) -> None:
    """Write every file atomically on the target, then daemon-reload (and enable the engine unit).

    ``host`` is an ``ops.update.hostio.Host`` (a Context with root access).
    """
    for f in files:
        host.write_text(f.path, f.text, f.mode)
    host.sh("systemctl daemon-reload", what="systemctl daemon-reload")
    if enable:
        host.sh(f"systemctl enable {ENGINE_UNIT} >/dev/null 2>&1 || systemctl enable {ENGINE_UNIT}",
                what=f"systemctl enable {ENGINE_UNIT}")


# --- doctor -----------------------------------------------------------------------------------------

def doctor_commands(conf: CaiConfig, layout: Layout | None = None) -> list[str]:
    """The probes :func:`doctor_findings` runs (so a caller can run them in one round trip first):
    PID 1's name, the installed files, the engine unit's and the guard unit's states (of ``layout``).
    The engine unit's state (:func:`engine_active_command`) is only run when ``layout`` does not hold it."""
    return ["{ read -r p < /proc/1/comm && echo \"$p\"; } 2>/dev/null", dump_command(managed_paths(conf, layout)),
            engine_active_command(layout),
            f"systemctl show -p LoadState -p ActiveState -p SubState {GUARD_UNIT} 2>/dev/null"]


def engine_active_command(layout: Layout | None = None) -> str:
    """``systemctl is-active`` of the layout's engine unit."""
    engine = layout.engine_unit if is_vm(layout) and layout is not None else ENGINE_UNIT
    return f"systemctl is-active {engine} 2>/dev/null"


def doctor_findings(ctx: Any, conf: CaiConfig, target: str, platform: str,
                    layout: Layout | None = None, states: Mapping[str, Unit] | None = None) -> list[Any]:
    """Doctor checks: ``units.drift`` (warning, with the diff), ``engine.unit-inactive`` and
    ``guard.unit-inactive`` (errors).

    ``states``: the units as the layout probe read them (its one ``systemctl show``); the engine unit's
    and the guard unit's states are read from there when it holds them, else asked on the target.
    On a host whose PID 1 is not systemd there are no unit findings (other checks report that).
    """
    from ops.findings import Finding
    from ops.targets import run

    pid1, _dump, engine_active, guard_show = doctor_commands(conf, layout)
    engine_unit = layout.engine_unit if is_vm(layout) and layout is not None else ENGINE_UNIT
    code, out, _err = run(ctx, pid1)
    if out.strip() != "systemd":
        return []
    findings: list[Finding] = []
    try:
        _rendered, drifts = drift_on(ctx, conf, layout)
    except OpsError as exc:
        findings.append(Finding("units.drift", "warning", target, f"cannot compare the units: {exc.message}",
                                exc.hint, platform))
        drifts = []
    for d in drifts:
        state = "missing" if d.missing else "differs from what this version renders"
        findings.append(Finding(
            "units.drift", "warning", target, f"{d.path} {state}",
            "run `inv update` to install the rendered units (review them with `inv units.render`)",
            platform, {"path": d.path, "kind": d.kind, "missing": d.missing, "diff": d.diff},
        ))
    # the layout read the engine unit's ActiveState (what is-active prints) in the same round trip
    state = layout.engine_state if layout is not None else ""
    engine_read = (states or {}).get(engine_unit)
    if not state and engine_read is not None and engine_read.load:
        state = engine_read.active
    if not state:
        _c, active, _e = run(ctx, engine_active)
        state = active.strip() or "unknown"
    if state != "active":
        findings.append(Finding(
            "engine.unit-inactive", "error", target, f"{engine_unit} is {state}",
            f"start it with `sudo systemctl start {engine_unit}`; see `journalctl -u {engine_unit}`",
            platform, {"unit": engine_unit, "state": state},
        ))
    read = (states or {}).get(GUARD_UNIT)
    if read is not None and read.load:
        shown = {"LoadState": read.load, "ActiveState": read.active, "SubState": read.sub}
    else:
        shown = parse_unit_show(run(ctx, guard_show)[1])
    guard = guard_finding(shown, engine_active=state == "active")
    if guard is not None:
        message, data = guard
        findings.append(Finding(
            "guard.unit-inactive", "error", target, message,
            "start it with `sudo systemctl start containai-docker-guard` (it starts the containers its last "
            "stop stopped); see `journalctl -u containai-docker-guard`", platform, data,
        ))
    return findings


def parse_unit_show(text: str) -> dict[str, str]:
    """Pure parser of ``systemctl show -p KEY ...`` output (``Key=value`` lines)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def guard_finding(shown: dict[str, str], engine_active: bool) -> tuple[str, dict[str, Any]] | None:
    """Pure: the message and data of a ``guard.unit-inactive`` finding, or None when the stop hook is armed.

    The hook runs only while the guard unit is active: inactive or failed while the engine runs means a
    stop of the engine or of Sysbox kills the managed containers instead of stopping them. A guard unit
    that is not installed is ``units.drift``'s business; with the engine down, only a failed guard is
    worth a word (it went down with the engine otherwise).
    """
    load = shown.get("LoadState", "")
    active = shown.get("ActiveState", "") or "unknown"
    sub = shown.get("SubState", "")
    if load != "loaded" or active in ("active", "reloading", "activating", "deactivating"):
        return None
    if not engine_active and active != "failed":
        return None
    message = (f"{GUARD_UNIT} is {active}{f' ({sub})' if sub and sub != active else ''}: stopping "
               f"{ENGINE_UNIT} or Sysbox will not stop the managed containers gracefully first")
    return message, {"unit": GUARD_UNIT, "state": active, "substate": sub}
