"""Host layouts: which engine serves the managed containers on a target, read on the target itself.

Two layouts exist in the field (see the ContainAI installer):

- ``containai`` (Linux, WSL2): ``containai-docker.service`` runs the dockerd of the bundle in
  ``/opt/containai`` with ``--config-file /etc/containai/docker/daemon.json``, on
  ``/var/run/containai-docker.sock``, data in ``/var/lib/containai-docker``, bridge ``cai0``
  (172.30.0.1/16) and sysbox-runc as the default runtime. A system Docker may run beside it.
- ``lima-vm`` (the macOS Lima VM): the distribution's or docker-ce's ``docker.service`` (with
  ``containerd.service``) on ``/var/run/docker.sock``, ``/etc/docker/daemon.json``, ``/var/lib/docker``,
  no bundle, Sysbox from its .deb registered as a runtime, runc stays the default.

The facts are one shell command (:func:`probe_command`, POSIX sh and coreutils only: it runs on a stock
host without Python) and a pure parser (:func:`parse_probe`); :func:`decide` turns them into a
:class:`Layout` or a :class:`LayoutError` naming the target and the cause. ``cai.layout`` forces the
layout (its facts are still read on the target).
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from dataclasses import dataclass, field, replace
from typing import Any

from ops.config import CaiConfig
from ops.errors import OpsError

CONTAINAI = "containai"
LIMA_VM = "lima-vm"
LAYOUTS = (CONTAINAI, LIMA_VM)

CAI_UNIT = "containai-docker.service"
VM_UNIT = "docker.service"
CONTAINERD_UNIT = "containerd.service"
#: The stop hook's unit (same name in both layouts) and Sysbox's unit: the layout probe reads their states
#: in its one ``systemctl show`` too, for the checks of the units (``ops.units``) and of Sysbox.
GUARD_UNIT = "containai-docker-guard.service"
SYSBOX_UNIT = "sysbox.service"
#: The units whose states the layout probe reads (one ``systemctl show``).
PROBED_UNITS = (CAI_UNIT, VM_UNIT, CONTAINERD_UNIT, GUARD_UNIT, SYSBOX_UNIT)
CAI_SOCKET = "/var/run/containai-docker.sock"
VM_SOCKET = "/var/run/docker.sock"
CAI_DAEMON_JSON = "/etc/containai/docker/daemon.json"
VM_DAEMON_JSON = "/etc/docker/daemon.json"
CAI_DATA_ROOT = "/var/lib/containai-docker"
VM_DATA_ROOT = "/var/lib/docker"
#: The stop-hook script on lima-vm (the VM has no /opt/containai: no bundle is ever installed there).
VM_GUARD_SCRIPT = "/usr/local/libexec/containai-guard"
CAI_OPT = "/opt/containai"
#: The binaries a complete dockerd bundle links in ``<opt>/bin`` (the installer's "installed" test).
BUNDLE_BINARIES = ("dockerd", "docker", "containerd", "containerd-shim-runc-v2", "docker-init",
                   "docker-proxy", "runc", "ctr")
#: The bridge and address the installer gives the containai engine (daemon.json names the bridge;
#: the address is set on the bridge itself, ``bip`` cannot be combined with ``bridge``).
CAI_BRIDGE = "cai0"
CAI_BRIDGE_ADDRESS = "172.30.0.1/16"
SYSBOX_RUNTIME = "sysbox-runc"
#: Bridge values of daemon.json that need no bridge made by the unit.
NO_BRIDGE = ("", "none", "docker0")
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


class LayoutError(OpsError):
    """The target matches no host layout, matches both, or its layout files cannot be read.

    ``kind`` says which: ``none``, ``both``, ``unreadable``, ``config``.
    """

    def __init__(self, message: str, hint: str = "", kind: str = "unreadable") -> None:
        super().__init__(message, hint)
        self.kind = kind


# --- facts ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """One systemd unit as the probe read it."""

    load: str = ""  # LoadState: loaded, not-found, masked, "" (no systemd)
    active: str = ""  # is-active: active, inactive, failed, ...
    path: str = ""  # FragmentPath
    text: str | None = None  # the unit file's content (containai-docker only)
    sub: str = ""  # SubState: running, exited, dead, failed, ...

    @property
    def present(self) -> bool:
        """The unit file exists (systemd knows it, or the file is there without systemd)."""
        return self.load == "loaded" or (self.load == "" and bool(self.path))


@dataclass(frozen=True)
class Engine:
    """What an engine socket answered (empty when nothing answered)."""

    answered: bool = False
    root_dir: str = ""
    default_runtime: str = ""
    runtimes: tuple[str, ...] = ()
    #: managed containers (any state), counted on the VM's socket only (the one :func:`decide` needs to
    #: tell which engine holds them); None where not counted
    managed: int | None = None


@dataclass(frozen=True)
class Address:
    """An address on a network interface (``ip -o addr show``)."""

    ifname: str
    family: str  # inet, inet6
    cidr: str


@dataclass(frozen=True)
class LayoutFacts:
    """Everything the layout probe read on a target."""

    units: dict[str, Unit] = field(default_factory=dict)
    sockets: dict[str, bool] = field(default_factory=dict)
    files: dict[str, str | None] = field(default_factory=dict)  # path -> text; None = missing
    unreadable: tuple[str, ...] = ()
    bundle_version: str | None = None
    bundle_links: dict[str, str] = field(default_factory=dict)  # binary -> link / file / missing
    bridges: tuple[str, ...] = ()
    addresses: tuple[Address, ...] = ()
    engines: dict[str, Engine] = field(default_factory=dict)  # socket path -> Engine

    def unit(self, name: str) -> Unit:
        """A unit's facts (an empty Unit when the probe did not read it)."""
        return self.units.get(name, Unit())

    def engine(self, socket: str) -> Engine:
        """What the engine on ``socket`` answered."""
        return self.engines.get(socket, Engine())

    @property
    def bundle(self) -> bool:
        """A complete dockerd bundle: VERSION and every binary an executable symlink."""
        return bool(self.bundle_version) and all(self.bundle_links.get(b) == "link" for b in BUNDLE_BINARIES)

    def addresses_of(self, ifname: str, family: str = "inet") -> tuple[str, ...]:
        """The CIDRs of an interface."""
        return tuple(a.cidr for a in self.addresses if a.ifname == ifname and a.family == family)


