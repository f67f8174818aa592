"""The update's building blocks with real tools on this machine: the local Context (no ``put``),
tar, atomic links, the journal (written durably), the update lock (flock), privileged reads, the
rollback copy, parallel stop/start on a real dockerd, and ``inv update``'s bad input. The probes of
the host whose PID 1 is not systemd are given to the update (golden probe output), so nothing here
depends on what PID 1 of the machine running the tests is."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _cli import inv

from ops import units
from ops.config import CaiConfig
from ops.errors import OpsError
from ops.lab.bundle import build_sysbox_deb, write_sha256
from ops.targets import LocalContext
from ops.update import journal as jr
from ops.update.apply import install_dockerd, start_containers, stop_containers
from ops.update.hostio import Host

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def fake_bundle(path: Path, version: str, members: tuple[str, ...] = ("dockerd", "docker", "runc")) -> Path:
    """A Docker-static-shaped tarball (top folder docker/) of small executables."""
    path.mkdir(parents=True, exist_ok=True)
    tgz = path / f"docker-{version}.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name in members:
            data = f"#!/bin/sh\necho {name} {version}\n".encode()
            info = tarfile.TarInfo(f"docker/{name}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    write_sha256(tgz)
    return tgz


def conf(tmp_path: Path, **over: Any) -> CaiConfig:
    return CaiConfig.from_mapping({"opt_dir": str(tmp_path / "opt"), "state_dir": str(tmp_path / "state"),
                                   **over})


def test_install_dockerd_bundle_locally_with_atomic_links(tmp_path: Path) -> None:
    c = conf(tmp_path)
    host = Host(LocalContext(), "")
    try:
        install_dockerd(host, c, fake_bundle(tmp_path / "b1", "27.0.1", ("dockerd", "docker", "docker-init")),
                        "27.0.1")
        opt = tmp_path / "opt"
        assert (opt / "VERSION").read_text() == "27.0.1\n"
        assert os.readlink(opt / "bin" / "dockerd") == f"{opt}/docker/27.0.1/dockerd"
        assert subprocess.run([opt / "bin" / "dockerd"], capture_output=True, text=True).stdout == "dockerd 27.0.1\n"
        # a newer bundle without docker-init: links switch, the stale link goes, the old version stays
        install_dockerd(host, c, fake_bundle(tmp_path / "b2", "27.3.1"), "27.3.1")
        assert (opt / "VERSION").read_text() == "27.3.1\n"
        assert os.readlink(opt / "bin" / "docker") == f"{opt}/docker/27.3.1/docker"
        assert not (opt / "bin" / "docker-init").exists() and not (opt / "bin" / "docker-init").is_symlink()
        assert sorted(p.name for p in (opt / "bin").iterdir()) == ["docker", "dockerd", "runc"]
        assert not any(p.name.endswith(".cai-new") for p in (opt / "bin").iterdir())
        # a reinstall of the same version is fine
        install_dockerd(host, c, tmp_path / "b2" / "docker-27.3.1.tgz", "27.3.1")
        assert (opt / "docker" / "27.3.1" / "dockerd").is_file()
    finally:
        host.cleanup()


def test_bundle_checksum_wrong_or_missing(tmp_path: Path) -> None:
    c = conf(tmp_path)
    host = Host(LocalContext(), "")
    tgz = fake_bundle(tmp_path / "b", "27.0.1")
    tgz.with_name(tgz.name + ".sha256").write_text(f"{'0' * 64}  {tgz.name}\n")
    with pytest.raises(OpsError, match="checksum mismatch"):
        install_dockerd(host, c, tgz, "27.0.1")
    tgz.with_name(tgz.name + ".sha256").unlink()
    with pytest.raises(OpsError, match="no checksum file"):
        install_dockerd(host, c, tgz, "27.0.1")
    assert not (tmp_path / "opt").exists()


def test_bundle_without_docker_folder_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "b" / "docker-27.0.1.tgz"
    bad.parent.mkdir()
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("dockerd")
        info.size = 0
        tar.addfile(info, io.BytesIO(b""))
    write_sha256(bad)
    host = Host(LocalContext(), "")
    with pytest.raises(OpsError, match="unpacking the dockerd bundle 27.0.1 failed.*no docker/dockerd"):
        install_dockerd(host, conf(tmp_path), bad, "27.0.1")
    assert not (tmp_path / "opt" / "VERSION").exists()


def test_journal_on_the_local_host(tmp_path: Path) -> None:
    c = conf(tmp_path)
    host = Host(LocalContext(), "")
    assert jr.read(host, c) is None
    jr.write(host, c, jr.Journal("local", ("a", "b"), ("stop-containers",)))
    assert oct((tmp_path / "state" / jr.NAME).stat().st_mode & 0o777) == "0o600"
    assert jr.read(host, c).containers == ("a", "b")  # type: ignore[union-attr]
    jr.clear(host, c)
    assert jr.read(host, c) is None
    blocked = conf(tmp_path, state_dir="/proc/version/nope")
    with pytest.raises(OpsError, match="nothing was stopped"):
        jr.write(host, blocked, jr.Journal("local", ("a",), ()))


@pytest.fixture
def fleet(lab_engine: str, tiny_image: str) -> Iterator[dict[str, Any]]:
    """Four managed containers that take 1 s to exit on SIGTERM, and an unmanaged one."""
    import docker

    client = docker.DockerClient(base_url=lab_engine)
    tag = uuid.uuid4().hex[:8]
    label = f"containai.managed=t{tag}"
    made = []
    trap = "trap 'sleep 1; exit 0' TERM; while :; do sleep 0.2; done"
    for i in range(4):
        made.append(client.containers.run(tiny_image, ["sh", "-c", trap], name=f"t-update-{tag}-m{i}",
                                          labels={"containai.managed": f"t{tag}"}, network_mode="none",
                                          detach=True))
    made.append(client.containers.run(tiny_image, ["sleep", "3600"], name=f"t-update-{tag}-u",
                                      network_mode="none", detach=True))
    try:
        yield {"label": label, "host": lab_engine, "names": [c.name for c in made[:4]], "client": client,
               "unmanaged": made[4].name}
    finally:
        for c in made:
            c.remove(force=True)
        client.close()


def test_stop_and_start_managed_in_parallel(fleet: dict[str, Any], tmp_path: Path) -> None:
    c = conf(tmp_path, label=fleet["label"], stop_timeout=30)
    lines: list[str] = []
    order = stop_containers(fleet["host"], c, fleet["names"], lines.append, progress=True)
    assert sorted(order) == sorted(fleet["names"])  # the order they exited in, for the start
    client = fleet["client"]
    for name in fleet["names"]:
        attrs = client.api.inspect_container(name)
        assert attrs["State"]["Status"] == "exited" and attrs["State"]["ExitCode"] == 0
    assert client.api.inspect_container(fleet["unmanaged"])["State"]["Status"] == "running"
    assert len([line for line in lines if "stopped" in line]) == 4
    assert start_containers(fleet["host"], c, fleet["names"]) == []
    assert all(client.api.inspect_container(n)["State"]["Status"] == "running" for n in fleet["names"])
    assert start_containers(fleet["host"], c, [*fleet["names"], "t-update-nonexistent"]) == ["t-update-nonexistent"]


def test_starts_go_in_the_order_given_on_the_connection_given(fleet: dict[str, Any], tmp_path: Path) -> None:
    """The update starts the containers in the order they exited, a few at a time, on the connection
    that saw the engine answer (left open for the caller); one at a time, StartedAt follows the order."""
    from ops.engine import Engine

    c = conf(tmp_path, label=fleet["label"], stop_timeout=30)
    client = fleet["client"]
    names = fleet["names"]
    for name in names:
        client.api.stop(name, timeout=0)
    wanted = list(reversed(names))
    engine = Engine.connect(fleet["host"], fleet["label"])
    try:
        results = engine.start_all(wanted, workers=1)
        assert [r.name for r in results] == wanted and all(r.ok for r in results)
        started = sorted(names, key=lambda n: client.api.inspect_container(n)["State"]["StartedAt"])
        assert started == wanted
        for name in names:
            client.api.stop(name, timeout=0)
        assert start_containers(fleet["host"], c, wanted, engine) == []
        assert engine.ping()  # still open: the caller closes it
    finally:
        engine.close()
    assert all(client.api.inspect_container(n)["State"]["Status"] == "running" for n in names)


def test_inv_update_local_bad_input(tmp_path: Path) -> None:
    env = {"INVOKE_CAI_BUNDLE_DIR": str(tmp_path / "missing"), "INVOKE_CAI_OPT_DIR": str(tmp_path / "opt"),
           "INVOKE_CAI_STATE_DIR": str(tmp_path / "state")}
    r = inv("update", env=env)
    assert r.returncode == 1 and r.stderr.startswith("error: the bundle directory") and r.stderr.count("\n") == 1
    assert (tmp_path / "state" / "update.lock").is_file()  # taken (and released) before anything was read


GOLDEN = ROOT / "tests" / "unit" / "golden"


def new_host_answers(c: CaiConfig, os_probe: str, host_state: str) -> dict[Any, Any]:
    """An invoke ``MockContext``'s answers for a host with nothing of ContainAI installed yet (golden
    probe outputs; the platform and the host state given), in the order the patterns are tried."""
    import re

    from invoke import Result

    missing = "".join(f"\n@@CAI-FILE {p}\nmissing" for p in units.managed_paths(c)) + "\n"
    return {
        # the host layout probe: without systemd, nothing of ContainAI installed yet
        re.compile(r"^p\(\) \{ printf"): Result((GOLDEN / "layout" / "no-systemd-nothing-installed.txt").read_text()),
        re.compile(r"set -- \$\(uname -srm\); echo os="): Result(os_probe),
        re.compile(r"echo pid1=.*engine_state"): Result(host_state),
        re.compile(r"id -u; sudo -n true"): Result("0\n"),
        re.compile(r".*sysbox-runc --version"): Result((GOLDEN / "sysbox-runc" / "upstream-0.6.7.txt").read_text()
                                                       + "__rc=0\n"),
        re.compile(r"d=.*VERSION"): Result("version-missing\n"),
        re.compile(r".*@@CAI-ROLLBACK-COPY"): Result(""),  # no copy left by an interrupted run
        re.compile(r"for f in \S*update-journal"): Result(f"\n@@CAI-FILE {jr.path(c)}\nmissing\n"),
        re.compile(r"for f in "): Result(missing),
    }


def test_update_refuses_a_wsl2_host_without_systemd(tmp_path: Path) -> None:
    """The update of a WSL2 distribution whose PID 1 is not systemd stops with the wsl.conf hint and
    changes nothing. The host's probes are golden outputs of such a host, given to the real update flow
    through invoke's MockContext (it answers them and runs nothing), so the result does not depend on
    the machine running the test."""

    from invoke import Config, MockContext

    from ops.update.apply import Options, run_update

    bundle = tmp_path / "bundle"
    fake_bundle(bundle, "27.3.1")
    build_sysbox_deb("0.6.7+containai.20260101", bundle)
    c = conf(tmp_path, bundle_dir=str(bundle), platform="wsl2")
    probe = GOLDEN / "probe"
    answers = new_host_answers(c, (probe / "wsl2-no-systemd.txt").read_text(),
                               (probe / "host-state-wsl2-no-systemd.txt").read_text())
    ctx = MockContext(config=Config(overrides={"cai": {}}), run=answers, repeat=True)
    with pytest.raises(OpsError) as err:
        run_update(ctx, c, "local", Options(dry_run=True), lambda line: None)
    assert err.value.line() == ("systemd is not PID 1 in this WSL2 distribution: add [boot] systemd=true to "
                                "/etc/wsl.conf, run `wsl --shutdown` in Windows, reopen the distribution and rerun")
    commands = " ".join(call.args[0] for call in ctx.run.call_args_list)  # type: ignore[attr-defined]
    assert "uname -srm" in commands and "engine_state" in commands
    assert not any(word in commands for word in ("systemctl restart", "mv -f", "apt-get", "flock"))


def test_units_render_task(tmp_path: Path) -> None:
    out = tmp_path / "units"
    r = inv("units.render", "--out", str(out), env={"INVOKE_CAI_STOP_TIMEOUT": "60"})
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["containai-docker.service", "containai-docker-guard.service", "containai-guard", "daemon.json"])
    assert "TimeoutStopSec=90\n" in (out / "containai-docker-guard.service").read_text()
    from ops import units

    rendered = {f.name: f.text for f in units.render(CaiConfig.from_mapping({"stop_timeout": 60}))}
    assert all((out / name).read_text() == text for name, text in rendered.items())
    r = inv("units.render")
    assert r.returncode == 0 and "# ==> /etc/systemd/system/containai-docker.service" in r.stdout


# --- the update's safety pieces, with the real tools they use on a host ----------------------------------

def test_update_lock_is_exclusive_and_dies_with_its_holder(tmp_path: Path) -> None:
    from ops.targets import Target
    from ops.update import lock

    c = conf(tmp_path)
    first = lock.acquire(Target("local"), c, "", "local")
    try:
        with pytest.raises(OpsError) as busy:
            lock.acquire(Target("local"), c, "", "local")
        line = busy.value.line()
        assert line.startswith(f"another update holds the lock on local: pid {os.getpid()} of "), line
        assert "since 20" in line and "released when that update ends" in line
    finally:
        first.release()
    # the holder dies with the process that took the lock (killed, not released): the lock is free
    script = ("import sys, time; from ops.config import CaiConfig; from ops.targets import Target; "
              "from ops.update import lock; "
              f"lock.acquire(Target('local'), CaiConfig.from_mapping({{'state_dir': {str(tmp_path / 'state')!r}}}), "
              "'', 'local'); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(OpsError, match="another update holds the lock"):
            lock.acquire(Target("local"), c, "", "local")
    finally:
        proc.kill()
        proc.wait()
    lock.acquire(Target("local"), c, "", "local").release()


def test_journal_write_syncs_the_file_and_its_directory(tmp_path: Path) -> None:
    """Traced with strace: the journal's temporary file is fsync'ed, renamed over the journal, and the
    directory is fsync'ed after the rename."""
    state = tmp_path / "state"
    trace = tmp_path / "trace"
    script = ("from ops.config import CaiConfig; from ops.update import journal as jr; "
              "from ops.update.hostio import Host; from ops.targets import LocalContext; "
              f"c = CaiConfig.from_mapping({{'state_dir': {str(state)!r}}}); h = Host(LocalContext(), ''); "
              "jr.write(h, c, jr.Journal('local', ('a', 'b'), ('stop-containers',))); h.cleanup()")
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat,fsync,rename,renameat,renameat2", "-o", str(trace),
                    sys.executable, "-c", script], cwd=ROOT, check=True, capture_output=True)
    calls = trace.read_text().splitlines()
    fds: dict[str, str] = {}
    events = []
    for line in calls:
        if "openat(" in line and "= " in line and not line.rstrip().endswith("(No such file or directory)"):
            path = line.split('"')[1]
            fds[line.split()[0] + ":" + line.rsplit("= ", 1)[1].split()[0]] = path
        elif "fsync(" in line:
            fd = line.split("fsync(")[1].split(")")[0]
            events.append(("fsync", fds.get(line.split()[0] + ":" + fd, "?")))
        elif "rename" in line and jr.NAME in line:
            events.append(("rename", line.split('"')[-2]))
    new = f"{state}/.{jr.NAME}.cai-new"
    final = f"{state}/{jr.NAME}"
    assert ("fsync", new) in events and ("rename", final) in events and ("fsync", str(state)) in events, events
    assert events.index(("fsync", new)) < events.index(("rename", final)) < events.index(("fsync", str(state)))
    assert oct((state / jr.NAME).stat().st_mode & 0o777) == "0o600"


