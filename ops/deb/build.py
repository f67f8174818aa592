"""Building the ContainAI sysbox-ce .deb from the Sysbox sources as upstream lays them out.

A release build (``build_sysbox``):
1. clone the Sysbox superproject at a tag, branch or commit with its submodules (``sources``);
2. refuse unless every required commit is in its submodule (the sysbox-fs openat2 fix by default);
3. the packager is the superproject's ``sysbox-pkgr`` submodule (or ``--pkgr-url`` at ``--ref``): fix
   the fuse dependency of every ``deb/sysbox-*/control`` (``control.fix_fuse_depends``);
4. write the marker into the superproject's ``VERSION`` (the binaries print it) and link the
   packager's ``sources/sysbox`` to the checkout, as upstream's ``make sysbox-ce-repo PATH`` does;
5. when the packager builds in Docker, check that a Docker engine answers; then run
   ``make -C deb generic EDITION=ce`` in the packager;
6. take the one ``sysbox-ce_*.deb`` under ``deb/build/<arch>/<baseline>/`` (never the dbgsym package);
7. repack it (``repack``): the fuse fix again on DEBIAN/control, the Version our ordering needs
   (``version.release_version``: ``0.7.0.linux+containai.YYYYMMDD``), root ownership, xz;
8. verify it (including that the packaged ``sysbox-runc --version`` names the same build), then
   publish ``<Package>_<Version>_<Architecture>.deb`` and its ``.sha256`` into the output folder
   under temporary names renamed at the end, so a failure never leaves a partial file there.
All work happens in a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ops.deb.control import fix_fuse_depends, set_field
from ops.deb.errors import BuildError, ControlError, DebError
from ops.deb.inspect import DebInfo, deb_file_name, read_deb
from ops.deb.runc import package_build_version, probe_runc, runc_version_violations
from ops.deb.sources import (
    DEFAULT_BUILD_CMD,
    PACKAGER,
    Requirement,
    check_docker,
    check_required,
    check_sources,
    clone_superproject,
    git_reason,
    is_local,
    link_sources,
    mark_version,
    parse_requirement,
    run_git,
)
from ops.deb.version import release_version
from ops.errors import RefusedError, VersionParseError

MARKER_PREFIX = "+containai."
_SUFFIX = re.compile(r"\+[A-Za-z0-9][A-Za-z0-9.+]*")

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def default_suffix(now: _dt.datetime | None = None) -> str:
    """``+containai.<UTC date YYYYMMDD>``."""
    now = now or _dt.datetime.now(_dt.UTC)
    return f"{MARKER_PREFIX}{now.astimezone(_dt.UTC):%Y%m%d}"


def check_suffix(suffix: str) -> str:
    """A version suffix must start with ``+`` (so it sorts above upstream) and use version characters."""
    if not _SUFFIX.fullmatch(suffix):
        raise BuildError(
            f"version suffix {suffix!r} is not valid",
            "use '+' then letters, digits, '.' or '+', e.g. +containai.20260127",
        )
    return suffix


def marked_version(version: str, suffix: str) -> str:
    """The Version of a package marked with ``suffix``: any marker moved after the packager's ``.linux``.

    ``0.6.7.linux`` -> ``0.6.7.linux+containai.20260127``; ContainAI's published shape
    ``0.6.7+containai.20260127.linux`` -> the same; epoch and revision kept (see ``ops.deb.version``).
    """
    return release_version(version, suffix)


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


@dataclass(frozen=True)
class Repacked:
    """A rebuilt .deb in a work folder, its fields and what was changed."""

    path: Path
    info: DebInfo
    actions: tuple[str, ...]


def repack(src: Path, work: Path, suffix: str, *, package: str = "sysbox-ce") -> Repacked:
    """Unpack ``src``, fix DEBIAN/control (fuse -> fuse3, Version + suffix), rebuild as root with xz.

    An empty ``suffix`` keeps the Version as it is.
    """
    src_info = read_deb(src)
    if src_info.package != package:
        raise DebError(
            f"{src} is a .deb of {src_info.package or 'an unnamed package'}, not {package}",
            f"give a {package} package",
        )
    root = work / "root"
    if root.exists():
        shutil.rmtree(root)
    raw = _run(["dpkg-deb", "-R", str(src), str(root)])
    if raw.returncode != 0:
        raise DebError(f"cannot unpack {src} ({_last_line(raw.stderr)})", "rebuild or download it again")
    control_path = root / "DEBIAN" / "control"
    text = control_path.read_text(encoding="utf-8")
    actions: list[str] = []
    try:
        edit = fix_fuse_depends(text)
    except ControlError as exc:
        raise DebError(f"{src}: {exc.message}", exc.hint) from None
    text = edit.text
    actions += [f"DEBIAN/control: {a}" for a in edit.actions]
    new_version = marked_version(src_info.version, check_suffix(suffix)) if suffix else src_info.version
    if new_version != src_info.version:
        text = set_field(text, "Version", new_version)
        actions.append(f"Version {src_info.version} -> {new_version}")
    if not text.endswith("\n"):
        text += "\n"  # a binary control file must end with a newline
    control_path.write_text(text, encoding="utf-8")
    staged = work / "staged.deb"
    built = _run(["dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(root), str(staged)])
    if built.returncode != 0:
        raise DebError(f"dpkg-deb could not rebuild the package ({_last_line(built.stderr)})", "")
    info = read_deb(staged)
    final = work / deb_file_name(info.fields)
    staged.rename(final)
    shutil.rmtree(root)
    return Repacked(final, read_deb(final), tuple(actions))


def sha256_line(path: Path) -> str:
    """The ``sha256sum`` line of a file (``<hex>  <name>``), which ``sha256sum -c`` reads."""
    with path.open("rb") as handle:
        return f"{hashlib.file_digest(handle, 'sha256').hexdigest()}  {path.name}\n"


def publish(deb: Path, out: Path) -> tuple[Path, Path]:
    """Copy ``deb`` and its ``.sha256`` into ``out`` atomically (temporary names, renamed at the end)."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / deb.name
    checksum = out / f"{deb.name}.sha256"
    tmp_deb = out / f".{deb.name}.{os.getpid()}.tmp"
    tmp_sum = out / f".{deb.name}.sha256.{os.getpid()}.tmp"
    try:
        shutil.copyfile(deb, tmp_deb)
        os.chmod(tmp_deb, 0o644)
        tmp_sum.write_text(sha256_line(deb), encoding="utf-8")
        os.replace(tmp_deb, target)
        os.replace(tmp_sum, checksum)
    except BaseException:
        for leftover in (tmp_deb, tmp_sum):
            leftover.unlink(missing_ok=True)
        raise
    return target, checksum


