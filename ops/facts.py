"""Probes: read a target's state through its Context into values, using the pure parsers.

Each probe runs one short command with ``in_stream=False`` (it never eats the user's stdin) and never
changes anything. :func:`batched` runs many probes in one round trip: one shell script with a marker
line around each command's output; the Context it returns answers each of those commands from that
output, so the probes and their parsers stay as they are.
"""

from __future__ import annotations

import os
import shlex
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ops.errors import VersionParseError
from ops.targets import run
from ops.versions import (
    DOCKERD_BINARIES,
    Observed,
    State,
    SysboxVersion,
    bundle_version_from_name,
    find_bundle_tarball,
    find_sysbox_deb,
    parse_bundle_version,
    parse_dpkg_version,
    parse_sysbox_runc_output,
)

SYSBOX_PROBE = (
    "if command -v sysbox-runc >/dev/null 2>&1; then sysbox-runc --version 2>&1; echo \"__rc=$?\"; "
    "else echo __missing; fi"
)


def parse_sysbox_probe(text: str) -> Observed:
    """Pure parser of the sysbox probe output."""
    if text.strip() == "__missing":
        return Observed(State.NOT_INSTALLED)
    body, _, rc = text.rpartition("__rc=")
    if rc.strip() not in ("", "0"):
        return Observed(State.UNKNOWN, reason=f"sysbox-runc --version exited {rc.strip()}")
    try:
        return Observed(State.INSTALLED, parse_sysbox_runc_output(body))
    except VersionParseError as exc:
        return Observed(State.UNKNOWN, reason=exc.message)


def sysbox_installed(ctx: Any) -> Observed:
    """The Sysbox version installed on the target, read from the binary (the source of truth)."""
    _code, out, _err = run(ctx, SYSBOX_PROBE)
    return parse_sysbox_probe(out)


def bundle_probe(opt_dir: str) -> str:
    """The command reading the dockerd bundle: ``VERSION`` (base64, or a missing marker), then one
    ``absent=<name>`` line per bundle binary in ``<opt_dir>/bin`` that is absent or not executable."""
    opt = shlex.quote(opt_dir.rstrip("/"))
    names = " ".join(DOCKERD_BINARIES)
    return (f"d={opt}; if [ -f \"$d/VERSION\" ]; then printf 'version='; head -c 256 \"$d/VERSION\" | base64 -w0; "
            f"echo; else echo version-missing; fi; for b in {names}; do "
            "if [ ! -f \"$d/bin/$b\" ] || [ ! -x \"$d/bin/$b\" ]; then echo \"absent=$b\"; fi; done")


def parse_bundle_probe(text: str) -> Observed:
    """Pure parser of :func:`bundle_probe` output.

    Installed means ``VERSION`` and all eight binaries, executable (a dangling link counts as absent).
    Nothing at all is "not installed"; a partial bundle is "not installed" too, with what is missing
    named in ``missing`` (and the version its ``VERSION`` file claims, when readable).
    """
    import base64
    import binascii

    raw: str | None = None
    absent: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("version="):
            try:
                raw = base64.b64decode(line[len("version="):]).decode("utf-8", errors="replace")
            except (binascii.Error, ValueError):
                raw = ""
        elif line.startswith("absent="):
            absent.append(line[len("absent="):])
    missing = tuple(["VERSION"] if raw is None else []) + tuple(b for b in DOCKERD_BINARIES if b in absent)
    version: SysboxVersion | None = None
    reason = ""
    if raw is not None:
        try:
            version = parse_bundle_version(raw)
        except VersionParseError as exc:
            reason = exc.message
    if raw is None and len(missing) == len(DOCKERD_BINARIES) + 1:
        return Observed(State.NOT_INSTALLED)
    if missing:
        return Observed(State.NOT_INSTALLED, version,
                        f"incomplete dockerd bundle: missing or not executable: {', '.join(missing)}", missing)
    if version is None:
        return Observed(State.UNKNOWN, reason=reason)
    return Observed(State.INSTALLED, version)


