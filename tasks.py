"""containai-ops tasks: the product namespace (ops.tasks) plus developer tasks (test, lint, the lab)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from invoke import Collection, task
from invoke.exceptions import Exit

from ops.tasks import build_namespace
from ops.tasks import lab as lab_tasks
from ops.tasks._common import cli_errors

ROOT = Path(__file__).resolve().parent
#: The folders the bench scripts put on sys.path (beside the repository root) for the test helpers.
BENCH_PATH = ["tests", "tests/lab"]
#: Where a lab host keeps the checkout, and the data root (a bind mount, not overlayfs) its own lab uses.
LAB_CHECKOUT = "/root/containai-ops"
#: The lab's root inside the host: a bind mount from the host's data folder, so that the tests' own lab
#: engine there keeps its overlay2 data on a plain file system, not on the host's overlayfs.
LAB_ROOT_IN_HOST = "/var/lib/cai-lab"
LAB_ROOT_SOURCE = "/var/lib/containai-docker/cai-lab"
#: The Python packages a lab host installs, downloaded on this side (this side's index and proxy settings).
WHEELHOUSE = "wheelhouse"


@task(
    iterable=["marker"],
    help={
        "marker": "run only tests with this marker: unit, integration or lab (repeatable)",
        "k": "pytest -k expression",
        "x": "stop at the first failure",
    },
)
def test(c: Any, marker: list[str] | None = None, k: str = "", x: bool = False) -> None:
    """Run the test suite (all tiers unless --marker is given)."""
    args = [shlex.quote(sys.executable), "-m", "pytest", "-q"]  # this venv's python, activated or not
    if marker:
        args += ["-m", shlex.quote(" or ".join(marker))]
    if k:
        args += ["-k", shlex.quote(k)]
    if x:
        args.append("-x")
    c.run(" ".join(args), pty=False)


@task(help={})
def lint(c: Any) -> None:
    """Run ruff and mypy (the package, the tests and the bench scripts)."""
    scripts = sorted(str(p) for p in (ROOT / "bench").iterdir() if p.is_file())
    py = shlex.quote(sys.executable)  # this venv's tools, activated or not
    c.run(f"{py} -m ruff check ops tests tasks.py " + " ".join(scripts))
    c.run(f"{py} -m mypy")
    # extensionless scripts: one module each, with the helper folders they import from (a helper that
    # moved away is an error: see the mypy overrides in pyproject.toml); then each runs --help, which
    # imports its helpers from the folders the script itself puts on sys.path
    for script in scripts:
        c.run(f"{py} -m mypy {script}", env={"MYPYPATH": os.pathsep.join(BENCH_PATH)})
    for script in scripts:
        c.run(f"{py} {script} --help", hide="out")


# --- the tiers inside a lab host ----------------------------------------------------------------------

def checkout_files(root: Path = ROOT) -> list[str]:
    """The files of the checkout as git sees them: tracked and new, without ignored ones."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True)
    return sorted({name for name in out.stdout.decode().split("\0") if name and os.path.lexists(root / name)})


def checkout_tar(dest: Path, root: Path = ROOT) -> Path:
    """A tarball of the checkout (links kept as links)."""
    import tarfile  # here, not at the top: `inv --list` does not pay for it

    with tarfile.open(dest, "w:gz") as tar:
        for name in checkout_files(root):
            tar.add(root / name, arcname=name, recursive=False)
    return dest


