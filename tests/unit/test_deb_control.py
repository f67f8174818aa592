"""The control-file fix (fuse -> fuse3), version marking and the pure parts of verify-deb."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ops.deb.build import check_suffix, default_suffix, marked_version, requirements
from ops.deb.control import (
    alternative_names,
    binary_fields,
    fix_fuse_depends,
    names_fuse,
    set_field,
    split_clauses,
)
from ops.deb.errors import BuildError, ControlError
from ops.deb.inspect import DebInfo, deb_file_name, normalize_member
from ops.deb.runc import (
    package_build_version,
    runc_version_violations,
)
from ops.deb.sources import (
    Requirement,
    git_reason,
    parse_pin,
    parse_requirement,
    submodule_failure,
    uses_docker,
)
from ops.deb.verify import (
    REQUIRED_FILES,
    AptPlan,
    as_installed,
    depends_violations,
    install_violations,
    parse_apt_simulation,
    synthetic_status,
    unmarked_version,
    version_violations,
    violations,
)

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden" / "deb"
SHAPES = sorted(p.stem for p in GOLDEN.glob("*.control"))


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


# --- goldens ---------------------------------------------------------------------------------------


def test_golden_shapes_are_there() -> None:
    assert {
        "upstream-folded",
        "binary-single-line",
        "alt-fuse3-or-fuse",
        "alt-fuse-or-x",
        "versioned",
        "already-fixed",
        "fuse-absent",
        "both",
        "comment-trailing-comma",
        "sysbox-pkgr-real",
    } <= set(SHAPES)


@pytest.mark.parametrize("shape", SHAPES)
def test_golden_edit(shape: str) -> None:
    source = _read(GOLDEN / f"{shape}.control")
    expected = _read(GOLDEN / f"{shape}.expected")
    edit = fix_fuse_depends(source)
    assert edit.text == expected
    assert edit.changed == (source != expected)
    assert bool(edit.actions) == edit.changed


@pytest.mark.parametrize("shape", SHAPES)
def test_golden_edit_is_byte_idempotent(shape: str) -> None:
    expected = _read(GOLDEN / f"{shape}.expected")
    again = fix_fuse_depends(expected)
    assert again.text == expected
    assert not again.changed and again.actions == ()


@pytest.mark.parametrize("shape", SHAPES)
def test_golden_result_has_no_fuse_clause(shape: str) -> None:
    text = fix_fuse_depends(_read(GOLDEN / f"{shape}.control")).text
    depends = binary_fields(text)["Depends"]
    assert not any(names_fuse(c) for c in split_clauses(depends))


def test_real_sysbox_pkgr_control_keeps_every_other_byte() -> None:
    """nestybox/sysbox-pkgr's deb/sysbox-ce/control, byte for byte: folded Depends, no final newline."""
    source = (GOLDEN / "sysbox-pkgr-real.control").read_bytes()
    assert source.startswith(b"Source: sysbox-ce\nSection: admin\n") and not source.endswith(b"\n")
    assert b"Depends: ${shlibs:Depends},\n         ${misc:Depends},\n" in source
    out = fix_fuse_depends(source.decode()).text.encode()
    assert out == source.replace(b"         fuse,\n", b"         fuse3,\n", 1)
    # the fixture's packager carries the same bytes, so the builds patch the real shape
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "sysbox" / "sysbox-pkgr" / "deb" / "sysbox-ce"
    assert (fixture / "control").read_bytes() == source


def test_upstream_shape_keeps_every_other_byte() -> None:
    source = _read(GOLDEN / "upstream-folded.control")
    out = fix_fuse_depends(source).text
    assert not source.endswith("\n") and not out.endswith("\n")
    assert source.replace("         fuse,\n", "         fuse3,\n", 1) == out
    assert "${shlibs:Depends},\n         ${misc:Depends}," in out


