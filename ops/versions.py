"""The Sysbox and dockerd-bundle version model.

Parsers are pure (a string in, a value out) and raise VersionParseError when they find no version:
an empty version is never returned. The decision functions compare what is installed on a target
with what is bundled, and never plan a downgrade.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ops.errors import VersionParseError

MARKER = "containai"
_NUMERIC = re.compile(r"^(\d+(?:\.\d+)*)")
_MARKER_RE = re.compile(r"\+containai\.(\d{8})(?:\.(\d+))?")
_VERSION_LINE = re.compile(r"^\s*version\s*:\s*(\S+)\s*$", re.IGNORECASE | re.MULTILINE)
#: The one-line form: ``sysbox-runc version 0.6.4``, possibly followed by more text on the same line
#: (``sysbox-runc version 0.6.4 (commit 3d6e1b2)``), as urfave/cli prints ``<name> version <Version>``.
_SINGLE_LINE = re.compile(r"^\s*sysbox-runc\s+(?:version\s+)?v?(\d+\.\d+[^\s,;()]*)(?:[\s,;(].*)?$",
                          re.IGNORECASE)


@dataclass(frozen=True, order=False)
class SysboxVersion:
    """A Sysbox version: its numbers, and the ContainAI build stamp when it is a ContainAI build."""

    raw: str
    numbers: tuple[int, ...]
    build_date: int | None = None  # YYYYMMDD of a +containai.YYYYMMDD build
    build_serial: int = 0  # optional .N after the date

    @property
    def is_containai(self) -> bool:
        """True for a ContainAI build (``+containai.YYYYMMDD``)."""
        return self.build_date is not None

    @property
    def key(self) -> tuple[tuple[int, ...], int, int, int]:
        """Ordering key: numbers first, then ContainAI over upstream, then the build date."""
        nums = self.numbers + (0,) * (4 - len(self.numbers)) if len(self.numbers) < 4 else self.numbers
        return (nums, 1 if self.is_containai else 0, self.build_date or 0, self.build_serial)

    def __lt__(self, other: SysboxVersion) -> bool:
        return self.key < other.key

    def __le__(self, other: SysboxVersion) -> bool:
        return self.key <= other.key

    def __gt__(self, other: SysboxVersion) -> bool:
        return self.key > other.key

    def __ge__(self, other: SysboxVersion) -> bool:
        return self.key >= other.key

    def same_as(self, other: SysboxVersion) -> bool:
        """Equal for update purposes (same numbers, same build)."""
        return self.key == other.key

    def __str__(self) -> str:
        return self.raw


def parse_version(text: str) -> SysboxVersion:
    """Parse a version string: ``0.6.7``, ``0.6.7+containai.20260127``, ``v0.6.7``, a dpkg version
    with a revision (``0.6.7+containai.20260127-0``), an epoch, or the packager's ``0.6.7.linux``."""
    raw = (text or "").strip()
    if not raw:
        raise VersionParseError("empty version string", "expected e.g. 0.6.7+containai.20260127")
    body = raw[1:] if raw[:1] in "vV" else raw
    if ":" in body:  # dpkg epoch
        epoch, _, body = body.partition(":")
        if not epoch.isdigit():
            raise VersionParseError(f"malformed version {raw!r}", "expected e.g. 0.6.7")
    match = _NUMERIC.match(body)
    if not match:
        raise VersionParseError(f"malformed version {raw!r}", "expected e.g. 0.6.7 or 0.6.7+containai.20260127")
    numbers = tuple(int(p) for p in match.group(1).split("."))
    marker = _MARKER_RE.search(body)
    if marker:
        date = int(marker.group(1))
        if not _valid_date(marker.group(1)):
            raise VersionParseError(f"malformed build date in {raw!r}", "the marker is +containai.YYYYMMDD")
        return SysboxVersion(raw, numbers, date, int(marker.group(2) or 0))
    if "containai" in body:
        raise VersionParseError(f"malformed ContainAI marker in {raw!r}", "the marker is +containai.YYYYMMDD")
    return SysboxVersion(raw, numbers)


def _valid_date(text: str) -> bool:
    year, month, day = int(text[:4]), int(text[4:6]), int(text[6:8])
    return 2000 <= year <= 2999 and 1 <= month <= 12 and 1 <= day <= 31


def parse_sysbox_runc_output(text: str) -> SysboxVersion:
    """Parse ``sysbox-runc --version``: the multi-line form (a ``version:`` line) or the one-line form
    (``sysbox-runc version 0.6.7``, with or without text after the version, e.g. ``(commit ...)``).
    Raises VersionParseError when there is no version."""
    found = _VERSION_LINE.search(text or "")
    if found:
        return parse_version(found.group(1))
    for line in (text or "").splitlines():
        single = _SINGLE_LINE.match(line)
        if single:
            return parse_version(single.group(1))
    first = (text or "").strip().splitlines()[:1]
    raise VersionParseError(
        f"no version in sysbox-runc --version output (first line: {first[0] if first else '<empty>'!r})",
        "is sysbox-runc a real Sysbox binary?",
    )


