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


BUNDLE_BINARIES = ["dockerd", "docker", "containerd", "containerd-shim-runc-v2", "docker-init", "docker-proxy",
                   "runc", "ctr"]


def _bundle(opt: Path, present: list[str], executable: bool = True) -> Path:
    """An ``<opt_dir>`` shaped like the installer leaves it: ``docker/<ver>/<bin>`` files, ``bin/<bin>``
    relative links to them, ``VERSION`` without a newline."""
    real = opt / "docker" / "27.3.1"
    real.mkdir(parents=True)
    (opt / "bin").mkdir()
    for name in present:
        (real / name).write_text("#!/bin/sh\n")
        (real / name).chmod(0o755 if executable else 0o644)
        (opt / "bin" / name).symlink_to(f"../docker/27.3.1/{name}")
    (opt / "VERSION").write_text("27.3.1")
    return opt


def _dockerd_finding(opt: Path, tmp_path: Path) -> dict[str, Any]:
    env = {"INVOKE_CAI_OPT_DIR": str(opt), "INVOKE_CAI_DOCKER_HOST": f"unix://{tmp_path}/nobody.sock",
           "INVOKE_CAI_BUNDLE_DIR": str(tmp_path / "no-bundle")}
    result = inv("doctor", "--json", env=env)
    assert "Traceback" not in result.stderr
    [finding] = [f for f in json.loads(result.stdout)["findings"] if f["code"].startswith("dockerd.")]
    return dict(finding)


def test_complete_dockerd_bundle_is_installed(tmp_path: Path) -> None:
    finding = _dockerd_finding(_bundle(tmp_path / "opt", BUNDLE_BINARIES), tmp_path)
    assert finding["code"] == "dockerd.installed" and "27.3.1" in finding["message"]


def test_dockerd_bundle_missing_binaries_is_named(tmp_path: Path) -> None:
    """VERSION alone is not an installed bundle: the binaries that are absent (or only a dangling link)
    are named (before the fix doctor reported "dockerd bundle 27.3.1 installed")."""
    opt = _bundle(tmp_path / "opt", [b for b in BUNDLE_BINARIES if b not in ("docker-proxy", "ctr")])
    (opt / "bin" / "ctr").symlink_to("../docker/27.3.1/ctr")  # dangling
    finding = _dockerd_finding(opt, tmp_path)
    assert finding["code"] == "dockerd.incomplete" and finding["severity"] == "error"
    assert finding["data"]["missing"] == ["docker-proxy", "ctr"]
    assert "docker-proxy, ctr" in finding["message"] and "inv update" in finding["hint"]


def test_dockerd_bundle_not_executable_or_without_version(tmp_path: Path) -> None:
    opt = _bundle(tmp_path / "opt", BUNDLE_BINARIES, executable=False)
    assert _dockerd_finding(opt, tmp_path)["data"]["missing"] == BUNDLE_BINARIES
    opt2 = _bundle(tmp_path / "opt2", BUNDLE_BINARIES)
    (opt2 / "VERSION").unlink()
    finding = _dockerd_finding(opt2, tmp_path)
    assert finding["code"] == "dockerd.incomplete" and finding["data"]["missing"] == ["VERSION"]
    assert _dockerd_finding(tmp_path / "nothing", tmp_path)["code"] == "dockerd.not-installed"
