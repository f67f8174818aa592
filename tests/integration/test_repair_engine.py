"""Ownership repair on a real engine: damage made for real, adversarial trees, the real CLI.

Every test uses its own management label (``cai.label``) so that ``--all`` only ever sees the
containers of this test on the shared lab engine.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DATA_ROOT = "/var/lib/cai-lab/docker"
NOBODY = 65534


@dataclass
class Lab:
    """One test's corner of the lab engine."""

    docker_host: str
    image: str
    client: Any
    label_key: str
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    prefix: str = ""

    @property
    def label(self) -> str:
        return f"{self.label_key}=true"

    def name(self, what: str) -> str:
        return f"{self.prefix}-{what}"

    def container(
        self,
        what: str,
        volumes: dict[str, str],
        managed: bool = True,
        start: bool = True,
        user: str | None = None,
        command: list[str] | None = None,
    ) -> Any:
        name = self.name(what)
        for vol in volumes:
            if vol not in self.volumes:
                self.volumes.append(vol)
        self.containers.append(name)
        labels = {self.label_key: "true"} if managed else {"other": "x"}
        kwargs: dict[str, Any] = dict(
            name=name,
            command=command or ["sleep", "600"],
            labels=labels,
            network_mode="none",
            volumes={v: {"bind": path, "mode": "rw"} for v, path in volumes.items()},
            user=user or "",
        )
        if start:
            return self.client.containers.run(self.image, detach=True, **kwargs)
        return self.client.containers.create(self.image, **kwargs)

    def vol_path(self, vol: str) -> Path:
        return Path(DATA_ROOT) / "volumes" / vol / "_data"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            INVOKE_CAI_DATA_ROOT=DATA_ROOT,
            INVOKE_CAI_DOCKER_HOST=self.docker_host,
            INVOKE_CAI_LABEL=self.label,
            COLUMNS="200",
        )
        env.pop("INVOKE_CAI_PLATFORM", None)
        env.update(extra)
        return env

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "invoke", "-r", str(REPO), "repair", *args],
            cwd=REPO, env=self.env(**extra), capture_output=True, text=True, timeout=300,
        )

    def ctx(self) -> Any:
        import invoke

        return invoke.Context(config=invoke.Config(overrides={"cai": {
            "data_root": DATA_ROOT, "docker_host": self.docker_host, "label": self.label, "platform": "",
        }}))


@pytest.fixture
def lab(lab_engine: str, tiny_image: str) -> Iterator[Lab]:
    import docker

    client = docker.DockerClient(base_url=lab_engine, timeout=120)
    tag = uuid.uuid4().hex[:8]
    lab = Lab(lab_engine, tiny_image, client, f"t-repair-{tag}.managed", prefix=f"t-repair-{tag}")
    try:
        yield lab
    finally:
        for name in lab.containers:
            with contextlib.suppress(Exception):
                client.api.remove_container(name, force=True)
        for vol in lab.volumes:
            with contextlib.suppress(Exception):
                client.api.remove_volume(vol, force=True)
        client.close()


def owners(root: Path) -> dict[bytes, tuple[int, int]]:
    """Every entry under root (links not followed) -> (uid, gid)."""
    out = {}
    broot = os.fsencode(str(root))
    for dirpath, dirnames, filenames in os.walk(broot):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, broot)] = (st.st_uid, st.st_gid)
    st = os.lstat(broot)
    out[b"."] = (st.st_uid, st.st_gid)
    return out


def exec_ok(container: Any, script: str) -> None:
    code, out = container.exec_run(["sh", "-c", script])
    assert code == 0, out