def test_fuse3_or_fuse_becomes_plain_fuse3() -> None:
    out = fix_fuse_depends("Package: p\nDepends: a, fuse3 | fuse, b\n").text
    assert out == "Package: p\nDepends: a, fuse3, b\n"


def test_version_on_fuse_is_dropped() -> None:
    out = fix_fuse_depends("Package: p\nDepends: fuse (>= 2.9.7)\n").text
    assert out == "Package: p\nDepends: fuse3\n"


def test_fuse_removed_when_fuse3_present_anywhere() -> None:
    assert fix_fuse_depends("Package: p\nDepends: fuse, fuse3").text == "Package: p\nDepends: fuse3"
    assert fix_fuse_depends("Package: p\nDepends: fuse3, fuse\n").text == "Package: p\nDepends: fuse3\n"
    out = fix_fuse_depends("Package: p\nDepends: jq,\n fuse3,\n fuse").text
    assert out == "Package: p\nDepends: jq,\n fuse3"


def test_every_binary_paragraph_is_fixed() -> None:
    text = "Source: s\n\nPackage: a\nDepends: fuse\n\nPackage: b\nDepends: x | fuse\n"
    out = fix_fuse_depends(text).text
    assert out == "Source: s\n\nPackage: a\nDepends: fuse3\n\nPackage: b\nDepends: fuse3\n"


@pytest.mark.parametrize(
    "clause, names_fuse_expected",
    [
        ("fuse", True),
        ("fuse:any", True),
        ("fuse (>= 2.9)", True),
        ("fuse [amd64]", True),
        ("x | fuse", True),
        ("fuse3", False),
        ("fuse-overlayfs", False),
        ("libfuse2", False),
        ("libfuse3-3 (>= 3.2)", False),
        ("fuse2fs", False),
        ("${shlibs:Depends}", False),
        ("fuse3 | fuse-overlayfs", False),
    ],
)
def test_exact_name_match(clause: str, names_fuse_expected: bool) -> None:
    assert names_fuse(clause) is names_fuse_expected


def test_alternative_names() -> None:
    assert alternative_names("a (>= 1) | b:any [amd64] | c") == ["a", "b", "c"]
    assert alternative_names("${misc:Depends}") == ["${misc:Depends}"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("Source: sysbox-ce\nSection: admin\n", "no binary paragraph"),
        ("Package: sysbox-ce\nArchitecture: amd64\n", "no Depends field"),
        ("this is not a control file\n", "not a valid control file"),
        ("", "no binary paragraph"),
    ],
)
def test_control_errors(text: str, message: str) -> None:
    with pytest.raises(ControlError) as info:
        fix_fuse_depends(text)
    assert message in info.value.line()
    assert "\n" not in info.value.line()


def test_set_field_keeps_other_bytes() -> None:
    text = "Package: a\nVersion: 1.0-0\nDepends: x,\n y"
    assert set_field(text, "Version", "1.0+c.1-0") == "Package: a\nVersion: 1.0+c.1-0\nDepends: x,\n y"
    assert set_field(text, "Version", "1.0-0") == text


# --- property tests -------------------------------------------------------------------------------

_OTHER = [
    "jq",
    "rsync",
    "iptables (>= 1.8)",
    "fuse-overlayfs",
    "libfuse2",
    "debconf",
    "${misc:Depends}",
    "lsb-release | base-files",
    "fuse2fs",
    "libc6 (>= 2.34)",
]
_FUSE = ["fuse", "fuse (>= 2.9)", "fuse:any", "fuse3 | fuse", "fuse | fuse3", "x | fuse"]
_FUSE3 = ["fuse3", "fuse3 (>= 3.10)"]

clauses = st.lists(st.sampled_from(_OTHER + _FUSE + _FUSE3), min_size=1, max_size=9)