def probe_command(label: str = "containai.managed=true", engines: bool = True) -> str:
    """One POSIX shell command printing the layout facts as ``key=value`` lines (read-only).

    ``engines=False``: without the engines' answers (no docker call on the target); the caller asks the
    engines itself, through the Docker API, and adds :func:`engine_lines` to the output."""
    q = shlex.quote
    units = " ".join(PROBED_UNITS)
    files = " ".join((CAI_DAEMON_JSON, VM_DAEMON_JSON, f"{CAI_OPT}/VERSION"))
    asked = [] if not engines else [
        # the engines first, in the background (each docker call takes a while): every line is one
        # short write, and the parser does not depend on the order of the lines
        "d=",
        f"for s in {CAI_SOCKET} {VM_SOCKET}; do",
        '  [ -S "$s" ] || continue',
        f'  [ -n "$d" ] || {{ d={CAI_OPT}/bin/docker; [ -x "$d" ] || d=$(command -v docker 2>/dev/null); }}',
        '  [ -n "$d" ] || continue',
        "  { i=$(timeout 15 \"$d\" -H \"unix://$s\" info --format "
        "'{{.DockerRootDir}}|{{.DefaultRuntime}}|{{range $k, $v := .Runtimes}}{{$k}},{{end}}' 2>/dev/null)"
        ' && p "info:$s" "$i"; } &',
        f'  [ "$s" = {VM_SOCKET} ] || continue',
        f"  {{ n=$(timeout 15 \"$d\" -H \"unix://$s\" ps -aq --filter label={q(label)} 2>/dev/null | wc -l)"
        ' && p "managed:$s" "$n"; } &',
        "done",
    ]
    return "\n".join([
        "p() { printf '%s=%s\\n' \"$1\" \"$2\"; }",
        *asked,
        # systemctl only where systemd is PID 1: elsewhere it fails (slowly) with nothing on stdout.
        # PID 1's name is read by the shell itself; one `systemctl show` answers for every unit of
        # PROBED_UNITS, one block each, in the order asked, blocks separated by an empty line
        # (ActiveState is what `systemctl is-active` prints).
        "{ read -r i1 < /proc/1/comm; } 2>/dev/null || i1=",
        f"set -- {units}",
        "x=",
        '[ "$i1" != systemd ] || x=$(systemctl show -p LoadState -p ActiveState -p SubState -p FragmentPath "$@"'
        ' 2>/dev/null)',
        f"c=/etc/systemd/system/{CAI_UNIT}",
        'e() { p "load:$1" "$l"; p "active:$1" "$a"; p "sub:$1" "$u"',
        f'  [ "$1" != {CAI_UNIT} ] || [ -z "$f" ] || c=$f',
        '  if [ -z "$f" ]; then for d in /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do',
        '    if [ -f "$d/$1" ]; then f="$d/$1"; break; fi; done; fi',
        '  p "path:$1" "$f"; l= a= u= f=; }',
        "l= a= u= f=",
        "while IFS= read -r y; do",
        "  case $y in",
        "    LoadState=*) l=${y#*=} ;;",
        "    ActiveState=*) a=${y#*=} ;;",
        "    SubState=*) u=${y#*=} ;;",
        "    FragmentPath=*) f=${y#*=} ;;",
        "    '') if [ \"$#\" -gt 0 ]; then e \"$1\"; shift; fi ;;",
        "  esac",
        "done <<EOF",
        "$x",
        "EOF",
        'while [ "$#" -gt 0 ]; do e "$1"; shift; done',
        'f=$c',
        f"for s in {CAI_SOCKET} {VM_SOCKET}; do",
        '  if [ -S "$s" ]; then p "socket:$s" yes; else p "socket:$s" no; fi',
        "done",
        f'for f in {files} "$f"; do',
        '  if [ ! -e "$f" ]; then p "file:$f" missing',
        '  elif [ -r "$f" ] && c=$(base64 -w0 < "$f" 2>/dev/null); then p "file:$f" "B:$c"',
        '  else p "file:$f" unreadable; fi',
        "done",
        f"for b in {' '.join(BUNDLE_BINARIES)}; do",
        f'  l={CAI_OPT}/bin/$b',
        '  if [ -L "$l" ] && [ -x "$l" ]; then p "bin:$b" link; elif [ -e "$l" ]; then p "bin:$b" file;'
        ' else p "bin:$b" missing; fi',
        "done",
        # prefixed by the shell itself (a sed each cost two more processes)
        'ip -o link show type bridge 2>/dev/null | while IFS= read -r y; do p link "$y"; done',
        'ip -o addr show 2>/dev/null | while IFS= read -r y; do p addr "$y"; done',
        "wait",
        "true",
    ])