def assert_no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def test_damage_made_inside_and_on_host_is_repaired(lab: Lab) -> None:
    vol = lab.name("data")
    c = lab.container("agent", {vol: "/data"})
    exec_ok(c, "mkdir -p /data/src/deep/er /data/cache && cd /data && "
               "touch src/a src/deep/b src/deep/er/c cache/x rootfile gidonly && "
               "ln -s src/a link && chown -h 65534:65534 link && "
               "chown -R 65534:65534 src cache && chown 0:65534 gidonly && chown 0:0 rootfile")
    host = lab.vol_path(vol)
    (host / "hostdamage").write_text("x")
    os.chown(host / "hostdamage", NOBODY, NOBODY)
    os.chown(host, NOBODY, 1000)  # the volume root itself
    before = owners(host)
    assert before[b"src/deep/er/c"] == (NOBODY, NOBODY)

    dry = lab.cli("--all", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert owners(host) == before, "--dry-run changed something"
    assert f"volume {vol} ({lab.name('agent')}): would repair 12 of 13 entries" in dry.stdout
    assert "would chown" in dry.stdout

    proc = lab.cli("--all")
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)
    assert "repaired 12 to 1000:1000 (id agent (running container))" in proc.stdout
    after = owners(host)
    assert not [p for p, ids in after.items() if NOBODY in ids]
    assert after[b"rootfile"] == (0, 0)
    assert after[b"gidonly"] == (0, 1000)
    assert after[b"."] == (1000, 1000)
    assert after[b"link"] == (1000, 1000)
    # seen from inside the container too
    code, out = c.exec_run(["stat", "-c", "%u:%g", "/data/src/deep/er/c"])
    assert out.decode().strip() == "1000:1000"
    # nothing left: a second run repairs nothing
    again = lab.cli("--container", lab.name("agent"))
    assert again.returncode == 0 and "repaired 0" in again.stdout


def test_links_out_of_the_volume_are_never_followed(lab: Lab, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    for p in (outside / "file", outside / "dir" / "f1", outside / "dir" / "f2"):
        p.write_text("secret")
        os.chown(p, NOBODY, NOBODY)
    os.chown(outside / "dir", NOBODY, NOBODY)
    outside_before = owners(outside)
    vol = lab.name("links")
    lab.container("agent", {vol: "/data"})
    host = lab.vol_path(vol)
    os.symlink(outside / "file", host / "to-file")
    os.symlink(outside / "dir", host / "to-dir")
    os.lchown(host / "to-dir", NOBODY, NOBODY)
    os.mkdir(host / "sub")
    os.symlink("../../../../../../../..", host / "sub" / "up")
    os.lchown(host / "sub" / "up", NOBODY, NOBODY)

    proc = lab.cli("--all")
    assert proc.returncode == 0, proc.stderr
    assert owners(outside) == outside_before
    assert os.lstat(host / "to-dir")[4:6] == (1000, 1000)  # the link's own owner (lchown semantics)
    assert os.lstat(host / "to-file")[4:6] == (0, 0)  # not damaged: untouched
    assert os.lstat(host / "sub" / "up")[4:6] == (1000, 1000)
    assert os.stat("/")[4:6] == (0, 0)


def test_a_tmpfs_mounted_inside_a_volume_is_not_entered(lab: Lab) -> None:
    vol = lab.name("mnt")
    lab.container("agent", {vol: "/data"})
    host = lab.vol_path(vol)
    (host / "mnt").mkdir()
    (host / "mine").write_text("x")
    os.chown(host / "mine", NOBODY, NOBODY)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(host / "mnt")], check=True)
    try:
        (host / "mnt" / "other").write_text("x")
        os.chown(host / "mnt" / "other", NOBODY, NOBODY)
        os.chown(host / "mnt", NOBODY, NOBODY)
        proc = lab.cli("--container", lab.name("agent"))
        assert proc.returncode == 0, proc.stderr
        assert "mount point (not entered): 1" in proc.stdout
        assert os.lstat(host / "mnt" / "other")[4:6] == (NOBODY, NOBODY)
        assert os.lstat(host / "mnt")[4:6] == (NOBODY, NOBODY)
        assert os.lstat(host / "mine")[4:6] == (1000, 1000)
    finally:
        subprocess.run(["umount", str(host / "mnt")], check=True)