def _render(items: list[str], folded: bool, indent: int, final_newline: bool, trailing_comma: bool) -> str:
    if folded:
        sep = ",\n" + " " * indent
        body = sep.join(items) + ("," if trailing_comma else "")
    else:
        body = ", ".join(items)
    text = f"Source: s\nSection: admin\n\nPackage: sysbox-ce\nArchitecture: linux-any\nDepends: {body}\n"
    text += "Description: d\n long line"
    return text + ("\n" if final_newline else "")


@settings(max_examples=150, deadline=None)
@given(clauses, st.booleans(), st.integers(1, 9), st.booleans(), st.booleans())
def test_properties(items: list[str], folded: bool, indent: int, final_newline: bool, trailing: bool) -> None:
    text = _render(items, folded, indent, final_newline, trailing and folded)
    edit = fix_fuse_depends(text)
    # idempotent, byte for byte
    assert fix_fuse_depends(edit.text).text == edit.text
    assert not fix_fuse_depends(edit.text).changed
    after = split_clauses(binary_fields(edit.text)["Depends"])
    # no clause or alternative names fuse
    assert not any(names_fuse(c) for c in after)
    had_fuse = any(names_fuse(c) for c in items)
    if had_fuse:
        assert sum(alternative_names(c) == ["fuse3"] for c in after) >= 1
    else:
        assert edit.text == text
    # every other clause is kept, in order, as written
    assert [c for c in after if c != "fuse3"] == [c for c in items if not names_fuse(c) and c != "fuse3"]
    # nothing outside Depends changes; the final newline is kept as it was
    assert edit.text.startswith("Source: s\nSection: admin\n\nPackage: sysbox-ce\nArchitecture: linux-any\nDepends: ")
    assert edit.text.endswith("Description: d\n long line" + ("\n" if final_newline else ""))


# --- versions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version, marked",
    [
        ("0.6.7.linux", "0.6.7.linux+containai.20260127"),
        ("0.6.7.linux-0", "0.6.7.linux+containai.20260127-0"),
        ("1:0.6.7-1ubuntu2", "1:0.6.7+containai.20260127-1ubuntu2"),
        ("0.6.7-0.linux", "0.6.7+containai.20260127-0.linux"),
        ("0.6.7.linux+containai.20260127-0", "0.6.7.linux+containai.20260127-0"),
        # ContainAI's published shape (marker before .linux) is re-versioned: the marker goes last
        ("0.6.7+containai.20260127.linux", "0.6.7.linux+containai.20260127"),
        ("0.6.7+containai.20250101.linux", "0.6.7.linux+containai.20260127"),
    ],
)
def test_marked_version(version: str, marked: str) -> None:
    from debian.debian_support import Version

    assert marked_version(version, "+containai.20260127") == marked
    assert marked_version(marked, "+containai.20260127") == marked  # idempotent
    assert Version(marked) >= Version(version.replace("+containai.20260127", "").replace("+containai.20250101", ""))


def test_marked_sorts_above_upstream_and_later_rebuild_above_earlier() -> None:
    from debian.debian_support import Version

    up = "0.6.7.linux-0"
    a = marked_version(up, "+containai.20260127")
    b = marked_version(up, "+containai.20260301")
    assert Version(up) < Version(a) < Version(b)
    assert Version(a) < Version("0.6.8.linux-0")


def test_suffix_rules() -> None:
    assert default_suffix(dt.datetime(2026, 1, 27, 23, 30, tzinfo=dt.UTC)) == "+containai.20260127"
    assert check_suffix("+containai.20260127") == "+containai.20260127"
    for bad in ("containai.1", "~containai", "+", "+a b", "+a-b", ""):
        with pytest.raises(BuildError):
            check_suffix(bad)


def test_unmarked_version() -> None:
    assert unmarked_version("1:0.6.7.linux+containai.20260127-0", "+containai.") == "1:0.6.7.linux-0"
    assert unmarked_version("0.6.7.linux-0", "+containai.") is None


