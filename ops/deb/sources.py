"""The Sysbox sources as upstream lays them out: the superproject at a ref, its submodules, its packager.

``nestybox/sysbox`` holds the components as git submodules (``sysbox-fs``, ``sysbox-runc``,
``sysbox-mgr``, ..., and the packager ``sysbox-pkgr``), with relative URLs (``../sysbox-fs.git``).
Upstream's packager builds from ``sysbox-pkgr/sources/sysbox``, which its ``sysbox-ce-repo PATH``
target links to a superproject checkout; the package and the binaries take their version from the
superproject's ``VERSION``.

Here: the pin (``packaging/sysbox.toml``), the recursive clone at a tag, branch or commit (a partial
clone, ``--filter=blob:none``: the whole commit history, so ancestry checks see every commit, and only the
file contents of the checked-out trees), the required-commit check, the marker written into ``VERSION``,
the ``sources/sysbox`` link, and the Docker check for a packager whose build runs Docker.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ops.deb.errors import BuildError
from ops.errors import RefusedError, VersionParseError

#: ``packaging/sysbox.toml`` of the repository, shipped inside an installed package as ``ops/pins``.
_PIN_NAME = "sysbox.toml"
PIN_FILE = next(
    (p for p in (Path(__file__).resolve().parents[1] / "pins" / _PIN_NAME,
                 Path(__file__).resolve().parents[2] / "packaging" / _PIN_NAME) if p.is_file()),
    Path(__file__).resolve().parents[2] / "packaging" / _PIN_NAME,
)  # fmt: skip
DEFAULT_BUILD_CMD = "make -C deb generic EDITION=ce"
PACKAGER = "sysbox-pkgr"
_HEX = re.compile(r"[0-9a-fA-F]{7,40}")
_GIT_TIMEOUT = 1800

Log = Callable[[str], None]


@dataclass(frozen=True)
class Requirement:
    """A commit a submodule's checked-out commit must contain (be a descendant of)."""

    submodule: str
    commit: str
    why: str = ""

    def __str__(self) -> str:
        return f"{self.submodule}:{self.commit}"


def parse_requirement(text: str) -> Requirement:
    """``SUBMODULE:COMMIT`` (``sysbox-fs:1302a6f``) as given to ``--require``."""
    name, sep, commit = text.strip().partition(":")
    name, commit = name.strip(), commit.strip()
    if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", name) or not _HEX.fullmatch(commit):
        raise BuildError(
            f"--require {text!r} is not SUBMODULE:COMMIT",
            "e.g. --require sysbox-fs:1302a6f3fbe04f9c10488fe8c4195a504980cf6f (a hex commit of 7 to 40 digits)",
        )
    return Requirement(name, commit.lower())


@dataclass(frozen=True)
class SysboxPin:
    """The sources a release is built from by default (``packaging/sysbox.toml``)."""

    url: str
    ref: str
    requires: tuple[Requirement, ...] = ()
    build_cmd: str = DEFAULT_BUILD_CMD
    package: str = "sysbox-ce"


def parse_pin(text: str, source: str = "packaging/sysbox.toml") -> SysboxPin:
    """Read the pin from TOML text: ``url``, ``ref``, optional ``build_cmd``, ``package`` and ``[[require]]``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{source} is not valid TOML ({exc})", "fix the file") from None
    url, ref = str(data.get("url", "")).strip(), str(data.get("ref", "")).strip()
    if not url or not ref:
        raise BuildError(f"{source} must set url and ref", 'e.g. url = "https://github.com/nestybox/sysbox"')
    requires: list[Requirement] = []
    for item in data.get("require", []):
        if not isinstance(item, dict):
            raise BuildError(f"{source}: each [[require]] needs submodule and commit", "see the file's comments")
        req = parse_requirement(f"{item.get('submodule', '')}:{item.get('commit', '')}")
        requires.append(Requirement(req.submodule, req.commit, str(item.get("why", "")).strip()))
    return SysboxPin(
        url=url,
        ref=ref,
        requires=tuple(requires),
        build_cmd=str(data.get("build_cmd", DEFAULT_BUILD_CMD)).strip() or DEFAULT_BUILD_CMD,
        package=str(data.get("package", "sysbox-ce")).strip() or "sysbox-ce",
    )


def load_pin(path: Path = PIN_FILE) -> SysboxPin:
    """The pinned sources, from the repository's packaging/ folder."""
    try:
        return parse_pin(path.read_text(encoding="utf-8"), f"packaging/{path.name}")
    except FileNotFoundError:
        raise BuildError(f"the pin packaging/{path.name} is missing", "pass --sysbox-url and --sysbox-ref") from None


# --- git ------------------------------------------------------------------------------------------------


def is_local(url: str) -> bool:
    """A local repository (``file://`` or a path), whose submodules are local too."""
    return url.startswith("file://") or url.startswith("/") or url.startswith(".")


