"""The ContainAI package Version, chosen so dpkg orders it as ``update``'s binary-version rules do.

Three families of sysbox-ce packages meet on real hosts:

- upstream's, ``<numbers>.linux`` (``0.6.7.linux``): the packager's changelog script writes
  ``<VERSION>.linux``;
- ContainAI's published builds, ``<numbers>+containai.<YYYYMMDD>.linux``
  (``0.6.7+containai.20260127.linux``): the marker was written into the Sysbox sources' VERSION, and
  the changelog script appended ``.linux`` after it;
- ours, ``<numbers>.linux+containai.<YYYYMMDD>`` (``0.6.7.linux+containai.20261202``): the marker
  after the packager's ``.linux``.

``update`` orders Sysbox versions by what ``sysbox-runc --version`` prints (``ops.versions``): numbers
first, then a ContainAI build above upstream, then the later build date. dpkg compares the non-digit
parts character by character, and ``+`` sorts before ``.``: ``0.6.7+containai.20260127.linux`` is
*lower* than ``0.6.7.linux``, so ContainAI's published shape loses against upstream at the same
numbers and installing it over upstream is a dpkg downgrade. With the marker after ``.linux`` the
package extends upstream's Version, so it sorts above it, and two of our builds compare by their date
stamps (eight digits, compared as numbers).

One pair cannot agree in any shape: every Version above ``0.6.7.linux`` is also above every
``0.6.7+containai.<date>.linux`` (those sort below ``0.6.7.linux``), so dpkg ranks any of our builds above
any published ContainAI build of the same numbers, whatever the dates. The binary rules rank the later
date higher. Where they differ (ours dated before theirs), ``update`` decides "keep the newer installed
build" and installs nothing, so the difference never turns into a downgrade or an
``--allow-downgrades``; a build made today is dated after every published one.
"""

from __future__ import annotations

import re

from ops.deb.errors import DebError

#: what upstream's packager puts after the Sysbox version in the package Version
PACKAGER_TAG = ".linux"
#: the marker's shape: ``+containai.YYYYMMDD`` with an optional ``.N`` serial
MARKER_RE = re.compile(r"\+containai\.\d{8}(?:\.\d+)?")


def _parse(version: str) -> tuple[str | None, str, str | None]:
    from debian.debian_support import Version

    try:
        parsed = Version(version)
    except ValueError:
        raise DebError(f"Version {version!r} is not a valid Debian version", "") from None
    return parsed.epoch, parsed.upstream_version or "", parsed.debian_revision


def _join(epoch: str | None, upstream: str, revision: str | None) -> str:
    text = upstream
    if epoch is not None:
        text = f"{epoch}:{text}"
    if revision is not None:
        text = f"{text}-{revision}"
    return text


def unmarked(upstream: str, suffix: str = "") -> str:
    """An upstream version part without any ContainAI marker (``0.6.7+containai.20260127.linux`` -> ``0.6.7.linux``)."""
    text = MARKER_RE.sub("", upstream)
    return text.replace(suffix, "") if suffix else text


def release_version(built: str, suffix: str) -> str:
    """Our Version for a package built as ``built``: any marker moved to the end of the upstream part.

    ``0.6.7.linux`` (a released CHANGELOG entry) and ``0.6.7+containai.20260127.linux`` (an unreleased
    one: the changelog script took the marked VERSION) both become ``0.6.7.linux+containai.20260127``;
    an epoch and a Debian revision are kept. Idempotent.
    """
    epoch, upstream, revision = _parse(built)
    text = _join(epoch, unmarked(upstream, suffix) + suffix, revision)
    _parse(text)
    return text


def upstream_package_version(numbers: tuple[int, ...]) -> str:
    """The Version of upstream's package of these numbers (``(0, 6, 7)`` -> ``0.6.7.linux``)."""
    return ".".join(str(n) for n in numbers) + PACKAGER_TAG


def sorts_above_upstream(version: str) -> tuple[bool, str]:
    """Whether ``version`` sorts (dpkg) above upstream's package of the same numbers, and that Version."""
    from debian.debian_support import Version

    from ops.versions import parse_version

    numbers = parse_version(_parse(version)[1]).numbers
    upstream = upstream_package_version(numbers)
    return Version(version) > Version(upstream), upstream
