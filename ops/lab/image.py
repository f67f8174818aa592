"""Images of the test lab, made offline (no registry) and cached by a hash of their recipe.

- ``cai-lab-host:<hash12>``: Debian bookworm from debootstrap with systemd, sshd, sudo, Debian's
  docker.io and busybox-static, configured by ``recipe/configure.sh``; runs ``/lib/systemd/systemd``.
- ``cai-lab-tiny:<hash12>``: ``/bin/busybox`` (Debian's busybox-static) plus links, with users root and
  ``agent`` (1000:1000).
- the "agent" image is the host image: it has an ``agent`` user (1000:1000, bash) and sshd.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from ops.errors import OpsError
from ops.lab.engine import LAB_ROOT, lab_lock

RECIPE = Path(__file__).resolve().parent / "recipe"
HOST_REPO = "cai-lab-host"
TINY_REPO = "cai-lab-tiny"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
BUSYBOX = Path("/bin/busybox")

#: Applets linked in the tiny image (``trap`` is a shell builtin of ``sh``).
TINY_APPLETS = (
    "sh", "ash", "sleep", "id", "cat", "ls", "chown", "chmod", "touch", "mkdir", "rm", "echo", "env",
    "true", "false", "stat", "find", "grep", "sed", "ps", "kill", "whoami", "test", "[", "printf",
    "head", "tail", "wc", "date", "uname", "ln", "cp", "mv", "pwd", "hostname", "su", "timeout",
)


def mirror() -> str:
    """The Debian mirror for debootstrap and the image's apt sources (env ``CAI_LAB_MIRROR``)."""
    return os.environ.get("CAI_LAB_MIRROR", "").strip() or DEFAULT_MIRROR


def recipe_files() -> list[Path]:
    """The files the images are made from, in a stable order.

    ``recipe/host/`` is left out: those files are written into each lab host when it starts, so
    changing them needs no image rebuild.
    """
    return sorted(p for p in RECIPE.rglob("*")
                  if p.is_file() and p.relative_to(RECIPE).parts[0] not in ("host", "__pycache__"))


def recipe_hash() -> str:
    """sha256 over the recipe files (relative names and contents)."""
    digest = hashlib.sha256()
    for path in recipe_files():
        digest.update(str(path.relative_to(RECIPE)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def host_tag() -> str:
    """The tag of the lab host image for the current recipe."""
    return f"{HOST_REPO}:{recipe_hash()[:12]}"


def tiny_tag() -> str:
    """The tag of the tiny image for the current recipe."""
    return f"{TINY_REPO}:{recipe_hash()[:12]}"


def packages() -> list[str]:
    """The Debian packages of the host image (recipe/packages.txt)."""
    lines = (RECIPE / "packages.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def image_exists(docker_host: str, tag: str) -> bool:
    """True when the engine at docker_host has the image tag."""
    import docker
    from docker.errors import ImageNotFound

    client = docker.DockerClient(base_url=docker_host, timeout=60)
    try:
        client.images.get(tag)
        return True
    except ImageNotFound:
        return False
    finally:
        client.close()


def _docker_cli() -> str:
    cli = shutil.which("docker")
    if cli is None:
        raise OpsError("the docker client is not installed", "run ./bootstrap.sh deps (installs docker.io)")
    return cli


def _import_dir(docker_host: str, rootfs: Path, tag: str, changes: list[str]) -> None:
    """``tar -C rootfs -c . | docker import --change ... - tag``."""
    argv = [_docker_cli(), "-H", docker_host, "import"]
    for change in changes:
        argv += ["--change", change]
    argv += ["-", tag]
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert tar.stdout is not None
    imp = subprocess.run(argv, stdin=tar.stdout, capture_output=True, text=True, check=False)
    tar.stdout.close()
    tar_err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
    tar_code = tar.wait()
    if tar_code != 0 or imp.returncode != 0:
        detail = (imp.stderr or tar_err).strip().splitlines()
        raise OpsError(f"docker import of {tag} failed: {' | '.join(detail[-3:])[:300]}")


def _run(argv: list[str], what: str, log: Path | None = None) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if log is not None:
        log.write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-4:]
        hint = f"see {log}" if log else ""
        raise OpsError(f"{what} failed (exit {out.returncode}): {' | '.join(tail)[:400]}", hint)


def build_rootfs(target: Path, mirror_url: str | None = None) -> None:
    """debootstrap the host rootfs into target and configure it (recipe/configure.sh)."""
    if shutil.which("debootstrap") is None:
        raise OpsError("debootstrap is not installed",
                       "run ./bootstrap.sh deps (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise OpsError("building the lab image needs root", "run as root (sudo)")
    url = mirror_url or mirror()
    cache = LAB_ROOT / "debcache"
    cache.mkdir(parents=True, exist_ok=True)
    log = LAB_ROOT / "debootstrap.log"
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(packages())}",
          f"--cache-dir={cache}", SUITE, str(target), url],
         f"debootstrap {SUITE} from {url}", log)
    _run(["sh", str(RECIPE / "configure.sh"), str(target), str(RECIPE), url], "configuring the lab rootfs")