def bundle_installed(ctx: Any, opt_dir: str) -> Observed:
    """The dockerd bundle installed on the target: ``<opt_dir>/VERSION`` and the eight binaries in
    ``<opt_dir>/bin`` (see :func:`parse_bundle_probe`)."""
    _code, out, _err = run(ctx, bundle_probe(opt_dir))
    return parse_bundle_probe(out)


def bundled_sysbox(bundle_dir: str, arch: str) -> tuple[SysboxVersion | None, Path | None]:
    """The bundled sysbox-ce .deb for an architecture, and its version (from the package itself)."""
    path = find_sysbox_deb(bundle_dir, arch)
    if path is None:
        return None, None
    return deb_version(path), path


def deb_version(path: Path) -> SysboxVersion:
    """The Version field of a .deb, read with python-debian."""
    from debian import debfile

    try:
        control = debfile.DebFile(str(path)).debcontrol()
    except Exception as exc:
        raise VersionParseError(f"cannot read {path}: {exc}", "is it a complete .deb?") from None
    return parse_dpkg_version(str(control.get("Version", "")))


def bundled_dockerd(bundle_dir: str) -> tuple[SysboxVersion | None, Path | None]:
    """The bundled Docker static tarball and its version, from its name."""
    path = find_bundle_tarball(bundle_dir)
    if path is None:
        return None, None
    return bundle_version_from_name(path.name), path


def has_command_probe(name: str) -> str:
    """The command of :func:`has_command` (exit 0 when ``name`` is on the PATH)."""
    return f"command -v {shlex.quote(name)} >/dev/null 2>&1"


def has_command(ctx: Any, name: str) -> bool:
    """True when ``name`` is on the target's PATH."""
    code, _out, _err = run(ctx, has_command_probe(name))
    return code == 0


def dpkg_probe(package: str) -> str:
    """The command of :func:`dpkg_installed`."""
    return f"dpkg-query -W -f='${{Status}}' {shlex.quote(package)} 2>/dev/null"


def dpkg_installed(ctx: Any, package: str) -> bool:
    """True when dpkg says the package is installed on the target."""
    code, out, _err = run(ctx, dpkg_probe(package))
    return code == 0 and out.strip().endswith(" installed")


#: Runs the rest of a command line only where systemd is PID 1 (elsewhere systemctl fails, slowly, with
#: nothing on stdout).
IF_SYSTEMD = '[ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && '


def unit_active_probe(unit: str) -> str:
    """The command of :func:`unit_active`."""
    return f"{IF_SYSTEMD}systemctl is-active {shlex.quote(unit)} 2>/dev/null"


def unit_active(ctx: Any, unit: str) -> str:
    """``systemctl is-active`` of a unit on the target (active, inactive, failed, unknown...)."""
    _code, out, _err = run(ctx, unit_active_probe(unit))
    return out.strip() or "unknown"


def parse_apparmor_profiles(text: str, profile: str) -> str:
    """Pure parser of /sys/kernel/security/apparmor/profiles: the mode of a profile, or ""."""
    for line in text.splitlines():
        name, _, rest = line.strip().rpartition(" (")
        if name == profile or name.endswith("/" + profile):
            return rest.rstrip(")").strip()
    return ""


APPARMOR_PROBE = "cat /sys/kernel/security/apparmor/profiles 2>/dev/null || true"


def apparmor_mode(ctx: Any, profile: str) -> str:
    """The AppArmor mode of a profile on the target (enforce, complain, or "" when not loaded)."""
    _code, out, _err = run(ctx, APPARMOR_PROBE)
    return parse_apparmor_profiles(out, profile)


# --- many probes in one round trip ------------------------------------------------------------------