def _parse_ip_addr(line: str) -> Address | None:
    """``3: cai0    inet 172.30.0.1/16 scope global cai0\\ ...`` -> Address."""
    parts = line.split()
    if len(parts) < 4 or parts[2] not in ("inet", "inet6"):
        return None
    return Address(parts[1].split("@", 1)[0], parts[2], parts[3])


def _parse_ip_link(line: str) -> str:
    """``3: cai0: <...> mtu 1500 ...`` -> ``cai0``."""
    parts = line.split()
    return parts[1].rstrip(":").split("@", 1)[0] if len(parts) > 1 else ""


#: The engine sockets whose answers the layout probe reads, and the one whose managed containers it counts.
ENGINE_SOCKETS = (CAI_SOCKET, VM_SOCKET)


def engine_lines(socket: str, info: dict[str, Any], managed: int | None = None) -> str:
    """Pure: the probe's lines of an engine that answered ``GET /info`` with ``info`` (the fields the
    probe's ``docker info --format`` prints), and of its managed containers when counted."""
    runtimes = "".join(f"{name}," for name in sorted(info.get("Runtimes") or {}))
    line = f"info:{socket}={info.get('DockerRootDir', '')}|{info.get('DefaultRuntime', '')}|{runtimes}\n"
    return line + (f"managed:{socket}={managed}\n" if managed is not None else "")