def test_directory_swapped_for_a_symlink_during_the_walk(lab: Lab, tmp_path: Path) -> None:
    """A racing thread swaps a damaged directory (and a file) for symlinks to the outside while
    repairs run again and again; nothing outside ever changes."""
    from ops.repair.scope import open_data_root, open_volume
    from ops.repair.walk import WalkOptions, walk

    outside = tmp_path / "outside"
    (outside / "d").mkdir(parents=True)
    for i in range(20):
        (outside / "d" / f"f{i}").write_text("x")
    (outside / "file").write_text("x")
    for p in [outside, outside / "d", outside / "file", *(outside / "d").iterdir()]:
        os.chown(p, NOBODY, NOBODY)
    outside_before = owners(outside)

    vol = lab.name("race")
    lab.container("agent", {vol: "/data"})
    host = lab.vol_path(vol)

    def damage() -> None:
        for dirpath, dirnames, filenames in os.walk(host):
            for n in dirnames + filenames:
                os.lchown(os.path.join(dirpath, n), NOBODY, NOBODY)

    work = host / "work"
    (work / "inner").mkdir(parents=True)
    for i in range(30):
        (work / f"f{i}").write_text("x")
        (work / "inner" / f"g{i}").write_text("x")
    (host / "victim").write_text("x")
    damage()

    stop = threading.Event()
    swaps = [0]

    def racer() -> None:
        while not stop.is_set():
            try:
                os.rename(work, host / "work.real")
                os.symlink(outside / "d", work)
                os.rename(host / "victim", host / "victim.real")
                os.symlink(outside / "file", host / "victim")
                time.sleep(0)
                os.unlink(work)
                os.rename(host / "work.real", work)
                os.unlink(host / "victim")
                os.rename(host / "victim.real", host / "victim")
                swaps[0] += 1
            except FileNotFoundError:
                pass

    thread = threading.Thread(target=racer, daemon=True)
    thread.start()
    repaired = 0
    try:
        for i in range(150):
            volumes_fd = open_data_root(DATA_ROOT)
            fd = open_volume(volumes_fd, DATA_ROOT, vol)
            os.close(volumes_fd)
            try:
                stats = walk(fd, WalkOptions(uid=1000, gid=1000, apply=True, workers=1 + i % 4))
            finally:
                os.close(fd)
            repaired += stats.repaired
            if i % 10 == 0:
                damage_with_retry(damage)
        for _ in range(3):  # the real CLI under the same race
            proc = lab.cli("--all")
            assert proc.returncode in (0, 1), proc.stderr
            assert_no_traceback(proc)
    finally:
        stop.set()
        thread.join(10)
    assert swaps[0] > 50, "the racer did not get to run"
    assert repaired > 0
    assert owners(outside) == outside_before


def damage_with_retry(fn: Callable[[], None]) -> None:
    for _ in range(20):
        try:
            fn()
            return
        except FileNotFoundError:
            continue


