"""The Sysbox version model against goldens of real-shaped tool output."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops.errors import VersionParseError
from ops.facts import parse_sysbox_probe
from ops.versions import (
    Action,
    Observed,
    State,
    bundle_version_from_name,
    decide,
    find_sysbox_deb,
    parse_dpkg_version,
    parse_sysbox_runc_output,
    parse_version,
)

pytestmark = pytest.mark.unit
GOLDEN = Path(__file__).parent / "golden" / "sysbox-runc"


def golden(name: str) -> str:
    return (GOLDEN / name).read_text()


def test_multi_line_upstream() -> None:
    v = parse_sysbox_runc_output(golden("upstream-0.6.7.txt"))
    assert v.numbers == (0, 6, 7)
    assert not v.is_containai


def test_multi_line_containai_build() -> None:
    v = parse_sysbox_runc_output(golden("containai-0.6.7-20260127.txt"))
    assert v.numbers == (0, 6, 7)
    assert v.build_date == 20260127
    assert str(v) == "0.6.7+containai.20260127"


def test_single_line() -> None:
    assert parse_sysbox_runc_output(golden("single-line-0.6.4.txt")).numbers == (0, 6, 4)


def test_single_line_with_text_after_the_version() -> None:
    """``sysbox-runc version 0.6.4+containai.20250124 (commit ...)``: the earlier tool took the word after
    ``version`` whatever followed it; so do we (this failed with "no version" before)."""
    v = parse_sysbox_runc_output(golden("single-line-0.6.4-trailing.txt"))
    assert str(v) == "0.6.4+containai.20250124"
    assert v.numbers == (0, 6, 4) and v.build_date == 20250124
    assert str(parse_sysbox_runc_output("sysbox-runc version 0.6.4 (commit 3d6e1b2)\n")) == "0.6.4"


@pytest.mark.parametrize("text", ["sysbox-runc version\n", "sysbox-runc version (commit 3d6e1b2)\n",
                                  "sysbox-runc version x.y\n"])
def test_single_line_without_a_version_raises(text: str) -> None:
    with pytest.raises(VersionParseError):
        parse_sysbox_runc_output(text)


@pytest.mark.parametrize("name", ["no-version.txt", "first-line-only.txt"])
def test_no_version_raises(name: str) -> None:
    with pytest.raises(VersionParseError):
        parse_sysbox_runc_output(golden(name))


def test_empty_output_raises() -> None:
    with pytest.raises(VersionParseError):
        parse_sysbox_runc_output("")


def test_dpkg_revision_is_dropped() -> None:
    v = parse_dpkg_version("0.6.7+containai.20260127-0")
    assert v.numbers == (0, 6, 7) and v.build_date == 20260127
    assert v.same_as(parse_version("0.6.7+containai.20260127"))
    assert parse_dpkg_version("0.6.7.linux-0").numbers == (0, 6, 7)


def test_rebuilds_order_by_date_not_by_difference() -> None:
    older = parse_version("0.6.7+containai.20260101")
    newer = parse_version("0.6.7+containai.20260127")
    assert older < newer
    installed = Observed(State.INSTALLED, newer)
    assert decide("Sysbox", installed, older).action is Action.KEEP_NEWER
    assert decide("Sysbox", Observed(State.INSTALLED, older), newer).action is Action.UPGRADE


def test_containai_beats_upstream_at_equal_numbers() -> None:
    upstream = parse_version("0.6.7")
    ours = parse_version("0.6.7+containai.20250101")
    assert upstream < ours
    assert decide("Sysbox", Observed(State.INSTALLED, upstream), ours).action is Action.UPGRADE
    assert decide("Sysbox", Observed(State.INSTALLED, ours), upstream).action is Action.KEEP_NEWER


def test_numbers_compare_numerically() -> None:
    assert parse_version("0.6.10") > parse_version("0.6.9+containai.20991231")
    assert parse_version("0.7") > parse_version("0.6.99")
    assert parse_version("0.6.7").same_as(parse_version("0.6.7.0"))


def test_downgrade_refused() -> None:
    newer_installed = Observed(State.INSTALLED, parse_version("0.6.8"))
    d = decide("Sysbox", newer_installed, parse_version("0.6.7+containai.20260127"))
    assert d.action is Action.KEEP_NEWER and not d.needs_change
    assert "not downgrading" in d.reason


def test_not_installed_and_cannot_tell_are_not_current() -> None:
    bundled = parse_version("0.6.7+containai.20260127")
    assert decide("Sysbox", Observed(State.NOT_INSTALLED), bundled).action is Action.INSTALL
    unknown = decide("Sysbox", Observed(State.UNKNOWN, reason="garbled"), bundled)
    assert unknown.action is Action.CANNOT_TELL and not unknown.needs_change
    current = decide("Sysbox", Observed(State.INSTALLED, parse_version("0.6.7+containai.20260127")), bundled)
    assert current.action is Action.CURRENT


@pytest.mark.parametrize(
    "bad", ["", "   ", "garbage", "v", "x.6.7", "0.6.7+containai.2026", "0.6.7+containai.20261399"]
)
def test_malformed_versions_raise(bad: str) -> None:
    with pytest.raises(VersionParseError):
        parse_version(bad)


def test_probe_parser_distinguishes_states() -> None:
    assert parse_sysbox_probe("__missing\n").state is State.NOT_INSTALLED
    ok = parse_sysbox_probe(golden("containai-0.6.7-20260127.txt") + "__rc=0\n")
    assert ok.state is State.INSTALLED and ok.version is not None and ok.version.build_date == 20260127
    assert parse_sysbox_probe(golden("first-line-only.txt") + "__rc=0\n").state is State.UNKNOWN
    assert parse_sysbox_probe("segfault\n__rc=139\n").state is State.UNKNOWN


def test_bundle_names() -> None:
    assert bundle_version_from_name("docker-27.3.1.tgz").numbers == (27, 3, 1)
    with pytest.raises(VersionParseError):
        bundle_version_from_name("docker.tgz")


def test_find_sysbox_deb_picks_newest_for_arch(tmp_path: Path) -> None:
    for name in [
        "sysbox-ce_0.6.7+containai.20260101-0_amd64.deb",
        "sysbox-ce_0.6.7+containai.20260127-0_amd64.deb",
        "sysbox-ce_0.6.9+containai.20260127-0_arm64.deb",
        "sysbox-ce_0.6.7-0_amd64.deb",
    ]:
        (tmp_path / name).write_bytes(b"")
    found = find_sysbox_deb(tmp_path, "amd64")
    assert found is not None and "20260127" in found.name and "amd64" in found.name
    arm = find_sysbox_deb(tmp_path, "arm64")
    assert arm is not None and "0.6.9" in arm.name


DATES = st.one_of(st.none(), st.dates(date(2000, 1, 1), date(2999, 12, 31)))


@given(st.lists(st.integers(0, 999), min_size=1, max_size=4), DATES)
def test_round_trip_and_ordering_is_total(numbers: list[int], date: object) -> None:
    text = ".".join(map(str, numbers))
    if date is not None:
        text += "+containai." + date.strftime("%Y%m%d")  # type: ignore[attr-defined]
    v = parse_version(text)
    assert v.numbers == tuple(numbers)
    assert v.same_as(parse_dpkg_version(text + "-0"))
    assert parse_sysbox_runc_output(f"sysbox-runc\n\tversion: \t{text}\n").same_as(v)


def test_bundle_probe_parser() -> None:
    """VERSION (base64) and the absent binaries, as ``bundle_probe`` prints them."""
    import base64

    from ops.facts import parse_bundle_probe

    version = "version=" + base64.b64encode(b"27.3.1").decode()
    installed = parse_bundle_probe(version + "\n")
    assert installed.state is State.INSTALLED and str(installed.version) == "27.3.1"
    partial = parse_bundle_probe(f"{version}\nabsent=ctr\nabsent=docker-proxy\n")
    assert partial.state is State.NOT_INSTALLED and partial.missing == ("docker-proxy", "ctr")
    assert str(partial.version) == "27.3.1" and "docker-proxy, ctr" in partial.reason
    assert decide("dockerd", partial, parse_version("27.3.1")).action is Action.INSTALL
    nothing = "version-missing\n" + "".join(f"absent={b}\n" for b in (
        "dockerd", "docker", "containerd", "containerd-shim-runc-v2", "docker-init", "docker-proxy", "runc", "ctr"))
    assert parse_bundle_probe(nothing) == Observed(State.NOT_INSTALLED)
    assert parse_bundle_probe("version-missing\n").missing == ("VERSION",)
    assert parse_bundle_probe("version=\n").state is State.UNKNOWN  # empty VERSION