def wheelhouse(dest: Path, constraints: Path) -> Path:
    """Download, with this venv's pip and its settings, every Python package the checkout installs (pinned
    to the versions of this venv by ``constraints``) plus pip and the build backend, into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--dest", str(dest), "--constraint", str(constraints)]
    for spec in (["pip", "setuptools>=77", "wheel"], [f"{ROOT}[test]"]):
        result = subprocess.run([*pip, *spec], capture_output=True, text=True)
        if result.returncode != 0:
            raise Exit(f"error: pip download {' '.join(spec)} failed: {result.stderr.strip()[-400:]}", code=1)
    for built in dest.glob("containai_ops-*"):
        built.unlink()  # the checkout itself is installed from its copy
    return dest


def in_lab_script(pytest_args: list[str]) -> str:
    """The shell script run in the lab host: a clean Debian with systemd as PID 1, then bootstrap (pip
    offline from the wheelhouse), then the tests. The host starts as an older ContainAI install; that is
    removed first, and the stopped nested engine's data root (a bind mount) holds the lab root of the
    tests' own engine there.

    The tests run as a transient systemd service (``systemd-run --pipe --wait``), as a CI runner's job
    runs under its agent service: not inside an SSH login, whose audit login uid every process started
    from it inherits (an sshd in a container started by such a dockerd then fails ``pam_loginuid``)."""
    pytest = " ".join(shlex.quote(a) for a in pytest_args)
    # pytest's temporary files on the file system of the lab's data (tests bind-mount one into the other),
    # as on a machine, not on the host's overlayfs root
    service_env = {"HOME": "/root", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": f"/tmp/{WHEELHOUSE}",
                   "PIP_CONSTRAINT": "/tmp/constraints.txt", "LANG": "C.UTF-8", "TMPDIR": f"{LAB_ROOT_IN_HOST}/tmp"}
    env_flags = " ".join(f"-E {k}={shlex.quote(v)}" for k, v in service_env.items())
    return "\n".join([
        "set -e",
        "systemctl disable --now containai-docker.service >/dev/null 2>&1 || true",
        "rm -rf /etc/containai /etc/systemd/system/containai-docker.service "
        "/etc/systemd/system/multi-user.target.wants/containai-docker.service /usr/bin/sysbox-runc",
        "systemctl daemon-reload",
        "find /var/lib/containai-docker -mindepth 1 -maxdepth 1 -exec rm -rf {} +",
        f"rm -rf {LAB_CHECKOUT} && mkdir -p {LAB_CHECKOUT}",
        f"tar -xzf /tmp/checkout.tar.gz -C {LAB_CHECKOUT} && rm -f /tmp/checkout.tar.gz",
        f"rm -rf /tmp/{WHEELHOUSE} && tar -xf /tmp/{WHEELHOUSE}.tar -C /tmp && rm -f /tmp/{WHEELHOUSE}.tar",
        f"cd {LAB_CHECKOUT}",
        "echo \"==> in lab host $(hostname): PID 1 is $(ps -o comm= -p 1), $(. /etc/os-release; echo $PRETTY_NAME)\"",
        # pip offline from the wheelhouse, for bootstrap and for the tests that run pip
        f"export PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/{WHEELHOUSE} PIP_CONSTRAINT=/tmp/constraints.txt",
        "./bootstrap.sh deps",
        f"mkdir -p {LAB_ROOT_SOURCE} {LAB_ROOT_IN_HOST}",
        f"mountpoint -q {LAB_ROOT_IN_HOST} || mount --bind {LAB_ROOT_SOURCE} {LAB_ROOT_IN_HOST}",
        f"mkdir -p {LAB_ROOT_IN_HOST}/tmp",
        f"printf '==> python -m pytest %s\\n' {shlex.quote(pytest)}",
        f"exec systemd-run --pipe --wait --quiet --collect -p WorkingDirectory={LAB_CHECKOUT} {env_flags} "
        f".venv/bin/python -m pytest -p no:cacheprovider {pytest} </dev/null",
    ])


def run_tiers_in_lab(name: str, pytest_args: list[str], keep: bool = False) -> int:
    """Bring up lab host ``name``, copy this checkout in, install it with ./bootstrap.sh deps (Python
    packages of the versions of this venv, downloaded on this side) and run pytest with ``pytest_args``
    there; the exit status of pytest."""
    import tarfile
    import tempfile

    from ops.lab import hosts
    from ops.lab.engine import LAB_ROOT, ensure_engine
    from ops.lab.image import ensure_lab_image

    engine = ensure_engine()
    image = ensure_lab_image(engine)
    lima_home = lab_tasks._lima_home("")
    index = hosts.reserve(name, owner_pid=None if keep else os.getpid())
    with tempfile.TemporaryDirectory(prefix="cai-test-in-lab-") as tmp:
        work = Path(tmp)
        try:
            print(f"==> lab host {name}: starting (systemd as PID 1)", flush=True)
            host = hosts.up(name, index, engine, lima_home, sysbox_version=None, wait_for_engine=False,
                            image=image)
            freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                                    capture_output=True, text=True, check=True).stdout
            (work / "constraints.txt").write_text(freeze)
            print("==> downloading the Python packages for the lab host", flush=True)
            wheels = wheelhouse(LAB_ROOT / WHEELHOUSE, work / "constraints.txt")
            with tarfile.open(work / f"{WHEELHOUSE}.tar", "w") as tar:
                tar.add(wheels, arcname=WHEELHOUSE)
            tarball = checkout_tar(work / "checkout.tar.gz")
            conn = hosts.connection(host)
            try:
                conn.put(str(tarball), remote="/tmp/checkout.tar.gz")
                conn.put(str(work / "constraints.txt"), remote="/tmp/constraints.txt")
                conn.put(str(work / f"{WHEELHOUSE}.tar"), remote=f"/tmp/{WHEELHOUSE}.tar")
                (work / "run.sh").write_text(in_lab_script(pytest_args) + "\n")
                conn.put(str(work / "run.sh"), remote="/tmp/test-in-lab.sh")
                result = conn.run("bash /tmp/test-in-lab.sh", warn=True, hide=False, pty=False, in_stream=False)
                return int(result.exited)
            finally:
                conn.close()
        finally:
            if keep:
                print(f"==> lab host {name} stays up: ssh -F {Path(lima_home) / name / 'ssh.config'} lima-{name}; "
                      f"remove it with: inv lab.down --name {name}")
            else:
                hosts.down(name, engine)


@task(
    help={
        "name": "lab host name (default test-in-lab)",
        "marker": "pytest -m expression (default: the unit and integration tiers)",
        "k": "pytest -k expression",
        "x": "stop at the first failure",
        "keep": "leave the lab host up afterwards",
    },
)
@cli_errors
def test_in_lab(c: Any, name: str = "test-in-lab", marker: str = "unit or integration", k: str = "",
                x: bool = False, keep: bool = False) -> None:
    """Run test tiers inside a lab host, where PID 1 is systemd (a fresh Debian, set up by bootstrap)."""
    args = ["-q", "-m", marker]
    if k:
        args += ["-k", k]
    if x:
        args.append("-x")
    code = run_tiers_in_lab(name, args, keep=keep)
    if code:
        raise Exit(f"error: the tests in lab host {name} exited {code}", code=code)


ns: Collection = build_namespace()
ns.add_task(test)
ns.add_task(lint)
ns.add_task(test_in_lab)
# the lab is a development tool: `inv lab.*` from a checkout, never in the installed `cai-ops`
ns.add_collection(Collection.from_module(lab_tasks), name="lab")