def test_names_with_newlines_and_invalid_utf8(lab: Lab) -> None:
    vol = lab.name("names")
    lab.container("agent", {vol: "/data"})
    host = os.fsencode(str(lab.vol_path(vol)))
    names = [b"new\nline", b"latin1-\xe9\xff", b"dir\n\xfe", b"-rf", b" space "]
    for n in names:
        p = host + b"/" + n
        if n.startswith(b"dir"):
            os.mkdir(p)
            open(p + b"/in\nside\x80", "w").close()
            os.chown(p + b"/in\nside\x80", NOBODY, NOBODY)
        else:
            open(p, "w").close()
        os.chown(p, NOBODY, NOBODY)
    dry = lab.cli("--all", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would repair 6 of 7 entries" in dry.stdout
    # escaped, one example per line, the first five by name (the same whichever worker finished first)
    assert dry.stdout.splitlines()[1:] == [
        f"  would chown {name} [{kind}] 65534:65534 -> 1000:1000"
        for name, kind in ((" space ", "file"), ("-rf", "file"), ("dir\\n\\xfe", "dir"),
                           ("dir\\n\\xfe/in\\nside\\x80", "file"), ("latin1-\\xe9\\xff", "file"))]
    proc = lab.cli("--all")
    assert proc.returncode == 0, proc.stderr
    for n in [*names, b"dir\n\xfe/in\nside\x80"]:
        assert os.lstat(host + b"/" + n)[4:6] == (1000, 1000), n


def test_unmanaged_and_orphan_volumes_are_untouched(lab: Lab) -> None:
    managed_vol, unmanaged_vol, orphan_vol = lab.name("m"), lab.name("u"), lab.name("o")
    lab.container("managed", {managed_vol: "/data"})
    lab.container("unmanaged", {unmanaged_vol: "/data"}, managed=False)
    lab.client.volumes.create(orphan_vol)
    lab.volumes.append(orphan_vol)
    for vol in (managed_vol, unmanaged_vol, orphan_vol):
        p = lab.vol_path(vol) / "f"
        p.write_text("x")
        os.chown(p, NOBODY, NOBODY)
    proc = lab.cli("--all")
    assert proc.returncode == 0, proc.stderr
    assert os.lstat(lab.vol_path(managed_vol) / "f")[4:6] == (1000, 1000)
    assert os.lstat(lab.vol_path(unmanaged_vol) / "f")[4:6] == (NOBODY, NOBODY)
    assert os.lstat(lab.vol_path(orphan_vol) / "f")[4:6] == (NOBODY, NOBODY)
    assert unmanaged_vol not in proc.stdout and orphan_vol not in proc.stdout

    refused = lab.cli("--container", lab.name("unmanaged"))
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("error: container") and "not managed" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert os.lstat(lab.vol_path(unmanaged_vol) / "f")[4:6] == (NOBODY, NOBODY)


def _put_passwd(container: Any, text: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("passwd")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    assert container.put_archive("/etc", buf.getvalue())


def test_stopped_container_repaired_to_its_agent_ids_without_starting(lab: Lab) -> None:
    vol = lab.name("stopped")
    c = lab.container("agent", {vol: "/data"}, command=["sh", "-c", "mkdir -p /data/w && touch /data/w/f"])
    c.wait(timeout=60)
    _put_passwd(c, "root:x:0:0:root:/root:/bin/sh\nagent:x:1234:1234:agent:/home/agent:/bin/sh\n")
    host = lab.vol_path(vol)
    for p in (host / "w", host / "w" / "f"):
        os.chown(p, NOBODY, NOBODY)
    c.reload()
    started_at = c.attrs["State"]["StartedAt"]
    assert c.status == "exited"

    proc = lab.cli("--container", lab.name("agent"))
    assert proc.returncode == 0, proc.stderr
    assert "1234:1234 (/etc/passwd entry agent (archive))" in proc.stdout
    assert os.lstat(host / "w")[4:6] == (1234, 1234)
    assert os.lstat(host / "w" / "f")[4:6] == (1234, 1234)
    c.reload()
    assert c.status == "exited" and c.attrs["State"]["StartedAt"] == started_at


def test_numeric_config_user_and_override(lab: Lab) -> None:
    vol = lab.name("user")
    lab.container("agent", {vol: "/data"}, user="2345:3456")
    f = lab.vol_path(vol) / "f"
    f.write_text("x")
    os.chown(f, NOBODY, NOBODY)
    proc = lab.cli("--all")
    assert proc.returncode == 0, proc.stderr
    assert "2345:3456 (Config.User)" in proc.stdout
    assert os.lstat(f)[4:6] == (2345, 3456)
    os.chown(f, NOBODY, NOBODY)
    proc = lab.cli("--all", "--uid", "4000", "--gid", "4001")
    assert proc.returncode == 0, proc.stderr
    assert os.lstat(f)[4:6] == (4000, 4001)


def test_unknown_user_falls_back_to_1000_with_a_warning(lab: Lab) -> None:
    vol = lab.name("nouser")
    c = lab.container("agent", {vol: "/data"}, command=["true"])
    c.wait(timeout=60)
    _put_passwd(c, "root:x:0:0:root:/root:/bin/sh\n")
    f = lab.vol_path(vol) / "f"
    f.write_text("x")
    os.chown(f, NOBODY, NOBODY)
    proc = lab.cli("--all")
    assert proc.returncode == 0, proc.stderr
    assert f"warning: container {lab.name('agent')}: cannot tell the uid/gid" in proc.stderr
    assert os.lstat(f)[4:6] == (1000, 1000)


def test_a_volume_path_that_is_a_symlink_stops_everything(lab: Lab, tmp_path: Path) -> None:
    good, bad = lab.name("a-good"), lab.name("b-bad")
    lab.container("agent", {good: "/data", bad: "/other"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("x")
    os.chown(outside / "f", NOBODY, NOBODY)
    (lab.vol_path(good) / "f").write_text("x")
    os.chown(lab.vol_path(good) / "f", NOBODY, NOBODY)
    real = lab.vol_path(bad).with_name("_data.real")
    os.rename(lab.vol_path(bad), real)
    os.symlink(outside, lab.vol_path(bad))
    try:
        proc = lab.cli("--all")
        assert proc.returncode == 1
        assert_no_traceback(proc)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "is a symlink" in lines[0], proc.stderr
        assert os.lstat(outside / "f")[4:6] == (NOBODY, NOBODY)
        assert os.lstat(lab.vol_path(good) / "f")[4:6] == (NOBODY, NOBODY), "changed before refusing"
    finally:
        os.unlink(lab.vol_path(bad))
        os.rename(real, lab.vol_path(bad))


def test_bad_input_one_line_and_exit_codes(lab: Lab, tmp_path: Path) -> None:
    lab.container("agent", {lab.name("v"): "/data"})
    (tmp_path / "volumes").mkdir()
    cases: list[tuple[tuple[str, ...], dict[str, str], int, str]] = [
        ((), {}, 1, "error: give exactly one of --all or --container NAME"),
        (("--all", "--container", lab.name("agent")), {}, 1, "error: give exactly one of"),
        (("--container", lab.name("nope")), {}, 1, f"error: no container named '{lab.name('nope')}'"),
        (("--all",), {"INVOKE_CAI_DOCKER_HOST": "unix:///run/cai-nothing.sock"}, 1,
         "error: engine at unix:///run/cai-nothing.sock is unreachable"),
        (("--all", "--uid", "5"), {}, 1, "error: --uid and --gid go together"),
        (("--all", "--uid", "x", "--gid", "1"), {}, 1, "error: --uid 'x' is not a whole number id"),
        (("--all",), {"INVOKE_CAI_DATA_ROOT": str(tmp_path)}, 1,
         f"error: cai.data_root is {tmp_path} but the engine's data root is /var/lib/cai-lab/docker"),
    ]
    for args, env, code, first in cases:
        proc = lab.cli(*args, **env)
        assert proc.returncode == code, (args, proc.stdout, proc.stderr)
        assert_no_traceback(proc)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(first), (args, proc.stderr)

    # a Mac repairs through its Lima VM (cai.lima_vm): the flags are judged first, then the VM is named
    lima = tmp_path / "lima"
    lima.mkdir()
    mac_env = {"INVOKE_CAI_PLATFORM": "macos", "INVOKE_CAI_LIMA_HOME": str(lima)}
    for args, first in [(("--all",), "error: Lima VM 'containai-docker' not found"),
                        ((), "error: give exactly one of --all or --container NAME"),
                        (("--all", "--uid", "nope", "--gid", "1"), "error: --uid 'nope' is not a whole number id"),
                        (("--all", "--target", "lima:other"), "error: Lima VM 'other' not found")]:
        mac = lab.cli(*args, **mac_env)
        assert mac.returncode == 1 and not mac.stdout, (args, mac.stdout, mac.stderr)
        assert_no_traceback(mac)
        lines = mac.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(first), (args, mac.stderr)
        assert "not supported" not in mac.stderr


def test_no_scope_means_all_for_the_doctor_path(lab: Lab) -> None:
    """``run_repair(default_all=True)`` (what ``inv doctor --repair`` passes): no flag means all."""
    from ops.errors import ConfigError
    from ops.repair.run import run_repair

    vol = lab.name("all")
    lab.container("agent", {vol: "/data"}, user="1000:1000")
    f = lab.vol_path(vol) / "f"
    f.write_text("x")
    os.chown(f, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match="exactly one of --all or --container"):
        run_repair(lab.ctx())
    assert run_repair(lab.ctx(), dry_run=True, default_all=True) == 0
    assert os.lstat(f)[4:6] == (NOBODY, NOBODY)
    assert run_repair(lab.ctx(), default_all=True) == 0
    assert os.lstat(f)[4:6] == (1000, 1000)
    with pytest.raises(ConfigError, match="exactly one of"):
        run_repair(lab.ctx(), all=True, container=lab.name("agent"), default_all=True)


def test_not_root_and_missing_data_root_in_process(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks that depend on who and where we are, driven through run_repair in-process."""
    from ops.errors import NotFoundError, OpsError
    from ops.repair import core
    from ops.repair.run import run_repair

    monkeypatch.setattr(core, "in_container", lambda: False)
    ctx = lab.ctx()
    ctx.config.cai.data_root = "/nonexistent/cai-data-root"
    with pytest.raises(NotFoundError, match="does not exist"):
        run_repair(ctx, all=True)
    monkeypatch.setattr(core, "in_container", lambda: True)
    assert run_repair(ctx, all=True) == 0  # in a container without the data root: not supported
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(OpsError, match="needs root"):
        run_repair(lab.ctx(), all=True)


def test_doctor_findings_damage_and_taint(lab: Lab) -> None:
    from ops.engine import Engine
    from ops.repair import doctor_findings
    from ops.tasks._common import cfg

    vol = lab.name("doc")
    c = lab.container("agent", {vol: "/data"})
    clean = lab.container("clean", {})
    exec_ok(c, "mkdir -p /usr/bin && touch /usr/bin/sudo && chown 65534:65534 /usr/bin/sudo && "
               "mkdir /data/d && cd /data/d && for i in $(seq 1 60); do touch f$i; done && "
               "chown -R 65534:65534 /data/d")
    exec_ok(clean, "mkdir -p /usr/bin && touch /usr/bin/sudo && chown 0:0 /usr/bin/sudo")
    conf = cfg(lab.ctx())
    engine = Engine.connect(lab.docker_host, lab.label)
    try:
        found = doctor_findings(engine, conf, "local", "linux")
        damaged = [f for f in found if f.code == "ownership.damaged"]
        assert len(damaged) == 1 and damaged[0].severity == "warning"
        assert "at least 20 entries" in damaged[0].message and vol in damaged[0].message
        assert damaged[0].hint.startswith(f"inv repair --container {lab.name('agent')}")
        tainted = [f for f in found if f.code == "rootfs.tainted"]
        assert [f.data["container"] for f in tainted] == [lab.name("agent")]
        # read through the archive API (the tar header only), running or stopped: nothing runs in it
        assert tainted[0].data["source"] == "archive" and "cai run --fresh" in tainted[0].hint
        c.stop(timeout=1)
        clean.stop(timeout=1)
        found = doctor_findings(engine, conf, "local", "linux")
        tainted = [f for f in found if f.code == "rootfs.tainted"]
        assert [(f.data["container"], f.data["source"]) for f in tainted] == [(lab.name("agent"), "archive")]
        assert lab.client.containers.get(c.id).status == "exited"
        assert os.lstat(lab.vol_path(vol) / "d" / "f1")[4:6] == (NOBODY, NOBODY), "doctor changed something"
    finally:
        engine.close()


# --- safety under attack and failure -----------------------------------------------------------------

#: fchownat's system call number (what /proc/PID/syscall shows while a task is inside it).
FCHOWNAT_NR = {"x86_64": 260, "aarch64": 55}


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _task_in_syscall(root: int, nr: int) -> bool:
    """True when a task of ``root`` or its descendants is stopped inside system call ``nr``."""
    for pid in _descendants(root):
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/syscall") as fh:
                    if fh.read().split(" ", 1)[0] == str(nr):
                        return True
            except OSError:
                continue
    return False


@pytest.mark.parametrize("victim_links", [1, 2], ids=["one-name", "two-names"])
def test_the_inode_checked_is_the_inode_changed_when_a_name_is_swapped(
    lab: Lab, tmp_path: Path, victim_links: int
) -> None:
    """The owner-change system call is held for 2 s by strace (the real syscall, in the real CLI);
    meanwhile a hard link of a root-owned 0600 file is renamed onto the damaged name. The file the walk
    checked is the one that changes; the root-owned file stays root's. (A damaged file with two names
    takes the walk's careful path for hard links, one name its batch path: both are held.)"""
    nr = FCHOWNAT_NR.get(os.uname().machine)
    assert nr is not None, f"no fchownat number known for {os.uname().machine}"
    vol = lab.name("swap")
    lab.container("agent", {vol: "/data"}, user="1000:1000")
    host = lab.vol_path(vol)
    secret = host.parent / "secret"  # outside _data, on the same mount (hard links cannot cross mounts)
    secret.write_text("root only")
    os.chmod(secret, 0o600)
    os.link(secret, host / ".held")  # the agent's hard link, waiting to be renamed
    victim = host / "victim"
    victim.write_text("agent data")
    os.chown(victim, NOBODY, NOBODY)
    if victim_links == 2:
        (host / "keep").mkdir()
        os.link(victim, host / "keep" / "victim-too")
    victim_fd = os.open(victim, os.O_RDONLY)
    log = tmp_path / "strace.log"
    proc = subprocess.Popen(
        ["strace", "-f", "-qq", "-o", str(log), "-e", "trace=fchownat",
         "-e", "inject=fchownat:delay_enter=2000000",
         sys.executable, "-m", "invoke", "-r", str(REPO), "repair", "--container", lab.name("agent")],
        cwd=REPO, env=lab.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _task_in_syscall(proc.pid, nr):
            assert proc.poll() is None, f"repair ended before changing an owner: {proc.communicate()}"
            assert time.monotonic() < deadline, "the walk never reached fchownat"
            time.sleep(0.01)
        os.rename(host / ".held", victim)  # the swap, while the owner change is held
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        assert proc.returncode == 0, (out, err)
        assert os.stat(secret)[4:6] == (0, 0), "the root-owned file swapped in was given away"
        assert os.stat(secret).st_mode & 0o777 == 0o600
        assert os.fstat(victim_fd)[4:6] == (1000, 1000), "the entry that was checked was not repaired"
        # two names: the other name's worker may look at the same inode while the first change is held
        # (by then it has one name left) and change it too; the same inode, counted once per worker
        assert "repaired 1 " in out or (victim_links == 2 and "repaired 2 " in out), out
    finally:
        os.close(victim_fd)


def test_a_bind_mount_inside_a_volume_is_never_entered(lab: Lab, tmp_path: Path) -> None:
    """``mount --bind /srv/x <volume>/_data/x`` from the same filesystem (st_dev cannot tell), and a
    volume whose ``_data`` itself is a bind mount: nothing outside the volumes changes."""
    outside = tmp_path / "srv-x"
    (outside / "deep").mkdir(parents=True)
    for p in (outside / "f", outside / "deep" / "g"):
        p.write_text("host data")
    for p in (outside, outside / "f", outside / "deep", outside / "deep" / "g"):
        os.chown(p, NOBODY, NOBODY)
    outside_before = owners(outside)
    vol, mounted = lab.name("bind-in"), lab.name("bind-data")
    lab.container("agent", {vol: "/data", mounted: "/other"})
    host = lab.vol_path(vol)
    (host / "x").mkdir()
    (host / "mine").write_text("x")
    os.chown(host / "mine", NOBODY, NOBODY)
    (lab.vol_path(mounted) / "f").write_text("x")
    assert os.stat(host).st_dev == os.stat(outside).st_dev, "the test needs a same-filesystem bind mount"
    (host / "file-mount").write_text("the volume's own")
    subprocess.run(["mount", "--bind", str(outside), str(host / "x")], check=True)
    try:
        subprocess.run(["mount", "--bind", str(outside / "f"), str(host / "file-mount")], check=True)
        subprocess.run(["mount", "--bind", str(outside), str(lab.vol_path(mounted))], check=True)
        try:
            dry = lab.cli("--all", "--dry-run")
            proc = lab.cli("--all")
        finally:
            subprocess.run(["umount", str(lab.vol_path(mounted))], check=True)
            subprocess.run(["umount", str(host / "file-mount")], check=True)
    finally:
        subprocess.run(["umount", str(host / "x")], check=True)
    print(proc.stdout, proc.stderr)
    assert owners(outside) == outside_before, "files outside the volume changed"
    assert_no_traceback(proc)
    assert os.lstat(host / "mine")[4:6] == (1000, 1000)
    assert "mount point (not entered): 2" in proc.stdout, proc.stdout  # the directory and the file
    assert f"volume {mounted} ({lab.name('agent')}): skipped: " in proc.stdout, proc.stdout
    assert "is a mount point" in proc.stdout
    assert proc.returncode == 1, "a volume left unrepaired must show in the exit code"
    assert dry.returncode == 1 and f"volume {mounted}" in dry.stdout


def _no_dac(*argv: str) -> list[str]:
    """Run as root without the capabilities that bypass file permissions (so they apply, for real)."""
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--", *argv]


def test_an_unreadable_entry_mid_walk_is_one_error_and_the_rest_is_repaired(lab: Lab) -> None:
    """Permissions that deny the walker (root without CAP_DAC_*): a listable directory whose entries
    cannot be looked up, and a directory that cannot be opened, in the middle of the tree."""
    vol = lab.name("eacces")
    lab.container("agent", {vol: "/data"}, user="1000:1000")
    host = lab.vol_path(vol)
    for d in ("a", "m/locked", "m/closed", "z"):
        (host / d).mkdir(parents=True)
    damaged = ["a/1", "a/2", "m/before", "m/locked/l1", "m/locked/l2", "m/closed/c1", "m/zafter", "z/1"]
    for rel in damaged:
        (host / rel).write_text("x")
        os.chown(host / rel, NOBODY, NOBODY)
    os.chmod(host / "m" / "locked", 0o600)  # listable, not searchable
    os.chmod(host / "m" / "closed", 0o000)
    try:
        proc = subprocess.run(_no_dac(sys.executable, "-m", "invoke", "-r", str(REPO), "repair", "--container",
                                      lab.name("agent")),
                              cwd=REPO, env=lab.env(), capture_output=True, text=True, timeout=300)
    finally:
        os.chmod(host / "m" / "locked", 0o755)
        os.chmod(host / "m" / "closed", 0o755)
    assert_no_traceback(proc)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    for rel in ("a/1", "a/2", "m/before", "m/zafter", "z/1"):
        assert os.lstat(host / rel)[4:6] == (1000, 1000), rel
    for rel in ("m/locked/l1", "m/locked/l2", "m/closed/c1"):
        assert os.lstat(host / rel)[4:6] == (NOBODY, NOBODY), rel
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    for rel in ("m/locked/l1", "m/locked/l2", "m/closed"):
        assert any(f": {rel}: " in line and "Permission denied" in line for line in warnings), (rel, proc.stderr)
    assert "repaired 5 " in proc.stdout, proc.stdout