def test_version_violations() -> None:
    assert version_violations("0.6.7.linux+containai.20260127-0", "+containai.") == []
    assert version_violations("0.6.7.linux+containai.20260127-0", "+containai.20260127") == []
    assert "carries no build marker" in version_violations("0.6.7.linux-0", "+containai.")[0]
    assert "not followed by a build stamp" in version_violations("0.6.7+containai.-0", "+containai.")[0]
    assert "not a valid Debian version" in version_violations("not a version!", "+containai.")[0]
    assert version_violations("", "+containai.") == ["the package has no Version field"]
    (line,) = version_violations("0.6.7+containai.20260127.linux", "+containai.")
    assert line == (
        "Version 0.6.7+containai.20260127.linux sorts below upstream's package 0.6.7.linux (dpkg ordering: '+' "
        "sorts before '.'), so installing it over upstream would be a downgrade: put the marker after the "
        "packager's .linux (0.6.7.linux+containai.20260127)"
    )


# --- verify: fields ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "depends, expected",
    [
        ("libc6 (>= 2.34), debconf, jq, fuse3, rsync", []),
        ("fuse3 (>= 3.10), jq", []),
        ("jq, fuse", ["fuse3 is not a Depends clause", "'fuse' names fuse"]),
        ("jq, fuse3 | fuse", ["fuse3 appears only as an alternative", "'fuse3 | fuse' names fuse"]),
        ("fuse3, fuse", ["'fuse' names fuse"]),
        ("fuse3, fuse-overlayfs, libfuse2", []),
        ("jq", ["fuse3 is not a Depends clause"]),
        ("${shlibs:Depends}, fuse3", ["unexpanded substitution variable"]),
        ("fuse3, jq,", ["trailing comma"]),
    ],
)
def test_depends_violations(depends: str, expected: list[str]) -> None:
    found = depends_violations(depends)
    assert len(found) == len(expected), found
    for line, want in zip(found, expected, strict=True):
        assert want in line


def _info(name: str = "sysbox-ce_0.6.7.linux+containai.20260127-0_amd64.deb", **fields: str) -> DebInfo:
    base = {
        "Package": "sysbox-ce",
        "Version": "0.6.7.linux+containai.20260127-0",
        "Architecture": "amd64",
        "Depends": "libc6 (>= 2.34), debconf, jq, fuse3, lsb-release, rsync, iptables",
    }
    base.update(fields)
    return DebInfo(
        path=Path("/out") / name,
        control_text="",
        fields={k: v for k, v in base.items() if v},
        control_members={"control": 0o644, "postinst": 0o755, "prerm": 0o755, "postrm": 0o755},
        data_paths=frozenset(REQUIRED_FILES),
    )


def test_violations_accepts_a_right_package() -> None:
    assert violations(_info()) == []


def test_violations_usr_merged_paths_are_accepted() -> None:
    info = _info()
    moved = frozenset(p if p.startswith("/usr/") else "/usr" + p for p in info.data_paths)
    assert violations(DebInfo(info.path, "", info.fields, info.control_members, moved)) == []


def test_violations_lists_everything() -> None:
    info = _info(
        name="whatever.deb",
        Version="0.6.7.linux-0",
        Architecture="i386",
        Depends="fuse, jq",
    )
    info = DebInfo(info.path, "", info.fields, {"control": 0o644, "postinst": 0o644}, frozenset({"/usr/bin/sysbox-fs"}))
    found = violations(info)
    text = "\n".join(found)
    for want in (
        "fuse3 is not a Depends clause",
        "names fuse",
        "carries no build marker",
        "Architecture is 'i386'",
        "/usr/bin/sysbox-runc",
        "/lib/systemd/system/sysbox.service",
        "/lib/sysctl.d/99-sysbox-sysctl.conf",
        "postinst is not executable",
        "prerm is missing",
        "postrm is missing",
    ):
        assert want in text, want
    assert all("\n" not in line for line in found)