def _ensure_image(docker_host: str, tag: str, kind: str, build: Callable[[Path], None],
                  changes: list[str]) -> str:
    """``tag`` if the engine has it; else build a rootfs with ``build`` and import it, under a lock
    so concurrent sessions build it once."""
    if image_exists(docker_host, tag):
        return tag
    with lab_lock(f"image-{kind}"):
        if image_exists(docker_host, tag):
            return tag
        work = Path(tempfile.mkdtemp(prefix=f"build-{kind}-", dir=LAB_ROOT))
        try:
            build(work / "rootfs")
            _import_dir(docker_host, work / "rootfs", tag, changes)
        finally:
            _rmtree(work)
    return tag


def ensure_lab_image(docker_host: str) -> str:
    """The lab host image tag, built (debootstrap + import, a few minutes) only when missing."""
    return _ensure_image(docker_host, host_tag(), "host", build_rootfs,
                         ['CMD ["/lib/systemd/systemd"]', "ENV container=docker"])


def ensure_agent_image(docker_host: str) -> str:
    """An image for agent containers reached over SSH: the lab host image.

    It has user ``agent`` (1000:1000, bash) and sshd; run it with ``--network host`` and
    ``/usr/sbin/sshd -D -e -p PORT -o ListenAddress=127.0.0.1`` (see docs/lab.md).
    """
    return ensure_lab_image(docker_host)


def build_tiny_rootfs(target: Path) -> None:
    """Lay out the tiny image: busybox, its applet links, /etc/passwd and /etc/group."""
    if not BUSYBOX.is_file():
        raise OpsError(f"{BUSYBOX} is missing", "apt-get install busybox-static")
    for name in ("bin", "etc", "root", "home/agent", "var", "proc", "sys", "dev", "run"):
        (target / name).mkdir(parents=True, exist_ok=True)
    (target / "tmp").mkdir(mode=0o1777, exist_ok=True)
    os.chmod(target / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, target / "bin" / "busybox")
    for applet in TINY_APPLETS:
        (target / "bin" / applet).symlink_to("busybox")
    shutil.copy(RECIPE / "tiny" / "passwd", target / "etc" / "passwd")
    shutil.copy(RECIPE / "tiny" / "group", target / "etc" / "group")
    os.chown(target / "home" / "agent", 1000, 1000)


def ensure_tiny_image(docker_host: str) -> str:
    """The tiny busybox image tag (users root and agent 1000:1000), imported only when missing."""
    return _ensure_image(docker_host, tiny_tag(), "tiny", build_tiny_rootfs, ['CMD ["/bin/sh"]', "ENV PATH=/bin"])


def _rmtree(path: Path) -> None:
    """Remove a build directory (debootstrap leaves root-owned files; we run as root)."""
    shutil.rmtree(path, ignore_errors=True)