#: A batched command answered partly in this process: (the lighter command the target runs, start), see
#: :func:`batched`.
Alongside = tuple[str, Callable[[Any], Callable[[], str] | None]]

_BEGIN = "@@CAI-PROBE"
_END = "@@CAI-RC"
#: The batch script reads PID 1's name once into this variable (a shell builtin, no process).
PID1_VAR = "__cai_pid1"
#: The condition of a probe that only means something where systemd is PID 1 (see :class:`OnlyIf`).
IF_PID1_SYSTEMD = f'[ "${PID1_VAR}" = systemd ]'


class OnlyIf(str):
    """A probe command that a batch runs only when a shell ``condition`` holds on the target.

    It is the command itself (a ``str``, equal to it), so the check that runs it later asks for the same
    string. When the condition fails, the batch prints no answer for it, and a check that asks for it
    anyway runs it on its own: a skipped probe is never an empty answer.
    """

    condition: str

    def __new__(cls, command: str, condition: str) -> OnlyIf:
        self = super().__new__(cls, command)
        self.condition = condition
        return self


def batch_script(commands: Sequence[str], token: str) -> str:
    """One POSIX shell script running ``commands`` at the same time, each in its own subshell, and
    printing, in order, each one's stdout between a ``@@CAI-PROBE <token> <i>`` line and a
    ``@@CAI-RC <token> <i> <exit status>`` line (stderr passes through). ``token`` (random per run) keeps
    a command's own output from passing for a marker.

    The commands are read-only probes, independent of each other: each writes into a file of a private
    temporary folder, and the files are printed once all have finished. Where no temporary folder can be
    made, they run one after the other. An :class:`OnlyIf` command runs only when its condition holds
    (``PID1_VAR`` holds PID 1's name for such conditions); otherwise it has no markers at all.
    """
    read_pid1 = f"{{ read -r {PID1_VAR} < /proc/1/comm; }} 2>/dev/null || {PID1_VAR}="
    serial, launch, collect = [], [], []
    for i, command in enumerate(commands):
        begin = f"printf '{_BEGIN} {token} {i}\\n'"
        end = f"printf '\\n{_END} {token} {i} %s\\n'"
        when = getattr(command, "condition", "")
        run = f"{begin}\n(\n{command}\n)\n{end} \"$?\""
        serial.append(f"if {when}; then\n{run}\nfi" if when else run)
        start = (f"{begin} >\"$__t/{i}\"\n(\n{command}\n) >>\"$__t/{i}\" &\n__p{i}=$!")
        launch.append(f"if {when}; then\n{start}\nelse __p{i}=; fi" if when else start)
        collect.append(f'if [ -n "$__p{i}" ]; then wait "$__p{i}"; {end} "$?" >>"$__t/{i}"; '
                       f'set -- "$@" "$__t/{i}"; fi')
    return "\n".join([
        read_pid1,
        'if __t=$(mktemp -d "${TMPDIR:-/tmp}/cai-probe.XXXXXX" 2>/dev/null) && [ -d "$__t" ]; then',
        *launch,
        "set --",
        *collect,
        '[ "$#" -eq 0 ] || cat "$@"',
        'rm -rf "$__t"',
        "else",
        *serial,
        "fi",
    ]) + "\n"


def parse_batch(text: str, token: str, count: int) -> dict[int, tuple[int, str]]:
    """Pure parser of :func:`batch_script` output: index -> (exit status, stdout exactly as the command
    printed it). A command whose markers are missing (the script died before it) is left out."""
    found: dict[int, tuple[int, str]] = {}
    begin, end = f"{_BEGIN} {token} ", f"{_END} {token} "
    current: int | None = None
    body: list[str] = []
    for line in text.split("\n"):
        if current is None:
            index = line[len(begin):] if line.startswith(begin) else ""
            if index.isdigit():
                current, body = int(index), []
            continue
        if line.startswith(end):
            index, _, code = line[len(end):].partition(" ")
            if index == str(current) and code.lstrip("-").isdigit():
                # the script printed one newline of its own before the end marker
                found[current] = (int(code), "\n".join(body))
                current = None
                continue
        body.append(line)
    return {i: v for i, v in found.items() if i < count}