def clone_packager(url: str, ref: str, dest: Path) -> None:
    """Shallow-clone a packager (``--pkgr-url``) at a tag or branch."""
    out = run_git(["clone", "--quiet", "--depth", "1", "--branch", ref, "--", url, str(dest)], local=is_local(url))
    if out.returncode == 0:
        return
    if re.search(r"Remote branch .* not found|Could not find remote branch", out.stderr):
        raise BuildError(f"ref {ref!r} not found in the packager {url}", "give an existing tag or branch with --ref")
    raise BuildError(f"cannot fetch the packager from {url} ({git_reason(out.stderr)})",
                     "check --pkgr-url and the network")  # fmt: skip


def patch_packager(root: Path, package: str = "sysbox-ce") -> list[str]:
    """Apply the fuse fix to every ``deb/sysbox-*/control`` of a packager checkout (``deb/<package>`` must exist)."""
    if not (root / "deb" / package / "control").is_file():
        raise BuildError(f"the packager has no deb/{package}/control",
                         "is it Sysbox's packager (sysbox-pkgr)? check --pkgr-url, or the superproject's sysbox-pkgr")
    controls = sorted((root / "deb").glob("sysbox-*/control"))
    actions: list[str] = []
    for path in controls:
        rel = path.relative_to(root)
        try:
            edit = fix_fuse_depends(path.read_text(encoding="utf-8"))
        except ControlError as exc:
            raise BuildError(f"{rel}: {exc.message}", exc.hint) from None
        if edit.changed:
            path.write_text(edit.text, encoding="utf-8")
        actions += [f"{rel}: {a}" for a in edit.actions] or [f"{rel}: no fuse clause, left as is"]
    return actions


