"""The rollback copy of an update that was killed (SIGKILL of ``inv`` and its ssh, as a closed laptop lid
or a dropped connection ends it) after it replaced files and before the new engine answered: it is
never replaced by a later run, ``inv doctor`` shows it, and ``inv update --resume`` settles it (put back
when the engine never ran on the new files, dropped when the engine answers on them, put back with the
previous engine restarted when it does not).

Each lab host (named ``rbk-...``) starts as an older install, as in ``test_update_safety.py``: the lab's
own unit (drifted), an older dockerd bundle and the managed containers m1, m2.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _update_lab import install_old_bundle, inv, popen_inv, run_container, sh, wait_engine_answers
from test_update_safety import INSTALLED, MANAGED, STATE, UNIT, broken_bundle, journal, one_line, running

from ops.lab import NEW_DOCKERD, OLD_DOCKERD, OLD_SYSBOX
from ops.lab.bundle import build_sysbox_deb, bundle_dir, docker_tarball

pytestmark = pytest.mark.lab
COPY = f"{STATE}/rollback"
#: Every file of the rollback copy with its digest (what must never change under a later run).
COPY_STATE = f"cd {COPY} 2>/dev/null && find . -type f | sort | xargs sha256sum || echo no-copy"
SLOW = "/etc/systemd/system/containai-docker.service.d/slow.conf"


@pytest.fixture
def rbk_host(lab_host: Callable[..., Any]) -> Callable[[], Any]:
    """Lab hosts named ``rbk-<hex>`` (removed at the end of the test)."""
    return lambda: lab_host(prefix="rbk")


@pytest.fixture
def older(rbk_host: Callable[[], Any], lab_image: str, tmp_path: Path) -> tuple[Any, Path, Path]:
    """An older install with m1, m2 running; (host, good bundle, bundle whose dockerd cannot start)."""
    host = rbk_host()
    tarball = docker_tarball(host, lab_image)
    install_old_bundle(host, tarball, OLD_DOCKERD)
    deb = build_sysbox_deb(OLD_SYSBOX, tmp_path / "deb")  # what the host runs: no Sysbox step
    good = bundle_dir(tmp_path / "bundle", tarball, deb)
    broken = broken_bundle(tarball, deb, tmp_path / "broken")
    for name in MANAGED:
        run_container(host, name, managed=True, delay=20)  # each takes 20 s to stop
    return host, good, broken


def kill_when(host: Any, bundle: Path, ready: Callable[[], bool], args: tuple[str, ...] = ("--stop-containers",)
              ) -> None:
    """Start ``inv update`` and SIGKILL it (its process group: inv and its ssh) once ``ready()`` holds."""
    proc = popen_inv(["update", "--target", host.target, *args], host, bundle)
    try:
        deadline = time.monotonic() + 300
        while not ready():
            assert proc.poll() is None, f"update ended before it could be killed: {proc.communicate()[0]}"
            assert time.monotonic() < deadline, "the update never reached the point of the kill"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def slow_engine_start(host: Any, seconds: int) -> None:
    """A drop-in that makes every start of the engine take ``seconds`` more (the update leaves it alone)."""
    sh(host, f"mkdir -p {Path(SLOW).parent} && printf '[Service]\\nExecStartPre=/bin/sleep {seconds}\\n' > {SLOW} "
             "&& systemctl daemon-reload")


def doctor_codes(host: Any, bundle: Path) -> list[str]:
    r = inv(["doctor", "--target", host.target, "--json"], host, bundle)
    return [f["code"] for f in json.loads(r.stdout)["findings"]]


def test_killed_before_the_engine_restarted_the_previous_install_is_kept(
        older: tuple[Any, Path, Path]) -> None:
    """Killed while the containers stop (the units were already written, the engine not yet restarted):
    the later run does not copy the new files over the copy; a failed engine start then goes back to
    the install from before the first run."""
    host, _good, broken = older
    before = sh(host, INSTALLED)
    unit_before = sh(host, f"sha256sum {UNIT}")
    kill_when(host, broken, lambda: bool(journal(host)) and sh(host, f"sha256sum {UNIT}") != unit_before
              and sh(host, f"test -d {COPY} && echo yes || true").strip() == "yes")
    assert sh(host, INSTALLED) != before  # files were replaced when it was killed
    r = inv(["update", "--target", host.target, "--resume", "--stop-containers"], host, broken)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "was not restarted since: nothing ran on the new files; putting the previous ones back" in r.stdout
    line = one_line(r)
    assert "rolled back to the previous dockerd bundle, units and daemon.json" in line, line
    assert sh(host, INSTALLED) == before  # the install from before the first run, not the killed run's files
    assert "/usr/sbin/dockerd" in sh(host, "ps -o args= -C dockerd")  # the previous engine
    assert running(host) == list(MANAGED) and journal(host) == ""
    assert "no-copy" in sh(host, COPY_STATE)


def test_resume_rolls_back_when_the_engine_does_not_answer_on_the_new_files(
        older: tuple[Any, Path, Path]) -> None:
    """Killed while the engine restarts on a dockerd that cannot start: ``--resume`` restarts it once,
    then puts the copy back, restarts the previous engine, starts the containers and exits 1."""
    host, _good, broken = older
    slow_engine_start(host, 8)
    before = sh(host, INSTALLED)
    kill_when(host, broken, lambda: '"install-dockerd"' in journal(host).split('"done"')[-1]
              and sh(host, "systemctl show -p ActiveState --value containai-docker").strip() == "activating")
    assert sh(host, f"cat {COPY}/manifest").startswith("created 20")
    assert sorted(json.loads(journal(host))["containers"]) == list(MANAGED)  # stopped; the engine is down
    r = inv(["update", "--target", host.target, "--resume"], host, broken)
    assert r.returncode == 1, r.stdout + r.stderr
    line = one_line(r)
    assert line.startswith(f"error: the interrupted update on {host.target} was rolled back: "
                           "containai-docker.service did not answer on its new files ("), line
    assert "the previous dockerd bundle, units and daemon.json are back and the previous engine answers; " \
           "the update did not happen; the 2 stopped container(s) run again" in line, line
    assert "restarting it once" in r.stdout, r.stdout
    assert sh(host, INSTALLED) == before
    assert sh(host, "systemctl is-active containai-docker").strip() == "active"
    assert running(host) == list(MANAGED) and journal(host) == ""
    assert "no-copy" in sh(host, COPY_STATE)


def test_a_left_copy_is_refused_shown_by_doctor_and_dropped_when_the_new_engine_answers(
        older: tuple[Any, Path, Path]) -> None:
    """No container runs (so no journal): killed while the new engine starts. A later plain update
    refuses and leaves the copy as it is; doctor shows it; ``--resume`` drops it (the new engine answers)."""
    host, good, _broken = older
    sh(host, "docker -H unix:///var/run/containai-docker.sock stop -t 30 m1 m2 >/dev/null")
    slow_engine_start(host, 8)
    kill_when(host, good, lambda: sh(host, "cat /opt/containai/VERSION").strip() == NEW_DOCKERD
              and sh(host, "systemctl show -p ActiveState --value containai-docker").strip() == "activating", ())
    wait_engine_answers(host)  # the restart it began finishes on the host
    kept = sh(host, COPY_STATE)
    assert "./manifest" in kept and journal(host) == ""
    created = sh(host, f"sed -n 's/^created //p' {COPY}/manifest").strip()
    for extra in ([], ["--dry-run"]):
        r = inv(["update", "--target", host.target, *extra], host, good)
        assert r.returncode == 1, r.stdout + r.stderr
        assert one_line(r).startswith(f"error: a rollback copy of an interrupted update exists on {host.target} "
                                      f"(from {created}): run inv update --resume: "), r.stderr
        assert sh(host, COPY_STATE) == kept
    assert "update.rollback-left" in doctor_codes(host, good)
    r = inv(["update", "--target", host.target, "--resume"], host, good)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "answers on the files the interrupted update installed: its rollback copy was dropped" in r.stdout
    assert "no-copy" in sh(host, COPY_STATE)
    assert sh(host, "cat /opt/containai/VERSION").strip() == NEW_DOCKERD
    assert "update.rollback-left" not in doctor_codes(host, good)
