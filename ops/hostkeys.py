"""Host keys of SSH targets, checked the way OpenSSH checks them, for Fabric and for the engine tunnel.

A target's ssh config decides (``StrictHostKeyChecking``, ``UserKnownHostsFile``,
``GlobalKnownHostsFile``, ``HostKeyAlias``, ``HashKnownHosts``), with OpenSSH's defaults:

- ``yes`` (also ``ask`` and the default, since nothing here can ask): a key must be in a known_hosts
  file; an unknown key and a changed key are refused.
- ``accept-new``: an unknown key is accepted and recorded in the first ``UserKnownHostsFile``; a
  changed key is refused.
- ``no`` / ``off``: every key is accepted (Lima writes this, with ``UserKnownHostsFile /dev/null``,
  for its own VMs).

Paramiko (under Fabric) gets a missing-host-key policy that does the whole check itself, against the
same files OpenSSH reads, and the OpenSSH engine tunnel gets the same decision as ``-o`` options
(:meth:`HostKeyPolicy.ssh_options`), so the two never disagree. A refusal is a :class:`HostKeyError`:
one line naming the target and the command that fixes it.

Not supported (paramiko has no equivalent): ``@cert-authority`` and ``@revoked`` lines are ignored,
and ``Include`` in an ssh config is not followed by Fabric (the tunnel gets our decision explicitly).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import paramiko
from paramiko.hostkeys import HostKeyEntry, HostKeys, InvalidHostKey

from ops.errors import TargetError

Mode = Literal["yes", "accept-new", "no"]
DEFAULT_USER_FILES = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_FILES = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
#: paramiko's host key algorithms by the key type a known_hosts line names.
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}
_HOST_KEY_ALGORITHMS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                        "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


class HostKeyError(TargetError):
    """A target's host key is unknown (and may not be added) or differs from the recorded one."""


@dataclass(frozen=True)
class HostKeyPolicy:
    """How a target's host key is checked: the mode and the known_hosts files, as its ssh config says."""

    mode: Mode
    user_files: tuple[str, ...] = ()
    global_files: tuple[str, ...] = ()
    alias: str = ""  # HostKeyAlias: the name looked up instead of [host]:port
    hash_new: bool = False  # HashKnownHosts: record accepted keys with a hashed name

    def lookup_name(self, host: str, port: int) -> str:
        """The name a host's key is recorded under: ``HostKeyAlias``, ``host`` (port 22) or ``[host]:port``."""
        if self.alias:
            return self.alias
        return host if port == 22 else f"[{host}]:{port}"

    @property
    def files(self) -> tuple[str, ...]:
        """Every known_hosts file consulted, user files first."""
        return self.user_files + self.global_files

    def ssh_options(self) -> list[str]:
        """OpenSSH ``-o`` options that make ``ssh`` decide exactly as this policy does."""
        opts = ["-o", f"StrictHostKeyChecking={self.mode}",
                "-o", f"UserKnownHostsFile={_join(self.user_files)}",
                "-o", f"GlobalKnownHostsFile={_join(self.global_files)}"]
        if self.alias:
            opts += ["-o", f"HostKeyAlias={self.alias}"]
        return opts


def _join(files: tuple[str, ...]) -> str:
    if not files:
        return "none"
    return " ".join(f'"{f}"' if any(c.isspace() for c in f) else f for f in files)


def _expand(path: str, host: str, port: int, user: str) -> str:
    """OpenSSH's ``~`` and ``%`` tokens of a known_hosts path (``%d %u %h %p %n %r %%``)."""
    home = os.path.expanduser("~")
    local_user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    out, i = [], 0
    while i < len(path):
        ch = path[i]
        if ch == "%" and i + 1 < len(path):
            token = path[i + 1]
            out.append({"d": home, "u": local_user, "h": host, "n": host, "p": str(port), "r": user,
                        "%": "%"}.get(token, "%" + token))
            i += 2
            continue
        out.append(ch)
        i += 1
    return os.path.expanduser("".join(out))


def _files(value: Any, default: tuple[str, ...], host: str, port: int, user: str) -> tuple[str, ...]:
    if value is None or value == "":
        words: list[str] = list(default)
    elif isinstance(value, list | tuple):
        words = [str(w) for v in value for w in shlex.split(str(v))]
    else:
        words = shlex.split(str(value))
    if [w.lower() for w in words] == ["none"]:
        return ()
    return tuple(_expand(w, host, port, user) for w in words)


def policy_from_ssh_config(options: Mapping[str, Any], host: str, port: int, user: str = "") -> HostKeyPolicy:
    """Pure: the host-key policy of one host from its ssh config lookup (paramiko's lowercase keys)."""
    strict = str(options.get("stricthostkeychecking") or "ask").strip().lower()
    mode: Mode = "no" if strict in ("no", "off") else "accept-new" if strict == "accept-new" else "yes"
    return HostKeyPolicy(
        mode=mode,
        user_files=_files(options.get("userknownhostsfile"), DEFAULT_USER_FILES, host, port, user),
        global_files=_files(options.get("globalknownhostsfile"), DEFAULT_GLOBAL_FILES, host, port, user),
        alias=str(options.get("hostkeyalias") or "").strip(),
        hash_new=str(options.get("hashknownhosts") or "no").strip().lower() == "yes",
    )


