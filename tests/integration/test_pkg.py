"""pkg.build-sysbox / pkg.patch-deb / pkg.verify-deb end to end with real git, make, dpkg-deb and apt-get.

The sources are the fixture under tests/fixtures/sysbox, made at test time into repositories laid out
like upstream's (``_sysbox_fixture``): the superproject with relative submodule URLs, tag v0.6.7 whose
sysbox-fs lacks the required fix, tag v0.7.0 and branch master that have it. The build clones them
recursively exactly as it clones github.com/nestybox/sysbox, and runs the packager's real Makefile.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from _cli import inv
from _sysbox_fixture import Sources, git, make_packager, make_sources

pytestmark = pytest.mark.integration

SUFFIX = "+containai.20260127"
EXPECTED_DEPENDS = "libc6 (>= 2.34), debconf, jq, fuse3, lsb-release, rsync, iptables"
PIN_FIX = "1302a6f3fbe04f9c10488fe8c4195a504980cf6f"


def field(deb: Path, name: str) -> str:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def assert_one_error_line(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr + res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0], lines[0]


def no_files(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def runc_version(deb: Path, tmp: Path) -> str:
    """What the packaged sysbox-runc --version reports, parsed like update parses an installed one."""
    from ops.versions import parse_sysbox_runc_output

    root = tmp / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    out = subprocess.run([str(root / "usr/bin/sysbox-runc"), "--version"], capture_output=True, text=True, check=True)
    shutil.rmtree(root)
    return parse_sysbox_runc_output(out.stdout).raw


def build(sources: Sources, out: Path, *args: str, env: dict[str, str] | None = None,
          ) -> subprocess.CompletedProcess[str]:
    """``inv pkg.build-sysbox`` from the fixture, requiring the fixture's fix unless ``args`` say otherwise."""
    require = [] if "--require" in args else ["--require", f"sysbox-fs:{sources.fix}"]
    suffix = [] if "--version-suffix" in args else ["--version-suffix", SUFFIX]
    return inv("pkg.build-sysbox", "--sysbox-url", sources.url, *require, *suffix, "--out", str(out), *args,
               env=env)  # fmt: skip