def parse_probe(text: str) -> LayoutFacts:
    """Pure parser of :func:`probe_command` output."""
    units: dict[str, dict[str, str]] = {}
    sockets: dict[str, bool] = {}
    files: dict[str, str | None] = {}
    unreadable: list[str] = []
    links: dict[str, str] = {}
    bridges: list[str] = []
    addresses: list[Address] = []
    infos: dict[str, str] = {}
    managed: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        kind, _, name = key.partition(":")
        if kind in ("load", "active", "sub", "path") and name:
            units.setdefault(name, {})[kind] = value.strip()
        elif kind == "socket":
            sockets[name] = value.strip() == "yes"
        elif kind == "file":
            if value.startswith("B:"):
                try:
                    files[name] = base64.b64decode(value[2:]).decode("utf-8", errors="replace")
                except ValueError:
                    unreadable.append(name)
            elif value.strip() == "unreadable":
                unreadable.append(name)
            else:
                files[name] = None
        elif kind == "bin":
            links[name] = value.strip()
        elif key == "link":
            bridge = _parse_ip_link(value)
            if bridge:
                bridges.append(bridge)
        elif key == "addr":
            address = _parse_ip_addr(value)
            if address is not None:
                addresses.append(address)
        elif kind == "info":
            infos[name] = value.strip()
        elif kind == "managed":
            try:
                managed[name] = int(value.strip() or 0)
            except ValueError:
                managed[name] = 0
    engines: dict[str, Engine] = {}
    for sock, info in infos.items():
        root, _, rest = info.partition("|")
        default, _, runtimes = rest.partition("|")
        engines[sock] = Engine(True, root, default,
                               tuple(sorted(r for r in runtimes.split(",") if r)), managed.get(sock))
    unit_facts = {}
    for name, raw in units.items():
        path = raw.get("path", "")
        unit_facts[name] = Unit(raw.get("load", ""), raw.get("active", ""), path,
                                files.get(path) if name == CAI_UNIT and path else None, raw.get("sub", ""))
    version = files.get(f"{CAI_OPT}/VERSION")
    return LayoutFacts(
        units=unit_facts, sockets=sockets, files=files, unreadable=tuple(unreadable),
        bundle_version=version.strip() if version is not None and version.strip() else None,
        bundle_links=links, bridges=tuple(bridges), addresses=tuple(addresses), engines=engines,
    )


# --- layouts --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """The engine that serves a target's managed containers, and what it needs."""

    name: str  # containai or lima-vm
    engine_unit: str
    socket: str
    daemon_json: str
    data_root: str  # the engine's DockerRootDir (else daemon.json's data-root, else the default)
    bundle: bool  # a dockerd bundle is installed in /opt/containai
    bridge: str  # the bridge the engine uses ("" = Docker's docker0)
    bridge_address: str  # the address the bridge must carry ("" = the engine assigns it)
    default_runtime: str  # the default runtime this layout expects
    companion_units: tuple[str, ...] = ()  # units the engine unit runs with (containerd.service)
    forced: bool = False  # cai.layout named it
    # observed
    engine_state: str = ""  # is-active of the engine unit
    engine_answered: bool = False
    observed_default_runtime: str = ""
    runtimes: tuple[str, ...] = ()
    bridge_present: bool = False
    bridge_addresses: tuple[str, ...] = ()
    daemon_config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    installer_unit: bool = False  # the engine unit is the bash installer's (its ExecStopPre= never runs)

    @property
    def docker_host(self) -> str:
        """The engine's docker host URL on the target."""
        return f"unix://{self.socket}"

    @property
    def uses_bundle(self) -> bool:
        """The layout runs the dockerd bundle and containai-docker.service (update may install them)."""
        return self.name == CONTAINAI

    @property
    def stop_hook_part_of(self) -> tuple[str, ...]:
        """The units whose stop or restart must first stop the managed containers."""
        return (self.engine_unit, "sysbox.service", "sysbox-mgr.service", "sysbox-fs.service")

    def summary(self) -> dict[str, Any]:
        """The JSON form (for doctor and update reports)."""
        return {
            "layout": self.name, "forced": self.forced, "engine_unit": self.engine_unit,
            "engine_state": self.engine_state, "socket": self.socket, "daemon_json": self.daemon_json,
            "data_root": self.data_root, "bundle": self.bundle, "bridge": self.bridge,
            "bridge_address": self.bridge_address, "bridge_present": self.bridge_present,
            "bridge_addresses": list(self.bridge_addresses), "default_runtime": self.default_runtime,
            "observed_default_runtime": self.observed_default_runtime, "runtimes": list(self.runtimes),
            "installer_unit": self.installer_unit,
        }


