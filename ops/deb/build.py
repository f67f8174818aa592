"""Building the ContainAI sysbox-ce .deb: packager checkout, control patch, build, marker, repack, publish.

A release build (``build_sysbox``):
1. shallow-clone the packager at a tag or branch (``git clone --depth 1 --branch REF URL``);
2. fix the fuse dependency of every ``deb/sysbox-*/control`` (``control.fix_fuse_depends``);
3. run the packager's build command (``make -C deb generic EDITION=ce``) with
   ``CONTAINAI_VERSION_SUFFIX`` (the marker) and ``SYSBOX_VERSION`` (``<upstream><marker>``, when the
   upstream version is known) in its environment, so a packager that honours them builds binaries
   whose ``--version`` carries the marker (``update`` reads the installed version from the binary);
4. take the one ``sysbox-ce_*.deb`` under ``deb/build/<arch>/<baseline>/`` (never the dbgsym package);
5. repack it (``repack``): the fuse fix again on DEBIAN/control (a no-op when step 2 took effect), the
   build marker appended to the upstream part of Version, root ownership, xz;
6. verify it (including that the packaged ``sysbox-runc --version`` names the same build), then
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
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ops.deb.control import fix_fuse_depends, set_field
from ops.deb.errors import BuildError, ControlError, DebError
from ops.deb.inspect import DebInfo, deb_file_name, read_deb
from ops.deb.runc import (
    VERSION_VARIABLE,
    build_env,
    find_upstream_version,
    package_build_version,
    probe_runc,
    runc_version_violations,
)
from ops.errors import RefusedError, VersionParseError

#: ``packaging/sysbox-pkgr.toml`` of the repository, shipped inside an installed package as ``ops/pins``.
PIN_FILE = next((p for p in (Path(__file__).resolve().parents[1] / "pins" / "sysbox-pkgr.toml",
                             Path(__file__).resolve().parents[2] / "packaging" / "sysbox-pkgr.toml") if p.is_file()),
                Path(__file__).resolve().parents[2] / "packaging" / "sysbox-pkgr.toml")
DEFAULT_BUILD_CMD = "make -C deb generic EDITION=ce"
MARKER_PREFIX = "+containai."
_SUFFIX = re.compile(r"\+[A-Za-z0-9][A-Za-z0-9.+]*")

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class PackagerPin:
    """Where the packager comes from by default (``packaging/sysbox-pkgr.toml``)."""

    url: str
    ref: str
    build_cmd: str = DEFAULT_BUILD_CMD
    package: str = "sysbox-ce"


def parse_pin(text: str, source: str = "packaging/sysbox-pkgr.toml") -> PackagerPin:
    """Read the packager pin from TOML text (keys ``url``, ``ref``, optional ``build_cmd``, ``package``)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{source} is not valid TOML ({exc})", "fix the file") from None
    url, ref = str(data.get("url", "")).strip(), str(data.get("ref", "")).strip()
    if not url or not ref:
        raise BuildError(f"{source} must set url and ref", 'e.g. url = "https://github.com/nestybox/sysbox-pkgr"')
    return PackagerPin(
        url=url,
        ref=ref,
        build_cmd=str(data.get("build_cmd", DEFAULT_BUILD_CMD)).strip() or DEFAULT_BUILD_CMD,
        package=str(data.get("package", "sysbox-ce")).strip() or "sysbox-ce",
    )


def load_pin(path: Path = PIN_FILE) -> PackagerPin:
    """The pinned packager, from the repository's packaging/ folder."""
    try:
        return parse_pin(path.read_text(encoding="utf-8"), str(path.name))
    except FileNotFoundError:
        raise BuildError(f"the packager pin {path.name} is missing", "pass --pkgr-url and --ref explicitly") from None


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
    """Append ``suffix`` to the upstream part of a Debian version (before the revision, after the epoch).

    ``0.6.7.linux-0`` -> ``0.6.7.linux+containai.20260127-0``; a version already ending in the suffix
    is returned unchanged.
    """
    from debian.debian_support import Version

    try:
        parsed = Version(version)
    except ValueError:
        raise DebError(f"Version {version!r} is not a valid Debian version", "") from None
    upstream = parsed.upstream_version or ""
    if not upstream.endswith(suffix):
        upstream += suffix
    text = upstream
    if parsed.epoch is not None:
        text = f"{parsed.epoch}:{text}"
    if parsed.debian_revision is not None:
        text = f"{text}-{parsed.debian_revision}"
    Version(text)  # still valid
    return text


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
    """Shallow-clone the packager at a tag or branch."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    try:
        out = _run(
            ["git", "clone", "--quiet", "--depth", "1", "--branch", ref, "--", url, str(dest)],
            env=env,
            timeout=900,
        )
    except FileNotFoundError:
        raise BuildError("git is not installed", "install git") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"cloning {url} took too long", "check the network and the URL") from None
    if out.returncode == 0:
        return
    err = out.stderr
    if re.search(r"Remote branch .* not found|Could not find remote branch", err):
        raise BuildError(f"ref {ref!r} not found in {url}", "give an existing tag or branch with --ref")
    fatal = [ln for ln in err.splitlines() if ln.startswith("fatal:")]
    reason = (fatal[0] if fatal else _last_line(err)).removeprefix("fatal: ")
    raise BuildError(f"cannot fetch the packager from {url} ({reason[:200]})", "check --pkgr-url and the network")


def patch_packager(root: Path) -> list[str]:
    """Apply the fuse fix to every ``deb/sysbox-*/control`` of a packager checkout."""
    controls = sorted((root / "deb").glob("sysbox-*/control"))
    if not controls:
        raise BuildError("the packager has no deb/sysbox-*/control", "is --pkgr-url a Sysbox packager (sysbox-pkgr)?")
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


def run_build(cmd: str, cwd: Path, *, stream: bool, log_path: Path, env: dict[str, str] | None = None) -> None:
    """Run the packager's build command with ``env`` added to ours; output to the terminal or a log."""
    argv = shlex.split(cmd)
    full_env = dict(os.environ, **(env or {}))
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


def build_sysbox(
    url: str,
    ref: str,
    suffix: str,
    out: Path,
    *,
    build_cmd: str = DEFAULT_BUILD_CMD,
    package: str = "sysbox-ce",
    verify: Callable[[Path, DebInfo], list[str]],
    stream: bool = False,
    log: Log = _quiet,
) -> BuildResult:
    """Clone, patch, build, mark, repack, verify and publish the sysbox-ce package."""
    check_suffix(suffix)
    with tempfile.TemporaryDirectory(prefix="cai-pkg-") as tmp:
        work = Path(tmp)
        checkout = work / "packager"
        log(f"cloning {url} at {ref}")
        clone_packager(url, ref, checkout)
        actions = patch_packager(checkout)
        for line in actions:
            log(line)
        upstream, source = find_upstream_version(checkout, ref)
        env = build_env(suffix, upstream)
        if upstream:
            log(f"upstream Sysbox version {upstream} (from {source})")
        else:
            log(f"upstream Sysbox version unknown (no VERSION file, ref {ref!r}): {VERSION_VARIABLE} is not set")
        log("building: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + f" {build_cmd}")
        run_build(build_cmd, checkout, stream=stream, log_path=work / "build.log", env=env)
        built = find_built_deb(checkout, package)
        log(f"built {built.relative_to(checkout)}")
        return _finish(built, work, suffix, out, package, verify, log, actions)


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