# --- known_hosts ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KnownKey:
    """One known_hosts line recording a key for the name looked up."""

    file: str
    line: int
    key: Any  # paramiko.PKey


def _wildcard(pattern: str) -> re.Pattern[str]:
    """OpenSSH patterns know only ``*`` and ``?`` (``[`` is literal: ``[host]:port``)."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()),
                      re.DOTALL)


def _name_matches(pattern_list: list[str], name: str) -> bool:
    """OpenSSH's host list matching: hashed names, wildcards, ``!`` negation."""
    matched = False
    for pattern in pattern_list:
        if pattern.startswith("|1|"):
            if HostKeys.hash_host(name, pattern) == pattern:
                matched = True
            continue
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        if _wildcard(body).fullmatch(name.lower()):
            if negate:
                return False
            matched = True
    return matched


def known_keys(files: tuple[str, ...], name: str) -> list[KnownKey]:
    """Every key recorded for ``name`` in the given known_hosts files (missing files are skipped)."""
    found: list[KnownKey] = []
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        for number, raw in enumerate(lines, 1):
            text = raw.strip()
            if not text or text.startswith("#") or text.startswith("@"):
                continue
            try:
                entry = HostKeyEntry.from_line(text, number)
            except (InvalidHostKey, ValueError):
                continue
            if entry is None or entry.key is None or not _name_matches(entry.hostnames, name):
                continue
            found.append(KnownKey(path, number, entry.key))
    return found


def record(path: str, name: str, key: Any, hashed: bool) -> None:
    """Append a key to a known_hosts file as OpenSSH's accept-new does (creating it, 0600)."""
    if path in ("", "/dev/null"):
        return
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    label = HostKeys.hash_host(name) if hashed else name
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{label} {key.get_name()} {key.get_base64()}\n".encode())
    finally:
        os.close(fd)


# --- paramiko ---------------------------------------------------------------------------------------

def _fingerprint(key: Any) -> str:
    import base64
    import hashlib

    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _Verifier(paramiko.MissingHostKeyPolicy):
    """A paramiko missing-host-key policy that checks every key itself (the client's own host key
    stores stay empty, so paramiko hands it every key it is offered)."""

    def __init__(self, policy: HostKeyPolicy, display: str, host: str, port: int) -> None:
        self.policy, self.display, self.host, self.port = policy, display, host, port

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        if self.policy.mode == "no":
            return
        name = self.policy.lookup_name(self.host, self.port)
        known = known_keys(self.policy.files, name)
        if any(k.key == key for k in known):
            return
        if known:
            client.close()
            first = known[0]
            raise HostKeyError(
                f"host key of {self.display} ({name}) has CHANGED: it offers {key.get_name()} "
                f"{_fingerprint(key)}, {first.file}:{first.line} records another; refusing to connect "
                "(someone may be intercepting the connection)",
                f"if the host was reinstalled, remove the old key with `ssh-keygen -R '{name}' -f "
                f"{first.file}` and connect again")
        if self.policy.mode == "accept-new":
            if self.policy.user_files:
                try:
                    record(self.policy.user_files[0], name, key, self.policy.hash_new)
                except OSError as exc:  # OpenSSH warns and goes on too
                    print(f"warning: could not record the host key of {self.display} in "
                          f"{self.policy.user_files[0]} ({exc.strerror})", file=sys.stderr)
            return
        client.close()
        where = self.policy.user_files[0] if self.policy.user_files else "~/.ssh/known_hosts"
        port = f"-p {self.port} " if self.port != 22 else ""
        scan = f"ssh-keyscan {port}{self.host} >> {where}"
        if self.policy.alias:
            scan += f" (recording it under the HostKeyAlias {self.policy.alias})"
        raise HostKeyError(
            f"host key of {self.display} ({name}, {key.get_name()} {_fingerprint(key)}) is not known and "
            "StrictHostKeyChecking forbids adding it; refusing to connect",
            f"check the fingerprint, then record it: {scan}; or set `StrictHostKeyChecking accept-new` "
            "for this host in its ssh config")


def install(conn: Any, policy: HostKeyPolicy, display: str) -> None:
    """Make a ``fabric.Connection`` check host keys by ``policy`` (before it connects).

    Fabric's own default accepts and remembers any key (paramiko's AutoAddPolicy); this replaces it.
    Where keys of some types are recorded for the host, only those types are negotiated (as OpenSSH
    prefers the recorded types), so a host with a recorded RSA key is not refused for offering ed25519.
    """
    client = conn.client
    client.get_host_keys().clear()
    client.set_missing_host_key_policy(_Verifier(policy, display, str(conn.host), int(conn.port)))
    if policy.mode == "no":
        return
    types = {k.key.get_name() for k in known_keys(policy.files, policy.lookup_name(conn.host, conn.port))}
    if types:
        allowed = {a for t in types for a in _ALGORITHMS.get(t, (t,))}
        offered = getattr(paramiko.Transport, "_preferred_keys", ()) or _HOST_KEY_ALGORITHMS
        disabled = [a for a in offered if a not in allowed]
        algorithms = dict(conn.connect_kwargs.get("disabled_algorithms") or {})
        algorithms["keys"] = sorted(set(algorithms.get("keys", [])) | set(disabled))
        conn.connect_kwargs["disabled_algorithms"] = algorithms