def test_violations_another_package_is_one_line() -> None:
    assert violations(_info(Package="sysbox-ce-dbgsym")) == ["this is a .deb of sysbox-ce-dbgsym, not sysbox-ce"]


def test_violations_file_name_and_arch() -> None:
    assert "does not match its fields" in violations(_info(name="sysbox-ce.deb"))[0]
    assert "expected 'arm64'" in violations(_info(), arch="arm64")[0]


def test_deb_file_name_drops_epoch() -> None:
    fields = {"Package": "sysbox-ce", "Version": "1:0.6.7+containai.20260127-0", "Architecture": "arm64"}
    assert deb_file_name(fields) == "sysbox-ce_0.6.7+containai.20260127-0_arm64.deb"


def test_normalize_member() -> None:
    assert normalize_member("./usr/bin/x") == "/usr/bin/x"
    assert normalize_member("./") == "/"
    assert normalize_member("./lib/systemd/") == "/lib/systemd"


# --- verify: apt simulation --------------------------------------------------------------------------


def test_parse_apt_simulation_golden_fuse2_host() -> None:
    plan = parse_apt_simulation(_read(GOLDEN / "apt-sim-fixed-fuse2.txt"))
    assert plan.removes == {"fuse": "2.9.9-6+b1"}
    assert plan.installs["fuse3"] == "3.14.0-4"
    assert plan.installs["sysbox-ce"] == "0.6.7.linux+containai.20260127-0"
    assert install_violations("fuse 2 host", plan, "sysbox-ce", fuse_installed=True) == []


def test_parse_apt_simulation_golden_upstream() -> None:
    clean = parse_apt_simulation(_read(GOLDEN / "apt-sim-upstream-clean.txt"))
    assert "fuse" in clean.installs and "fuse3" not in clean.installs
    found = install_violations("clean", clean, "sysbox-ce", fuse_installed=False)
    assert any("would not install fuse3" in f for f in found)
    assert any("would install fuse (fuse 2)" in f for f in found)
    fuse2 = parse_apt_simulation(_read(GOLDEN / "apt-sim-upstream-fuse2.txt"))
    found = install_violations("fuse2", fuse2, "sysbox-ce", fuse_installed=True)
    assert any("keep fuse (fuse 2) installed" in f for f in found)


def test_parse_apt_simulation_errors_and_upgrades() -> None:
    text = (
        "Inst libfoo:amd64 [1.0-1] (1.1-1 Debian:12.5/stable [amd64])\n"
        "Remv bar:amd64 [2.0]\n"
        "E: Unable to correct problems, you have held broken packages.\n"
    )
    plan = parse_apt_simulation(text)
    refusal = "Unable to correct problems, you have held broken packages."
    assert plan == AptPlan({"libfoo": "1.1-1"}, {"bar": "2.0"}, (refusal,))
    assert install_violations("x", plan, "sysbox-ce", False) == [
        "install check (x): apt refuses: Unable to correct problems, you have held broken packages."
    ]


STATUS = """Package: base-files
Status: install ok installed
Version: 12.4

Package: fuse3
Status: install ok installed
Provides: fuse (= 3.14.0-4)
Depends: libfuse3-3 (= 3.14.0-4), adduser, mount
Version: 3.14.0-4

Package: sshfs
Status: install ok installed
Depends: fuse3,
 libc6
Version: 3.7.3-1.1

Package: needs-either
Status: install ok installed
Depends: fuse3 | base-files
Version: 1

Package: libfuse3-3
Status: install ok installed
Version: 3.14.0-4
"""


def test_synthetic_status_drops_broken_reverse_dependencies() -> None:
    out = synthetic_status(STATUS, drop={"fuse3", "fuse"})
    names = [line.split(": ")[1] for line in out.splitlines() if line.startswith("Package: ")]
    assert names == ["base-files", "needs-either", "libfuse3-3"]
    added = synthetic_status(STATUS, drop={"fuse3"}, add=["Package: fuse\nStatus: install ok installed\nVersion: 2"])
    assert added.rstrip().endswith("Package: fuse\nStatus: install ok installed\nVersion: 2")


