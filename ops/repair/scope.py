"""Which volumes a repair may touch, where they are, and whose ids they should carry.

Parsers here are pure (strings and inspect documents in, values out); the functions taking an Engine
read the engine and never change anything.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ops.engine import Engine, ManagedContainer
from ops.errors import ConfigError, EngineError, NotFoundError, OpsError, RefusedError
from ops.repair import onhost
from ops.repair.onhost import VOLUME_NAME_RE as VOLUME_NAME_RE
from ops.repair.onhost import valid_volume_name as valid_volume_name

DEFAULT_ID = 1000
MAX_ID = 2**32 - 2


class UnsafeVolumeError(OpsError):
    """A volume's path is not what a plain local volume looks like (e.g. a symlink)."""


class MountedVolumeError(UnsafeVolumeError):
    """A volume's ``_data`` is a mount point (another filesystem or a bind mount): that volume is refused."""


# --- pure parsers ------------------------------------------------------------------------------

def volume_names(attrs: dict[str, Any]) -> list[str]:
    """Pure parser: the named volumes (Mounts of Type volume) of a container inspect document."""
    names = []
    for mount in attrs.get("Mounts") or []:
        if mount.get("Type") == "volume" and mount.get("Name"):
            names.append(str(mount["Name"]))
    return names


def parse_user_spec(spec: str) -> tuple[int, int | None] | None:
    """Pure parser of a numeric ``Config.User`` (``1234`` or ``1234:1234``): (uid, gid or None).

    Names, empty values and root (``0``) give None: agent files never belong to root, so a container
    running as root says nothing about the agent's ids.
    """
    spec = (spec or "").strip()
    user, _, group = spec.partition(":")
    if not user.isdigit() or int(user) == 0 or int(user) > MAX_ID:
        return None
    if group == "":
        return int(user), None
    if not group.isdigit() or int(group) > MAX_ID:
        return None
    return int(user), int(group)


def parse_passwd(text: str, user: str) -> tuple[int, int] | None:
    """Pure parser: (uid, gid) of ``user`` in an /etc/passwd text, or None."""
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[0] == user and parts[2].isdigit() and parts[3].isdigit():
            return int(parts[2]), int(parts[3])
    return None


def passwd_gid_of_uid(text: str, uid: int) -> int | None:
    """Pure parser: the primary gid of the first passwd entry with this uid."""
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[2] == str(uid) and parts[3].isdigit():
            return int(parts[3])
    return None


def parse_id_output(text: str) -> int | None:
    """Pure parser of ``id -u``/``id -g`` output: one number, else None."""
    value = text.strip()
    return int(value) if value.isdigit() and int(value) <= MAX_ID else None


def tar_member(data: bytes, basename: str) -> tarfile.TarInfo | None:
    """Pure: the header of the regular file or link ``basename`` in a docker archive tar stream."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar.getmembers():
            if member.name.rstrip("/").split("/")[-1] == basename:
                return member
    return None


def tar_file_text(data: bytes, basename: str) -> str | None:
    """Pure: the text of the regular file ``basename`` in a docker archive tar stream."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar.getmembers():
            if member.name.rstrip("/").split("/")[-1] == basename and member.isfile():
                handle = tar.extractfile(member)
                return handle.read().decode("utf-8", "replace") if handle else None
    return None


def parse_override(uid: Any, gid: Any) -> tuple[int, int] | None:
    """Validate ``--uid``/``--gid``: both or neither, whole numbers, not 65534."""
    if uid in (None, "") and gid in (None, ""):
        return None
    if uid in (None, "") or gid in (None, ""):
        raise ConfigError("--uid and --gid go together", "give both, e.g. --uid 1000 --gid 1000")
    out = []
    for flag, raw in (("--uid", uid), ("--gid", gid)):
        text = str(raw).strip()
        if not text.isdigit() or int(text) > MAX_ID:
            raise ConfigError(f"{flag} {raw!r} is not a whole number id", f"e.g. {flag} 1000")
        if int(text) == 65534:
            raise ConfigError(f"{flag} 65534 is nobody/nogroup, the damage itself", "give the agent's id")
        out.append(int(text))
    return out[0], out[1]


# --- owner detection -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Owner:
    """The ids a container's volume files should carry, and where they came from."""

    uid: int
    gid: int
    source: str
    warning: str = ""

    @property
    def ids(self) -> str:
        """``uid:gid``."""
        return f"{self.uid}:{self.gid}"


def exec_output(engine: Engine, container_id: str, argv: list[str], timeout: int = 20) -> tuple[int, str]:
    """Run a command in a running container; (exit code, stdout)."""
    api = engine.client.api
    exec_id = api.exec_create(container_id, argv, stdout=True, stderr=True)["Id"]
    out = api.exec_start(exec_id, demux=True)
    code = api.exec_inspect(exec_id).get("ExitCode")
    stdout = out[0] if isinstance(out, tuple) else out
    text = stdout.decode("utf-8", "replace") if isinstance(stdout, bytes) else ""
    return (int(code) if code is not None else 1), text


def archive_bytes(engine: Engine, container_id: str, path: str, limit: int = 4 << 20) -> bytes | None:
    """The docker archive (tar) of one path in a container, running or stopped; None if absent."""
    from docker.errors import NotFound

    try:
        stream, _stat = engine.client.api.get_archive(container_id, path)
    except NotFound:
        return None
    chunks, size = [], 0
    for chunk in stream:
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(chunks)


