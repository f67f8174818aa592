"""The cai.* config keys through Invoke's hierarchy."""

from __future__ import annotations

from pathlib import Path

import pytest
from invoke import Config

from ops.config import DEFAULTS, CaiConfig, from_context
from ops.errors import ConfigError
from ops.tasks import build_namespace

pytestmark = pytest.mark.unit


def test_every_design_key_has_a_default() -> None:
    for key in ["docker_host", "data_root", "label", "stop_timeout", "bundle_dir", "unit_dir", "opt_dir",
                "lima_vm", "lima_home", "target", "state_dir", "ssh_key", "known_hosts", "ssh_user", "platform"]:
        assert key in DEFAULTS
    conf = CaiConfig.from_mapping(None)
    assert conf.docker_host == "unix:///var/run/containai-docker.sock"
    assert conf.stop_timeout == 100 and conf.label_key == "containai.managed" and conf.label_value == "true"


def test_namespace_configures_defaults_and_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = build_namespace()
    config = Config(defaults=ns.configuration())
    monkeypatch.setenv("INVOKE_CAI_DATA_ROOT", "/srv/engine")
    monkeypatch.setenv("INVOKE_CAI_STOP_TIMEOUT", "7")
    config.load_shell_env()
    conf = from_context(type("Ctx", (), {"config": config})())
    assert conf.data_root == "/srv/engine"
    assert conf.stop_timeout == 7


def test_yaml_file_overrides(tmp_path: Path) -> None:
    path = tmp_path / "ops.yaml"
    path.write_text("cai:\n  platform: wsl2\n  targets: [local, 'lima:dev']\n")
    config = Config(defaults=build_namespace().configuration(), runtime_path=path)
    config.load_runtime()
    conf = from_context(type("Ctx", (), {"config": config})())
    assert conf.platform == "wsl2" and conf.targets == ("local", "lima:dev")


@pytest.mark.parametrize(("key", "value"), [("stop_timeout", "soon"), ("platform", "windows"), ("label", "nolabel")])
def test_bad_values_are_config_errors(key: str, value: str) -> None:
    with pytest.raises(ConfigError):
        CaiConfig.from_mapping({key: value})
