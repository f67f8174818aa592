"""pkg.build-sysbox / pkg.patch-deb / pkg.verify-deb end to end with real git, make, dpkg-deb and apt-get.

The packager is the fixture under tests/fixtures/packager (the upstream shape, written for these
tests), turned into a real git repository with a tag so the build clones it with
``git clone --depth 1 --branch REF file://...`` exactly as it clones the real packager.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from _cli import inv

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "packager"
SUFFIX = "+containai.20260127"
EXPECTED_DEPENDS = "libc6 (>= 2.34), debconf, jq, fuse3, lsb-release, rsync, iptables"


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=fixture", "-c", "user.email=fixture@example.invalid", *args],
        cwd=cwd, check=True, capture_output=True,
    )  # fmt: skip


def make_packager_repo(dest: Path, edit: Callable[[Path], None] | None = None, tag: str = "v0.6.7") -> str:
    """Copy the fixture packager into a git repo (one commit, one tag); return its file:// URL."""
    shutil.copytree(FIXTURE, dest)
    if edit:
        edit(dest)
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "packager fixture")
    _git(dest, "tag", tag)
    return f"file://{dest}"


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


#: A binary for another machine (an ELF header with an e_machine no kernel or binfmt handler runs),
#: holding the marked version string the way a Go binary holds its -X main.version.
FOREIGN_RUNC = (
    b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x02\x00" + b"\x5a\x5a" + b"\x01\0\0\0" + b"\0" * 44
    + b"version\0" + f"0.6.7{SUFFIX}".encode() + b"\0"
)  # fmt: skip