def run_git(args: Sequence[str], cwd: Path | None = None, *, local: bool = False) -> subprocess.CompletedProcess[str]:
    """Run git without prompts; ``local`` allows submodules over the file transport (a local superproject)."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C", GIT_ADVICE="0")
    cmd = ["git", "-c", "advice.detachedHead=false"]
    if local:
        cmd += ["-c", "protocol.file.allow=always"]
    try:
        return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, check=False, env=env,
                              timeout=_GIT_TIMEOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    except FileNotFoundError:
        raise BuildError("git is not installed", "install git") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"git {args[0]} took longer than {_GIT_TIMEOUT} s", "check the network and the URL") from None


def git_reason(stderr: str) -> str:
    """The line of git's stderr that says why (the first ``fatal:``/``error:``, else the last line)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for prefix in ("fatal:", "error:"):
        found = [ln for ln in lines if ln.startswith(prefix)]
        if found:
            return found[0].removeprefix(prefix).strip()[:200]
    return (lines[-1] if lines else "no output")[:200]


def resolve_ref(repo: Path, ref: str) -> str | None:
    """The commit a tag, a remote branch or a (possibly short) commit names in a clone, else None."""
    candidates = [f"refs/tags/{ref}", f"refs/remotes/origin/{ref}"]
    if _HEX.fullmatch(ref):
        candidates.append(ref)
    for name in candidates:
        out = run_git(["rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"], repo)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return None


def submodule_failure(stderr: str) -> str:
    """The submodule named in ``git submodule update``'s error (``clone of ... into submodule path 'X'``)."""
    match = re.search(r"submodule path '([^']+)'", stderr) or re.search(r"Failed to clone '([^']+)'", stderr)
    return match.group(1) if match else ""


def clone_superproject(url: str, ref: str, dest: Path, log: Log) -> str:
    """Clone the Sysbox superproject at ``ref`` with its submodules (recursively); return the commit."""
    local = is_local(url)
    log(f"cloning {url} at {ref} (with its submodules)")
    out = run_git(["clone", "--quiet", "--filter=blob:none", "--no-checkout", "--", url, str(dest)], local=local)
    if out.returncode != 0:
        raise BuildError(f"cannot fetch the Sysbox sources from {url} ({git_reason(out.stderr)})",
                         "check --sysbox-url and the network")  # fmt: skip
    commit = resolve_ref(dest, ref)
    if commit is None:
        raise BuildError(f"ref {ref!r} is not a tag, branch or commit of {url}",
                         "give an existing one with --sysbox-ref (git ls-remote --tags --heads URL lists them)")
    out = run_git(["checkout", "--quiet", "--detach", commit], dest, local=local)
    if out.returncode != 0:
        raise BuildError(f"cannot check out {ref} of {url} ({git_reason(out.stderr)})", "check the ref and the network")
    out = run_git(["submodule", "update", "--init", "--recursive", "--filter=blob:none"], dest, local=local)
    if out.returncode != 0:
        name = submodule_failure(out.stderr)
        what = f"submodule {name}" if name else "a submodule"
        raise BuildError(
            f"{what} of the Sysbox sources at {ref} did not clone ({git_reason(out.stderr)})",
            "its URL in .gitmodules is relative to --sysbox-url: check that repository exists and is reachable",
        )
    return commit


def submodule_paths(checkout: Path) -> dict[str, str]:
    """``{name: path}`` of the superproject's submodules, from its ``.gitmodules``."""
    if not (checkout / ".gitmodules").is_file():
        return {}
    out = run_git(["config", "--file", ".gitmodules", "--get-regexp", r"^submodule\..*\.path$"], checkout)
    paths: dict[str, str] = {}
    for line in out.stdout.splitlines():
        key, _, path = line.partition(" ")
        paths[key.removeprefix("submodule.").removesuffix(".path")] = path.strip()
    return paths


def _describe(requirement: Requirement) -> str:
    short = requirement.commit[:7]
    return f"{short} ({requirement.why})" if requirement.why else short


def check_required(checkout: Path, ref: str, requires: Sequence[Requirement], log: Log) -> list[str]:
    """Each required commit is an ancestor of (or is) its submodule's checked-out commit; else refuse."""
    paths = submodule_paths(checkout)
    found: list[str] = []
    for req in requires:
        path = paths.get(req.submodule) or next((p for p in paths.values() if p == req.submodule), None)
        if path is None or not (checkout / path).is_dir():
            known = ", ".join(sorted(paths)) or "none"
            raise BuildError(f"the Sysbox sources at {ref} have no submodule {req.submodule} (submodules: {known})",
                             "fix the SUBMODULE part of --require")  # fmt: skip
        sub = checkout / path
        head = run_git(["rev-parse", "HEAD"], sub).stdout.strip()
        full = run_git(["rev-parse", "--verify", "--quiet", f"{req.commit}^{{commit}}"], sub).stdout.strip()
        contained = bool(full) and run_git(["merge-base", "--is-ancestor", full, "HEAD"], sub).returncode == 0
        if not contained:
            raise RefusedError(
                f"{req.submodule} at {head[:7]} (Sysbox {ref}) does not contain the required commit "
                f"{_describe(req)}; nothing was built",
                "build a ref that contains it (--sysbox-ref), or change the list with --require SUBMODULE:COMMIT",
            )
        line = f"{req.submodule} at {head[:7]} contains {_describe(req)}"
        log(line)
        found.append(line)
    return found