#: A binary for another machine (an ELF header with an e_machine no kernel or binfmt handler runs),
#: holding the marked version string the way a Go binary holds its -X main.version.
FOREIGN_RUNC = (
    b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x02\x00" + b"\x5a\x5a" + b"\x01\0\0\0" + b"\0" * 44
    + b"version\0" + f"0.7.0{SUFFIX}".encode() + b"\0"
)  # fmt: skip


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    return make_sources(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def built(sources: Sources, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built at the tag v0.7.0 (its CHANGELOG's top entry is released)."""
    out = tmp_path_factory.mktemp("dist")
    res = build(sources, out, "--sysbox-ref", "v0.7.0")
    assert res.returncode == 0, res.stderr + res.stdout
    debs = sorted(out.glob("*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


def checkout(sources: Sources, dest: Path, ref: str) -> Path:
    """A recursive clone of the fixture at ``ref``, as a maintainer makes one by hand."""
    git(dest.parent, "-c", "protocol.file.allow=always", "clone", "-q", "--recursive", "--branch", ref,
        sources.url, str(dest))  # fmt: skip
    return dest


@pytest.fixture(scope="module")
def upstream_deb(sources: Sources, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Upstream's own build of v0.7.0 (Depends names fuse, no marker): link sources/sysbox, make generic."""
    src = checkout(sources, tmp_path_factory.mktemp("upstream") / "sysbox", "v0.7.0")
    pkgr = src / "sysbox-pkgr"
    (pkgr / "sources").mkdir()
    (pkgr / "sources" / "sysbox").symlink_to(src)
    subprocess.run(["make", "-C", "deb", "generic", "EDITION=ce"], cwd=pkgr, check=True, capture_output=True)
    debs = sorted((pkgr / "deb" / "build").glob("*/ubuntu-jammy/sysbox-ce_*.deb"))
    assert [d.name for d in debs] == [f"sysbox-ce_0.7.0.linux_{arch()}.deb"]
    return debs[0]


def arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()


def variant(
    good: Path,
    tmp: Path,
    *,
    depends: str | None = None,
    package: str | None = None,
    version: str | None = None,
    architecture: str | None = None,
    runc: bytes | None = None,
) -> Path:
    """A copy of a .deb with different fields or sysbox-runc, named from its own fields."""
    root = tmp / "root"
    subprocess.run(["dpkg-deb", "-R", str(good), str(root)], check=True)
    control = root / "DEBIAN" / "control"
    lines = control.read_text().splitlines()
    for name, value in (("Depends", depends), ("Package", package), ("Version", version),
                        ("Architecture", architecture)):  # fmt: skip
        if value is not None:
            lines = [f"{name}: {value}" if ln.startswith(f"{name}:") else ln for ln in lines]
    if runc is not None:
        (root / "usr" / "bin" / "sysbox-runc").write_bytes(runc)
    control.write_text("\n".join(lines) + "\n")
    staged = tmp / "staged.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(staged)], check=True, capture_output=True)
    name = f"{field(staged, 'Package')}_{field(staged, 'Version')}_{field(staged, 'Architecture')}.deb"
    final = tmp / name
    staged.rename(final)
    shutil.rmtree(root)
    return final


# --- the build ------------------------------------------------------------------------------------------


def test_build_at_a_tag(built: Path, tmp_path: Path) -> None:
    from ops.facts import deb_version
    from ops.versions import Action, Observed, State, decide, parse_version

    out = built.parent
    assert sorted(p.name for p in out.iterdir()) == [built.name, built.name + ".sha256"]
    assert field(built, "Package") == "sysbox-ce"
    assert field(built, "Depends") == EXPECTED_DEPENDS
    version = field(built, "Version")
    assert version == f"0.7.0.linux{SUFFIX}"
    assert built.name == f"sysbox-ce_{version}_{arch()}.deb"
    for upstream in ("0.7.0.linux", "0.6.7+containai.20260127.linux", "0.6.7.linux"):
        assert subprocess.run(["dpkg", "--compare-versions", version, "gt", upstream]).returncode == 0
    # the binaries were built from the marked VERSION: they carry the marker, and update sees the package current
    reported = runc_version(built, tmp_path)
    assert reported == f"0.7.0{SUFFIX}"
    installed = Observed(State.INSTALLED, parse_version(reported))
    assert decide("sysbox", installed, deb_version(built)).action is Action.CURRENT


def test_build_at_a_branch(sources: Sources, tmp_path: Path) -> None:
    """master's CHANGELOG starts with an unreleased entry: the packager's Version came from the marked VERSION."""
    res = build(sources, tmp_path / "out", "--sysbox-ref", "master")
    assert res.returncode == 0, res.stderr + res.stdout
    (deb,) = (tmp_path / "out").glob("*.deb")
    assert field(deb, "Version") == f"0.7.1.linux{SUFFIX}"
    assert f"Version 0.7.1{SUFFIX}.linux -> 0.7.1.linux{SUFFIX}" in res.stdout
    assert f"VERSION 0.7.1 -> 0.7.1{SUFFIX}" in res.stdout
    assert f"sysbox-fs at {sources.fix[:7]} contains {sources.fix[:7]}" in res.stdout
    assert runc_version(deb, tmp_path) == f"0.7.1{SUFFIX}"


def test_build_at_a_commit(sources: Sources, tmp_path: Path) -> None:
    res = build(sources, tmp_path / "out", "--sysbox-ref", sources.v070[:12])
    assert res.returncode == 0, res.stderr + res.stdout
    (deb,) = (tmp_path / "out").glob("*.deb")
    assert field(deb, "Version") == f"0.7.0.linux{SUFFIX}"


def test_a_ref_without_the_required_commit_is_refused_before_any_build(sources: Sources, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = build(sources, out, "--sysbox-ref", "v0.6.7")
    assert res.returncode == 2
    assert_one_error_line(
        res, f"sysbox-fs at {sources.fs_before_fix[:7]} (Sysbox v0.6.7) does not contain the required commit "
        f"{sources.fix[:7]}; nothing was built", "--sysbox-ref", "--require SUBMODULE:COMMIT",
    )  # fmt: skip
    assert "building:" not in res.stdout and "VERSION" not in res.stdout
    assert no_files(out)


def test_the_pinned_requirement_applies_by_default(sources: Sources, tmp_path: Path) -> None:
    """Without --require the pin's list holds: the fixture does not contain the real openat2 fix."""
    out = tmp_path / "out"
    res = inv("pkg.build-sysbox", "--sysbox-url", sources.url, "--sysbox-ref", "v0.7.0", "--out", str(out))
    assert res.returncode == 2
    assert_one_error_line(res, f"does not contain the required commit {PIN_FIX[:7]} (openat2 trap")
    assert no_files(out)


def test_several_requirements_replace_the_pin(sources: Sources, tmp_path: Path) -> None:
    runc_head = git(sources.root / "sysbox-runc.git", "rev-parse", "HEAD")
    res = build(sources, tmp_path / "out", "--sysbox-ref", "v0.7.0", "--require", f"sysbox-fs:{sources.fix[:7]}",
                "--require", f"sysbox-runc:{runc_head}")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "sysbox-runc at" in res.stdout and PIN_FIX[:7] not in res.stdout


def test_missing_sources_sysbox_fails_with_our_message(sources: Sources, tmp_path: Path) -> None:
    """The packager builds from sources/sysbox; without it our check stops the build, not make."""
    from ops.deb.build import build_from_packager
    from ops.deb.errors import BuildError

    src = checkout(sources, tmp_path / "sysbox", "v0.7.0")
    pkgr = src / "sysbox-pkgr"
    made = subprocess.run(["make", "-C", "deb", "generic", "EDITION=ce"], cwd=pkgr, capture_output=True, text=True)
    assert made.returncode != 0 and "sources/sysbox: Cannot open" in made.stderr  # make's own failure
    shutil.rmtree(pkgr / "deb" / "sources", ignore_errors=True)
    with pytest.raises(BuildError) as info:
        build_from_packager(pkgr, src, SUFFIX, tmp_path / "out", verify=lambda _p, _i: [])
    line = info.value.line()
    assert line.startswith("the packager's sources/sysbox (") and "does not lead to the Sysbox sources" in line
    assert "make sysbox-ce-repo PATH" in line and "\n" not in line
    assert not (pkgr / "deb" / "build").exists() and no_files(tmp_path / "out")
    # linked as upstream's sysbox-ce-repo target does, the same call builds
    (pkgr / "sources").mkdir()
    (pkgr / "sources" / "sysbox").symlink_to(src)
    (src / "VERSION").write_text(f"0.7.0{SUFFIX}\n")
    result = build_from_packager(pkgr, src, SUFFIX, tmp_path / "out", verify=lambda _p, _i: [])
    assert result.info.version == f"0.7.0.linux{SUFFIX}"


def test_a_packager_with_sources_sysbox_in_the_way(sources: Sources, tmp_path: Path) -> None:
    def commit_sources(root: Path) -> None:
        (root / ".gitignore").write_text("deb/build\n")
        (root / "sources" / "sysbox").mkdir(parents=True)
        (root / "sources" / "sysbox" / "README").write_text("not the Sysbox sources\n")

    pkgr = make_packager(tmp_path / "pkgr", commit_sources)
    out = tmp_path / "out"
    res = build(sources, out, "--sysbox-ref", "v0.7.0", "--pkgr-url", pkgr, "--ref", "main")
    assert_one_error_line(res, "the packager already has sources/sysbox, which does not lead to the Sysbox checkout")
    assert no_files(out)


def test_a_local_packager_builds(sources: Sources, tmp_path: Path) -> None:
    pkgr = make_packager(tmp_path / "pkgr", ref="fork")
    res = build(sources, tmp_path / "out", "--sysbox-ref", "v0.7.0", "--pkgr-url", pkgr, "--ref", "fork")
    assert res.returncode == 0, res.stderr
    assert f"cloning the packager {pkgr} at fork" in res.stdout
    (deb,) = (tmp_path / "out").glob("*.deb")
    assert field(deb, "Depends") == EXPECTED_DEPENDS


def test_build_with_a_packager_whose_binaries_miss_the_marker_fails(sources: Sources, tmp_path: Path) -> None:
    def unmarked_binaries(root: Path) -> None:
        script = root / "deb" / "build-deb"
        script.write_text(script.read_text().replace(
            'make -s -C sysbox sysbox-static-local EDITION="$EDITION"',
            'make -s -C sysbox sysbox-static-local EDITION="$EDITION" VERSION="$(cut -d+ -f1 sysbox/VERSION)"'))

    pkgr = make_packager(tmp_path / "pkgr", unmarked_binaries)
    out = tmp_path / "out"
    res = build(sources, out, "--sysbox-ref", "v0.7.0", "--pkgr-url", pkgr, "--ref", "main")
    assert_one_error_line(
        res, "failed verification (1 violation(s))",
        f"sysbox-runc reports 0.7.0 but the package is 0.7.0.linux{SUFFIX}: the Sysbox sources' VERSION must "
        f"carry the marker {SUFFIX}",
    )  # fmt: skip
    assert no_files(out)


def test_checksum_file_checks(built: Path) -> None:
    line = (built.parent / (built.name + ".sha256")).read_text()
    assert line == f"{hashlib.sha256(built.read_bytes()).hexdigest()}  {built.name}\n"
    res = subprocess.run(["sha256sum", "-c", built.name + ".sha256"], cwd=built.parent, capture_output=True, text=True)
    assert res.returncode == 0 and f"{built.name}: OK" in res.stdout


def test_package_is_root_owned_xz_with_the_files(built: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(built)], capture_output=True, text=True, check=True).stdout
    assert all(" root/root " in ln for ln in listing.splitlines())
    for path in ("./usr/bin/sysbox-runc", "./usr/bin/sysbox-fs", "./lib/systemd/system/sysbox-fs.service",
                 "./lib/sysctl.d/99-sysbox-sysctl.conf"):  # fmt: skip
        assert path in listing
    members = subprocess.run(["ar", "t", str(built)], capture_output=True, text=True, check=True).stdout.split()
    assert "data.tar.xz" in members


def test_default_suffix_is_the_utc_date(sources: Sources, tmp_path: Path) -> None:
    import datetime as dt

    before = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    res = inv("pkg.build-sysbox", "--sysbox-url", sources.url, "--sysbox-ref", "v0.7.0",
              "--require", f"sysbox-fs:{sources.fix}", "--out", str(tmp_path))  # fmt: skip
    after = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    assert res.returncode == 0, res.stderr
    (deb,) = tmp_path.glob("*.deb")
    assert field(deb, "Version") in {f"0.7.0.linux+containai.{d}" for d in (before, after)}


def test_verify_accepts_the_built_deb_with_install_check(built: Path) -> None:
    res = inv("pkg.verify-deb", str(built), "--install-check")
    assert res.returncode == 0, res.stderr + res.stdout
    assert "ok: " in res.stdout
    assert "host with fuse 2 installed: apt would install" in res.stdout
    fuse2_line = next(ln for ln in res.stdout.splitlines() if "host with fuse 2 installed" in ln)
    assert "fuse3 " in fuse2_line and "remove fuse 2." in fuse2_line


# --- verify rejects -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "depends, wants",
    [
        ("libc6 (>= 2.34), jq, fuse", ["fuse3 is not a Depends clause", "'fuse' names fuse"]),
        ("libc6 (>= 2.34), jq, fuse3 | fuse", ["only as an alternative", "'fuse3 | fuse' names fuse"]),
        ("libc6 (>= 2.34), jq, fuse3, fuse", ["'fuse' names fuse"]),
    ],
)
def test_verify_rejects_bad_depends(built: Path, tmp_path: Path, depends: str, wants: list[str]) -> None:
    bad = variant(built, tmp_path, depends=depends)
    res = inv("pkg.verify-deb", str(bad))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == len(wants) + 1, res.stderr
    for want, line in zip(wants, lines, strict=False):
        assert want in line and line.startswith(f"{bad}: ")
    assert lines[-1] == f"error: {bad} failed verification with {len(wants)} violation(s)"


def test_install_check_shows_why_fuse3_or_fuse_is_wrong(built: Path, tmp_path: Path) -> None:
    bad = variant(built, tmp_path, depends="libc6 (>= 2.34), jq, fuse3 | fuse")
    res = inv("pkg.verify-deb", str(bad), "--install-check")
    assert res.returncode == 1
    assert "install check (host with fuse 2 installed): apt would not install fuse3" in res.stderr
    assert "install check (host with fuse 2 installed): apt would keep fuse (fuse 2) installed" in res.stderr


def test_verify_rejects_the_upstream_build(upstream_deb: Path) -> None:
    res = inv("pkg.verify-deb", str(upstream_deb), "--install-check")
    assert res.returncode == 1
    for want in ("fuse3 is not a Depends clause", "carries no build marker",
                 "install check (clean host): apt would install fuse (fuse 2)"):  # fmt: skip
        assert want in res.stderr


def test_verify_rejects_a_marked_package_around_an_upstream_binary(upstream_deb: Path, tmp_path: Path) -> None:
    bad = variant(upstream_deb, tmp_path, depends=EXPECTED_DEPENDS, version=f"0.7.0.linux{SUFFIX}")
    res = inv("pkg.verify-deb", str(bad))
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert lines == [
        f"{bad}: sysbox-runc reports 0.7.0 but the package is 0.7.0.linux{SUFFIX}: the Sysbox sources' VERSION "
        f"must carry the marker {SUFFIX} when the binaries are built (inv pkg.build-sysbox writes it there), so "
        "update can tell it is installed",
        f"error: {bad} failed verification with 1 violation(s)",
    ]


def test_verify_rejects_containai_published_version_shape(built: Path, tmp_path: Path) -> None:
    """ContainAI's published shape sorts below upstream's package: installing it over upstream is a downgrade."""
    bad = variant(built, tmp_path, version=f"0.7.0{SUFFIX}.linux")
    res = inv("pkg.verify-deb", str(bad))
    assert res.returncode == 1
    assert res.stderr.splitlines()[0] == (
        f"{bad}: Version 0.7.0{SUFFIX}.linux sorts below upstream's package 0.7.0.linux (dpkg ordering: '+' sorts "
        f"before '.'), so installing it over upstream would be a downgrade: put the marker after the packager's "
        f".linux (0.7.0.linux{SUFFIX})"
    )


def test_verify_rejects_a_binary_of_another_build(built: Path, tmp_path: Path) -> None:
    bad = variant(built, tmp_path, version="0.7.0.linux+containai.20260301")
    res = inv("pkg.verify-deb", str(bad))
    assert res.returncode == 1
    assert f"sysbox-runc reports 0.7.0{SUFFIX} but the package is 0.7.0.linux+containai.20260301" in res.stderr


def test_verify_warns_when_the_binary_cannot_run_here(built: Path, tmp_path: Path) -> None:
    foreign = variant(built, tmp_path, architecture="arm64", runc=FOREIGN_RUNC)
    res = inv("pkg.verify-deb", str(foreign))
    assert res.returncode == 0, res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"warning: {foreign}: cannot run the packaged arm64 sysbox-runc on this machine (")
    assert f"its bytes contain '0.7.0{SUFFIX}'" in line
    assert "not sysbox-runc --version" in res.stdout


def test_verify_bad_files(tmp_path: Path, built: Path) -> None:
    random = tmp_path / "random.deb"
    random.write_bytes(os.urandom(4096))
    assert_one_error_line(inv("pkg.verify-deb", str(random)), "is not a readable .deb", "not a Debian format archive")
    truncated = tmp_path / built.name
    truncated.write_bytes(built.read_bytes()[: built.stat().st_size * 2 // 3])
    assert_one_error_line(inv("pkg.verify-deb", str(truncated)), "truncated")
    assert_one_error_line(inv("pkg.verify-deb", str(tmp_path / "missing.deb")), "does not exist")
    (tmp_path / "other").mkdir()
    other = variant(built, tmp_path / "other", package="other-pkg")
    res = inv("pkg.verify-deb", str(other))
    assert res.returncode == 1
    assert res.stderr.splitlines()[0] == f"{other}: this is a .deb of other-pkg, not sysbox-ce"


# --- bad input: one line, non-zero, nothing in --out -----------------------------------------------------


def test_build_unknown_tag(sources: Sources, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_one_error_line(build(sources, out, "--sysbox-ref", "v9.9.9"),
                          f"ref 'v9.9.9' is not a tag, branch or commit of {sources.url}")  # fmt: skip
    assert no_files(out)


@pytest.mark.parametrize("url", ["file:///nonexistent/sysbox", "https://127.0.0.1:9/nestybox/sysbox"])
def test_build_unreachable_url(url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = inv("pkg.build-sysbox", "--sysbox-url", url, "--sysbox-ref", "v0.7.0", "--out", str(out))
    assert_one_error_line(res, f"cannot fetch the Sysbox sources from {url}")
    assert no_files(out)


def test_a_submodule_that_does_not_clone(tmp_path: Path) -> None:
    broken = make_sources(tmp_path / "src", fs_url="../sysbox-fs-moved.git")
    out = tmp_path / "out"
    res = build(broken, out, "--sysbox-ref", "v0.7.0")
    assert_one_error_line(res, "submodule", "sysbox-fs", "of the Sysbox sources at v0.7.0 did not clone",
                          "relative to --sysbox-url")  # fmt: skip
    assert no_files(out)


def test_docker_missing(sources: Sources, tmp_path: Path) -> None:
    """A packager that builds in Docker (as upstream's does) with no Docker engine answering."""
    def docker_build(root: Path) -> None:
        makefile = root / "deb" / "Makefile"
        makefile.write_text(makefile.read_text().replace(
            "OUT := build/", "CHOWN:=docker run --rm -v $(CURDIR):/v -w /v alpine chown\nOUT := build/"))

    pkgr = make_packager(tmp_path / "pkgr", docker_build)
    out = tmp_path / "out"
    res = build(sources, out, "--sysbox-ref", "v0.7.0", "--pkgr-url", pkgr, "--ref", "main",
                env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})  # fmt: skip
    assert_one_error_line(res, "the packager builds in Docker (deb/Makefile runs docker) but no Docker engine answers",
                          "start Docker")  # fmt: skip
    assert "building:" not in res.stdout
    assert no_files(out)


def test_a_packager_without_the_sysbox_ce_control(sources: Sources, tmp_path: Path) -> None:
    pkgr = make_packager(tmp_path / "pkgr", lambda root: shutil.rmtree(root / "deb" / "sysbox-ce"))
    out = tmp_path / "out"
    res = build(sources, out, "--sysbox-ref", "v0.7.0", "--pkgr-url", pkgr, "--ref", "main")
    assert_one_error_line(res, "the packager has no deb/sysbox-ce/control")
    assert no_files(out)


def test_unknown_packager_ref(sources: Sources, tmp_path: Path) -> None:
    pkgr = make_packager(tmp_path / "pkgr")
    res = build(sources, tmp_path / "out", "--sysbox-ref", "v0.7.0", "--pkgr-url", pkgr, "--ref", "nope")
    assert_one_error_line(res, "ref 'nope' not found in the packager")


def test_build_control_without_depends(sources: Sources, tmp_path: Path) -> None:
    def drop_depends(root: Path) -> None:
        control = root / "deb" / "sysbox-ce" / "control"
        lines = control.read_text().split("\n")
        start = next(i for i, ln in enumerate(lines) if ln.startswith("Depends:"))
        end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
        control.write_text("\n".join(lines[:start] + lines[end:]))

    pkgr = make_packager(tmp_path / "pkgr", drop_depends)
    out = tmp_path / "out"
    res = build(sources, out, "--sysbox-ref", "v0.7.0", "--pkgr-url", pkgr, "--ref", "main")
    assert_one_error_line(res, "deb/sysbox-ce/control", "no Depends field")
    assert no_files(out)


def test_build_failure_leaves_nothing(sources: Sources, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    res = build(sources, out, "--sysbox-ref", "v0.7.0", "--build-cmd", "sh -c 'echo compiler exploded; exit 3'")
    assert_one_error_line(res, "failed with exit 3", "compiler exploded")
    assert no_files(out)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--version-suffix", "containai"], ["version suffix 'containai' is not valid"]),
        (["--require", "sysbox-fs"], ["--require 'sysbox-fs' is not SUBMODULE:COMMIT"]),
        (["--require", "sysbox-nope:abcdef0"], ["have no submodule sysbox-nope (submodules: sysbox-fs, sysbox-mgr"]),
        (["--ref", "v0.6.7"], ["--ref names the ref of a --pkgr-url packager", "--sysbox-ref"]),
        (["--pkgr-url", "file:///x"], ["--pkgr-url needs --ref"]),
    ],
)
def test_build_bad_flags(sources: Sources, tmp_path: Path, args: list[str], words: list[str]) -> None:
    out = tmp_path / "out"
    assert_one_error_line(build(sources, out, "--sysbox-ref", "v0.7.0", *args), *words)
    assert no_files(out)


def test_patch_deb_refuses_to_mark_an_upstream_binary(upstream_deb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = inv("pkg.patch-deb", str(upstream_deb), "--version-suffix", SUFFIX, "--out", str(out))
    assert res.returncode == 2
    assert_one_error_line(
        res, f"its sysbox-runc reports 0.7.0, not 0.7.0{SUFFIX}", "patch-deb cannot change the binary",
        "update reinstall Sysbox on every run", "inv pkg.build-sysbox", "--keep-version",
    )  # fmt: skip
    assert no_files(out)


def test_patch_deb_keep_version_fixes_fuse_only(upstream_deb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = inv("pkg.patch-deb", str(upstream_deb), "--keep-version", "--out", str(out))
    assert res.returncode == 0, res.stderr
    (deb,) = out.glob("*.deb")
    assert field(deb, "Depends") == EXPECTED_DEPENDS
    assert field(deb, "Version") == "0.7.0.linux"
    assert runc_version(deb, tmp_path) == "0.7.0"
    assert "warning: " in res.stderr and "will not install this package there" in res.stderr
    # without the marker it is not a ContainAI build, and verify says so (and only that)
    check = inv("pkg.verify-deb", str(deb))
    assert check.returncode == 1
    assert "carries no build marker" in check.stderr.splitlines()[0]
    assert len(check.stderr.splitlines()) == 2
    both = inv("pkg.patch-deb", str(upstream_deb), "--keep-version", "--version-suffix", SUFFIX, "--out", str(out))
    assert_one_error_line(both, "--keep-version and --version-suffix exclude each other")


def test_patch_deb_on_a_containai_build(built: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    res = inv("pkg.patch-deb", str(built), "--version-suffix", SUFFIX, "--out", str(again))
    assert res.returncode == 0, res.stderr
    (deb2,) = again.glob("*.deb")
    assert deb2.name == built.name and field(deb2, "Depends") == EXPECTED_DEPENDS
    assert runc_version(deb2, tmp_path) == f"0.7.0{SUFFIX}"
    # another stamp would name a build the binary is not
    other = tmp_path / "other"
    res = inv("pkg.patch-deb", str(built), "--version-suffix", "+containai.20260301", "--out", str(other))
    assert res.returncode == 2
    assert f"its sysbox-runc reports 0.7.0{SUFFIX}" in res.stderr
    assert no_files(other)


def test_patch_deb_re_versions_a_published_containai_build(built: Path, tmp_path: Path) -> None:
    """A package in ContainAI's published shape (marker before .linux) gets the Version that sorts right."""
    published = variant(built, tmp_path, version=f"0.7.0{SUFFIX}.linux")
    out = tmp_path / "out"
    res = inv("pkg.patch-deb", str(published), "--version-suffix", SUFFIX, "--out", str(out))
    assert res.returncode == 0, res.stderr
    (deb,) = out.glob("*.deb")
    assert field(deb, "Version") == f"0.7.0.linux{SUFFIX}"
    assert f"Version 0.7.0{SUFFIX}.linux -> 0.7.0.linux{SUFFIX}" in res.stdout


def test_patch_deb_bad_input(upstream_deb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    random = tmp_path / "x.deb"
    random.write_bytes(b"!<arch>\nnot really")
    assert_one_error_line(inv("pkg.patch-deb", str(random), "--out", str(out)), "is not a readable .deb")
    assert_one_error_line(inv("pkg.patch-deb", str(tmp_path / "nope.deb"), "--out", str(out)), "does not exist")
    dbgsym = next(upstream_deb.parent.glob("sysbox-ce-dbgsym_*.deb"))
    assert_one_error_line(inv("pkg.patch-deb", str(dbgsym), "--out", str(out)), "sysbox-ce-dbgsym, not sysbox-ce")
    assert no_files(out)
