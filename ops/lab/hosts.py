"""Lab hosts: containers on the private lab engine that boot systemd as PID 1 and look like an older
ContainAI install, reached over SSH through a Lima-format ssh.config exactly as a Lima VM is.

Each host gets its own loopback address ``127.0.0.(10+index)`` and port 2222 (the containers share the
machine's network), a bind-mounted data root for its nested engine, and the files of a ContainAI
install written into it before it boots (``recipe/host/``).

A host with a *layout* (``containai`` or ``lima-vm``) is in the state the ContainAI installer leaves
(``recipe/host/containai/``, ``recipe/host/lima-vm/``) and has a network namespace of its own
(``--network none``): its engine's bridge, addresses and iptables rules never reach the machine. Its
sshd runs in inetd mode over ``docker exec``, named as the ``ProxyCommand`` of its ssh.config, and its
apt reads a local file repository (``/srv/cai-lab-apt``) holding what it cannot download.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ops.errors import NotFoundError, OpsError
from ops.lab import OLD_DOCKERD, OLD_SYSBOX
from ops.lab.engine import LAB_ROOT, lab_lock
from ops.lab.image import RECIPE, ensure_lab_image
from ops.ssh import port_in_use

HOSTS_DIR = LAB_ROOT / "hosts"
KEYS_DIR = LAB_ROOT / "keys"
KEY = KEYS_DIR / "id_ed25519"
SSH_PORT = 2222
MAX_INDEX = 240
LABEL = "cai-lab.host"
CONTAINER_PREFIX = "cai-lab-"
DEFAULT_SYSBOX = OLD_SYSBOX
ENGINE_SOCK = "/var/run/containai-docker.sock"
#: Host layouts the lab reproduces (see ops.layout), and the engine socket and data root of each.
LAYOUTS = ("containai", "lima-vm")
LAYOUT_SOCK = {"containai": ENGINE_SOCK, "lima-vm": "/var/run/docker.sock"}
LAYOUT_DATA_ROOT = {"containai": "/var/lib/containai-docker", "lima-vm": "/var/lib/docker"}
#: The local apt repository of layout hosts (they have no route out), inside the host and on the machine.
APT_REPO_IN_HOST = "/srv/cai-lab-apt"
APT_REPO = LAB_ROOT / "aptrepo"
#: What the sysbox-ce package depends on (fuse as the real build patches it: fuse3); the local apt
#: repository holds these and their dependencies, less what the lab image already has.
APT_REPO_PACKAGES = ("fuse3", "jq", "lsb-release", "rsync", "iptables", "debconf")
#: The dockerd bundle binaries and where Debian's docker.io has them in the lab image.
BUNDLE_LINKS = {
    "dockerd": "/usr/sbin/dockerd", "docker": "/usr/bin/docker", "containerd": "/usr/bin/containerd",
    "containerd-shim-runc-v2": "/usr/bin/containerd-shim-runc-v2", "docker-init": "/usr/bin/docker-init",
    "docker-proxy": "/usr/sbin/docker-proxy", "runc": "/usr/sbin/runc", "ctr": "/usr/bin/ctr",
}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
#: A reservation without a container older than this is from a crashed session and is reclaimed.
STALE_RESERVATION = 600.0


@dataclass(frozen=True)
class LabHost:
    """A running lab host and how to reach it."""

    name: str
    vm: str
    address: str
    port: int
    container: str
    lima_home: str
    ssh_config: str
    key: str
    data_dir: str
    layout: str = ""  # "" (the lab's older install), containai or lima-vm

    @property
    def engine_socket(self) -> str:
        """The socket of the engine that serves the host's managed containers."""
        return LAYOUT_SOCK.get(self.layout, ENGINE_SOCK)

    @property
    def docker(self) -> str:
        """The docker CLI of that engine, as a command prefix inside the host."""
        return f"docker -H unix://{self.engine_socket}"

    @property
    def target(self) -> str:
        """The target text the product accepts for this host (``lima:<vm>``)."""
        return f"lima:{self.vm}"

    @property
    def alias(self) -> str:
        """The Host alias of the ssh.config (``lima-<vm>``)."""
        return f"lima-{self.vm}"