def _daemon_config(facts: LayoutFacts, path: str, target: str) -> dict[str, Any]:
    """The parsed daemon.json at path ({} when missing); unreadable or invalid is a LayoutError."""
    if path in facts.unreadable:
        raise LayoutError(f"{target}: {path} exists but cannot be read; nothing was changed",
                          "run as root (or fix its permissions), then rerun")
    text = facts.files.get(path)
    if text is None or not text.strip():
        return {}
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LayoutError(f"{target}: {path} is not valid JSON (line {exc.lineno}: {exc.msg}); "
                          "nothing was changed", "fix or remove the file, then rerun") from None
    if not isinstance(loaded, dict):
        raise LayoutError(f"{target}: {path} is not a JSON object; nothing was changed",
                          "fix or remove the file, then rerun")
    return loaded


def _has_sysbox(config: dict[str, Any], engine: Engine) -> bool:
    runtimes = config.get("runtimes")
    return (isinstance(runtimes, dict) and SYSBOX_RUNTIME in runtimes) or SYSBOX_RUNTIME in engine.runtimes


def is_installer_unit(text: str | None) -> bool:
    """Pure: the unit was written by the bash installer (it carries ``ExecStopPre=``, not a systemd key)."""
    return text is not None and any(line.strip().startswith("ExecStopPre=") for line in text.splitlines())


def containai_layout(facts: LayoutFacts, target: str, forced: bool = False) -> Layout:
    """The containai layout with the facts of a target."""
    config = _daemon_config(facts, CAI_DAEMON_JSON, target)
    engine = facts.engine(CAI_SOCKET)
    bridge = str(config.get("bridge") or "")
    if bridge in NO_BRIDGE:
        bridge_name, address = ("docker0" if bridge != "none" else ""), ""
    else:
        bridge_name, address = bridge, CAI_BRIDGE_ADDRESS
    unit = facts.unit(CAI_UNIT)
    return Layout(
        name=CONTAINAI, engine_unit=CAI_UNIT, socket=CAI_SOCKET, daemon_json=CAI_DAEMON_JSON,
        data_root=engine.root_dir or str(config.get("data-root") or CAI_DATA_ROOT), bundle=facts.bundle,
        bridge=bridge_name, bridge_address=address, default_runtime=SYSBOX_RUNTIME, forced=forced,
        engine_state=unit.active, engine_answered=engine.answered,
        observed_default_runtime=engine.default_runtime, runtimes=engine.runtimes,
        bridge_present=bool(bridge_name) and bridge_name in facts.bridges,
        bridge_addresses=facts.addresses_of(bridge_name) if bridge_name else (),
        daemon_config=config, installer_unit=is_installer_unit(unit.text),
    )