def test_as_installed() -> None:
    record = (
        "Package: fuse\nVersion: 2.9.9-6+b1\nInstalled-Size: 105\nDepends: libfuse2 (= 2.9.9-6+b1), adduser\n"
        "Description: Filesystem in Userspace\nDescription-md5: abc\nFilename: pool/main/f/fuse.deb\n"
        "Size: 1\nSHA256: ff\n"
    )
    out = as_installed(record)
    assert out.splitlines()[:2] == ["Package: fuse", "Status: install ok installed"]
    assert "Filename" not in out and "SHA256" not in out and "Description-md5" not in out
    assert "Depends: libfuse2 (= 2.9.9-6+b1), adduser" in out


# --- the pin of the Sysbox sources ----------------------------------------------------------------------


def test_pin_file_of_the_repository() -> None:
    text = (Path(__file__).resolve().parents[2] / "packaging" / "sysbox.toml").read_text()
    pin = parse_pin(text)
    assert pin.url == "https://github.com/nestybox/sysbox"
    assert pin.ref == "v0.7.0"
    assert pin.build_cmd == "make -C deb generic EDITION=ce"
    (req,) = pin.requires
    assert (req.submodule, req.commit) == ("sysbox-fs", "1302a6f3fbe04f9c10488fe8c4195a504980cf6f")
    assert "openat2" in req.why
    assert not (Path(__file__).resolve().parents[2] / "packaging" / "__init__.py").exists()


def test_pin_errors() -> None:
    for text in ("url = ", 'url = "x"\n', 'url = "x"\nref = "y"\n[[require]]\nsubmodule = "fs"\ncommit = "zz"\n',
                 "not toml ="):
        with pytest.raises(BuildError):
            parse_pin(text)


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("sysbox-fs:1302a6f", ("sysbox-fs", "1302a6f")),
        ("sysbox-fs:1302A6F3FBE04F9C10488FE8C4195A504980CF6F",
         ("sysbox-fs", "1302a6f3fbe04f9c10488fe8c4195a504980cf6f")),
        (" sysbox-runc : abcdef0 ", ("sysbox-runc", "abcdef0")),
    ],
)
def test_parse_requirement(text: str, parsed: tuple[str, str]) -> None:
    req = parse_requirement(text)
    assert (req.submodule, req.commit) == parsed


@pytest.mark.parametrize("text", ["sysbox-fs", "sysbox-fs:", ":1302a6f", "sysbox-fs:123", "sysbox-fs:master",
                                  "a b:1302a6f", "sysbox-fs:1302a6f3fbe04f9c10488fe8c4195a504980cf6f0"])
def test_parse_requirement_rejects(text: str) -> None:
    with pytest.raises(BuildError) as info:
        parse_requirement(text)
    assert "is not SUBMODULE:COMMIT" in info.value.line() and "\n" not in info.value.line()


def test_requirements_replace_the_pin_list() -> None:
    pinned = (Requirement("sysbox-fs", "1302a6f", "openat2"),)
    assert requirements([], pinned) == pinned
    assert requirements(["sysbox-runc:abcdef0", "sysbox-fs:1234567"], pinned) == (
        Requirement("sysbox-runc", "abcdef0"), Requirement("sysbox-fs", "1234567"))


@pytest.mark.parametrize(
    "makefile, uses",
    [
        ("CHOWN:=docker run --rm -v $(CURDIR):/v alpine chown\n", True),  # upstream's deb/Makefile
        ("DOCKER_BUILD=docker build \\\n\t--build-arg x\n", True),
        ("generic:\n\tdocker buildx build .\n", True),
        ("# docker run is not used here\ngeneric:\n\t./build-deb\n", False),
        ("generic:\n\techo dockerfile\n", False),
        ("", False),
    ],
)
def test_uses_docker(makefile: str, uses: bool) -> None:
    assert uses_docker(makefile) is uses


