"""Bundles for lab hosts, made offline: a sysbox-ce .deb built from the Sysbox sources fixture (with the
fuse3 edit and the ContainAI marker, as the real build leaves it) and a Docker-static-shaped dockerd
tarball made from the Debian docker.io binaries inside a lab host, each with its ``.sha256``.

The Sysbox sources fixture lives in the repository (``tests/fixtures/sysbox``: the superproject and its
components laid out as upstream's), so bundles are made from a checkout of containai-ops, not from an
installed wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ops.errors import OpsError
from ops.lab import NEW_DOCKERD, NEW_SYSBOX
from ops.lab.engine import LAB_ROOT

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "sysbox"
PACKAGER = FIXTURE / "sysbox-pkgr"
CACHE = LAB_ROOT / "cache" / "update"


#: Docker's static bundle members, and where Debian's docker.io (and containerd, runc) put them.
BUNDLE_BINARIES = {
    "dockerd": ["/usr/sbin/dockerd", "/usr/bin/dockerd"],
    "docker": ["/usr/bin/docker"],
    "containerd": ["/usr/bin/containerd"],
    "containerd-shim-runc-v2": ["/usr/bin/containerd-shim-runc-v2"],
    "docker-init": ["/usr/sbin/docker-init", "/usr/bin/docker-init"],  # may be missing: skipped then
    "docker-proxy": ["/usr/sbin/docker-proxy", "/usr/bin/docker-proxy"],
    "runc": ["/usr/sbin/runc", "/usr/bin/runc"],
    "ctr": ["/usr/bin/ctr"],
}
REQUIRED = {"dockerd", "docker", "containerd", "containerd-shim-runc-v2", "runc"}


def write_sha256(path: Path) -> Path:
    """Write ``<path>.sha256`` in the format ``sha256sum -c`` reads; return its path."""
    from ops.deb.build import sha256_line

    sums = path.with_name(path.name + ".sha256")
    sums.write_text(sha256_line(path))
    return sums


def package_version(version: str) -> str:
    """The package Version the real build gives a Sysbox ``version`` (what ``sysbox-runc --version``
    prints): ``0.6.7+containai.20260101`` -> ``0.6.7.linux+containai.20260101``, ``0.6.7`` -> ``0.6.7.linux``."""
    from ops.deb.version import PACKAGER_TAG, release_version

    upstream, plus, marker = version.partition("+")
    return release_version(upstream + PACKAGER_TAG, plus + marker)


def build_sysbox_deb(version: str, out_dir: Path, extra_depends: str = "") -> Path:
    """Build a sysbox-ce .deb of ``version`` from the Sysbox sources fixture into ``out_dir``, fuse replaced
    by fuse3 as the real build patches it, with its .sha256 beside it. ``extra_depends`` adds a
    dependency (e.g. one apt cannot resolve, to make an install fail)."""
    if not (PACKAGER / "deb" / "sysbox-ce" / "control").is_file():
        raise OpsError(f"the packaging fixture is not at {PACKAGER}",
                       "run this from a checkout of containai-ops (the fixture is part of its tests)")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f".sysbox-{version}"
    shutil.rmtree(work, ignore_errors=True)
    # the superproject with its components as plain folders, and the packager's sources/sysbox linked
    # to it as upstream's `make sysbox-ce-repo PATH` does
    shutil.copytree(FIXTURE / "sysbox", work)
    for name in ("sysbox-fs", "sysbox-runc", "sysbox-mgr", "sysbox-pkgr"):
        shutil.copytree(FIXTURE / name, work / name)
    (work / "sysbox-pkgr" / "sources").mkdir()
    (work / "sysbox-pkgr" / "sources" / "sysbox").symlink_to(work.resolve())
    try:
        control = work / "sysbox-pkgr" / "deb" / "sysbox-ce" / "control"
        text = control.read_text()
        if "         fuse,\n" not in text:
            raise OpsError(f"the packaging fixture's control changed shape ({control})",
                           "update ops/lab/bundle.py to the fixture's new Depends layout")
        fuse3 = "         fuse3,\n" + (f"         {extra_depends},\n" if extra_depends else "")
        control.write_text(text.replace("         fuse,\n", fuse3))
        # the binaries print VERSION (the marker is written there, as the toolkit's build does); the
        # package gets the Version the toolkit's build gives it (DEB_VERSION replaces the changelog's)
        (work / "VERSION").write_text(version + "\n")
        made = subprocess.run(
            ["make", "-s", "-C", str(work / "sysbox-pkgr" / "deb"), "generic", "EDITION=ce"],
            capture_output=True, text=True, env={**os.environ, "DEB_VERSION": package_version(version)})
        if made.returncode != 0:
            tail = (made.stderr or made.stdout).strip().splitlines()[-1:] or ["no output"]
            raise OpsError(f"building the fixture's sysbox-ce {version} failed: {tail[0]}",
                           "check that make, dpkg-deb and fakeroot are installed (./bootstrap.sh deps)")
        built = list((work / "sysbox-pkgr" / "deb" / "build").glob("*/*/sysbox-ce_*.deb"))
        if len(built) != 1:
            raise OpsError(f"the fixture build left {len(built)} sysbox-ce .deb files, expected one",
                           f"look into {work / 'sysbox-pkgr' / 'deb' / 'build'}")
        dest = out_dir / built[0].name
        part = dest.with_name(dest.name + ".part")
        shutil.copyfile(built[0], part)
        part.replace(dest)
        write_sha256(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def docker_tarball(host: Any, image: str) -> Path:
    """A Docker-static-shaped tarball (top folder ``docker/``) of the Debian docker.io binaries inside
    the lab host ``host``; made once per lab image and cached."""
    from ops.lab.hosts import connection, run

    cached = CACHE / image.replace(":", "_").replace("/", "_") / "docker-debian.tgz"
    if cached.is_file():
        return cached
    lines = ["set -e", "rm -rf /tmp/cai-bundle", "mkdir -p /tmp/cai-bundle/docker"]
    for name, candidates in BUNDLE_BINARIES.items():
        tests = " ".join(candidates)
        lines.append(f'for p in {tests}; do if [ -e "$p" ]; then '
                     f'cp -L "$p" /tmp/cai-bundle/docker/{name}; break; fi; done')
    lines.append("tar -C /tmp/cai-bundle -c docker | gzip -1 > /tmp/cai-bundle/docker.tgz")
    lines.append("ls /tmp/cai-bundle/docker")
    code, out, err = run(host, "\n".join(lines), timeout=600)
    if code != 0:
        raise OpsError(f"collecting the docker binaries in lab host {host.name} failed: "
                       f"{(err.strip().splitlines() or ['exit ' + str(code)])[-1]}",
                       f"check the host with: ssh -F {host.ssh_config} {host.alias}")
    missing = REQUIRED - set(out.split())
    if missing:
        raise OpsError(f"lab host {host.name} lacks {', '.join(sorted(missing))}",
                       "rebuild the lab image (inv lab.image)")
    cached.parent.mkdir(parents=True, exist_ok=True)
    part = cached.with_suffix(".part")
    c = connection(host)
    try:
        c.get("/tmp/cai-bundle/docker.tgz", local=str(part))
    finally:
        c.close()
    run(host, "rm -rf /tmp/cai-bundle")
    part.replace(cached)
    return cached


def bundle_dir(path: Path, tarball: Path, deb: Path, dockerd_version: str = NEW_DOCKERD) -> Path:
    """Fill a bundle directory: ``docker-<version>.tgz`` and the sysbox .deb, each with a .sha256."""
    path.mkdir(parents=True, exist_ok=True)
    dest = path / f"docker-{dockerd_version}.tgz"
    if not dest.exists():
        if tarball.stat().st_dev == path.stat().st_dev:
            os.link(tarball, dest)
        else:
            shutil.copyfile(tarball, dest)
    write_sha256(dest)
    if deb.parent != path:
        shutil.copyfile(deb, path / deb.name)
        write_sha256(path / deb.name)
    return path


def make_bundle(host: Any, image: str, out: Path, sysbox_version: str = NEW_SYSBOX,
                dockerd_version: str = NEW_DOCKERD) -> Path:
    """A complete bundle directory for lab hosts of ``image`` (``host`` is one of them): the fixture's
    sysbox-ce .deb of ``sysbox_version`` and a dockerd tarball labelled ``dockerd_version``."""
    deb = build_sysbox_deb(sysbox_version, out)
    return bundle_dir(out, docker_tarball(host, image), deb, dockerd_version)