def parse_dpkg_version(text: str) -> SysboxVersion:
    """Parse a dpkg Version field, dropping the Debian revision (after the last ``-``)."""
    raw = (text or "").strip()
    upstream = raw.rsplit("-", 1)[0] if "-" in raw else raw
    version = parse_version(upstream)
    return SysboxVersion(raw, version.numbers, version.build_date, version.build_serial)


class State(Enum):
    """What a version probe found on a target."""

    INSTALLED = "installed"
    NOT_INSTALLED = "not-installed"
    UNKNOWN = "unknown"  # installed, but the version cannot be told


@dataclass(frozen=True)
class Observed:
    """A version probe's answer: installed with a version, not installed, or cannot tell (why)."""

    state: State
    version: SysboxVersion | None = None
    reason: str = ""
    #: Parts of an incomplete installation (e.g. dockerd bundle binaries that are absent or not executable).
    missing: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.state is State.INSTALLED and self.version is not None:
            return str(self.version)
        return self.state.value if not self.reason else f"{self.state.value} ({self.reason})"


class Action(Enum):
    """What an update should do about a component."""

    INSTALL = "install"
    UPGRADE = "upgrade"
    CURRENT = "current"
    KEEP_NEWER = "keep-newer"  # installed is newer than bundled: never downgrade
    CANNOT_TELL = "cannot-tell"
    NO_BUNDLE = "no-bundle"


@dataclass(frozen=True)
class Decision:
    """A comparison result with its reason (shown to users)."""

    action: Action
    reason: str

    @property
    def needs_change(self) -> bool:
        """True when an install or upgrade is planned."""
        return self.action in (Action.INSTALL, Action.UPGRADE)


def decide(component: str, installed: Observed, bundled: SysboxVersion | None) -> Decision:
    """Compare installed and bundled versions of a component. Never downgrades."""
    if bundled is None:
        return Decision(Action.NO_BUNDLE, f"no bundled {component} to compare with")
    if installed.state is State.NOT_INSTALLED:
        return Decision(Action.INSTALL, f"{component} is not installed; bundled {bundled}")
    if installed.state is State.UNKNOWN or installed.version is None:
        return Decision(Action.CANNOT_TELL, f"cannot tell the installed {component} version ({installed.reason})")
    have = installed.version
    if have.same_as(bundled):
        return Decision(Action.CURRENT, f"{component} {have} is current")
    if have > bundled:
        return Decision(Action.KEEP_NEWER, f"installed {component} {have} is newer than bundled {bundled}; "
                        "not downgrading")
    return Decision(Action.UPGRADE, f"{component} {have} -> {bundled}")


# --- the dockerd bundle ---------------------------------------------------------------------------

#: The binaries of Docker's static bundle that a ContainAI host links from ``<opt_dir>/bin``; the bundle
#: counts as installed only when ``<opt_dir>/VERSION`` and every one of them is there and executable.
DOCKERD_BINARIES = ("dockerd", "docker", "containerd", "containerd-shim-runc-v2", "docker-init",
                    "docker-proxy", "runc", "ctr")

_BUNDLE_RE = re.compile(r"^docker-(\d+\.\d+\.\d+(?:[-+.~][0-9A-Za-z.+~-]*)?)\.(?:tgz|tar\.gz)$")


def parse_bundle_version(text: str) -> SysboxVersion:
    """Parse the content of ``<opt_dir>/VERSION`` (e.g. ``27.3.1``)."""
    line = (text or "").strip().splitlines()
    if not line or not line[0].strip():
        raise VersionParseError("the dockerd bundle VERSION file is empty", "reinstall with inv update")
    return parse_version(line[0].strip())


def bundle_version_from_name(name: str) -> SysboxVersion:
    """The version in a Docker static bundle file name (``docker-27.3.1.tgz``)."""
    match = _BUNDLE_RE.match(name)
    if not match:
        raise VersionParseError(f"{name!r} is not a dockerd bundle name", "expected docker-<version>.tgz")
    return parse_version(match.group(1))


def find_bundle_tarball(bundle_dir: str | Path) -> Path | None:
    """The newest ``docker-<version>.tgz`` in the bundle dir, or None."""
    best: tuple[SysboxVersion, Path] | None = None
    directory = Path(bundle_dir)
    if not directory.is_dir():
        return None
    for path in directory.iterdir():
        try:
            version = bundle_version_from_name(path.name)
        except VersionParseError:
            continue
        if best is None or version > best[0]:
            best = (version, path)
    return best[1] if best else None


def find_sysbox_deb(bundle_dir: str | Path, arch: str) -> Path | None:
    """The newest bundled ``sysbox-ce_<version>_<arch>.deb``, by the version in its name, or None."""
    directory = Path(bundle_dir)
    if not directory.is_dir():
        return None
    best: tuple[SysboxVersion, Path] | None = None
    for path in directory.glob(f"sysbox-ce_*_{arch}.deb"):
        try:
            version = parse_dpkg_version(path.name.split("_")[1])
        except VersionParseError:
            continue
        if best is None or version > best[0]:
            best = (version, path)
    return best[1] if best else None