def test_git_reason_and_submodule_failure() -> None:
    err = ("Cloning into '/w/sysbox/sysbox-fs'...\nfatal: '/x/sysbox-nope.git' does not appear to be a git repository\n"
           "fatal: Could not read from remote repository.\n"
           "fatal: clone of '/x/sysbox-nope.git' into submodule path '/w/sysbox/sysbox-fs' failed\n"
           "Failed to clone 'sysbox-fs'. Retry scheduled\n")
    assert git_reason(err) == "'/x/sysbox-nope.git' does not appear to be a git repository"
    assert submodule_failure(err) == "/w/sysbox/sysbox-fs"
    assert submodule_failure("Failed to clone 'sysbox-fs' a second time, aborting\n") == "sysbox-fs"
    assert git_reason("") == "no output"


# --- the version the packaged sysbox-runc reports ----------------------------------------------------

RUNC_OUT = "sysbox-runc\n\tedition: \tCommunity Edition (CE)\n\tversion: \t{}\n\tcommit: \tabc\n"


@pytest.mark.parametrize(
    "version, build",
    [
        ("0.6.7.linux+containai.20260127-0", "0.6.7+containai.20260127"),
        ("1:0.6.7.linux+containai.20260127-0", "0.6.7+containai.20260127"),
        ("0.6.7.linux-0", "0.6.7"),
        ("0.6.7+containai.20260127", "0.6.7+containai.20260127"),
    ],
)
def test_package_build_version(version: str, build: str) -> None:
    assert package_build_version(version) == build


def test_runc_version_matches_the_package() -> None:
    marked = RUNC_OUT.format("0.6.7+containai.20260127")
    assert runc_version_violations("0.6.7.linux+containai.20260127-0", marked) == []
    assert runc_version_violations("0.6.7.linux-0", RUNC_OUT.format("0.6.7")) == []


def test_runc_without_the_marker_is_a_violation_that_says_how_to_build() -> None:
    (line,) = runc_version_violations("0.6.7.linux+containai.20260127-0", RUNC_OUT.format("0.6.7"))
    assert line == (
        "sysbox-runc reports 0.6.7 but the package is 0.6.7.linux+containai.20260127: the Sysbox sources' VERSION "
        "must carry the marker +containai.20260127 when the binaries are built (inv pkg.build-sysbox writes it "
        "there), so update can tell it is installed"
    )


@pytest.mark.parametrize(
    "package, reported",
    [
        ("0.6.7.linux+containai.20260301-0", "0.6.7+containai.20260127"),  # another rebuild
        ("0.6.7.linux+containai.20260127-0", "0.6.8+containai.20260127"),  # other numbers
        ("0.6.7.linux-0", "0.6.7+containai.20260127"),  # ContainAI binary in an upstream package
    ],
)
def test_runc_of_another_build_is_a_violation(package: str, reported: str) -> None:
    (line,) = runc_version_violations(package, RUNC_OUT.format(reported))
    assert f"sysbox-runc reports {reported} but the package is " in line
    assert "must name the same build" in line


def test_runc_without_a_version_line_is_a_violation() -> None:
    (line,) = runc_version_violations("0.6.7.linux+containai.20260127-0", "sysbox-runc\n")
    assert "--version shows no version" in line


def test_violations_without_the_marker_requirement() -> None:
    assert violations(_info(name="sysbox-ce_0.6.7.linux-0_amd64.deb", Version="0.6.7.linux-0"),
                      require_marker=False) == []  # fmt: skip
    assert "not a valid Debian version" in violations(_info(Version="x!"), require_marker=False, check_name=False)[0]