def test_files_are_read_as_root_unreadable_is_not_missing_and_modes_are_kept(tmp_path: Path) -> None:
    secret = tmp_path / "daemon.json"
    secret.write_text('{"bridge": "none"}\n')
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    root = Host(LocalContext(), "")
    states = root.read_files([str(secret), str(tmp_path / "nope")])
    assert states[str(secret)].text == '{"bridge": "none"}\n' and states[str(secret)].mode == 0o600
    assert not states[str(tmp_path / "nope")].exists and root.read_text(str(tmp_path / "nope")) is None
    # the same read as a user who cannot read the file: an error naming it, never "missing"
    nobody = Host(LocalContext(), "runuser -u nobody -- ")
    with pytest.raises(OpsError, match=f"cannot read {secret} on local host through sudo"):
        nobody.read_files([str(secret)])
    # a replaced file keeps its mode (0600 stays 0600); a script keeps its execute bits; a new file
    # gets the mode asked for
    try:
        root.write_text(str(secret), '{"bridge": "none", "hosts": []}\n', 0o644)
        script = tmp_path / "guard"
        script.write_text("#!/bin/sh\n")
        script.chmod(0o700)
        root.write_text(str(script), "#!/bin/sh\nexit 0\n", 0o755)
        root.write_text(str(tmp_path / "new.service"), "[Unit]\n", 0o644)
    finally:
        root.cleanup()
    assert secret.stat().st_mode & 0o777 == 0o600 and "hosts" in secret.read_text()
    assert script.stat().st_mode & 0o777 == 0o711
    assert (tmp_path / "new.service").stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob(".*.cai-new"))


