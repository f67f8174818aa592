"""Shared fixtures: the private lab engine, the lab images and disposable systemd lab hosts.

- ``lab_engine`` (session): docker host URL of the private dockerd (started if needed).
- ``tiny_image`` (session): busybox image with users root and agent (1000:1000).
- ``lab_image`` (session): Debian bookworm with systemd, sshd, bash, sudo, Debian's docker.io.
- ``lima_home`` (function): an empty LIMA_HOME directory for Lima-format ssh.config files.
- ``lab_host`` (function): a factory ``lab_host(sysbox_version=..., wait_for_engine=...) -> LabHost``;
  every host it starts gets a unique name and loopback address and is removed after the test.

A missing real component (dockerd, debootstrap, sshd) makes these fixtures fail, never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def lab_engine() -> str:
    """The docker host URL of the shared private lab engine."""
    import shutil

    from ops.errors import OpsError
    from ops.lab.engine import ensure_engine

    if shutil.which("dockerd") is None:
        pytest.fail("dockerd is not installed: run ./bootstrap.sh deps (Debian's docker.io)", pytrace=False)
    try:
        return ensure_engine()
    except OpsError as exc:
        pytest.fail(f"the lab engine did not start: {exc.line()}", pytrace=False)


@pytest.fixture(scope="session")
def tiny_image(lab_engine: str) -> str:
    """Tag of the tiny busybox image (agent 1000:1000) on the lab engine."""
    from ops.errors import OpsError
    from ops.lab.image import ensure_tiny_image

    try:
        return ensure_tiny_image(lab_engine)
    except OpsError as exc:
        pytest.fail(f"the tiny image could not be made: {exc.line()}", pytrace=False)


@pytest.fixture(scope="session")
def lab_image(lab_engine: str) -> str:
    """Tag of the lab host image (built once per recipe; a few minutes the first time)."""
    from ops.errors import OpsError
    from ops.lab.image import ensure_lab_image

    try:
        return ensure_lab_image(lab_engine)
    except OpsError as exc:
        pytest.fail(f"the lab image could not be built: {exc.line()}", pytrace=False)


@pytest.fixture
def lima_home(tmp_path: Path) -> Path:
    """An empty LIMA_HOME for this test."""
    home = tmp_path / "lima"
    home.mkdir()
    return home


@pytest.fixture
def lab_host(lab_engine: str, lab_image: str, lima_home: Path) -> Iterator[Callable[..., Any]]:
    """Factory of lab hosts: ``host = lab_host()`` boots one (systemd as PID 1, sshd, an older
    ContainAI engine on /var/run/containai-docker.sock, a stand-in sysbox-runc) and returns its
    ``ops.lab.hosts.LabHost``. Keyword arguments go to ``ops.lab.hosts.up`` (``sysbox_version``,
    ``wait_for_engine``); ``prefix`` names the hosts ``<prefix>-<hex>`` (default ``t``), so a test
    module's hosts can be told apart. Hosts are removed at the end of the test."""
    from ops.lab import hosts

    started: list[str] = []

    def make(prefix: str = "t", **kwargs: Any) -> hosts.LabHost:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        # unique across tests and concurrent sessions (lock file); reclaimed if this session dies
        index = hosts.reserve(name, owner_pid=os.getpid())
        started.append(name)
        kwargs.setdefault("image", lab_image)
        return hosts.up(name, index, lab_engine, lima_home, **kwargs)

    yield make
    errors = []
    for name in started:
        try:
            hosts.down(name, lab_engine)
        except Exception as exc:  # teardown: remove the others anyway
            errors.append(f"{name}: {exc}")
    if errors:
        pytest.fail("lab host teardown failed: " + "; ".join(errors), pytrace=False)
