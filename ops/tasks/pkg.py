"""Sysbox packaging tasks: build the ContainAI sysbox-ce .deb (fuse3 dependency) and prove it is right."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from invoke import task
from invoke.exceptions import Exit

from ops.tasks._common import cli_errors, is_tty


def _say(line: str) -> None:
    print(line, flush=True)


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def _verifier(marker: str, install: bool, require_marker: bool = True) -> Any:
    from ops.deb.runc import check_runc
    from ops.deb.verify import DEFAULT_MARKER, install_check, violations

    def verify(path: Path, info: Any) -> list[str]:
        found = violations(info, marker=marker or DEFAULT_MARKER, require_marker=require_marker)
        problems, warnings = check_runc(info)
        found += problems
        for line in warnings:
            _warn(line)
        if install and not found:
            problems, summaries = install_check(path, info)
            for line in summaries:
                _say(f"install check, {line}")
            found += problems
        return found

    return verify


def _suffix(version_suffix: str) -> str:
    from ops.deb.build import check_suffix, default_suffix

    return check_suffix(version_suffix) if version_suffix else default_suffix()


@task(
    help={
        "sysbox_url": "git URL of the Sysbox superproject (default: packaging/sysbox.toml)",
        "sysbox_ref": "tag, branch or commit of the Sysbox superproject to build (default: packaging/sysbox.toml)",
        "require": "SUBMODULE:COMMIT that the build must contain (repeatable; replaces the pin's list)",
        "version_suffix": "marker written into the sources' VERSION (default: +containai.<UTC YYYYMMDD>)",
        "out": "folder that receives the .deb and its .sha256 (default: dist)",
        "pkgr_url": "git URL of a packager to use instead of the superproject's sysbox-pkgr (with --ref)",
        "ref": "tag or branch of the --pkgr-url packager",
        "build_cmd": "build command run in the packager (default: make -C deb generic EDITION=ce)",
        "install_check": "also simulate apt installs of the result (clean host, host with fuse 2)",
    },
    iterable=["require"],
)
@cli_errors
def build_sysbox(
    ctx: Any,
    sysbox_url: str = "",
    sysbox_ref: str = "",
    require: list[str] | None = None,
    version_suffix: str = "",
    out: str = "dist",
    pkgr_url: str = "",
    ref: str = "",
    build_cmd: str = "",
    install_check: bool = False,
) -> None:
    """Build the sysbox-ce .deb from the Sysbox sources (required fixes checked, fuse3, marker), verify it."""
    from ops.deb.build import Source, build_sysbox, requirements
    from ops.deb.sources import load_pin
    from ops.errors import ConfigError

    if ref and not pkgr_url:
        raise ConfigError("--ref names the ref of a --pkgr-url packager",
                          "give --pkgr-url too, or use --sysbox-ref for the Sysbox sources")  # fmt: skip
    if pkgr_url and not ref:
        raise ConfigError("--pkgr-url needs --ref (the packager's tag or branch)", "e.g. --ref main")
    pin = load_pin()
    source = Source(
        url=sysbox_url or pin.url,
        ref=sysbox_ref or pin.ref,
        requires=requirements(require or [], pin.requires),
        pkgr_url=pkgr_url,
        pkgr_ref=ref,
    )
    suffix = _suffix(version_suffix)
    result = build_sysbox(
        source,
        suffix,
        Path(out),
        build_cmd=build_cmd or pin.build_cmd,
        package=pin.package,
        verify=_verifier(suffix, install_check),
        stream=is_tty(),
        log=_say,
    )
    info = result.info
    print(f"ok: {result.deb} ({info.package} {info.version} {info.architecture}), checksum {result.sha256}")


@task(
    help={
        "path": "the .deb to check",
        "install_check": "also simulate apt installs (clean host, host with fuse 2) against this machine's lists",
        "marker": "build marker the Version must carry after the upstream version (default: +containai.)",
        "arch": "expected Architecture (default: amd64 or arm64)",
    }
)
@cli_errors
def verify_deb(ctx: Any, path: str, install_check: bool = False, marker: str = "", arch: str = "") -> None:
    """Prove a sysbox-ce .deb is right: fuse3, no fuse, marker in Version and sysbox-runc, files; exit 1 if not."""
    from ops.deb.inspect import read_deb
    from ops.deb.runc import check_runc
    from ops.deb.verify import DEFAULT_MARKER, violations
    from ops.deb.verify import install_check as apt_check

    deb = Path(path)
    info = read_deb(deb)
    found = violations(info, marker=marker or DEFAULT_MARKER, arch=arch)
    problems, warnings = check_runc(info)
    found += problems
    for line in warnings:
        _warn(f"{deb}: {line}")
    if install_check:
        problems, summaries = apt_check(deb, info)
        for line in summaries:
            print(f"install check, {line}")
        found += problems
    if found:
        for line in found:
            print(f"{deb}: {line}", file=sys.stderr)
        raise Exit(f"error: {deb} failed verification with {len(found)} violation(s)", code=1)
    checked = "fields, files, scripts, " + ("sysbox-runc --version" if not warnings else "not sysbox-runc --version")
    if install_check:
        checked += ", apt install on a clean host and a host with fuse 2"
    print(f"ok: {deb} ({info.package} {info.version} {info.architecture}; checked {checked})")


@task(
    help={
        "deb": "the sysbox-ce .deb to fix (e.g. an upstream release)",
        "version_suffix": "marker appended to the upstream version (default: +containai.<UTC YYYYMMDD>)",
        "out": "folder that receives the fixed .deb and its .sha256 (default: dist)",
        "install_check": "also simulate apt installs of the result (clean host, host with fuse 2)",
        "keep_version": "fix only the fuse dependency and keep Version as it is (for a binary without the marker)",
    }
)
@cli_errors
def patch_deb(
    ctx: Any,
    deb: str,
    version_suffix: str = "",
    out: str = "dist",
    install_check: bool = False,
    keep_version: bool = False,
) -> None:
    """Fix an existing sysbox-ce .deb (fuse -> fuse3; marker only if its binary has it), verify, write to --out."""
    from ops.deb.build import patch_deb as patch
    from ops.errors import ConfigError

    if keep_version and version_suffix:
        raise ConfigError("--keep-version and --version-suffix exclude each other", "give one of them")
    suffix = "" if keep_version else _suffix(version_suffix)
    verify = _verifier(suffix, install_check, require_marker=not keep_version)
    result = patch(Path(deb), suffix, Path(out), verify=verify, keep_version=keep_version, log=_say)
    info = result.info
    if keep_version and "+containai." not in info.version:
        _warn(
            f"{result.deb.name} keeps the upstream Version {info.version}: update sees a host with that upstream "
            "version installed as current and will not install this package there; install it with apt by hand"
        )
    print(f"ok: {result.deb} ({info.package} {info.version} {info.architecture}), checksum {result.sha256}")