def test_several_files_are_written_in_one_command_and_a_failure_names_its_file(tmp_path: Path) -> None:
    """The units an update writes while the containers are down go in ONE command (their content
    carried in it); each file is still written atomically, in order, and the one that fails is named.
    A file too large to carry is copied first, then installed the same way."""
    root = Host(LocalContext(), "")
    commands: list[str] = []
    real = root.run

    def counting(command: str, what: str = "", timeout: int = 60) -> tuple[int, str, str]:
        commands.append(command)
        return real(command, what, timeout)

    root.run = counting  # type: ignore[method-assign]
    a, b = tmp_path / "a" / "x.service", tmp_path / "y.conf"
    try:
        root.write_files([(str(a), "[Unit]\n$HOME '\"\n", 0o644), (str(b), "", 0o600)])
        assert len(commands) == 1
        assert a.read_text() == "[Unit]\n$HOME '\"\n" and b.read_text() == ""
        assert a.stat().st_mode & 0o777 == 0o644 and b.stat().st_mode & 0o777 == 0o600
        (tmp_path / "file").write_text("not a directory\n")
        bad = tmp_path / "file" / "z.service"
        with pytest.raises(OpsError, match=f"writing {bad} failed on local host"):
            root.write_files([(str(a), "new\n", 0o644), (str(bad), "z\n", 0o644), (str(b), "never\n", 0o600)])
        assert a.read_text() == "new\n" and b.read_text() == ""
        big = "x" * (200 * 1024) + "\n"
        root.write_files([(str(b), big, 0o600)])
        assert b.read_text() == big and b.stat().st_mode & 0o777 == 0o600
    finally:
        root.cleanup()
    assert not list(tmp_path.rglob(".*.cai-new"))


