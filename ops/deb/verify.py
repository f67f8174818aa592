"""The checks of ``inv pkg.verify-deb``: the built sysbox-ce .deb is proven right from its own contents.

``violations(info, ...)`` is pure: it takes what ``inspect.read_deb`` read and returns one line per
problem. ``install_check(path, ...)`` asks the real apt, in simulation mode, what installing the .deb
would do on two synthetic hosts (a clean one and one with fuse 2 installed), resolving against this
machine's Debian package lists; ``parse_apt_simulation`` and ``synthetic_status`` are its pure parts.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ops.deb.control import FUSE, FUSE3, alternative_names, is_plain_fuse3, names_fuse, split_clauses
from ops.deb.errors import DebError
from ops.deb.inspect import DebInfo, deb_file_name, host_architecture
from ops.deb.version import MARKER_RE, release_version, sorts_above_upstream
from ops.errors import VersionParseError

PACKAGE = "sysbox-ce"
DEFAULT_MARKER = "+containai."
ARCHITECTURES = ("amd64", "arm64")
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")
UNITS = ("sysbox.service", "sysbox-mgr.service", "sysbox-fs.service")
#: Files the package must install; a path under /lib may also be shipped under /usr/lib (merged /usr).
REQUIRED_FILES = (
    "/usr/bin/sysbox-runc",
    "/usr/bin/sysbox-mgr",
    "/usr/bin/sysbox-fs",
    *(f"/lib/systemd/system/{unit}" for unit in UNITS),
    "/lib/sysctl.d/99-sysbox-sysctl.conf",
)


def unmarked_version(version: str, marker: str) -> str | None:
    """The version without the build marker (``1:0.6.7+containai.2026-0`` -> ``1:0.6.7-0``), or None."""
    from debian.debian_support import Version

    parsed = Version(version)
    upstream = parsed.upstream_version or ""
    if marker not in upstream:
        return None
    base = upstream[: upstream.index(marker)]
    text = base
    if parsed.epoch is not None:
        text = f"{parsed.epoch}:{text}"
    if parsed.debian_revision is not None:
        text = f"{text}-{parsed.debian_revision}"
    return text


def version_violations(version: str, marker: str) -> list[str]:
    """The Version carries the marker after the upstream version and sorts above the unmarked one."""
    from debian.debian_support import Version

    if not version:
        return ["the package has no Version field"]
    try:
        Version(version)
    except ValueError:
        return [f"Version {version!r} is not a valid Debian version"]
    base = unmarked_version(version, marker)
    if base is None:
        return [
            f"Version {version} carries no build marker {marker!r} in its upstream part "
            f"(expected e.g. 0.7.0.linux{marker}YYYYMMDD)"
        ]
    found: list[str] = []
    upstream = Version(version).upstream_version or ""
    if upstream.endswith(marker) and marker.endswith("."):
        found.append(f"Version {version}: the build marker {marker!r} is not followed by a build stamp")
        return found
    if not Version(version) > Version(base):
        found.append(f"Version {version} does not sort above the upstream version {base} (dpkg ordering)")
        return found
    try:
        above, upstream_pkg = sorts_above_upstream(version)
    except VersionParseError:
        return found
    if not above:
        found.append(
            f"Version {version} sorts below upstream's package {upstream_pkg} (dpkg ordering: '+' sorts before "
            f"'.'), so installing it over upstream would be a downgrade: put the marker after the packager's "
            f".linux ({marked_version_hint(version)})"
        )
    return found


def marked_version_hint(version: str) -> str:
    """The Version a package should have carried (``0.6.7+containai.D.linux`` -> ``0.6.7.linux+containai.D``)."""
    match = MARKER_RE.search(version)
    try:
        return release_version(version, match.group(0)) if match else version
    except DebError:
        return version


def depends_violations(depends: str) -> list[str]:
    """fuse3 is a clause of its own and no clause or alternative names fuse (fuse 2)."""
    found: list[str] = []
    if "${" in depends:
        found.append(f"Depends holds an unexpanded substitution variable: {depends}")
    if depends.rstrip().endswith(","):
        found.append("Depends ends with a trailing comma")
    clauses = split_clauses(depends)
    if not any(is_plain_fuse3(c) for c in clauses):
        in_alternative = [c for c in clauses if FUSE3 in alternative_names(c)]
        if in_alternative:
            found.append(
                f"fuse3 appears only as an alternative ({in_alternative[0]!r}); it must be a Depends clause "
                "of its own so apt installs it"
            )
        else:
            found.append("fuse3 is not a Depends clause (sysbox-fs needs fusermount3 from fuse3)")
    for clause in clauses:
        if names_fuse(clause):
            found.append(
                f"Depends clause {clause!r} names {FUSE} (fuse 2): with fuse 2 installed apt is satisfied and "
                "never installs fuse3; fuse must not appear as a clause or alternative"
            )
    return found


def _has_path(paths: frozenset[str], wanted: str) -> bool:
    if wanted in paths:
        return True
    return wanted.startswith("/lib/") and f"/usr{wanted}" in paths


def violations(
    info: DebInfo,
    *,
    package: str = PACKAGE,
    marker: str = DEFAULT_MARKER,
    arch: str = "",
    check_name: bool = True,
    require_marker: bool = True,
) -> list[str]:
    """Every problem of a built sysbox-ce .deb, one line each (empty: the package is right).

    ``require_marker=False`` (``patch-deb --keep-version``) only asks for a valid Version. The version
    the packaged sysbox-runc reports is checked by ``runc.check_runc`` (it runs the binary).
    """
    fields = info.fields
    found: list[str] = []
    if info.package != package:
        return [f"this is a .deb of {info.package or '(no Package field)'}, not {package}"]
    found += depends_violations(fields.get("Depends", ""))
    for key, value in fields.items():
        if key != "Depends" and "${" in value:
            found.append(f"{key} holds an unexpanded substitution variable: {value}")
    if require_marker:
        found += version_violations(info.version, marker)
    else:
        found += [v for v in version_violations(info.version, marker) if "build marker" not in v][:1]
    architecture = info.architecture
    if architecture not in ARCHITECTURES:
        found.append(f"Architecture is {architecture or '(missing)'!r}, expected one of {', '.join(ARCHITECTURES)}")
    elif arch and architecture != arch:
        found.append(f"Architecture is {architecture!r}, expected {arch!r}")
    if check_name and info.package and info.version and architecture:
        expected = deb_file_name(fields)
        if info.path.name != expected:
            found.append(f"file name {info.path.name} does not match its fields (expected {expected})")
    for wanted in REQUIRED_FILES:
        if not _has_path(info.data_paths, wanted):
            found.append(f"the package does not install {wanted}")
    for script in MAINTAINER_SCRIPTS:
        mode = info.control_members.get(script)
        if mode is None:
            found.append(f"maintainer script {script} is missing")
        elif not mode & 0o111:
            found.append(f"maintainer script {script} is not executable")
    return found


# --- apt install check -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AptPlan:
    """What ``apt-get -s install`` would do: packages installed and removed (name -> version)."""

    installs: dict[str, str]
    removes: dict[str, str]
    errors: tuple[str, ...] = ()


_INST = re.compile(r"^Inst (\S+?)(?::\S+)? (?:\[[^\]]*\] )?\((\S+)")
_REMV = re.compile(r"^Remv (\S+?)(?::\S+)? \[([^\]]*)\]")


def parse_apt_simulation(text: str) -> AptPlan:
    """Parse ``apt-get -s`` output (``Inst NAME [OLD] (NEW ...)``, ``Remv NAME [VER]``, ``E: ...``)."""
    installs: dict[str, str] = {}
    removes: dict[str, str] = {}
    errors: list[str] = []
    for line in text.splitlines():
        if m := _INST.match(line):
            installs[m.group(1)] = m.group(2)
        elif m := _REMV.match(line):
            removes[m.group(1)] = m.group(2)
        elif line.startswith("E: "):
            errors.append(line[3:].strip())
    return AptPlan(installs, removes, tuple(errors))


def _status_paragraphs(text: str) -> list[tuple[str, str]]:
    """(package name, paragraph text) of a dpkg status file, in order."""
    out: list[tuple[str, str]] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        match = re.search(r"^Package:\s*(\S+)", block, re.MULTILINE)
        if match:
            out.append((match.group(1), block.strip("\n")))
    return out


def _field(block: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}:(.*(?:\n[ \t].*)*)", block, re.MULTILINE | re.IGNORECASE)
    return " ".join(match.group(1).split()) if match else ""


def synthetic_status(status: str, drop: Iterable[str], add: Iterable[str] = ()) -> str:
    """A dpkg status without the packages in ``drop`` (and those left broken by it), plus ``add``.

    A package is dropped too when one of its Depends/Pre-Depends clauses is no longer satisfied by any
    remaining package (by name or Provides), so apt sees a consistent host.
    """
    entries = _status_paragraphs(status)
    dropped = set(drop)
    changed = True
    while changed:
        changed = False
        present = {name for name, _ in entries if name not in dropped}
        for _, block in entries:
            if _field(block, "Package") in dropped:
                continue
            for prov in split_clauses(_field(block, "Provides")):
                present.add(alternative_names(prov)[0])
        for name, block in entries:
            if name in dropped:
                continue
            relations = ", ".join(filter(None, (_field(block, "Depends"), _field(block, "Pre-Depends"))))
            for clause in split_clauses(relations):
                names = alternative_names(clause)
                if any(n in dropped for n in names) and not any(n in present for n in names):
                    dropped.add(name)
                    changed = True
                    break
    kept = [block for name, block in entries if name not in dropped]
    return "\n\n".join([*kept, *(a.strip("\n") for a in add)]) + "\n"


_REPO_ONLY = ("Filename", "Size", "MD5sum", "SHA1", "SHA256", "SHA512", "Description-md5", "Tag")


def as_installed(record: str) -> str:
    """Turn an ``apt-cache show`` record into an installed dpkg status entry."""
    lines: list[str] = []
    skip = False
    for line in record.strip("\n").splitlines():
        if line[:1] in (" ", "\t"):
            if not skip:
                lines.append(line)
            continue
        key = line.split(":", 1)[0]
        skip = key in _REPO_ONLY or key == "Status"
        if not skip:
            lines.append(line)
    lines.insert(1, "Status: install ok installed")
    return "\n".join(lines)


def install_violations(scenario: str, plan: AptPlan, package: str, fuse_installed: bool) -> list[str]:
    """What must be true of apt's answer: the package and fuse3 installed, fuse not installed/removed."""
    found = [f"install check ({scenario}): apt refuses: {e}" for e in plan.errors]
    if plan.errors:
        return found
    if package not in plan.installs:
        found.append(f"install check ({scenario}): apt would not install {package}")
    if FUSE3 not in plan.installs:
        found.append(f"install check ({scenario}): apt would not install fuse3 (no fusermount3 for sysbox-fs)")
    if FUSE in plan.installs:
        found.append(f"install check ({scenario}): apt would install fuse (fuse 2)")
    if fuse_installed and FUSE not in plan.removes:
        found.append(f"install check ({scenario}): apt would keep fuse (fuse 2) installed")
    return found