# --- VERSION, the sources link, Docker --------------------------------------------------------------


@dataclass(frozen=True)
class Marked:
    """The superproject's VERSION before and after the marker was written."""

    before: str
    after: str
    numbers: tuple[int, ...] = field(default=())


def mark_version(checkout: Path, suffix: str) -> Marked:
    """Write ``<VERSION><suffix>`` into the superproject's VERSION (the binaries and the package read it)."""
    from ops.versions import parse_version

    path = checkout / "VERSION"
    if not path.is_file():
        raise BuildError("the Sysbox sources have no VERSION file", "is --sysbox-url the Sysbox superproject?")
    before = (path.read_text(encoding="utf-8", errors="replace").strip().splitlines() or [""])[0].strip()
    if "+containai" in before:
        raise BuildError(f"the Sysbox sources' VERSION already carries a marker ({before})",
                         "build from sources whose VERSION is upstream's")  # fmt: skip
    try:
        numbers = parse_version(before).numbers
    except VersionParseError:
        raise BuildError(f"the Sysbox sources' VERSION is not a version ({before!r})",
                         "is --sysbox-url the Sysbox superproject?") from None  # fmt: skip
    after = f"{before}{suffix}"
    path.write_text(after + "\n", encoding="utf-8")
    return Marked(before, after, numbers)


def sources_link(packager: Path) -> Path:
    """``<packager>/sources/sysbox``: where upstream's ``deb/Makefile`` reads the Sysbox sources."""
    return packager / "sources" / "sysbox"


def link_sources(packager: Path, checkout: Path) -> None:
    """Link ``sources/sysbox`` to the checkout, as upstream's ``make sysbox-ce-repo PATH`` does."""
    link = sources_link(packager)
    if link.is_symlink() and link.resolve() == checkout.resolve():
        return
    if link.exists() or link.is_symlink():
        raise BuildError(
            f"the packager already has {link.relative_to(packager)}, which does not lead to the Sysbox checkout",
            "remove it from the packager (upstream's .gitignore keeps sources/ out of the repository)",
        )
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(checkout.resolve())
    except OSError as exc:
        raise BuildError(f"cannot link {link.relative_to(packager)} to the Sysbox checkout ({exc.strerror})",
                         "remove what is in the way in the packager") from None  # fmt: skip


def check_sources(packager: Path, checkout: Path | None = None) -> None:
    """Before make: ``sources/sysbox`` must lead to a Sysbox checkout (with VERSION), or the build stops."""
    link = sources_link(packager)
    if not (link / "VERSION").is_file() or (checkout is not None and link.resolve() != checkout.resolve()):
        raise BuildError(
            f"the packager's sources/sysbox ({link}) does not lead to the Sysbox sources; the packager builds "
            "from there",
            "link it to a Sysbox superproject checkout (make sysbox-ce-repo PATH in the packager); "
            "inv pkg.build-sysbox clones and links it itself",
        )


_DOCKER_CALL = re.compile(r"^[^#\n]*\bdocker\s+(?:run|build|buildx)\b", re.MULTILINE)


def uses_docker(makefile: str) -> bool:
    """Whether a Makefile's recipes or variables run Docker (``docker run``/``docker build``)."""
    return bool(_DOCKER_CALL.search(makefile))


def check_docker(packager: Path, log: Log) -> bool:
    """When the packager's ``deb/Makefile`` runs Docker, a Docker engine must answer; return whether checked."""
    makefile = packager / "deb" / "Makefile"
    if not makefile.is_file() or not uses_docker(makefile.read_text(encoding="utf-8", errors="replace")):
        return False
    try:
        out = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                             check=False, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    except FileNotFoundError:
        raise BuildError("the packager builds in Docker (deb/Makefile runs docker) but docker is not installed",
                         "install Docker (the build needs privileged containers) or build on a machine that has it",
                         ) from None
    except subprocess.TimeoutExpired:
        raise BuildError("the packager builds in Docker but docker info did not answer within 60 s",
                         "check the Docker engine") from None  # fmt: skip
    if out.returncode != 0 or not out.stdout.strip():
        raise BuildError(
            f"the packager builds in Docker (deb/Makefile runs docker) but no Docker engine answers "
            f"({git_reason(out.stderr or out.stdout)})",
            "start Docker (the build needs privileged containers) or point DOCKER_HOST at a working engine",
        )
    log(f"Docker {out.stdout.strip()} answers (the packager builds in containers)")
    return True
