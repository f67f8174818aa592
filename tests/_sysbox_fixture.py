"""The Sysbox sources fixture as git repositories, laid out like upstream's, made at test time.

``make_sources(root)`` turns ``tests/fixtures/sysbox`` into repositories next to each other, as on
GitHub: ``sysbox`` (the superproject) and ``sysbox-fs.git``, ``sysbox-runc.git``, ``sysbox-mgr.git``,
``sysbox-pkgr.git``, which the superproject's ``.gitmodules`` names by relative URL (``../sysbox-fs.git``),
exactly as upstream's does. Its history:

- tag ``v0.6.7``: VERSION 0.6.7, CHANGELOG's top entry released, sysbox-fs *without* the openat2 fix;
- tag ``v0.7.0``: VERSION 0.7.0, top entry released, sysbox-fs *with* the fix (``Sources.fix``);
- branch ``master``: VERSION 0.7.1, top entry ``unreleased`` (the changelog script takes VERSION).

Everything builds offline, with no Docker: the packager's ``deb/Makefile generic`` runs the stand-in
build on this machine.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "sysbox"
COMPONENTS = ("sysbox-fs", "sysbox-runc", "sysbox-mgr", "sysbox-pkgr")
FIX_SUBJECT = "Trap openat2 system call to allow access to sysbox-fs mounts under /proc and /sys."

Edit = Callable[[Path], None]


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd`` as the fixture's author; return its stdout."""
    out = subprocess.run(
        ["git", "-c", "user.name=fixture", "-c", "user.email=fixture@example.invalid",
         "-c", "init.defaultBranch=master", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip()


def _commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def _component(root: Path, name: str, edit: Edit | None) -> tuple[Path, list[str]]:
    repo = root / f"{name}.git"
    shutil.copytree(FIXTURE / name, repo)
    if edit:
        edit(repo)
    git(repo, "init", "-q")
    commits = [_commit(repo, f"{name}: stand-in")]
    return repo, commits


@dataclass(frozen=True)
class Sources:
    """The fixture's repositories: the superproject URL and the commits tests refer to."""

    url: str
    root: Path
    fix: str  # the sysbox-fs commit of the openat2 fix
    fs_before_fix: str
    v067: str  # superproject commit of tag v0.6.7
    v070: str  # superproject commit of tag v0.7.0
    master: str


def _superproject_commit(repo: Path, version: str, changelog_top: str, links: dict[str, str], message: str) -> str:
    (repo / "VERSION").write_text(version + "\n")
    changelog = (FIXTURE / "sysbox" / "CHANGELOG.md").read_text()
    if changelog_top:
        head, _, rest = changelog.partition("\n## ")
        changelog = f"{head}\n{changelog_top}\n### Added\n  * Stand-in change.\n\n## {rest}"
    (repo / "CHANGELOG.md").write_text(changelog)
    for path, sha in links.items():
        git(repo, "update-index", "--add", "--cacheinfo", f"160000,{sha},{path}")
    git(repo, "add", "VERSION", "CHANGELOG.md", "Makefile", ".gitmodules")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def make_sources(
    root: Path,
    *,
    pkgr_edit: Edit | None = None,
    fs_url: str = "../sysbox-fs.git",
) -> Sources:
    """Make the fixture's repositories under ``root``; return the superproject's ``file://`` URL and commits.

    ``pkgr_edit`` changes the packager before it is committed; ``fs_url`` is sysbox-fs's URL in
    ``.gitmodules`` (a URL that does not exist makes a submodule that does not clone).
    """
    root.mkdir(parents=True, exist_ok=True)
    fs, fs_commits = _component(root, "sysbox-fs", None)
    shutil.copytree(FIXTURE / "sysbox-fs-openat2", fs, dirs_exist_ok=True)
    fix = _commit(fs, FIX_SUBJECT)
    heads = {"sysbox-fs": fix}
    for name in COMPONENTS[1:]:
        _, commits = _component(root, name, pkgr_edit if name == "sysbox-pkgr" else None)
        heads[name] = commits[-1]
    superproject = root / "sysbox"
    superproject.mkdir()
    shutil.copy2(FIXTURE / "sysbox" / "Makefile", superproject / "Makefile")
    urls = {name: (fs_url if name == "sysbox-fs" else f"../{name}.git") for name in COMPONENTS}
    (superproject / ".gitmodules").write_text(
        "".join(f'[submodule "{n}"]\n\tpath = {n}\n\turl = {u}\n' for n, u in urls.items()))
    git(superproject, "init", "-q")
    v067 = _superproject_commit(superproject, "0.6.7", "", {**heads, "sysbox-fs": fs_commits[0]}, "Release v0.6.7")
    git(superproject, "tag", "v0.6.7")
    v070 = _superproject_commit(superproject, "0.7.0", "## [0.7.0] - 2026-03-02", heads, "Release v0.7.0")
    git(superproject, "tag", "v0.7.0")
    master = _superproject_commit(superproject, "0.7.1", "## [0.7.1-dev] - unreleased", heads, "Start 0.7.1")
    return Sources(f"file://{superproject}", root, fix, fs_commits[0], v067, v070, master)


def make_packager(dest: Path, edit: Edit | None = None, ref: str = "main") -> str:
    """The fixture's packager alone as a git repository (branch ``ref``); return its ``file://`` URL."""
    shutil.copytree(FIXTURE / "sysbox-pkgr", dest)
    if edit:
        edit(dest)
    git(dest, "init", "-q", "-b", ref)
    _commit(dest, "packager")
    return f"file://{dest}"