def lima_vm_layout(facts: LayoutFacts, target: str, forced: bool = False) -> Layout:
    """The lima-vm layout with the facts of a target."""
    config = _daemon_config(facts, VM_DAEMON_JSON, target)
    engine = facts.engine(VM_SOCKET)
    bridge = str(config.get("bridge") or "") or "docker0"
    bridge_name = "" if bridge == "none" else bridge
    return Layout(
        name=LIMA_VM, engine_unit=VM_UNIT, socket=VM_SOCKET, daemon_json=VM_DAEMON_JSON,
        data_root=engine.root_dir or str(config.get("data-root") or VM_DATA_ROOT), bundle=facts.bundle,
        bridge=bridge_name, bridge_address="", default_runtime="runc", companion_units=(CONTAINERD_UNIT,),
        forced=forced, engine_state=facts.unit(VM_UNIT).active, engine_answered=engine.answered,
        observed_default_runtime=engine.default_runtime, runtimes=engine.runtimes,
        bridge_present=bool(bridge_name) and bridge_name in facts.bridges,
        bridge_addresses=facts.addresses_of(bridge_name) if bridge_name else (),
        daemon_config=config,
    )


def decide(facts: LayoutFacts, target: str, forced: str = "") -> Layout:
    """Pure: the layout of a target from its facts (or the forced one); LayoutError when it matches
    none, or both in a way that leaves the engine of the managed containers unknown.

    - containai: ``containai-docker.service`` exists. A system ``docker.service`` beside it is normal
      (the installer runs a second engine), unless that one holds managed containers.
    - lima-vm: no ``containai-docker.service``, and ``docker.service`` has sysbox-runc registered
      (in ``/etc/docker/daemon.json`` or among its engine's runtimes).
    """
    if forced:
        if forced not in LAYOUTS:
            raise LayoutError(f"cai.layout {forced!r} is not one of {', '.join(LAYOUTS)}",
                              "leave it empty to read the layout on the target", "config")
        return (containai_layout if forced == CONTAINAI else lima_vm_layout)(facts, target, True)
    cai = facts.unit(CAI_UNIT).present
    vm_config = _daemon_config(facts, VM_DAEMON_JSON, target) if facts.unit(VM_UNIT).present else {}
    vm_engine = facts.engine(VM_SOCKET)
    vm = facts.unit(VM_UNIT).present and _has_sysbox(vm_config, vm_engine)
    if cai and vm and vm_engine.managed:
        raise LayoutError(
            f"{target} has both engines: {CAI_UNIT} and {VM_UNIT} with sysbox-runc, which holds "
            f"{vm_engine.managed} managed container(s); nothing was changed",
            "set cai.layout (INVOKE_CAI_LAYOUT) to containai or lima-vm to name the engine to act on", "both")
    if cai:
        return containai_layout(facts, target)
    if vm:
        return lima_vm_layout(facts, target)
    if facts.unit(VM_UNIT).present:
        raise LayoutError(f"{target} matches no host layout: {VM_UNIT} exists but has no sysbox-runc runtime "
                          f"and there is no {CAI_UNIT}; nothing was changed",
                          "install ContainAI there first, or set cai.layout (INVOKE_CAI_LAYOUT) to "
                          "containai or lima-vm", "none")
    raise LayoutError(f"{target} matches no host layout: neither {CAI_UNIT} nor a {VM_UNIT} with "
                      "sysbox-runc exists; nothing was changed",
                      "install ContainAI there first, or set cai.layout (INVOKE_CAI_LAYOUT) to "
                      "containai or lima-vm", "none")


def bridge_conflict(layout: Layout, facts: LayoutFacts, strict: bool = True) -> str:
    """Pure: why the bridge address the layout needs cannot be used ("" when it can).

    The bridge's network must not overlap an address of another interface; with ``strict``, a bridge
    that already has another IPv4 address is reported too (the installer leaves such an address in
    place, and the engine then uses it).
    """
    if not layout.bridge or not layout.bridge_address:
        return ""
    import ipaddress

    wanted = ipaddress.ip_interface(layout.bridge_address)
    for addr in facts.addresses:
        if addr.family != "inet" or addr.ifname == layout.bridge:
            continue
        other = ipaddress.ip_interface(addr.cidr)
        if other.network.overlaps(wanted.network):
            return (f"the bridge {layout.bridge} needs {layout.bridge_address}, which overlaps {addr.cidr} "
                    f"on {addr.ifname}")
    have = [ipaddress.ip_interface(a) for a in layout.bridge_addresses]
    if strict and have and wanted not in have:
        return (f"the bridge {layout.bridge} carries {', '.join(layout.bridge_addresses)} instead of "
                f"{layout.bridge_address}")
    return ""