def address_of(index: int) -> str:
    """The loopback address of host number index."""
    if not 0 <= index <= MAX_INDEX:
        raise OpsError(f"lab host index {index} is out of range", f"use 0..{MAX_INDEX}")
    return f"127.0.0.{10 + index}"


def check_layout(layout: str | None) -> str:
    """Validate a lab layout name ("" or None: the lab's older install)."""
    if layout and layout not in LAYOUTS:
        raise OpsError(f"unknown lab layout {layout!r}", f"use one of {', '.join(LAYOUTS)}")
    return layout or ""


def check_name(name: str) -> str:
    """Validate a lab host name (it becomes a container name, a directory and a Lima VM name)."""
    if not _NAME_RE.match(name or ""):
        raise OpsError(f"invalid lab host name {name!r}", "use lower-case letters, digits and dashes")
    return name


def container_name(name: str) -> str:
    """The container of a lab host."""
    return CONTAINER_PREFIX + name


# --- keys, reservations ---------------------------------------------------------------------------

@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """The lock over host reservations."""
    HOSTS_DIR.mkdir(parents=True, exist_ok=True)
    with lab_lock("hosts"):
        yield


def ensure_key() -> Path:
    """The lab's root key pair (generated once); returns the private key path."""
    with _locked():
        if KEY.is_file() and KEY.with_suffix(".pub").is_file():
            return KEY
        if shutil.which("ssh-keygen") is None:
            raise OpsError("ssh-keygen is not installed", "apt-get install openssh-client")
        KEYS_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in (KEY, KEY.with_suffix(".pub")):
            path.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cai-lab", "-f", str(KEY)],
                       check=True, capture_output=True)
        return KEY


def _state_file(name: str) -> Path:
    return HOSTS_DIR / name / "host.json"