def test_a_command_cut_by_its_timeout_is_reported_as_cut(tmp_path: Path) -> None:
    from ops.update.hostio import CutError

    host = Host(LocalContext(), "")
    with pytest.raises(CutError) as cut:
        host.sh("sleep 30", what="systemctl restart containai-docker.service", timeout=1)
    assert cut.value.message == ("systemctl restart containai-docker.service was cut after 1s on local host "
                                 "(its timeout; it may still be running there)")


def test_rollback_copy_puts_links_version_and_files_back(tmp_path: Path) -> None:
    """The rollback copy and its restore, run for real on a local opt dir: links switched by a new
    bundle, a replaced file, a file that did not exist, and the new version directory all go back."""
    from ops.update import rollback as rb

    c = conf(tmp_path)
    host = Host(LocalContext(), "")
    opt = tmp_path / "opt"
    unit = tmp_path / "etc" / "engine.service"
    guard = tmp_path / "etc" / "guard.service"
    unit.parent.mkdir()
    unit.write_text("old unit\n")
    unit.chmod(0o640)
    try:
        install_dockerd(host, c, fake_bundle(tmp_path / "b1", "27.0.1", ("dockerd", "docker", "docker-init")),
                        "27.0.1")
        before = {p.name: os.readlink(p) for p in (opt / "bin").iterdir()}
        files = [str(unit), str(guard)]
        host.sh(rb.backup_script(c, files, "27.3.1"))
        install_dockerd(host, c, fake_bundle(tmp_path / "b2", "27.3.1"), "27.3.1")
        host.write_text(str(unit), "new unit\n", 0o644)
        host.write_text(str(guard), "new guard\n", 0o644)
        assert (opt / "VERSION").read_text() == "27.3.1\n"
        host.sh(rb.restore_script(c, files, "27.3.1"))
    finally:
        host.cleanup()
    assert {p.name: os.readlink(p) for p in (opt / "bin").iterdir()} == before
    assert (opt / "VERSION").read_text() == "27.0.1\n"
    assert unit.read_text() == "old unit\n" and unit.stat().st_mode & 0o777 == 0o640
    assert not guard.exists() and not (opt / "docker" / "27.3.1").exists()
    assert (opt / "docker" / "27.0.1" / "dockerd").is_file()