def run_build(cmd: str, cwd: Path, *, stream: bool, log_path: Path) -> None:
    """Run the packager's build command in ``cwd``; its output goes to the terminal or to a log."""
    argv = shlex.split(cmd)
    full_env = dict(os.environ)
    if not argv:
        raise BuildError("the build command is empty", "use e.g. --build-cmd 'make -C deb generic EDITION=ce'")
    try:
        if stream:
            code = subprocess.run(argv, cwd=cwd, check=False, stdin=subprocess.DEVNULL, env=full_env).returncode
        else:
            with log_path.open("w", encoding="utf-8") as log:
                code = subprocess.run(
                    argv,
                    cwd=cwd,
                    check=False,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                ).returncode
    except FileNotFoundError:
        raise BuildError(f"the build command {argv[0]!r} was not found", "install it or change --build-cmd") from None
    if code != 0:
        tail = ""
        if not stream and log_path.exists():
            tail = _last_line(log_path.read_text(encoding="utf-8", errors="replace"))
        raise BuildError(
            f"the build command '{cmd}' failed with exit {code}" + (f" (last output: {tail})" if tail else ""),
            "run it by hand in a packager checkout to see why",
        )


def find_built_deb(root: Path, package: str = "sysbox-ce") -> Path:
    """The one ``<package>_*.deb`` under ``deb/build/<arch>/<baseline>/`` (dbgsym packages excluded)."""
    found = sorted(p for p in (root / "deb" / "build").glob(f"*/*/{package}_*.deb") if p.is_file())
    if not found:
        raise BuildError(
            f"the build produced no {package}_*.deb under deb/build/<arch>/<baseline>/",
            "check the build command and its output",
        )
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(root)) for p in found)
        raise BuildError(f"the build produced several {package} packages ({names})", "build one baseline only")
    return found[0]


@dataclass(frozen=True)
class BuildResult:
    """A published package: paths and what was done to get there."""

    deb: Path
    sha256: Path
    info: DebInfo
    actions: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """What to build: the Sysbox superproject at a ref, the commits it must contain, an optional packager."""

    url: str
    ref: str
    requires: tuple[Requirement, ...] = ()
    pkgr_url: str = ""  # a packager to use instead of the superproject's sysbox-pkgr submodule
    pkgr_ref: str = ""


def build_sysbox(
    source: Source,
    suffix: str,
    out: Path,
    *,
    build_cmd: str = DEFAULT_BUILD_CMD,
    package: str = "sysbox-ce",
    verify: Callable[[Path, DebInfo], list[str]],
    stream: bool = False,
    log: Log = _quiet,
) -> BuildResult:
    """Clone, check, patch, mark, build, re-version, verify and publish the sysbox-ce package."""
    check_suffix(suffix)
    with tempfile.TemporaryDirectory(prefix="cai-pkg-") as tmp:
        work = Path(tmp)
        checkout = work / "sysbox"
        commit = clone_superproject(source.url, source.ref, checkout, log)
        log(f"Sysbox {source.ref} is {commit[:12]}")
        actions = check_required(checkout, source.ref, source.requires, log)
        if source.pkgr_url:
            packager = work / PACKAGER
            log(f"cloning the packager {source.pkgr_url} at {source.pkgr_ref}")
            clone_packager(source.pkgr_url, source.pkgr_ref, packager)
        else:
            packager = checkout / PACKAGER
        fixes = patch_packager(packager, package)
        for line in fixes:
            log(line)
        marked = mark_version(checkout, suffix)
        log(f"VERSION {marked.before} -> {marked.after}")
        link_sources(packager, checkout)
        check_docker(packager, log)
        check_sources(packager, checkout)
        log(f"building: {build_cmd} (in {PACKAGER})")
        run_build(build_cmd, packager, stream=stream, log_path=work / "build.log")
        built = find_built_deb(packager, package)
        log(f"built {built.relative_to(packager)}")
        return _finish(built, work, suffix, out, package, verify, log, actions + fixes)


def build_from_packager(
    packager: Path,
    checkout: Path,
    suffix: str,
    out: Path,
    *,
    build_cmd: str = DEFAULT_BUILD_CMD,
    package: str = "sysbox-ce",
    verify: Callable[[Path, DebInfo], list[str]],
    log: Log = _quiet,
) -> BuildResult:
    """Build from a packager checkout whose ``sources/sysbox`` already leads to ``checkout`` (marked VERSION).

    The steps after the link of ``build_sysbox``; the link is checked before the packager's build runs.
    """
    check_suffix(suffix)
    check_docker(packager, log)
    check_sources(packager, checkout)
    with tempfile.TemporaryDirectory(prefix="cai-pkg-") as tmp:
        run_build(build_cmd, packager, stream=False, log_path=Path(tmp) / "build.log")
        built = find_built_deb(packager, package)
        return _finish(built, Path(tmp), suffix, out, package, verify, log, [])