def _reserved() -> dict[str, int]:
    """Host name -> index of every reservation on disk."""
    out: dict[str, int] = {}
    for state in HOSTS_DIR.glob("*/host.json"):
        try:
            out[state.parent.name] = int(json.loads(state.read_text())["index"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def _container_exists(name: str) -> bool:
    from docker.errors import NotFound

    from ops.lab.engine import DOCKER_HOST

    try:
        client = _client(DOCKER_HOST)
    except Exception:
        return True  # cannot tell: keep the reservation
    try:
        client.containers.get(container_name(name))
        return True
    except NotFound:
        return False
    except Exception:
        return True
    finally:
        client.close()


def _docker_host_hint() -> str:
    from ops.lab.engine import DOCKER_HOST

    return DOCKER_HOST


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reclaim(name: str) -> None:
    """Drop a stale reservation and its container (caller holds the lock)."""
    from docker.errors import NotFound

    from ops.lab.engine import DOCKER_HOST

    with contextlib.suppress(Exception):
        client = _client(DOCKER_HOST)
        try:
            client.containers.get(container_name(name)).remove(force=True)
        except NotFound:
            pass
        finally:
            client.close()
    shutil.rmtree(HOSTS_DIR / name, ignore_errors=True)


def _stale(name: str, now: float) -> bool:
    """A reservation is stale when its owner process died, or when it is old and has no container."""
    state = _state_file(name)
    try:
        raw = json.loads(state.read_text())
        age = now - state.stat().st_mtime
    except (OSError, ValueError):
        return False
    pid = raw.get("owner_pid")
    if isinstance(pid, int) and pid > 0:
        return not _pid_alive(pid)
    return age > STALE_RESERVATION and not _container_exists(name)


def reserve(name: str, index: int | None = None, owner_pid: int | None = None) -> int:
    """Reserve a host name and an index (the lowest free one unless given) across processes.

    The reservation is ``<lab root>/hosts/<name>/host.json``; ``down(name)`` releases it. With
    ``owner_pid`` (test sessions), the host is reclaimed (container removed) once that process is gone.
    """
    check_name(name)
    with _locked():
        taken = _reserved()
        now = time.time()
        for other in list(taken):
            if other != name and _stale(other, now):
                _reclaim(other)
                taken.pop(other)
        if name in taken:
            if index is not None and taken[name] != index:
                raise OpsError(f"lab host {name!r} already holds index {taken[name]}",
                               f"run `inv lab.down --name {name}` first")
            return taken[name]
        used = set(taken.values())
        if index is None:
            index = next((i for i in range(MAX_INDEX + 1)
                          if i not in used and not port_in_use(SSH_PORT, address_of(i))), None)
            if index is None:
                raise OpsError("no free lab host index left", "remove hosts with `inv lab.down --all`")
        elif index in used:
            owner = next(n for n, i in taken.items() if i == index)
            raise OpsError(f"lab host index {index} is used by {owner!r}", "pick another index")
        (HOSTS_DIR / name).mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {"name": name, "index": index}
        if owner_pid:
            state["owner_pid"] = owner_pid
        _state_file(name).write_text(json.dumps(state))
        return index


# --- the files of a host --------------------------------------------------------------------------

def proxy_command(container: str, docker_host: str) -> str:
    """The ProxyCommand reaching a host's sshd with no network: sshd in inetd mode over docker exec."""
    docker = shutil.which("docker") or "docker"
    return f"{docker} -H {docker_host} exec -i {container} /usr/sbin/sshd -i -e -o LogLevel=ERROR"


def ssh_config_text(vm: str, address: str, port: int, key: Path, control_path: Path,
                    proxy: str = "") -> str:
    """An ssh config in the form Lima writes for a VM (with ``proxy``: a ProxyCommand instead of an
    address and port)."""
    where = [f"  ProxyCommand {proxy}"] if proxy else [f"  Hostname {address}", f"  Port {port}"]
    return "\n".join([
        f"Host lima-{vm}",
        f'  IdentityFile "{key}"',
        "  StrictHostKeyChecking no",
        "  UserKnownHostsFile /dev/null",
        "  NoHostAuthenticationForLocalhost yes",
        "  GSSAPIAuthentication no",
        "  PreferredAuthentications publickey",
        "  Compression no",
        "  BatchMode yes",
        "  IdentitiesOnly yes",
        "  User root",
        "  ControlMaster auto",
        f'  ControlPath "{control_path}"',
        "  ControlPersist 5m",
        *where,
        "",
    ])


def sysbox_runc_script(version: str) -> str:
    """The stand-in ``/usr/bin/sysbox-runc`` printing the real ``--version`` format."""
    return (RECIPE / "host" / "sysbox-runc.in").read_text().replace("@VERSION@", version)


def _install_tar(address: str, port: int, pubkey: str, sysbox_version: str | None, layout: str = "") -> bytes:
    """The files written into a host before it boots (an older ContainAI install, or the installer's
    state of a layout)."""
    buf = io.BytesIO()
    now = int(time.time())
    host = RECIPE / "host"

    def add(tar: tarfile.TarFile, path: str, data: bytes, mode: int = 0o644, uid: int = 0) -> None:
        info = tarfile.TarInfo(path)
        info.size, info.mode, info.mtime, info.uid, info.gid = len(data), mode, now, uid, uid
        tar.addfile(info, io.BytesIO(data))

    def add_dir(tar: tarfile.TarFile, path: str, mode: int = 0o755, uid: int = 0) -> None:
        info = tarfile.TarInfo(path)
        info.type, info.mode, info.mtime, info.uid, info.gid = tarfile.DIRTYPE, mode, now, uid, uid
        tar.addfile(info)

    def add_link(tar: tarfile.TarFile, path: str, target: str) -> None:
        info = tarfile.TarInfo(path)
        info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, now
        tar.addfile(info)

    with tarfile.open(fileobj=buf, mode="w") as tar:
        add_dir(tar, "etc/containai")
        add_dir(tar, "etc/containai/docker")
        if layout == "containai":
            _add_containai_layout(tar, host / "containai", add, add_dir, add_link)
        elif layout == "lima-vm":
            _add_lima_vm_layout(tar, host / "lima-vm", add, add_link)
        else:
            add(tar, "etc/containai/docker/daemon.json", (host / "daemon.json").read_bytes())
            add(tar, "etc/systemd/system/containai-docker.service",
                (host / "containai-docker.service").read_bytes())
            add_link(tar, "etc/systemd/system/multi-user.target.wants/containai-docker.service",
                     "/etc/systemd/system/containai-docker.service")
        if layout:
            # no network: apt reads the local file repository only; sshd -i needs /run/sshd at every boot
            add(tar, "etc/apt/sources.list", f"deb [trusted=yes] file:{APT_REPO_IN_HOST} ./\n".encode())
            add(tar, "etc/tmpfiles.d/cai-lab-sshd.conf", b"d /run/sshd 0755 root root -\n")
        add(tar, "etc/ssh/sshd_config.d/00-lab-host.conf",
            f"# this lab host's own address (the hosts share the machine's network)\n"
            f"ListenAddress {address}:{port}\n".encode())
        add(tar, "root/.ssh/authorized_keys", pubkey.encode(), 0o600)
        add(tar, "home/agent/.ssh/authorized_keys", pubkey.encode(), 0o600, uid=1000)
        if sysbox_version:
            add(tar, "usr/bin/sysbox-runc", sysbox_runc_script(sysbox_version).encode(), 0o755)
    return buf.getvalue()


def _add_containai_layout(tar: tarfile.TarFile, recipe: Path, add: Any, add_dir: Any, add_link: Any) -> None:
    """The installer's Linux state: its unit (enabled), its daemon.json, and the bundle layout in
    /opt/containai (``bin/<b>`` relative links to ``docker/<ver>/<b>``, ``VERSION`` without a newline).
    The bundle's files are links to the image's Debian docker.io binaries (same programs, no copy)."""
    add(tar, "etc/containai/docker/daemon.json", (recipe / "daemon.json").read_bytes())
    add(tar, "etc/systemd/system/containai-docker.service", (recipe / "containai-docker.service").read_bytes())
    add_link(tar, "etc/systemd/system/multi-user.target.wants/containai-docker.service",
             "/etc/systemd/system/containai-docker.service")
    for d in ("opt/containai", "opt/containai/bin", "opt/containai/docker", f"opt/containai/docker/{OLD_DOCKERD}"):
        add_dir(tar, d)
    for name, path in BUNDLE_LINKS.items():
        add_link(tar, f"opt/containai/docker/{OLD_DOCKERD}/{name}", path)
        add_link(tar, f"opt/containai/bin/{name}", f"../docker/{OLD_DOCKERD}/{name}")
    add(tar, "opt/containai/VERSION", OLD_DOCKERD.encode())


def _add_lima_vm_layout(tar: tarfile.TarFile, recipe: Path, add: Any, add_link: Any) -> None:
    """The macOS VM's state: the distribution's docker.service, docker.socket and containerd.service
    enabled, /etc/docker/daemon.json as the sysbox-ce package leaves it (the sysbox-runc runtime, bip,
    address pools), and the installer's dead /etc/containai/docker/daemon.json."""
    add(tar, "etc/docker/daemon.json", (recipe / "docker-daemon.json").read_bytes())
    add(tar, "etc/containai/docker/daemon.json", (recipe / "containai-daemon.json").read_bytes())
    for unit, wants in (("docker.service", "multi-user.target.wants"),
                        ("containerd.service", "multi-user.target.wants"),
                        ("docker.socket", "sockets.target.wants")):
        add_link(tar, f"etc/systemd/system/{wants}/{unit}", f"/lib/systemd/system/{unit}")


# --- up / down ------------------------------------------------------------------------------------

def _client(docker_host: str) -> Any:
    import docker

    return docker.DockerClient(base_url=docker_host, timeout=120)


def run_kwargs(name: str, data_dir: Path, layout: str = "") -> dict[str, Any]:
    """Docker SDK arguments of a lab host (the flags known to work, see docs/lab.md). A layout host
    has a network namespace of its own (``none``: only ``lo``) and the local apt repository."""
    volumes: dict[str, dict[str, str]] = {
        "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
        str(data_dir): {"bind": LAYOUT_DATA_ROOT.get(layout, "/var/lib/containai-docker"), "mode": "rw"},
    }
    if layout:
        volumes[str(APT_REPO)] = {"bind": APT_REPO_IN_HOST, "mode": "ro"}
    return {
        "name": container_name(name),
        "command": ["/lib/systemd/systemd"],
        "detach": True,
        "network_mode": "none" if layout else "host",
        "cap_add": ["ALL"],
        "cap_drop": ["SYS_RESOURCE"],
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
        "device_cgroup_rules": ["a *:* rwm"],
        "cgroupns": "host",
        "volumes": volumes,
        "tmpfs": {"/run": "", "/run/lock": ""},
        "labels": {LABEL: name},
        "environment": {"container": "docker"},
        "stop_signal": "SIGRTMIN+3",
    }


def connection(host: LabHost) -> Any:
    """A ``fabric.Connection`` to the host, built exactly as the product reaches a Lima VM."""
    import fabric

    return fabric.Connection(f"lima-{host.vm}", config=fabric.Config(runtime_ssh_path=host.ssh_config))


def run(host: LabHost, command: str, timeout: int = 60) -> tuple[int, str, str]:
    """Run a command on the host over SSH; never raises on a non-zero exit."""
    conn = connection(host)
    try:
        res = conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
        return int(res.exited), str(res.stdout), str(res.stderr)
    finally:
        conn.close()


def wait_ssh(host: LabHost, timeout: float = 120) -> None:
    """Wait (with backoff) until a command runs on the host over SSH."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    last = ""
    while True:
        try:
            code, _, err = run(host, "true", timeout=15)
            if code == 0:
                return
            last = err.strip()
        except Exception as exc:
            last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if time.monotonic() + delay > deadline:
            raise OpsError(f"lab host {host.name} did not answer SSH within {timeout:.0f}s ({last[:200]})",
                           f"see `docker -H {_docker_host_hint()} logs {host.container}`")
        time.sleep(delay)
        delay = min(delay * 1.6, 3.0)


def wait_engine(host: LabHost, timeout: float = 120) -> None:
    """Wait until the nested engine (containai-docker, or docker.service on lima-vm) answers inside
    the host."""
    deadline = time.monotonic() + timeout
    delay = 0.3
    while True:
        code, out, _ = run(host, f"{host.docker} version --format '{{{{.Server.Version}}}}'", timeout=30)
        if code == 0 and out.strip():
            return
        if time.monotonic() + delay > deadline:
            unit = "docker" if host.layout == "lima-vm" else "containai-docker"
            _, journal, _ = run(host, f"systemctl status {unit} --no-pager -n 15 2>&1 | tail -n 8")
            raise OpsError(f"the nested engine of lab host {host.name} did not answer within "
                           f"{timeout:.0f}s: {' | '.join(journal.strip().splitlines())[-400:]}")
        time.sleep(delay)
        delay = min(delay * 1.6, 3.0)


def up(name: str, index: int, docker_host: str, lima_home: str | os.PathLike[str],
       sysbox_version: str | None = DEFAULT_SYSBOX, *, wait_for_engine: bool = True,
       image: str | None = None, layout: str | None = None) -> LabHost:
    """Start lab host ``name`` (number ``index``) on the lab engine; return once SSH answers (and the
    nested engine, unless wait_for_engine is False). An existing host of that name is replaced.
    ``layout`` (containai, lima-vm) starts it in the state the installer leaves, on a network of its own."""
    check_name(name)
    layout = check_layout(layout)
    tag = image or ensure_lab_image(docker_host)
    if layout:
        ensure_apt_repo(docker_host, tag)
    index = reserve(name, index)
    address = address_of(index)
    key = ensure_key()
    home = Path(os.fspath(lima_home)).expanduser().resolve()
    vm_dir = home / name
    vm_dir.mkdir(parents=True, exist_ok=True)
    ssh_config = vm_dir / "ssh.config"
    stop_mux(ssh_config, name)  # a master from an earlier host of this name
    proxy = proxy_command(container_name(name), docker_host) if layout else ""
    ssh_config.write_text(ssh_config_text(name, address, SSH_PORT, key, vm_dir / "ssh.sock", proxy))
    host_dir = HOSTS_DIR / name
    data_dir = host_dir / "data"
    host = LabHost(name=name, vm=name, address=address, port=SSH_PORT, container=container_name(name),
                   lima_home=str(home), ssh_config=str(ssh_config), key=str(key), data_dir=str(data_dir),
                   layout=layout)
    previous: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads(_state_file(name).read_text())
    state = {"index": index, **asdict(host)}
    if previous.get("owner_pid"):
        state["owner_pid"] = previous["owner_pid"]
    _state_file(name).write_text(json.dumps(state, indent=2))

    client = _client(docker_host)
    try:
        _remove_container(client, container_name(name))
        if data_dir.exists():
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True)
        container = client.containers.create(tag, **run_kwargs(name, data_dir, layout))
        pubkey = KEY.with_suffix(".pub").read_text()
        container.put_archive("/", _install_tar(address, SSH_PORT, pubkey, sysbox_version, layout))
        container.start()
        if layout:
            _wait_sshd_ready(container)
    finally:
        client.close()
    wait_ssh(host)
    if layout:
        apt_update(host)  # the local repository only: fast, and apt resolves fuse3 as on a real host
    if wait_for_engine:
        wait_engine(host)
    return host


def _wait_sshd_ready(container: Any, timeout: float = 60) -> None:
    """Wait until systemd made /run/sshd (sshd -i refuses to run before), so the first ssh works."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if container.exec_run(["test", "-d", "/run/sshd"]).exit_code == 0:
                return
        time.sleep(0.2)


def _image_packages(docker_host: str, image: str) -> set[str]:
    """The packages installed in the lab image."""
    client = _client(docker_host)
    try:
        out = client.containers.run(image, ["dpkg-query", "-W", "-f", "${Package}\\n"], network_mode="none",
                                    remove=True)
    finally:
        client.close()
    return set(out.decode().split())


def _dependency_closure(packages: tuple[str, ...]) -> set[str]:
    """The packages and everything they depend on, from the machine's apt lists."""
    out = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                          "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *packages],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise OpsError(f"apt-cache cannot resolve {', '.join(packages)}: {out.stderr.strip()[-200:]}",
                       "run `apt-get update` on this machine, then retry")
    return {line.strip() for line in out.stdout.splitlines() if line and not line[0].isspace()
            and not line.startswith("<")}


def ensure_apt_repo(docker_host: str, image: str) -> Path:
    """The local apt repository of layout hosts (they have no route out): what the sysbox-ce package
    needs and the image lacks, downloaded with the machine's apt, and a flat ``Packages`` index made by
    dpkg-scanpackages. Made once per image, under a lock."""
    with lab_lock("aptrepo"):
        index, stamp = APT_REPO / "Packages", APT_REPO / "made-for"
        wanted = f"{image} {' '.join(APT_REPO_PACKAGES)}\n"
        if index.is_file() and stamp.is_file() and stamp.read_text() == wanted:
            return APT_REPO
        for tool in ("apt-get", "apt-cache", "dpkg-scanpackages"):
            if shutil.which(tool) is None:
                raise OpsError(f"{tool} is not installed (the lab's local apt repository needs it)",
                               "run ./bootstrap.sh deps (apt-get install dpkg-dev)")
        shutil.rmtree(APT_REPO, ignore_errors=True)
        APT_REPO.mkdir(parents=True)
        need = sorted(_dependency_closure(APT_REPO_PACKAGES) - _image_packages(docker_host, image))
        if need:
            got = subprocess.run(["apt-get", "download", *need], cwd=APT_REPO, capture_output=True, text=True,
                                 check=False)
            if got.returncode != 0:
                last = (got.stderr.strip() or got.stdout.strip() or f"exit {got.returncode}").splitlines()[-1]
                raise OpsError(f"downloading {len(need)} packages for the lab's apt repository failed: {last}",
                               "run `apt-get update` on this machine, then retry")
        scan = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=APT_REPO,
                              capture_output=True, text=True, check=False)
        if scan.returncode != 0:
            raise OpsError(f"dpkg-scanpackages failed in {APT_REPO}: {scan.stderr.strip()[-200:]}")
        index.write_text(scan.stdout)
        stamp.write_text(wanted)
        return APT_REPO


