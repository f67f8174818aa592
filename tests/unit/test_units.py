"""The systemd units: rendering, systemd-analyze verify, drift detection, the file dump parser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ops import filedump, units
from ops.config import CaiConfig
from ops.errors import ConfigError, OpsError

pytestmark = pytest.mark.unit


def conf(**over: object) -> CaiConfig:
    return CaiConfig.from_mapping(over)


def by_name(files: list[units.RenderedFile]) -> dict[str, units.RenderedFile]:
    return {f.name: f for f in files}


def test_render_files_and_paths() -> None:
    files = by_name(units.render(conf()))
    assert set(files) == {"containai-docker.service", "containai-docker-guard.service", "containai-guard",
                          "daemon.json"}
    assert files["containai-docker.service"].path == "/etc/systemd/system/containai-docker.service"
    assert files["containai-guard"].path == "/opt/containai/libexec/containai-guard"
    assert files["containai-guard"].mode == 0o755
    assert files["daemon.json"].path == "/etc/containai/docker/daemon.json"


def test_engine_unit_contents() -> None:
    text = by_name(units.render(conf()))["containai-docker.service"].text
    assert "ExecStart=/opt/containai/bin/dockerd --config-file /etc/containai/docker/daemon.json\n" in text
    assert " -H " not in text and "--host" not in text  # hosts in daemon.json only
    for line in ("Type=notify", "Delegate=yes", "KillMode=process", "Restart=on-failure",
                 "RuntimeDirectory=containai-docker", "PartOf=sysbox.service sysbox-mgr.service sysbox-fs.service",
                 "TimeoutStopSec=130", "Wants=network-online.target sysbox.service containai-docker-guard.service"):
        assert line + "\n" in text, line
    assert ("After=network-online.target containerd.service sysbox.service sysbox-mgr.service "
            "sysbox-fs.service\n") in text
    assert "ExecStopPre" not in text


def test_guard_unit_orders_before_engine_and_sysbox_on_stop() -> None:
    text = by_name(units.render(conf(stop_timeout=42)))["containai-docker-guard.service"].text
    assert "After=containai-docker.service sysbox.service sysbox-mgr.service sysbox-fs.service\n" in text
    assert "PartOf=containai-docker.service sysbox.service sysbox-mgr.service sysbox-fs.service\n" in text
    assert "Type=oneshot\n" in text and "RemainAfterExit=yes\n" in text
    assert "ExecStop=/opt/containai/libexec/containai-guard stop\n" in text
    assert "ExecStart=-/opt/containai/libexec/containai-guard start\n" in text
    assert "TimeoutStopSec=72\n" in text  # stop timeout + margin
    # the start can neither time out into "failed" nor wait for docker: the hook stays armed
    assert "TimeoutStartSec=infinity\n" in text


def test_guard_script_uses_config_and_no_unrendered_placeholders() -> None:
    c = conf(stop_timeout=7, opt_dir="/srv/cai", docker_host="unix:///run/x.sock", label="a.b=yes")
    for f in units.render(c):
        assert "@" not in f.text.replace("@@", ""), f.name
    script = by_name(units.render(c))["containai-guard"].text
    assert "DOCKER_HOST='unix:///run/x.sock'" in script
    assert "LABEL='a.b=yes'" in script
    assert "TIMEOUT='7'" in script
    assert "BATCH='50'" in script and "START_TIMEOUT='600'" in script
    assert "docker='/srv/cai/bin/docker'" in script


def test_no_single_dollar_in_exec_lines() -> None:
    """systemd expands $VAR itself: Exec lines may only use systemd's own variables."""
    for f in units.render(conf()):
        if f.kind != "unit":
            continue
        for line in f.text.splitlines():
            if line.startswith("Exec"):
                cleaned = line.replace("$$", "").replace("$MAINPID", "")
                assert "$" not in cleaned, line


def test_guard_script_is_valid_sh(tmp_path: Path) -> None:
    script = tmp_path / "containai-guard"
    script.write_text(by_name(units.render(conf()))["containai-guard"].text)
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0


def test_render_rejects_bad_paths() -> None:
    with pytest.raises(ConfigError):
        units.render(conf(opt_dir="relative/dir"))
    with pytest.raises(ConfigError):
        units.render(conf(docker_host="tcp://127.0.0.1:2375"))


# --- systemd-analyze verify ---------------------------------------------------------------------------

def _verify_tree(tmp_path: Path, files: list[units.RenderedFile], c: CaiConfig) -> list[Path]:
    """Write the rendered files where they belong under tmp (opt_dir/unit_dir point there) and make the
    binaries they reference exist (the real dockerd), so verify checks keys and references for real."""
    paths = []
    for f in files:
        if f.kind == "config":
            continue
        p = Path(f.path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f.text)
        p.chmod(f.mode)
        if f.kind == "unit":
            paths.append(p)
    bin_dir = Path(c.opt_dir) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    dockerd = shutil.which("dockerd")
    assert dockerd, "dockerd (Debian's docker.io) is needed to verify the engine unit"
    os.symlink(dockerd, bin_dir / "dockerd")
    return paths


def verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of the units; --man=no: whether the machine has the man page that
    ``Documentation=man:dockerd(8)`` names (a minimal system has no man at all) is not the unit's fault."""
    assert shutil.which("systemd-analyze"), "systemd-analyze (package systemd) is needed"
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, paths)], capture_output=True, text=True,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})


def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    c = conf(opt_dir=str(tmp_path / "opt"), unit_dir=str(tmp_path / "units"))
    paths = _verify_tree(tmp_path, units.render(c), c)
    assert len(paths) == 2
    for path in paths:  # each unit alone, then both together
        result = verify([path])
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), path.name
    result = verify(paths)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_systemd_analyze_verify_is_meaningful(tmp_path: Path) -> None:
    """The same check reports the old implementation's ExecStopPre and a missing binary."""
    c = conf(opt_dir=str(tmp_path / "opt"), unit_dir=str(tmp_path / "units"))
    paths = _verify_tree(tmp_path, units.render(c), c)
    engine = next(p for p in paths if p.name == "containai-docker.service")
    engine.write_text(engine.read_text().replace("[Service]\n", "[Service]\nExecStopPre=/bin/true\n"))
    out = verify([engine])
    assert "Unknown key" in out.stderr and "ExecStopPre" in out.stderr
    (Path(c.opt_dir) / "bin" / "dockerd").unlink()
    engine.write_text(engine.read_text().replace("ExecStopPre=/bin/true\n", ""))
    out = verify([engine])
    assert out.returncode != 0 and "dockerd" in out.stderr


# --- daemon.json ----------------------------------------------------------------------------------------

def test_daemon_json_fresh() -> None:
    data = json.loads(units.merge_daemon_json(None, conf()))
    assert data["hosts"] == ["unix:///var/run/containai-docker.sock"]
    assert data["data-root"] == "/var/lib/containai-docker"
    assert data["exec-root"] == "/var/run/containai-docker"
    assert data["pidfile"] == "/var/run/containai-docker.pid"
    assert data["runtimes"] == {"sysbox-runc": {"path": "/usr/bin/sysbox-runc"}}


def test_daemon_json_keeps_host_keys_and_overrides_required() -> None:
    installed = json.dumps({"bridge": "none", "hosts": ["tcp://0.0.0.0:2375"], "log-level": "debug",
                            "runtimes": {"other": {"path": "/x"}}})
    data = json.loads(units.merge_daemon_json(installed, conf()))
    assert data["bridge"] == "none" and data["log-level"] == "debug"
    assert data["hosts"] == ["unix:///var/run/containai-docker.sock"]
    assert set(data["runtimes"]) == {"other", "sysbox-runc"}


def test_daemon_json_semantically_equal_is_kept_verbatim() -> None:
    fresh = units.merge_daemon_json(None, conf())
    compact = json.dumps(json.loads(fresh), separators=(",", ":"))
    assert units.merge_daemon_json(compact, conf()) == compact


def test_daemon_json_invalid_is_an_error() -> None:
    with pytest.raises(OpsError, match="not valid JSON"):
        units.merge_daemon_json("{nope", conf())
    with pytest.raises(OpsError, match="not a JSON object"):
        units.merge_daemon_json("[1]", conf())


# --- drift -----------------------------------------------------------------------------------------------

def test_no_drift_when_identical() -> None:
    files = units.render(conf())
    assert units.detect_drift(files, {f.path: f.text for f in files}) == []


def test_drift_missing_and_changed_with_diff() -> None:
    files = units.render(conf())
    installed: dict[str, str | None] = {f.path: f.text for f in files}
    engine = "/etc/systemd/system/containai-docker.service"
    installed[engine] = installed[engine].replace("KillMode=process", "KillMode=control-group")  # type: ignore[union-attr]
    installed["/etc/systemd/system/containai-docker-guard.service"] = None
    drift = {d.name: d for d in units.detect_drift(files, installed)}
    assert set(drift) == {"containai-docker.service", "containai-docker-guard.service"}
    assert drift["containai-docker-guard.service"].missing
    diff = drift["containai-docker.service"].diff
    assert "-KillMode=control-group" in diff and "+KillMode=process" in diff
    assert diff.startswith("--- installed:")


def test_file_dump_round_trip(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_text("line1\n$$ ünïcode\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    missing = tmp_path / "missing"
    cmd = filedump.dump_command([str(a), str(empty), str(missing)])
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True).stdout
    found = filedump.parse_dump(out)
    assert {p: s.text for p, s in found.items() if isinstance(s, filedump.FileState)} == {
        str(a): "line1\n$$ ünïcode\n", str(empty): "", str(missing): None}


def test_write_out(tmp_path: Path) -> None:
    written = units.write_out(units.render(conf()), tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(
        ["containai-docker.service", "containai-docker-guard.service", "containai-guard", "daemon.json"])
    assert os.access(tmp_path / "out" / "containai-guard", os.X_OK)