def _apt_config(key: str) -> str:
    out = subprocess.run(
        ["apt-config", "shell", "VALUE", key], capture_output=True, text=True, check=False
    ).stdout.strip()
    match = re.fullmatch(r"VALUE='(.*)'", out)
    return match.group(1) if match else ""


def _apt_records(name: str) -> str:
    out = subprocess.run(["apt-cache", "show", "--no-all-versions", name], capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def _with_dependencies(name: str, present: set[str]) -> list[str]:
    """Installed entries for ``name`` and its missing dependencies (first alternatives), from apt's lists."""
    entries: list[str] = []
    queue = [name]
    while queue and len(entries) < 30:
        current = queue.pop(0)
        if current in present:
            continue
        record = _apt_records(current)
        if not record:
            raise DebError(
                f"package {current} is not in this machine's apt lists",
                "run apt-get update (the install check resolves against Debian's package lists)",
            )
        first = record.split("\n\n", 1)[0]
        entries.append(as_installed(first))
        present.add(current)
        relations = ", ".join(filter(None, (_field(first, "Depends"), _field(first, "Pre-Depends"))))
        for clause in split_clauses(relations):
            names = alternative_names(clause)
            if not any(n in present for n in names):
                queue.append(names[0])
    return entries


def _simulate(deb: Path, status_text: str, work: Path) -> tuple[AptPlan, str]:
    status = work / "status"
    status.write_text(status_text, encoding="utf-8")
    extended = work / "extended_states"
    extended.write_text("", encoding="utf-8")
    cmd = [
        "apt-get", "-s", "-q", "--no-install-recommends",
        "-o", f"Dir::State::status={status}",
        "-o", f"Dir::State::extended_states={extended}",
        "-o", "Dir::Cache::pkgcache=",
        "-o", "Dir::Cache::srcpkgcache=",
        "-o", "Debug::NoLocking=1",
        "install", str(deb.resolve()),
    ]  # fmt: skip
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    plan = parse_apt_simulation(out.stdout + "\n" + out.stderr)
    if out.returncode != 0 and not plan.errors:
        last = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
        plan = AptPlan(plan.installs, plan.removes, (last,))
    return plan, shlex.join(cmd)


def plan_summary(scenario: str, plan: AptPlan) -> str:
    """One line saying what apt would do on a scenario host."""
    inst = ", ".join(f"{n} {v}" for n, v in sorted(plan.installs.items())) or "nothing"
    remv = ", ".join(f"{n} {v}" for n, v in sorted(plan.removes.items())) or "nothing"
    return f"{scenario}: apt would install {inst}; remove {remv}"


def install_check(deb: Path, info: DebInfo, *, package: str = PACKAGE) -> tuple[list[str], list[str]]:
    """Simulate ``apt-get install ./PKG.deb`` on a clean host and on a host with fuse 2 installed.

    Returns (violations, one summary line per scenario).
    """
    host = host_architecture()
    if info.architecture not in (host, "all"):
        raise DebError(
            f"the install check of an {info.architecture} package needs an {info.architecture} machine "
            f"(this one is {host})",
            "run it on a runner of the package's architecture",
        )
    lists = Path(_apt_config("Dir::State::lists/d") or "/var/lib/apt/lists")
    if not any(lists.glob("*_Packages*")):
        raise DebError(
            f"no Debian package lists in {lists}",
            "run apt-get update first (the install check resolves against them)",
        )
    status_path = Path(_apt_config("Dir::State::status/f") or "/var/lib/dpkg/status")
    try:
        base = status_path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DebError(f"cannot read the dpkg status {status_path} ({exc.strerror})", "") from None
    clean = synthetic_status(base, drop={FUSE, FUSE3, package, "libfuse2"})
    present = {name for name, _ in _status_paragraphs(clean)}
    fuse2 = synthetic_status(clean, drop=(), add=_with_dependencies(FUSE, present))
    found: list[str] = []
    summaries: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cai-aptsim-") as tmp:
        for scenario, status_text, fuse_installed in (
            ("clean host", clean, False),
            ("host with fuse 2 installed", fuse2, True),
        ):
            work = Path(tmp) / scenario.replace(" ", "-")
            work.mkdir()
            plan, _ = _simulate(deb, status_text, work)
            found += install_violations(scenario, plan, package, fuse_installed)
            summaries.append(plan_summary(scenario, plan))
    return found, summaries