def test_update_commands_needs_dry_run(tmp_path: Path) -> None:
    r = inv("update", "--commands", env={"INVOKE_CAI_STATE_DIR": str(tmp_path / "state")})
    assert r.returncode == 1 and r.stderr == ("error: --commands shows what a dry run would run; it changes nothing "
                                              "on its own: add --dry-run (inv update --dry-run --commands)\n")
    assert not (tmp_path / "state").exists()  # refused before anything was read or locked


def test_dry_run_commands_of_a_new_wsl2_host(tmp_path: Path) -> None:
    """``--dry-run --commands`` through the real update flow, on a WSL2 distribution with systemd and
    nothing of ContainAI installed (its probes are golden outputs given through invoke's MockContext):
    every command of the install is listed, in order, in the text and the JSON report, and none of them
    ran (only the read-only probes did)."""

    from invoke import Config, MockContext

    from ops.update import steps as st
    from ops.update.apply import Options, run_update

    bundle = tmp_path / "bundle"
    fake_bundle(bundle, "27.3.1")
    deb = build_sysbox_deb("0.6.7+containai.20260101", bundle)
    c = conf(tmp_path, bundle_dir=str(bundle))
    answers = new_host_answers(c, (GOLDEN / "probe" / "wsl2-ubuntu.txt").read_text(),
                               "pid1=systemd\nengine_state=inactive\nengine_load=not-found\nsocket=no\n")
    ctx = MockContext(config=Config(overrides={"cai": {}}), run=answers, repeat=True)
    lines: list[str] = []
    report = run_update(ctx, c, "local", Options(dry_run=True, commands=True), lines.append)
    assert report["result"] == "dry-run"
    head = next(i for i, line in enumerate(lines) if "the commands of this update, in order" in line)
    listing = [line[2:] for line in lines[head + 1:-1]]
    assert lines[-1] == "dry run: nothing was changed"
    headings = [line for line in listing if line.startswith("# ")]
    assert [h.split(". ", 1)[1] for h in headings] == [
        "make the private staging directory on the target",
        "copy docker-27.3.1.tgz to the target and check its sha256 there",
        f"copy {deb.name} to the target, check it, simulate and download its install",
        "read the restart budget from the installed units",
        "keep a copy of what the update replaces (before anything changes)",
        "unpack the dockerd bundle 27.3.1 beside its directory (before any container stops)",
        "install dockerd bundle 27.3.1",
        next(step["summary"] for step in report["plan"]["steps"] if step["action"] == "install-sysbox"),
        "write containai-guard, daemon.json, containai-docker.service, containai-docker-guard.service",
        "systemctl daemon-reload",
        "restart sysbox.service",
        "restart containai-docker.service and wait for a ping",
        "remove the staging directory",
    ]
    assert f"put    {bundle / 'docker-27.3.1.tgz'} -> /tmp/containai-ops.XXXXXX/docker-27.3.1.tgz" in listing
    assert f"root#  {st.APT_INSTALL} -s /tmp/containai-ops.XXXXXX/{deb.name}" in listing
    assert "root#  systemctl reset-failed containai-docker.service 2>/dev/null; " \
           "systemctl restart containai-docker.service" in listing
    # the JSON report carries the same commands
    flat = [cmd["command"] for step in report["commands"] for cmd in step["commands"]]
    assert flat[0] == "mktemp -d /tmp/containai-ops.XXXXXX" and len(report["commands"]) == len(headings)
    # nothing of it ran: only the probes
    ran = " ".join(call.args[0] for call in ctx.run.call_args_list)  # type: ignore[attr-defined]
    assert not any(word in ran for word in ("mktemp", "apt-get", "systemctl restart", "tar -xzf", "flock"))
