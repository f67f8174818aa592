"""inv doctor against a real engine: the private dockerd, and a socket nobody listens on."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _cli import inv

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(lab_engine: str, tiny_image: str) -> Iterator[dict[str, Any]]:
    """Managed (running and stopped) and unmanaged containers under a label unique to this test."""
    import docker

    client = docker.DockerClient(base_url=lab_engine)
    tag = uuid.uuid4().hex[:8]
    label = f"containai.managed=t{tag}"
    made = []

    def make(name: str, managed: bool, running: bool) -> None:
        labels = {"containai.managed": f"t{tag}"} if managed else {"other": "x"}
        c = client.containers.run(tiny_image, ["sleep", "3600"], name=f"t-doctor-{tag}-{name}", labels=labels,
                                  network_mode="none", detach=True)
        made.append(c)
        if not running:
            c.stop(timeout=0)

    make("a", True, True)
    make("b", True, True)
    make("c", True, False)
    make("u", False, True)
    try:
        yield {"label": label, "tag": tag, "host": lab_engine}
    finally:
        for c in made:
            c.remove(force=True)
        client.close()


def test_counts_managed_running_and_stopped(fleet: dict[str, Any]) -> None:
    env = {"INVOKE_CAI_DOCKER_HOST": fleet["host"], "INVOKE_CAI_LABEL": fleet["label"]}
    result = inv("doctor", "--json", env=env)
    assert "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1
    managed = [f for f in doc["findings"] if f["code"] == "containers.managed"]
    assert len(managed) == 1
    data = managed[0]["data"]
    tag = fleet["tag"]
    assert sorted(data["running"]) == [f"t-doctor-{tag}-a", f"t-doctor-{tag}-b"]
    assert data["stopped"] == [f"t-doctor-{tag}-c"]
    assert data["unmanaged"] >= 1
    assert managed[0]["message"].startswith("3 managed containers: 2 running, 1 stopped")
    assert any(f["code"] == "engine.version" for f in doc["findings"])
    assert not any(f["code"] == "engine.unreachable" for f in doc["findings"])


def test_text_rendering_lists_the_same_findings(fleet: dict[str, Any]) -> None:
    env = {"INVOKE_CAI_DOCKER_HOST": fleet["host"], "INVOKE_CAI_LABEL": fleet["label"], "COLUMNS": "200"}
    text = inv("doctor", env=env)
    doc = json.loads(inv("doctor", "--json", env=env).stdout)
    for finding in doc["findings"]:
        assert finding["code"] in text.stdout
    assert text.returncode == (1 if not doc["ok"] else 0)


def test_unreachable_engine_is_an_error_finding_not_a_traceback(tmp_path: Path) -> None:
    result = inv("doctor", "--json", env={"INVOKE_CAI_DOCKER_HOST": f"unix://{tmp_path}/nobody.sock"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == 1 and doc["ok"] is False
    [finding] = [f for f in doc["findings"] if f["code"] == "engine.unreachable"]
    assert finding["severity"] == "error" and "socket not found" in finding["message"]
    assert finding["hint"]


def test_bad_config_value_is_one_line(tmp_path: Path) -> None:
    result = inv("doctor", env={"INVOKE_CAI_PLATFORM": "windows"})
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: cai.platform 'windows'")


def test_unknown_target_is_reported_and_others_proceed(fleet: dict[str, Any]) -> None:
    env = {"INVOKE_CAI_DOCKER_HOST": fleet["host"], "INVOKE_CAI_LABEL": fleet["label"]}
    result = inv("doctor", "--json", "--target", "local", "--target", "bogus://x", env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    assert [t["target"] for t in doc["targets"]] == ["local", "bogus://x"]
    assert any(f["code"] == "target.unreachable" and f["target"] == "bogus://x" for f in doc["findings"])
    assert any(f["code"] == "containers.managed" and f["target"] == "local" for f in doc["findings"])


def test_cli_lists_and_documents(tmp_path: Path) -> None:
    listing = inv("--list")
    assert "doctor" in listing.stdout and "lab.up" in listing.stdout
    helptext = inv("--help", "doctor").stdout
    flags = ["--json", "--fix", "--target", "--repair", "--all", "--container", "--dry-run", "--uid", "--gid"]
    for flag in flags:
        assert flag in helptext
    cai_ops = str(Path(sys.executable).parent / "cai-ops")
    script = subprocess.run([cai_ops, "--list"], capture_output=True, text=True, cwd=tmp_path)
    assert script.returncode == 0 and "doctor" in script.stdout
