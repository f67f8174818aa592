"""Reading a .deb with dpkg-deb: its control fields, maintainer scripts and file list.

``read_deb`` runs the real ``dpkg-deb`` (``--ctrl-tarfile`` and ``--fsys-tarfile``) and turns what it
prints into a frozen ``DebInfo``; the parsing helpers take bytes or text only.
"""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ops.deb.control import binary_fields
from ops.deb.errors import ControlError, DebError


@dataclass(frozen=True)
class DebInfo:
    """What a .deb holds: control text and fields, control members with modes, installed paths."""

    path: Path
    control_text: str
    fields: dict[str, str]
    control_members: dict[str, int] = field(default_factory=dict)
    data_paths: frozenset[str] = frozenset()

    @property
    def package(self) -> str:
        """The Package field."""
        return self.fields.get("Package", "")

    @property
    def version(self) -> str:
        """The Version field (with epoch and revision as written)."""
        return self.fields.get("Version", "")

    @property
    def architecture(self) -> str:
        """The Architecture field."""
        return self.fields.get("Architecture", "")


def deb_file_name(fields: dict[str, str]) -> str:
    """The canonical file name ``<Package>_<Version>_<Architecture>.deb`` (dpkg drops the epoch)."""
    version = fields.get("Version", "")
    if ":" in version:
        version = version.split(":", 1)[1]
    return f"{fields.get('Package', '')}_{version}_{fields.get('Architecture', '')}.deb"


def normalize_member(name: str) -> str:
    """A tar member name as an absolute path (``./usr/bin/x`` -> ``/usr/bin/x``)."""
    name = name.lstrip(".")
    name = "/" + name.lstrip("/")
    return name.rstrip("/") or "/"


def parse_control_tar(data: bytes) -> tuple[str, dict[str, int]]:
    """The control file text and ``{member: mode}`` of a control tarball (dpkg-deb --ctrl-tarfile)."""
    members: dict[str, int] = {}
    control = None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for member in tar:
            name = normalize_member(member.name).lstrip("/")
            if not name or name == "/":
                continue
            members[name] = member.mode
            if name == "control" and member.isfile():
                handle = tar.extractfile(member)
                control = handle.read().decode("utf-8", errors="replace") if handle else None
    if control is None:
        raise DebError("the package has no control file", "it is not a valid Debian binary package")
    return control, members


def data_paths_of(names: Iterable[str]) -> frozenset[str]:
    """Installed paths from the data tarball's member names."""
    return frozenset(normalize_member(n) for n in names if normalize_member(n) != "/")


def _dpkg_deb_error(path: Path, stderr: bytes) -> DebError:
    lines = [ln.strip() for ln in stderr.decode("utf-8", errors="replace").splitlines() if ln.strip()]
    lines = [re.sub(r"^dpkg-deb( \(subprocess\))?: (error: )?", "", ln) for ln in lines]
    if any("unexpected end of" in ln for ln in lines):
        reason = "truncated: unexpected end of file"
    else:
        useful = [ln for ln in lines if "subprocess returned error exit status" not in ln] or lines
        reason = useful[-1] if useful else "dpkg-deb failed"
    return DebError(f"{path} is not a readable .deb ({reason[:200]})", "rebuild or download the package again")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DebError(f"{path} does not exist", "give the path of a built sysbox-ce .deb")
    if not path.is_file():
        raise DebError(f"{path} is not a file", "give the path of a built sysbox-ce .deb")


def read_deb(path: Path) -> DebInfo:
    """Read a .deb's control data and file list with dpkg-deb; a bad file is a ``DebError``."""
    path = Path(path)
    _check_file(path)
    try:
        ctrl = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(path)], capture_output=True, check=False)
    except FileNotFoundError:
        raise DebError("dpkg-deb is not installed", "install the dpkg package") from None
    if ctrl.returncode != 0:
        raise _dpkg_deb_error(path, ctrl.stderr)
    try:
        control_text, members = parse_control_tar(ctrl.stdout)
    except tarfile.TarError as exc:
        raise DebError(f"{path} has a damaged control archive ({exc})", "rebuild the package") from None
    try:
        fields = binary_fields(control_text)
    except ControlError as exc:
        raise DebError(f"{path}: {exc.message}", "it is not a valid Debian binary package") from None
    names: list[str] = []
    with subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        tar_error = ""
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                names = [m.name for m in tar]
        except tarfile.TarError as exc:
            tar_error = str(exc)
        proc.stdout.read()  # drain so dpkg-deb is not killed by SIGPIPE before reporting
        stderr = proc.stderr.read()
        code = proc.wait()
    if code != 0:
        raise _dpkg_deb_error(path, stderr)
    if tar_error:
        raise DebError(f"{path} has a damaged data archive ({tar_error})", "rebuild the package")
    return DebInfo(path, control_text, fields, members, data_paths_of(names))


def host_architecture() -> str:
    """This machine's Debian architecture (``dpkg --print-architecture``)."""
    out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=False)
    if out.returncode != 0 or not out.stdout.strip():
        raise DebError("cannot tell this machine's Debian architecture", "is dpkg installed?")
    return out.stdout.strip()