def reboot(host: LabHost, docker_host: str | None = None, stop_timeout: int = 200) -> None:
    """Reboot a lab host: ``docker restart`` (systemd gets SIGRTMIN+3 and stops its units, the stop
    hook included; a host on a network of its own loses its namespace, bridge and iptables rules with
    it), then wait until SSH answers again."""
    from ops.lab.engine import DOCKER_HOST

    client = _client(docker_host or DOCKER_HOST)
    try:
        container = client.containers.get(host.container)
        container.restart(timeout=stop_timeout)
        if host.layout:
            _wait_sshd_ready(container)
    finally:
        client.close()
    wait_ssh(host)


def apt_update(host: LabHost, timeout: int = 600) -> None:
    """Fetch the apt lists in a host (the image ships none), so apt resolves dependencies as on a real
    host; a failure is one clear error naming the mirror."""
    code, out, err = run(host, "apt-get update -q", timeout=timeout)
    if code != 0:
        last = (err.strip() or out.strip() or f"exit {code}").splitlines()[-1]
        raise OpsError(f"apt-get update failed in lab host {host.name}: {last}",
                       "check that the host reaches its mirror (CAI_LAB_MIRROR when the image was built), "
                       "or bring it up with --no-apt-update")


def stop_mux(ssh_config: Path, vm: str) -> None:
    """Stop an OpenSSH control master left by ``ControlPersist`` for this host (if any)."""
    if not ssh_config.is_file() or shutil.which("ssh") is None:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["ssh", "-F", str(ssh_config), "-O", "exit", f"lima-{vm}"],
                       capture_output=True, check=False, timeout=10)


