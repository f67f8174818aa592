"""The version the packaged ``/usr/bin/sysbox-runc`` reports, checked against the package's Version.

``update`` reads the installed Sysbox version from ``sysbox-runc --version`` (the binary is the source
of truth) and compares it with the bundled .deb's Version. Both must therefore name the same build:
a package marked ``0.6.7.linux+containai.20260127`` whose binary prints ``version: 0.6.7`` is seen as
"upstream installed, ContainAI build bundled" on every run, and ``update`` would reinstall it forever.

``package_build_version`` and ``runc_version_violations`` are pure. ``probe_runc`` extracts the binary
from a .deb (``dpkg-deb -x`` into a temporary folder) and runs it when it can run on this machine; a
binary of a foreign architecture is not a failure: the caller reports it as a warning, with whether
the expected version string appears in the binary's bytes (where Go's ``-X main.version=`` puts it).
"""

from __future__ import annotations

import errno
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ops.deb.errors import DebError
from ops.deb.inspect import DebInfo
from ops.errors import VersionParseError

RUNC_PATH = "/usr/bin/sysbox-runc"
PACKAGER_SUFFIX = ".linux"  # the upstream packager's tag on the upstream version (0.6.7.linux-0)


def package_build_version(version: str) -> str:
    """The build a package Version names, as the binary should print it.

    The upstream part of the Debian version without the packager's ``.linux`` tag, epoch and
    revision: ``0.6.7.linux+containai.20260127-0`` -> ``0.6.7+containai.20260127``.
    """
    from debian.debian_support import Version

    try:
        upstream = Version(version).upstream_version or ""
    except ValueError:
        raise DebError(f"Version {version!r} is not a valid Debian version", "") from None
    return upstream.replace(PACKAGER_SUFFIX, "", 1)


def _upstream_part(version: str) -> str:
    from debian.debian_support import Version

    try:
        return Version(version).upstream_version or version
    except ValueError:
        return version


def runc_version_violations(package_version: str, output: str) -> list[str]:
    """The binary's ``--version`` output names the build of the package Version (numbers and marker).

    Compared with ``SysboxVersion.same_as``: numbers, ContainAI or upstream, build date and serial.
    """
    from ops.versions import parse_sysbox_runc_output, parse_version

    shown = _upstream_part(package_version)
    try:
        expected = parse_version(package_build_version(package_version))
    except VersionParseError as exc:
        return [f"Version {package_version}: {exc.message}"]
    try:
        got = parse_sysbox_runc_output(output)
    except VersionParseError as exc:
        return [f"{RUNC_PATH} --version shows no version ({exc.message}); update could not tell what is installed"]
    if got.same_as(expected):
        return []
    if expected.is_containai and not got.is_containai:
        marker = shown[shown.index("+containai.") :] if "+containai." in shown else ""
        return [
            f"sysbox-runc reports {got.raw} but the package is {shown}: the Sysbox sources' VERSION must carry "
            f"the marker {marker} when the binaries are built (inv pkg.build-sysbox writes it there), so "
            "update can tell it is installed"
        ]
    return [
        f"sysbox-runc reports {got.raw} but the package is {shown}: the binary and the package Version "
        "must name the same build, or update reinstalls it on every run (or never installs it)"
    ]


@dataclass(frozen=True)
class RuncProbe:
    """What the packaged sysbox-runc said: its ``--version`` output when it ran, else why not."""

    ran: bool
    output: str = ""
    exit_code: int = 0
    reason: str = ""  # why it did not run (foreign architecture...)
    mentions_expected: bool = False  # the expected version string is in the binary's bytes


def _run_binary(binary: Path) -> RuncProbe:
    """Run ``binary --version``; an exec failure (foreign architecture) is "did not run"."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, check=False, timeout=30,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except OSError as exc:
        if exc.errno in (errno.ENOEXEC, errno.ENOENT):
            # ENOEXEC: another architecture; ENOENT: its ELF interpreter is not on this machine
            return RuncProbe(False, reason=exc.strerror or str(exc))
        return RuncProbe(True, exit_code=-1, output=f"cannot run it ({exc.strerror or exc})")
    except subprocess.TimeoutExpired:
        return RuncProbe(True, exit_code=-1, output="it did not finish within 30 s")
    return RuncProbe(True, output=out.stdout + out.stderr, exit_code=out.returncode)


def probe_runc(deb: Path, expected: str = "") -> RuncProbe:
    """Extract the .deb into a temporary folder and ask its sysbox-runc for its version.

    ``expected`` (e.g. ``0.6.7+containai.20260127``) is looked for in the binary's bytes when it
    cannot run here.
    """
    with tempfile.TemporaryDirectory(prefix="cai-runc-") as tmp:
        root = Path(tmp)
        try:
            out = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise DebError("dpkg-deb is not installed", "install the dpkg package") from None
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["dpkg-deb failed"])[-1][:200]
            raise DebError(f"cannot extract {deb} ({last})", "rebuild or download the package again")
        binary = root / RUNC_PATH.lstrip("/")
        if not binary.is_file():
            raise DebError(f"{deb} does not install {RUNC_PATH}", "")
        probe = _run_binary(binary)
        if probe.ran:
            return probe
        mentions = bool(expected) and expected.encode() in binary.read_bytes()
        return RuncProbe(False, reason=probe.reason, mentions_expected=mentions)


def check_runc(info: DebInfo) -> tuple[list[str], list[str]]:
    """(violations, warnings) of the packaged sysbox-runc's version against the package Version.

    Nothing is checked when the package has no sysbox-runc or no valid Version: the field and file
    checks of ``verify.violations`` already report those.
    """
    if RUNC_PATH not in info.data_paths:
        return [], []
    try:
        expected = package_build_version(info.version)
    except DebError:
        return [], []
    probe = probe_runc(info.path, expected)
    if probe.ran and probe.exit_code != 0:
        last = (probe.output.strip().splitlines() or [""])[-1][:200]
        return [f"{RUNC_PATH} --version failed (exit {probe.exit_code}){': ' + last if last else ''}"], []
    if probe.ran:
        return runc_version_violations(info.version, probe.output), []
    arch = f"{info.architecture} " if info.architecture else ""
    found = "contain" if probe.mentions_expected else "do not contain"
    return [], [
        f"cannot run the packaged {arch}sysbox-runc on this machine ({probe.reason}), so its --version was "
        f"not checked; its bytes {found} {expected!r}: run verify-deb on a machine of the package's architecture"
    ]