def unique(commands: Sequence[str]) -> list[str]:
    """Pure: the commands in order, each once; a command given both plain and as :class:`OnlyIf` runs
    unconditionally (at the place of its first mention)."""
    found: dict[str, str] = {}
    for command in commands:
        if command not in found or (isinstance(found[command], OnlyIf) and not isinstance(command, OnlyIf)):
            found[command] = command
    return list(found.values())


class Batched:
    """A Context whose probes were run together: ``run`` of a batched command (with ``warn=True``, as
    :func:`ops.targets.run` calls it) answers from the one round trip, run at the first such call; any
    other command, and everything else (``put``, ``config``, ``host``...), goes to the wrapped Context."""

    def __init__(self, ctx: Any, commands: Sequence[str], timeout: int = 120,
                 alongside: Mapping[str, Alongside] | None = None) -> None:
        self.ctx = ctx
        self.commands = unique(commands)
        self.timeout = timeout
        self.alongside = dict(alongside or {})
        self._results: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ctx, name)

    def _load(self) -> dict[str, Any]:
        with self._lock:
            if self._results is None:
                from invoke.runners import Result

                token = os.urandom(8).hex()
                commands, joins = self._substituted()
                # the script is POSIX sh: run locally by /bin/sh (dash on Debian and Ubuntu starts and
                # forks its subshells faster than bash); over SSH the target's login shell runs it
                result = self.ctx.run(batch_script(commands, token), hide=True, warn=True, in_stream=False,
                                      timeout=self.timeout, pty=False, shell="/bin/sh")
                outputs = parse_batch(str(result.stdout), token, len(commands))
                for i, join in joins.items():
                    if i in outputs:
                        code, out = outputs[i]
                        outputs[i] = (code, out + ("" if not out or out.endswith("\n") else "\n") + join())
                self._results = {
                    self.commands[i]: Result(stdout=out, stderr="", exited=code, command=self.commands[i],
                                             hide=("stdout", "stderr"))
                    for i, (code, out) in outputs.items()
                }
            return self._results

    def _substituted(self) -> tuple[list[str], dict[int, Callable[[], str]]]:
        """The commands the batch runs: a command with an ``alongside`` entry whose start accepts the
        Context runs as its lighter command (same condition), and its answer gets the entry's output."""
        commands: list[str] = list(self.commands)
        joins: dict[int, Callable[[], str]] = {}
        for i, command in enumerate(commands):
            entry = self.alongside.get(command)
            join = entry[1](self.ctx) if entry is not None else None
            if entry is not None and join is not None:
                when = getattr(command, "condition", "")
                commands[i] = OnlyIf(entry[0], when) if when else entry[0]
                joins[i] = join
        return commands, joins

    def run(self, command: str, **kwargs: Any) -> Any:
        """The batched answer of ``command`` when it was batched, else the wrapped Context's ``run``."""
        if command in self.commands and kwargs.get("warn"):
            found = self._load().get(command)
            if found is not None:
                return found
        return self.ctx.run(command, **kwargs)


def batched(ctx: Any, commands: Sequence[str], alongside: Mapping[str, Alongside] | None = None) -> Any:
    """``ctx`` answering ``commands`` from one round trip (see :class:`Batched`); ``ctx`` itself when
    there is nothing to batch. ``alongside``: command -> (lighter command, start), where ``start(ctx)``
    begins reading the rest of the answer in this process (None: not here, the command runs whole) and
    returns what waits for it and gives its output (e.g. the layout probe's engines through the Docker
    API over the target's SSH connection: ``ops.sshengine.layout_alongside``)."""
    return Batched(ctx, commands, alongside=alongside) if commands else ctx
