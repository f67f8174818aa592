"""Probes: read a target's state through its Context into values, using the pure parsers.

Each probe runs one short command with ``in_stream=False`` (it never eats the user's stdin) and never
changes anything.
"""

from __future__ import annotations

import shlex
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

_SYSBOX_PROBE = (
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
    _code, out, _err = run(ctx, _SYSBOX_PROBE)
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


def has_command(ctx: Any, name: str) -> bool:
    """True when ``name`` is on the target's PATH."""
    code, _out, _err = run(ctx, f"command -v {shlex.quote(name)} >/dev/null 2>&1")
    return code == 0


def dpkg_installed(ctx: Any, package: str) -> bool:
    """True when dpkg says the package is installed on the target."""
    code, out, _err = run(ctx, f"dpkg-query -W -f='${{Status}}' {shlex.quote(package)} 2>/dev/null")
    return code == 0 and out.strip().endswith(" installed")


def unit_active(ctx: Any, unit: str) -> str:
    """``systemctl is-active`` of a unit on the target (active, inactive, failed, unknown...)."""
    _code, out, _err = run(ctx, f"systemctl is-active {shlex.quote(unit)} 2>/dev/null")
    return out.strip() or "unknown"


def parse_apparmor_profiles(text: str, profile: str) -> str:
    """Pure parser of /sys/kernel/security/apparmor/profiles: the mode of a profile, or ""."""
    for line in text.splitlines():
        name, _, rest = line.strip().rpartition(" (")
        if name == profile or name.endswith("/" + profile):
            return rest.rstrip(")").strip()
    return ""


def apparmor_mode(ctx: Any, profile: str) -> str:
    """The AppArmor mode of a profile on the target (enforce, complain, or "" when not loaded)."""
    _code, out, _err = run(ctx, "cat /sys/kernel/security/apparmor/profiles 2>/dev/null || true")
    return parse_apparmor_profiles(out, profile)
