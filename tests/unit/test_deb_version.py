"""The package Version against the installed base: real ``dpkg --compare-versions`` and update's binary rules.

Three shapes meet on real hosts: upstream's ``0.6.7.linux``, ContainAI's published
``0.6.7+containai.20260127.linux`` and ours, ``0.6.7.linux+containai.<date>``. Each row asks dpkg (the real
one), python-debian and ``ops.versions`` (what ``update`` compares: the version ``sysbox-runc --version``
prints for each package) the same question, and says where they must agree.
"""

from __future__ import annotations

import subprocess

import pytest
from debian.debian_support import Version

from ops.deb.build import marked_version
from ops.deb.runc import package_build_version
from ops.deb.version import release_version, sorts_above_upstream, unmarked, upstream_package_version
from ops.versions import Action, Observed, State, decide, parse_dpkg_version, parse_version

pytestmark = pytest.mark.unit

UPSTREAM_067 = "0.6.7.linux"  # upstream's sysbox-ce_0.6.7.linux_amd64.deb
UPSTREAM_070 = "0.7.0.linux"
PUBLISHED = "0.6.7+containai.20260127.linux"  # ContainAI's sysbox-ce_0.6.7+containai.20260127.linux_amd64.deb
OURS_067 = "0.6.7.linux+containai.20261202"
OURS_067_LATER = "0.6.7.linux+containai.20270115"
OURS_067_OLDER = "0.6.7.linux+containai.20260101"  # dated before the published build
OURS_070 = "0.7.0.linux+containai.20261202"


def dpkg_gt(a: str, b: str) -> bool:
    """The real dpkg's answer to ``a gt b``."""
    res = subprocess.run(["dpkg", "--compare-versions", a, "gt", b], capture_output=True, text=True)
    assert res.returncode in (0, 1), res.stderr
    return res.returncode == 0


def binary_gt(a: str, b: str) -> bool:
    """update's answer: is the build package ``a`` carries newer than the build of ``b``."""
    return parse_version(package_build_version(a)) > parse_version(package_build_version(b))


# (newer, older, dpkg and the binary rules agree)
TABLE = [
    (OURS_067, UPSTREAM_067, True),  # a ContainAI build beats upstream at the same numbers
    (OURS_070, UPSTREAM_070, True),
    (OURS_067, PUBLISHED, True),  # a later ContainAI build beats the published one
    (OURS_067_LATER, OURS_067, True),  # later date beats earlier
    (OURS_070, PUBLISHED, True),  # higher numbers win
    (UPSTREAM_070, OURS_067, True),
    (UPSTREAM_070, PUBLISHED, True),
    (OURS_070, OURS_067_LATER, True),
    # the published shape itself: the binary rules rank it above upstream, dpkg below (why we moved the marker)
    (PUBLISHED, UPSTREAM_067, False),
    # ours dated before the published build: no shape can be above upstream and below this one
    (PUBLISHED, OURS_067_OLDER, False),
]


@pytest.mark.parametrize("newer, older, agree", TABLE)
def test_version_table(newer: str, older: str, agree: bool) -> None:
    assert binary_gt(newer, older)
    assert not binary_gt(older, newer)
    # python-debian orders exactly as the real dpkg
    assert (Version(newer) > Version(older)) is dpkg_gt(newer, older)
    assert (Version(older) > Version(newer)) is dpkg_gt(older, newer)
    assert dpkg_gt(newer, older) is agree
    assert dpkg_gt(older, newer) is not agree


@pytest.mark.parametrize("newer, older, agree", TABLE)
def test_update_never_needs_a_downgrade(newer: str, older: str, agree: bool) -> None:
    """Whenever update would install ``bundled`` over ``installed``, dpkg sees an upgrade too."""
    for installed, bundled in ((older, newer), (newer, older)):
        have = Observed(State.INSTALLED, parse_version(package_build_version(installed)))
        decision = decide("sysbox", have, parse_dpkg_version(bundled))
        if decision.action is Action.UPGRADE and bundled != PUBLISHED:  # we bundle ours (or upstream's)
            assert dpkg_gt(bundled, installed), (installed, bundled)
    # the one disagreement of ours: update keeps the newer published build and installs nothing
    if (newer, older) == (PUBLISHED, OURS_067_OLDER):
        have = Observed(State.INSTALLED, parse_version(package_build_version(PUBLISHED)))
        assert decide("sysbox", have, parse_dpkg_version(OURS_067_OLDER)).action is Action.KEEP_NEWER


def test_every_shape_of_ours_sorts_above_upstream() -> None:
    for ours in (OURS_067, OURS_067_LATER, OURS_067_OLDER, OURS_070, f"{OURS_070}-0", f"1:{OURS_070}"):
        above, upstream = sorts_above_upstream(ours)
        assert above, ours
        assert dpkg_gt(ours, upstream.split(":")[-1])
    assert sorts_above_upstream(PUBLISHED) == (False, UPSTREAM_067)


@pytest.mark.parametrize(
    "built, suffix, ours",
    [
        ("0.7.0.linux", "+containai.20261202", OURS_070),  # a released CHANGELOG entry: upstream's Version
        ("0.7.0+containai.20261202.linux", "+containai.20261202", OURS_070),  # unreleased: VERSION with marker
        (PUBLISHED, "+containai.20261202", OURS_067),
        (OURS_070, "+containai.20261202", OURS_070),
        ("0.7.0.linux-0", "+containai.20261202", f"{OURS_070}-0"),
        ("1:0.7.0.linux-2", "+containai.20261202", f"1:{OURS_070}-2"),
    ],
)
def test_release_version(built: str, suffix: str, ours: str) -> None:
    assert release_version(built, suffix) == ours
    assert marked_version(built, suffix) == ours
    assert release_version(ours, suffix) == ours
    # the binary built from the marked VERSION prints what update expects from this package
    assert package_build_version(ours) == unmarked(built.split(":")[-1].split("-")[0]).removesuffix(".linux") + suffix


def test_upstream_package_version() -> None:
    assert upstream_package_version((0, 7, 0)) == "0.7.0.linux"