def _remove_container(client: Any, cname: str) -> None:
    from docker.errors import NotFound

    try:
        client.containers.get(cname).remove(force=True)
    except NotFound:
        return


def load(name: str) -> LabHost:
    """The LabHost of an existing reservation."""
    state = _state_file(check_name(name))
    try:
        raw = json.loads(state.read_text())
        return LabHost(**{k: raw[k] for k in LabHost.__dataclass_fields__ if k != "layout"},
                       layout=str(raw.get("layout", "")))
    except (OSError, ValueError, KeyError, TypeError):
        raise NotFoundError(f"no lab host named {name!r}", "see `inv lab.status`") from None


def names() -> list[str]:
    """Names of all reserved lab hosts."""
    return sorted(_reserved())


def down(name: str, docker_host: str | None = None) -> None:
    """Remove lab host ``name``: its container, data, ssh.config and reservation. Idempotent."""
    from ops.lab.engine import DOCKER_HOST

    check_name(name)
    state = _state_file(name)
    lima_vm_dir: Path | None = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        raw = json.loads(state.read_text())
        if raw.get("ssh_config"):
            cfg = Path(raw["ssh_config"])
            lima_vm_dir = cfg.parent
            stop_mux(cfg, raw["vm"])
    client = _client(docker_host or DOCKER_HOST)
    try:
        _remove_container(client, container_name(name))
    finally:
        client.close()
    if lima_vm_dir is not None and (lima_vm_dir / "ssh.config").is_file():
        shutil.rmtree(lima_vm_dir, ignore_errors=True)
    with _locked():
        shutil.rmtree(HOSTS_DIR / name, ignore_errors=True)


def status(docker_host: str | None = None) -> list[dict[str, str]]:
    """One row per lab host (reserved or with a container): name, address, state, ssh_config."""
    from ops.lab.engine import DOCKER_HOST

    rows: dict[str, dict[str, str]] = {}
    for name, index in _reserved().items():
        rows[name] = {"name": name, "address": f"{address_of(index)}:{SSH_PORT}", "state": "reserved",
                      "ssh_config": ""}
        with contextlib.suppress(NotFoundError):
            loaded = load(name)
            rows[name]["ssh_config"] = loaded.ssh_config
            if loaded.layout:  # no address: reached through docker exec
                rows[name]["address"] = f"layout {loaded.layout}"
    client = _client(docker_host or DOCKER_HOST)
    try:
        for container in client.containers.list(all=True, filters={"label": LABEL}):
            name = container.labels.get(LABEL, "")
            row = rows.setdefault(name, {"name": name, "address": "", "state": "", "ssh_config": ""})
            row["state"] = container.status
    finally:
        client.close()
    return [rows[k] for k in sorted(rows)]