def detect_owner(engine: Engine, container: ManagedContainer, user: str) -> Owner:
    """uid:gid for a container's volumes: numeric Config.User, ``id`` in a running container,
    /etc/passwd through the archive API (no start), else 1000:1000 with a warning."""
    try:
        attrs = engine.inspect(container.name)
    except Exception as exc:
        raise EngineError(f"cannot inspect {container.name!r} ({exc})") from None
    spec = str((attrs.get("Config") or {}).get("User") or "")
    numeric = parse_user_spec(spec)
    passwd: str | None = None
    if numeric is not None and numeric[1] is not None:
        return Owner(numeric[0], numeric[1], "Config.User")
    if container.running and numeric is None:
        try:
            cu, out_u = exec_output(engine, container.id, ["id", "-u", user])
            cg, out_g = exec_output(engine, container.id, ["id", "-g", user])
            uid, gid = parse_id_output(out_u), parse_id_output(out_g)
            if cu == 0 and cg == 0 and uid is not None and gid is not None:
                return Owner(uid, gid, f"id {user} (running container)")
        except Exception:  # no id binary, exec refused: the archive route below still works
            pass
    try:
        data = archive_bytes(engine, container.id, "/etc/passwd")
        passwd = tar_file_text(data, "passwd") if data else None
    except Exception:
        passwd = None
    if numeric is not None:
        gid = passwd_gid_of_uid(passwd, numeric[0]) if passwd else None
        return Owner(numeric[0], numeric[0] if gid is None else gid, "Config.User")
    if passwd is not None:
        found = parse_passwd(passwd, user)
        if found is not None:
            return Owner(found[0], found[1], f"/etc/passwd entry {user} (archive)")
    return Owner(
        DEFAULT_ID,
        DEFAULT_ID,
        "default",
        f"container {container.name}: cannot tell the uid/gid of {user!r}; using 1000:1000 "
        "(pass --uid/--gid to choose)",
    )


# --- volumes ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Volume:
    """A managed volume: its name and the managed containers that mount it."""

    name: str
    containers: tuple[str, ...]


def managed_volumes(engine: Engine, containers: Iterable[ManagedContainer]) -> tuple[list[Volume], list[str]]:
    """Named volumes of the given managed containers (their mounts as the engine listed them); and
    warnings about names refused."""
    users: dict[str, list[str]] = {}
    warnings: list[str] = []
    for c in containers:
        if not c.managed:
            continue
        for name in c.volumes:
            if not valid_volume_name(name):
                warnings.append(f"volume name {name!r} of {c.name} is not a plain name; skipped")
                continue
            users.setdefault(name, []).append(c.name)
    return [Volume(n, tuple(sorted(set(cs)))) for n, cs in sorted(users.items())], warnings


def volume_attrs_problem(attrs: dict[str, Any], expected: str) -> str:
    """Pure: why a volume inspect document is not a plain local volume at ``expected`` ('' if fine)."""
    if attrs.get("Driver") not in ("local", None, ""):
        return f"driver {attrs.get('Driver')!r} (not a local volume)"
    if attrs.get("Options"):
        return "local volume with mount options (bind or special mount)"
    mountpoint = str(attrs.get("Mountpoint") or "")
    if mountpoint and os.path.normpath(mountpoint) != os.path.normpath(expected):
        return f"the engine reports its data at {mountpoint}, not {expected} (check cai.data_root)"
    return ""


def volume_path(data_root: str, name: str) -> str:
    """``<data_root>/volumes/<name>/_data`` for a validated name."""
    if not valid_volume_name(name):
        raise UnsafeVolumeError(f"volume name {name!r} is not a plain name", "nothing was changed")
    return os.path.join(data_root, "volumes", name, "_data")


def open_data_root(data_root: str) -> int:
    """Open ``<data_root>/volumes`` (the configured data root may itself be a link); see
    :func:`ops.repair.onhost.open_data_root`."""
    try:
        return onhost.open_data_root(data_root)
    except onhost.Refusal as exc:
        raise refusal_error(exc) from None


def open_volume(volumes_fd: int, data_root: str, name: str) -> int:
    """Open a volume's ``_data`` without following any link below ``<data_root>/volumes``.

    Raises UnsafeVolumeError for a symlink or non-directory on the way, MountedVolumeError when
    ``_data`` is a mount point (see :func:`ops.repair.onhost.open_volume`).
    """
    try:
        return onhost.open_volume(volumes_fd, data_root, name)
    except onhost.Refusal as exc:
        raise refusal_error(exc) from None


def refusal_error(exc: onhost.Refusal, where: str = "") -> OpsError:
    """The typed error of a refusal of the engine host's side (``where``: the target, for messages)."""
    message = f"{where}: {exc.message}" if where else exc.message
    kinds: dict[str, type[OpsError]] = {onhost.NOT_FOUND: NotFoundError, onhost.UNSAFE: UnsafeVolumeError,
                                        onhost.MOUNTED: MountedVolumeError}
    if exc.kind == onhost.NOT_ROOT:
        return RefusedError(message, exc.hint, exit_code=1)
    return kinds.get(exc.kind, OpsError)(message, exc.hint)