def read_facts(ctx: Any, conf: CaiConfig, where: str = "") -> LayoutFacts:
    """Run the layout probe on a target."""
    from ops.targets import describe, run

    code, out, err = run(ctx, probe_command(conf.label))
    if "load:" not in out:
        raise LayoutError(f"{where or describe(ctx)}: the layout probe failed ({err.strip()[:200] or code})",
                          "check that the host is a POSIX host with a shell")
    return parse_probe(out)


def read_layout(ctx: Any, conf: CaiConfig, where: str = "") -> Layout:
    """The layout of a target, read there (``cai.layout`` forces it)."""
    from ops.targets import describe

    target = where or describe(ctx)
    return decide(read_facts(ctx, conf, target), target, conf.layout)


def conf_for(conf: CaiConfig, layout: Layout) -> CaiConfig:
    """The config with the layout's engine socket and data root (what engine code reads)."""
    return replace(conf, docker_host=layout.docker_host, data_root=layout.data_root)


# --- what the containai engine needs in its daemon.json and unit -----------------------------------

def daemon_defaults(current: dict[str, Any]) -> dict[str, Any]:
    """Pure: the keys the installer writes that a host's containai daemon.json lacks.

    ``bridge: cai0`` (unless the host names a bridge or a ``bip``: Docker refuses both together) and
    ``default-runtime: sysbox-runc`` (unless the host chose another). The host's own values win.
    """
    out: dict[str, Any] = {}
    if "bridge" not in current and "bip" not in current:
        out["bridge"] = CAI_BRIDGE
    if "default-runtime" not in current:
        out["default-runtime"] = SYSBOX_RUNTIME
    return out


def unit_values(daemon_json_text: str) -> dict[str, str]:
    """Pure: the engine unit's bridge placeholders from the daemon.json it will read.

    ``BRIDGE`` is empty when the engine needs no bridge made for it (none, docker0 or absent).
    """
    try:
        config = json.loads(daemon_json_text or "{}")
    except json.JSONDecodeError:
        config = {}
    bridge = str(config.get("bridge") or "") if isinstance(config, dict) else ""
    if bridge in NO_BRIDGE:
        return {"BRIDGE": "", "BRIDGE_ADDRESS": ""}
    if not _IFNAME_RE.fullmatch(bridge):
        raise LayoutError(f"daemon.json names the bridge {bridge!r}, which is not a network interface name",
                          "use a name of up to 15 letters, digits, '.', '_' or '-' (the installer uses cai0)")
    return {"BRIDGE": bridge, "BRIDGE_ADDRESS": CAI_BRIDGE_ADDRESS}


# --- doctor ---------------------------------------------------------------------------------------