def requirements(texts: Sequence[str], default: Sequence[Requirement]) -> tuple[Requirement, ...]:
    """``--require`` values (they replace the pin's list) or the pin's list."""
    return tuple(parse_requirement(t) for t in texts) if texts else tuple(default)


def binary_refusal(src: Path, info: DebInfo, suffix: str) -> tuple[str, str]:
    """Why the binary route must not mark ``src`` with ``suffix`` ("" when it may), and a note to log.

    patch-deb cannot change the binaries: marking the package of a binary that prints the upstream
    version makes ``update`` (which reads the version from ``sysbox-runc --version``) see upstream
    installed and the ContainAI build bundled on every run, so it would reinstall Sysbox forever.
    """
    new_version = marked_version(info.version, suffix)
    expected = package_build_version(new_version)
    probe = probe_runc(src, expected)
    if not probe.ran:
        if probe.mentions_expected:
            return "", f"sysbox-runc cannot run here ({probe.reason}); its bytes contain {expected!r}"
        return (
            f"the packaged sysbox-runc cannot run here ({probe.reason}) and its bytes do not contain "
            f"{expected!r}, so the package {new_version} would not match what the binary reports",
            "",
        )
    if probe.exit_code != 0:
        return f"the packaged sysbox-runc --version failed (exit {probe.exit_code})", ""
    if not runc_version_violations(new_version, probe.output) and expected in probe.output:
        return "", f"sysbox-runc reports {expected}"
    from ops.versions import parse_sysbox_runc_output

    try:
        reported = parse_sysbox_runc_output(probe.output).raw
    except VersionParseError:
        reported = "no version"
    return f"its sysbox-runc reports {reported}, not {expected}", ""


def patch_deb(
    src: Path,
    suffix: str,
    out: Path,
    *,
    package: str = "sysbox-ce",
    verify: Callable[[Path, DebInfo], list[str]],
    keep_version: bool = False,
    log: Log = _quiet,
) -> BuildResult:
    """The binary route: fix an existing .deb (fuse -> fuse3, marker), verify and publish it.

    The marker is only added when the packaged sysbox-runc already reports it (a ContainAI build);
    otherwise this refuses (``RefusedError``), unless ``keep_version`` asks for the fuse fix alone
    with the Version left as it is.
    """
    src = Path(src)
    info = read_deb(src)
    if info.package != package:
        raise DebError(
            f"{src} is a .deb of {info.package or 'an unnamed package'}, not {package}",
            f"give a {package} package",
        )
    if keep_version:
        suffix = ""
    else:
        check_suffix(suffix)
        why, note = binary_refusal(src, info, suffix)
        if why:
            raise RefusedError(
                f"{src.name}: {why}; patch-deb cannot change the binary, and a package marked {suffix} around it "
                "would make update reinstall Sysbox on every run",
                "build from source with inv pkg.build-sysbox (it embeds the marker in the binaries), or pass "
                "--keep-version to fix only the fuse dependency",
            )
        log(note)
    with tempfile.TemporaryDirectory(prefix="cai-pkg-") as tmp:
        return _finish(src, Path(tmp), suffix, out, package, verify, log, [])


def _finish(
    built: Path,
    work: Path,
    suffix: str,
    out: Path,
    package: str,
    verify: Callable[[Path, DebInfo], list[str]],
    log: Log,
    actions: list[str],
) -> BuildResult:
    repack_dir = work / "repack"
    repack_dir.mkdir()
    repacked = repack(built, repack_dir, suffix, package=package)
    for line in repacked.actions:
        log(line)
    problems = verify(repacked.path, repacked.info)
    if problems:
        raise VerifyFailed(repacked.path.name, problems)
    deb, checksum = publish(repacked.path, out)
    log(f"wrote {deb} and {checksum.name}")
    return BuildResult(deb, checksum, read_deb(deb), tuple(actions + list(repacked.actions)))


class VerifyFailed(DebError):
    """The built package did not pass verification; ``problems`` lists every violation."""

    def __init__(self, name: str, problems: list[str]) -> None:
        super().__init__(
            f"the built package {name} failed verification ({len(problems)} violation(s)): " + "; ".join(problems),
            "nothing was written to the output folder",
        )
        self.problems = problems