@pytest.fixture(scope="module")
def packager(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_packager_repo(tmp_path_factory.mktemp("pkgr") / "sysbox-pkgr")


@pytest.fixture(scope="module")
def built(packager: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    res = inv("pkg.build-sysbox", "--pkgr-url", packager, "--ref", "v0.6.7",
              "--version-suffix", SUFFIX, "--out", str(out))  # fmt: skip
    assert res.returncode == 0, res.stderr + res.stdout
    debs = sorted(out.glob("*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


@pytest.fixture(scope="module")
def upstream_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's own unpatched build (Depends names fuse, no marker), as upstream ships it."""
    work = tmp_path_factory.mktemp("upstream") / "pkgr"
    shutil.copytree(FIXTURE, work)
    subprocess.run(["make", "-C", "deb", "generic", "EDITION=ce"], cwd=work, check=True, capture_output=True)
    debs = sorted((work / "deb" / "build").glob("*/ubuntu-jammy/sysbox-ce_*.deb"))
    assert len(debs) == 1
    return debs[0]


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


def test_build_yields_one_right_deb(built: Path) -> None:
    out = built.parent
    assert sorted(p.name for p in out.iterdir()) == [built.name, built.name + ".sha256"]
    assert "dbgsym" not in built.name
    assert field(built, "Package") == "sysbox-ce"
    assert field(built, "Depends") == EXPECTED_DEPENDS
    version = field(built, "Version")
    assert version == f"0.6.7.linux{SUFFIX}-0"
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert field(built, "Architecture") == arch
    assert built.name == f"sysbox-ce_{version}_{arch}.deb"
    assert subprocess.run(["dpkg", "--compare-versions", version, "gt", "0.6.7.linux-0"]).returncode == 0


def test_built_binary_reports_the_marked_version(built: Path, tmp_path: Path) -> None:
    from ops.facts import deb_version
    from ops.versions import Action, Observed, State, decide, parse_version

    reported = runc_version(built, tmp_path)
    assert reported == f"0.6.7{SUFFIX}"
    installed = Observed(State.INSTALLED, parse_version(reported))
    assert decide("sysbox", installed, deb_version(built)).action is Action.CURRENT


def test_build_with_a_packager_that_ignores_the_marker_fails(tmp_path: Path) -> None:
    def ignore_suffix(root: Path) -> None:
        makefile = root / "deb" / "Makefile"
        makefile.write_text(makefile.read_text().replace("$(UPSTREAM_VERSION)$(CONTAINAI_VERSION_SUFFIX)",
                                                         "$(UPSTREAM_VERSION)"))  # fmt: skip

    url = make_packager_repo(tmp_path / "pkgr", ignore_suffix)
    out = tmp_path / "out"
    res = inv("pkg.build-sysbox", "--pkgr-url", url, "--ref", "v0.6.7", "--version-suffix", SUFFIX, "--out", str(out))
    assert_one_error_line(
        res, "failed verification (1 violation(s))",
        f"sysbox-runc reports 0.6.7 but the package is 0.6.7.linux{SUFFIX}: build with "
        f"CONTAINAI_VERSION_SUFFIX={SUFFIX}",
        "update can tell it is installed",
    )  # fmt: skip
    assert no_files(out)


def test_build_passes_the_version_variables(packager: str, tmp_path: Path) -> None:
    res = inv("pkg.build-sysbox", "--pkgr-url", packager, "--ref", "v0.6.7", "--version-suffix", SUFFIX,
              "--out", str(tmp_path / "o"), "--build-cmd",
              "sh -c 'echo \"suffix=$CONTAINAI_VERSION_SUFFIX version=$SYSBOX_VERSION\"; exit 7'")  # fmt: skip
    assert_one_error_line(res, "failed with exit 7", f"suffix={SUFFIX} version=0.6.7{SUFFIX}")


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


def test_two_builds_give_identical_depends(packager: str, built: Path, tmp_path: Path) -> None:
    res = inv("pkg.build-sysbox", "--pkgr-url", packager, "--ref", "v0.6.7",
              "--version-suffix", SUFFIX, "--out", str(tmp_path))  # fmt: skip
    assert res.returncode == 0, res.stderr
    (second,) = tmp_path.glob("*.deb")
    assert field(second, "Depends") == field(built, "Depends") == EXPECTED_DEPENDS
    assert second.name == built.name


def test_default_suffix_is_the_utc_date(packager: str, tmp_path: Path) -> None:
    import datetime as dt

    before = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    res = inv("pkg.build-sysbox", "--pkgr-url", packager, "--ref", "v0.6.7", "--out", str(tmp_path))
    after = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    assert res.returncode == 0, res.stderr
    (deb,) = tmp_path.glob("*.deb")
    assert field(deb, "Version") in {f"0.6.7.linux+containai.{d}-0" for d in (before, after)}


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
    bad = variant(upstream_deb, tmp_path, depends=EXPECTED_DEPENDS, version=f"0.6.7.linux{SUFFIX}-0")
    res = inv("pkg.verify-deb", str(bad))
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert lines == [
        f"{bad}: sysbox-runc reports 0.6.7 but the package is 0.6.7.linux{SUFFIX}: build with "
        f"CONTAINAI_VERSION_SUFFIX={SUFFIX} (inv pkg.build-sysbox sets it; the Sysbox sources' VERSION must carry "
        "it) so the binary carries the marker and update can tell it is installed",
        f"error: {bad} failed verification with 1 violation(s)",
    ]


def test_verify_rejects_a_binary_of_another_build(built: Path, tmp_path: Path) -> None:
    bad = variant(built, tmp_path, version="0.6.7.linux+containai.20260301-0")
    res = inv("pkg.verify-deb", str(bad))
    assert res.returncode == 1
    assert f"sysbox-runc reports 0.6.7{SUFFIX} but the package is 0.6.7.linux+containai.20260301" in res.stderr


def test_verify_warns_when_the_binary_cannot_run_here(built: Path, tmp_path: Path) -> None:
    foreign = variant(built, tmp_path, architecture="arm64", runc=FOREIGN_RUNC)
    res = inv("pkg.verify-deb", str(foreign))
    assert res.returncode == 0, res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"warning: {foreign}: cannot run the packaged arm64 sysbox-runc on this machine (")
    assert f"its bytes contain '0.6.7{SUFFIX}'" in line
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


# --- build / patch bad input ---------------------------------------------------------------------------


def test_build_unknown_ref(packager: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = inv("pkg.build-sysbox", "--pkgr-url", packager, "--ref", "v9.9.9", "--out", str(out))
    assert_one_error_line(res, "ref 'v9.9.9' not found")
    assert no_files(out)


@pytest.mark.parametrize("url", ["file:///nonexistent/sysbox-pkgr", "https://127.0.0.1:9/sysbox-pkgr.git"])
def test_build_unreachable_url(url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = inv("pkg.build-sysbox", "--pkgr-url", url, "--ref", "v0.6.7", "--out", str(out))
    assert_one_error_line(res, "cannot fetch the packager from")
    assert no_files(out)


def test_build_control_without_depends(tmp_path: Path) -> None:
    def drop_depends(root: Path) -> None:
        control = root / "deb" / "sysbox-ce" / "control"
        lines = control.read_text().split("\n")
        start = next(i for i, ln in enumerate(lines) if ln.startswith("Depends:"))
        end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
        control.write_text("\n".join(lines[:start] + lines[end:]))

    url = make_packager_repo(tmp_path / "pkgr", drop_depends)
    out = tmp_path / "out"
    res = inv("pkg.build-sysbox", "--pkgr-url", url, "--ref", "v0.6.7", "--out", str(out))
    assert_one_error_line(res, "deb/sysbox-ce/control", "no Depends field")
    assert no_files(out)


def test_build_failure_leaves_nothing(packager: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    res = inv("pkg.build-sysbox", "--pkgr-url", packager, "--ref", "v0.6.7", "--out", str(out),
              "--build-cmd", "sh -c 'echo compiler exploded; exit 3'")  # fmt: skip
    assert_one_error_line(res, "failed with exit 3", "compiler exploded")
    assert no_files(out)


def test_build_bad_suffix(packager: str, tmp_path: Path) -> None:
    res = inv("pkg.build-sysbox", "--pkgr-url", packager, "--ref", "v0.6.7", "--out", str(tmp_path / "o"),
              "--version-suffix", "containai")  # fmt: skip
    assert_one_error_line(res, "version suffix 'containai' is not valid")


def test_patch_deb_refuses_to_mark_an_upstream_binary(upstream_deb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = inv("pkg.patch-deb", str(upstream_deb), "--version-suffix", SUFFIX, "--out", str(out))
    assert res.returncode == 2
    assert_one_error_line(
        res, f"its sysbox-runc reports 0.6.7, not 0.6.7{SUFFIX}", "patch-deb cannot change the binary",
        "update reinstall Sysbox on every run", "inv pkg.build-sysbox", "--keep-version",
    )  # fmt: skip
    assert no_files(out)


def test_patch_deb_keep_version_fixes_fuse_only(upstream_deb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = inv("pkg.patch-deb", str(upstream_deb), "--keep-version", "--out", str(out))
    assert res.returncode == 0, res.stderr
    (deb,) = out.glob("*.deb")
    assert field(deb, "Depends") == EXPECTED_DEPENDS
    assert field(deb, "Version") == "0.6.7.linux-0"
    assert runc_version(deb, tmp_path) == "0.6.7"
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
    assert runc_version(deb2, tmp_path) == f"0.6.7{SUFFIX}"
    # another stamp would name a build the binary is not
    other = tmp_path / "other"
    res = inv("pkg.patch-deb", str(built), "--version-suffix", "+containai.20260301", "--out", str(other))
    assert res.returncode == 2
    assert f"its sysbox-runc reports 0.6.7{SUFFIX}" in res.stderr
    assert no_files(other)


def test_patch_deb_bad_input(upstream_deb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    random = tmp_path / "x.deb"
    random.write_bytes(b"!<arch>\nnot really")
    assert_one_error_line(inv("pkg.patch-deb", str(random), "--out", str(out)), "is not a readable .deb")
    assert_one_error_line(inv("pkg.patch-deb", str(tmp_path / "nope.deb"), "--out", str(out)), "does not exist")
    dbgsym = next(upstream_deb.parent.glob("sysbox-ce-dbgsym_*.deb"))
    assert_one_error_line(inv("pkg.patch-deb", str(dbgsym), "--out", str(out)), "sysbox-ce-dbgsym, not sysbox-ce")
    assert no_files(out)