def findings(layout: Layout, facts: LayoutFacts, target: str, platform: str = "") -> list[Any]:
    """Pure: doctor findings about a target's layout, read on the target it describes.

    ``layout.detected`` (info); the engine's runtimes (sysbox-runc registered: error otherwise) and its
    default runtime (sysbox-runc expected on containai, runc on lima-vm); the bridge the engine needs,
    present with its address; a unit written by the bash installer, whose stop hook never runs.
    """
    from ops.findings import Finding

    def f(code: str, severity: str, message: str, hint: str = "", **data: Any) -> Finding:
        return Finding(code, severity, target, message, hint, platform, data)  # type: ignore[arg-type]

    how = "forced by cai.layout" if layout.forced else "read on the target"
    bundle = f"bundle {facts.bundle_version}" if layout.bundle else "no dockerd bundle"
    out = [f("layout.detected", "info",
             f"{layout.name} layout ({how}): {layout.engine_unit} on {layout.socket}, data {layout.data_root}, "
             f"{bundle}" + (f", bridge {layout.bridge}" if layout.bridge else ""), **layout.summary())]
    if layout.engine_answered:
        if SYSBOX_RUNTIME not in layout.runtimes:
            config = layout.daemon_json
            out.append(f("engine.sysbox-runtime-missing", "error",
                         f"the engine on {layout.socket} has no sysbox-runc runtime "
                         f"({', '.join(layout.runtimes) or 'none'})",
                         f"register it in {config} (runtimes.sysbox-runc.path /usr/bin/sysbox-runc) and restart "
                         f"{layout.engine_unit}", runtimes=list(layout.runtimes)))
        if layout.observed_default_runtime and layout.observed_default_runtime != layout.default_runtime:
            if layout.name == CONTAINAI:
                out.append(f("engine.default-runtime", "warning",
                             f"the default runtime is {layout.observed_default_runtime}, not sysbox-runc: a "
                             "container started without --runtime escapes Sysbox",
                             f'set "default-runtime": "sysbox-runc" in {layout.daemon_json} '
                             "(inv update --stop-containers does it) and restart the engine",
                             expected=layout.default_runtime, observed=layout.observed_default_runtime))
            else:
                out.append(f("engine.default-runtime", "info",
                             f"the default runtime of the VM's engine is {layout.observed_default_runtime} "
                             "(the installer keeps runc; ContainAI names --runtime=sysbox-runc)", "",
                             expected=layout.default_runtime, observed=layout.observed_default_runtime))
    if layout.bridge and layout.bridge_address:
        if not layout.bridge_present:
            out.append(f("bridge.missing", "error",
                         f"the bridge {layout.bridge} named in {layout.daemon_json} does not exist: the engine "
                         "cannot start (\"bridge device with non default name ... must be created manually\")",
                         f"sudo ip link add name {layout.bridge} type bridge && sudo ip addr add "
                         f"{layout.bridge_address} dev {layout.bridge} && sudo ip link set {layout.bridge} up; "
                         "inv update installs a unit that makes it at every start", bridge=layout.bridge))
        conflict = bridge_conflict(layout, facts)
        if conflict:
            out.append(f("bridge.address", "warning", conflict,
                         f"free {layout.bridge_address} (or move the other network), then restart "
                         f"{layout.engine_unit}", bridge=layout.bridge, addresses=list(layout.bridge_addresses)))
    if layout.installer_unit:
        out.append(f("units.installer-unit", "warning",
                     f"{layout.engine_unit} was written by an older installer: its stop hook (ExecStopPre=) "
                     "never runs, so stopping or restarting the engine kills the agent containers instead of "
                     "stopping them gracefully",
                     "run `inv update --stop-containers` to install the toolkit's units and its stop hook"))
    return out


def layout_error_finding(exc: LayoutError, target: str, platform: str = "") -> Any:
    """The one finding of a target whose layout cannot be told."""
    from ops.findings import Finding

    return Finding("layout.unknown", "error", target, exc.message, exc.hint, platform)


# --- update ---------------------------------------------------------------------------------------

def update_layout(ctx: Any, conf: CaiConfig, where: str, facts: LayoutFacts | None = None) -> Layout | None:
    """The layout ``inv update`` acts on, or a refusal (LayoutError: nothing was changed).

    ``facts`` are the probe's facts when the caller read them itself (as root: a 0600 daemon.json).

    - both engines, an unreadable or invalid daemon.json: refused (update never guesses);
    - lima-vm: the VM's docker.service; update upgrades Sysbox and the stop hook there only, never the
      dockerd bundle or containai-docker;
    - a bridge whose address overlaps another interface's: refused (the engine could not start);
    - no layout yet (nothing installed): None, the containai layout is installed as on a new host.
    """
    try:
        facts = facts if facts is not None else read_facts(ctx, conf, where)
        layout = decide(facts, where, conf.layout)
    except LayoutError as exc:
        if exc.kind == "none":
            return None
        raise
    conflict = bridge_conflict(layout, facts, strict=False)
    if conflict:
        raise LayoutError(f"{where}: {conflict}; nothing was changed",
                          f"free {layout.bridge_address} or name another bridge in {layout.daemon_json}", "bridge")
    return layout
