"""Doctor's SSH checks: facts read on this machine and through the target's engine, judged by pure
functions; and the one fix, re-injecting the public key into a container that refuses it.

Facts:

- the private key ``cai.ssh_key`` (exists, readable, permission bits) and its public half;
- the known_hosts file ``cai.known_hosts`` (exists, or its folder lets ssh create it);
- ``ssh -V`` (OpenSSH >= 7.6 understands ``StrictHostKeyChecking=accept-new``);
- for every running managed container with an SSH port: one BatchMode ``ssh ... true`` with a short
  ConnectTimeout, all containers in parallel, reached as ``inv shell`` reaches them
  (:func:`ops.ssh.route_of`).

The fix (``doctor --fix``) touches only ``/home/<cai.ssh_user>/.ssh``: through the engine, as root
(``docker exec -u root``), the public key is appended to ``authorized_keys`` unless it is there, and the
folder and file get the user's owner and modes 700/600; then the container is tested again.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ops.config import CaiConfig
from ops.engine import SSH_PORT_LABEL
from ops.findings import Finding

if TYPE_CHECKING:  # ops.ssh is imported by the container tests and the fix, which need it
    from ops.ssh import Route
    from ops.targets import Resolved, Target

#: OpenSSH 7.6 added ``StrictHostKeyChecking=accept-new``, which every connection here uses.
MIN_OPENSSH = (7, 6)
#: The finding ``doctor --fix`` acts on.
KEY_REFUSED = "ssh.container-key-refused"
#: Seconds a container's connect test may take to connect (as ContainAI's doctor: 5).
CONNECT_TIMEOUT = 5
_VERSION_RE = re.compile(r"OpenSSH_(?:for_Windows_)?(\d+)\.(\d+)(?:p(\d+))?")


# --- facts ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyFacts:
    """The private key file and its public half."""

    path: str
    exists: bool
    readable: bool = False
    mode: int | None = None  # permission bits
    public_exists: bool = False


@dataclass(frozen=True)
class KnownHostsFacts:
    """The dedicated known_hosts file."""

    path: str
    exists: bool
    writable: bool  # the file is writable, or (missing) its nearest existing folder lets ssh create it


@dataclass(frozen=True)
class ContainerProbe:
    """The connect test of one running managed container."""

    name: str
    port: int | None
    ok: bool
    kind: str = ""  # ops.ssh.classify_probe_failure, or "no-port"
    detail: str = ""


def key_facts(conf: CaiConfig) -> KeyFacts:
    """Read the key ``cai.ssh_key`` on this machine."""
    path = conf.expand(conf.ssh_key)
    try:
        st = path.stat()
    except OSError:
        return KeyFacts(str(path), False)
    return KeyFacts(str(path), stat.S_ISREG(st.st_mode), os.access(path, os.R_OK), stat.S_IMODE(st.st_mode),
                    Path(f"{path}.pub").is_file())


def known_hosts_facts(conf: CaiConfig) -> KnownHostsFacts:
    """Read the known_hosts file ``cai.known_hosts`` on this machine."""
    path = conf.expand(conf.known_hosts)
    if path.exists():
        return KnownHostsFacts(str(path), True, os.access(path, os.W_OK))
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return KnownHostsFacts(str(path), False, os.access(parent, os.W_OK | os.X_OK))


def ssh_version_text() -> str:
    """``ssh -V`` (OpenSSH prints it on stderr); "" when there is no ssh client."""
    if shutil.which("ssh") is None:
        return ""
    try:
        proc = subprocess.run(["ssh", "-V"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (proc.stderr + proc.stdout).strip()


class ClientVersion:
    """``ssh -V`` started at once and read when a check needs it, so that it runs while the targets are
    probed (one per doctor run: it describes this machine, whatever the targets). Nothing is kept
    beyond the object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._text: str | None = None
        self._proc: subprocess.Popen[str] | None = None
        if shutil.which("ssh") is None:
            self._text = ""
            return
        try:
            self._proc = subprocess.Popen(["ssh", "-V"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
        except OSError:
            self._text = ""

    def text(self) -> str:
        """What ``ssh -V`` printed (OpenSSH prints it on stderr); "" when there is no ssh client."""
        with self._lock:
            if self._text is None:
                assert self._proc is not None
                try:
                    out, err = self._proc.communicate(timeout=10)
                    self._text = (err + out).strip()
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.communicate()
                    self._text = ""
            return self._text


def parse_ssh_version(text: str) -> tuple[int, int] | None:
    """Pure parser of ``ssh -V``: ``OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL ...`` -> (9, 2)."""
    match = _VERSION_RE.search(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def probe_containers(engine: Any, conf: CaiConfig, target: Target, key: Path,
                     connect_timeout: int = CONNECT_TIMEOUT) -> list[ContainerProbe]:
    """The connect test of every running managed container of the engine, in parallel."""
    running = [c for c in engine.managed() if c.running]
    if not running:
        return []
    from concurrent.futures import ThreadPoolExecutor

    from ops import ssh

    route = ssh.route_of(target, conf)

    def one(container: Any) -> ContainerProbe:
        if container.ssh_port is None:
            return ContainerProbe(container.name, None, False, "no-port", f"no valid {SSH_PORT_LABEL} label")
        ep = ssh.endpoint(conf, container.name, container.ssh_port, route, key=key, create_known_hosts=False)
        result = ssh.probe(ep, connect_timeout=connect_timeout, timeout=connect_timeout + 15)
        return ContainerProbe(container.name, container.ssh_port, result.ok, result.kind,
                              ssh.last_line(result.stderr))

    with ThreadPoolExecutor(max_workers=min(16, len(running))) as pool:
        return list(pool.map(one, running))


# --- judgement (pure) -------------------------------------------------------------------------------

def _f(r: Resolved, code: str, severity: str, message: str, hint: str = "", **data: Any) -> Finding:
    return Finding(code, severity, r.name, message, hint, r.platform, data)  # type: ignore[arg-type]


def judge_client(r: Resolved, key: KeyFacts, known: KnownHostsFacts, version_text: str) -> list[Finding]:
    """Findings about this machine's SSH client side: OpenSSH version, key, known_hosts."""
    out: list[Finding] = []
    version = parse_ssh_version(version_text)
    if not version_text:
        out.append(_f(r, "ssh.client-missing", "warning", "the OpenSSH client (ssh) is not installed",
                      "install it (apt-get install openssh-client); inv shell needs it"))
    elif version is None:
        out.append(_f(r, "ssh.client-unknown", "warning", f"cannot read the OpenSSH version from {version_text!r}",
                      "install OpenSSH 7.6 or newer (inv shell uses StrictHostKeyChecking=accept-new)"))
    elif version < MIN_OPENSSH:
        out.append(_f(r, "ssh.client-too-old", "warning",
                      f"OpenSSH {version[0]}.{version[1]} is older than 7.6 and does not know "
                      "StrictHostKeyChecking=accept-new", "upgrade the OpenSSH client",
                      version=f"{version[0]}.{version[1]}"))
    else:
        out.append(_f(r, "ssh.client-version", "info",
                      f"OpenSSH {version[0]}.{version[1]} ({version_text.splitlines()[0]})",
                      version=f"{version[0]}.{version[1]}"))
    if not key.exists:
        out.append(_f(r, "ssh.key-missing", "warning", f"the SSH key {key.path} does not exist",
                      "set cai.ssh_key to the private key the containers trust (ContainAI's setup creates "
                      "~/.config/containai/id_containai)", path=key.path))
    elif not key.readable:
        out.append(_f(r, "ssh.key-unreadable", "warning", f"the SSH key {key.path} is not readable by this user",
                      "run as its owner, or fix its owner", path=key.path))
    elif key.mode is not None and key.mode & 0o077:
        out.append(_f(r, "ssh.key-permissions", "warning",
                      f"the SSH key {key.path} has mode {key.mode:o}: ssh refuses a private key others can read",
                      f"chmod 600 {key.path}", path=key.path, mode=f"{key.mode:o}"))
    elif not key.public_exists:
        out.append(_f(r, "ssh.public-key-missing", "warning", f"the public key {key.path}.pub does not exist",
                      f"recreate it: ssh-keygen -y -f {key.path} > {key.path}.pub", path=f"{key.path}.pub"))
    if not known.writable:
        what = "is not writable" if known.exists else "cannot be created"
        out.append(_f(r, "ssh.known-hosts-unwritable", "warning",
                      f"the known_hosts file {known.path} {what}: new container host keys cannot be recorded",
                      "fix its permissions, or set cai.known_hosts to a writable path", path=known.path))
    return out


def judge_containers(r: Resolved, probes: Sequence[ContainerProbe], conf: CaiConfig) -> list[Finding]:
    """Findings from the connect tests: one per failing container, one summary of those that work."""
    out: list[Finding] = []
    ok = [p.name for p in probes if p.ok]
    if ok:
        out.append(_f(r, "ssh.containers-reachable", "info",
                      f"SSH works into {len(ok)} running managed container(s): {', '.join(ok)}", containers=ok))
    for p in probes:
        if p.ok:
            continue
        data = {"container": p.name, "port": p.port, "reason": p.kind, "detail": p.detail}
        if p.kind == "auth":
            out.append(_f(r, "ssh.container-key-refused", "warning",
                          f"container {p.name} (port {p.port}) refuses the key {conf.ssh_key} for user "
                          f"{conf.ssh_user}", "inv doctor --fix puts the public key back into it", **data))
        elif p.kind in ("hostkey-changed", "hostkey"):
            out.append(_f(r, "ssh.container-host-key", "warning",
                          f"the host key of container {p.name} (port {p.port}) does not match {conf.known_hosts}",
                          "inv shell --container NAME replaces the entry of a recreated container", **data))
        elif p.kind == "no-port":
            out.append(_f(r, "ssh.container-no-port", "warning", f"container {p.name} has {p.detail}",
                          "recreate it with ContainAI, which publishes its SSH port", **data))
        else:
            out.append(_f(r, "ssh.container-unreachable", "warning",
                          f"SSH into container {p.name} (port {p.port}) failed: {p.detail or p.kind}",
                          f"check sshd in it: docker logs {p.name}", **data))
    return out


def doctor_findings(r: Resolved, engine: Any, conf: CaiConfig, version_text: str | None = None) -> list[Finding]:
    """The SSH check of doctor: client side, then (with a usable key) every running managed container.

    ``version_text``: ``ssh -V`` as already read (:class:`ClientVersion`); None reads it now."""
    key = key_facts(conf)
    version_text = ssh_version_text() if version_text is None else version_text
    out = judge_client(r, key, known_hosts_facts(conf), version_text)
    usable = key.exists and key.readable and not (key.mode or 0) & 0o077 and shutil.which("ssh") is not None
    if engine is None or not usable:
        return out
    return out + judge_containers(r, probe_containers(engine, conf, r.target, Path(key.path)), conf)


# --- the fix ----------------------------------------------------------------------------------------

#: Run as root in the container: $1 the user, $2 the public key line.
REINJECT_SCRIPT = r"""set -e
u="$1"; d="/home/$u/.ssh"; f="$d/authorized_keys"
mkdir -p "$d"
touch "$f"
if ! grep -qxF -- "$2" "$f"; then
  if [ -s "$f" ] && [ -n "$(tail -c 1 "$f")" ]; then echo >> "$f"; fi
  printf '%s\n' "$2" >> "$f"
fi
chown "$(id -u "$u"):$(id -g "$u")" "$d" "$f"
chmod 700 "$d"
chmod 600 "$f"
"""


def public_key(conf: CaiConfig) -> str:
    """The public key line of ``cai.ssh_key`` (its ``.pub``, else derived with ``ssh-keygen -y``)."""
    from ops.errors import ConfigError

    key = conf.expand(conf.ssh_key)
    pub = Path(f"{key}.pub")
    if pub.is_file():
        text = pub.read_text(encoding="utf-8", errors="replace").strip()
    else:
        proc = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True)
        text = proc.stdout.strip() if proc.returncode == 0 else ""
    if not text or "\n" in text:
        raise ConfigError(f"cannot read the public key of {key}", f"recreate it: ssh-keygen -y -f {key} > {pub}")
    return text


def reinject(engine: Any, container: str, pubkey: str, user: str) -> None:
    """Put the public key into the container's ``authorized_keys`` as root (owner ``user``, 700/600)."""
    from ops.errors import EngineError

    try:
        result = engine.client.containers.get(container).exec_run(
            ["sh", "-c", REINJECT_SCRIPT, "cai-fix", user, pubkey], user="root")
    except Exception as exc:
        raise EngineError(f"cannot run a command in container {container!r} ({str(exc).strip()[:200]})") from None
    if result.exit_code != 0:
        text = result.output.decode("utf-8", "replace").strip().splitlines()
        raise EngineError(f"putting the key into container {container!r} failed (exit {result.exit_code}"
                          + (f": {text[-1][:200]}" if text else "") + ")", f"check the user {user!r} exists in it")


@dataclass(frozen=True)
class FixResult:
    """What the fix did to one container."""

    target: str
    container: str
    fixed: bool
    detail: str

    def line(self) -> str:
        """One line for the text output."""
        return f"{self.target}: container {self.container}: {self.detail}"


def fix_key_refused(findings: Sequence[Finding], conf: CaiConfig, dry_run: bool = False) -> list[FixResult]:
    """``doctor --fix`` for every ``ssh.container-key-refused`` finding: re-inject the key through the
    target's engine, then test the container again."""
    from ops import ssh
    from ops.engine import Engine
    from ops.errors import OpsError
    from ops.targets import effective_target, engine_host, parse_target

    by_target: dict[str, list[str]] = {}
    for f in findings:
        if f.code == KEY_REFUSED:
            by_target.setdefault(f.target, []).append(str(f.data.get("container")))
    results: list[FixResult] = []
    if not by_target:
        return results
    if dry_run:
        return [FixResult(t, n, False, "would put the public key back into authorized_keys")
                for t, names in by_target.items() for n in names]
    pubkey = public_key(conf)
    key = ssh.check_key(conf)
    for text, names in by_target.items():
        try:
            target = effective_target(parse_target(text, conf.lima_vm), conf)
            route = ssh.route_of(target, conf)
            with engine_host(target, conf) as docker_host:
                engine = Engine.connect(docker_host, conf.label, timeout=15)
                try:
                    for name in names:
                        results.append(_fix_one(engine, conf, text, name, pubkey, key, route))
                finally:
                    engine.close()
        except OpsError as exc:
            results += [FixResult(text, n, False, f"not fixed: {exc.line()}") for n in names]
    return results


def _fix_one(engine: Any, conf: CaiConfig, target: str, name: str, pubkey: str, key: Path,
             route: Route) -> FixResult:
    from ops import ssh
    from ops.errors import OpsError

    try:
        container = engine.get(name)
        if not container.running or container.ssh_port is None:
            return FixResult(target, name, False, "not fixed: it is no longer running")
        reinject(engine, name, pubkey, conf.ssh_user)
    except OpsError as exc:
        return FixResult(target, name, False, f"not fixed: {exc.line()}")
    ep = ssh.endpoint(conf, name, container.ssh_port, route, key=key, create_known_hosts=False)
    again = ssh.probe(ep, connect_timeout=CONNECT_TIMEOUT, timeout=CONNECT_TIMEOUT + 15)
    if again.ok:
        return FixResult(target, name, True, "put the public key back into authorized_keys; SSH works again")
    return FixResult(target, name, False, "put the public key back, but SSH still fails: "
                     f"{ssh.last_line(again.stderr) or again.kind}")
