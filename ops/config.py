"""The ``cai.*`` configuration keys: defaults for ``ns.configure()`` and a typed view for the core.

Invoke's config hierarchy is the only configuration mechanism: these defaults can be overridden by
``invoke.yaml`` next to tasks.py, ``~/.invoke.yaml``, ``-f FILE`` and ``INVOKE_CAI_<KEY>`` variables.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ops.errors import ConfigError

PLATFORMS = ("linux", "wsl2", "macos")
LAYOUTS = ("containai", "lima-vm")

#: Defaults of every ``cai.*`` key (DESIGN.md section 2). Strings only where Invoke's env loader must
#: be able to override them (it casts to the type of the default).
DEFAULTS: dict[str, Any] = {
    "docker_host": "unix:///var/run/containai-docker.sock",
    "data_root": "/var/lib/containai-docker",
    "label": "containai.managed=true",
    "stop_timeout": 100,
    "bundle_dir": "/opt/containai/bundle",
    "unit_dir": "/etc/systemd/system",
    "opt_dir": "/opt/containai",
    "lima_vm": "containai-docker",
    "lima_home": "~/.lima",
    "target": "local",
    "targets": "",
    "state_dir": "/var/lib/containai-ops",
    "ssh_key": "~/.config/containai/id_containai",
    "known_hosts": "~/.config/containai/known_hosts",
    "ssh_user": "agent",
    "platform": "",
    "ssh_config": "",
    "layout": "",
}


@dataclass(frozen=True)
class CaiConfig:
    """A typed, validated view of the ``cai`` config section."""

    docker_host: str
    data_root: str
    label: str
    stop_timeout: int
    bundle_dir: str
    unit_dir: str
    opt_dir: str
    lima_vm: str
    lima_home: str
    target: str
    targets: tuple[str, ...]
    state_dir: str
    ssh_key: str
    known_hosts: str
    ssh_user: str
    platform: str
    ssh_config: str
    layout: str = ""  # empty: read on the target (ops.layout); containai or lima-vm forces it

    @property
    def label_key(self) -> str:
        """The label name (``containai.managed``)."""
        return self.label.split("=", 1)[0]

    @property
    def label_value(self) -> str:
        """The label value (``true``), empty when the label is a bare key."""
        return self.label.split("=", 1)[1] if "=" in self.label else ""

    def expand(self, value: str) -> Path:
        """Expand ``~`` in a path-valued key."""
        return Path(os.path.expanduser(value))

    @classmethod
    def from_mapping(cls, raw: Any) -> CaiConfig:
        """Build the view from ``ctx.config.cai`` (or any mapping), validating every key."""
        values: dict[str, Any] = dict(DEFAULTS)
        if raw is not None:
            for key in DEFAULTS:
                with contextlib.suppress(KeyError, AttributeError):
                    values[key] = raw[key]
        try:
            timeout = int(values["stop_timeout"])
        except (TypeError, ValueError):
            raise ConfigError(
                f"cai.stop_timeout must be a whole number of seconds, got {values['stop_timeout']!r}",
                "set INVOKE_CAI_STOP_TIMEOUT or cai.stop_timeout in invoke.yaml to e.g. 100",
            ) from None
        if timeout < 0:
            raise ConfigError("cai.stop_timeout must not be negative", "use e.g. 100")
        values["stop_timeout"] = timeout
        values["platform"] = _choice(values, "platform", PLATFORMS, "detect the platform on the target")
        values["layout"] = _choice(values, "layout", LAYOUTS, "read the host layout on the target")
        targets = values["targets"] or []
        if isinstance(targets, str):
            targets = [t for t in targets.replace(",", " ").split() if t]
        values["targets"] = tuple(str(t) for t in targets)
        for key in DEFAULTS:
            if key not in ("stop_timeout", "targets", "platform", "layout"):
                values[key] = str(values[key])
        if "=" not in values["label"] or not values["label"].split("=", 1)[0]:
            raise ConfigError(f"cai.label {values['label']!r} is not KEY=VALUE", "use containai.managed=true")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def from_context(ctx: Any) -> CaiConfig:
    """The typed view of an Invoke (or Fabric) context's ``cai`` section."""
    try:
        raw = ctx.config["cai"]
    except (KeyError, AttributeError, TypeError):
        raw = None
    return CaiConfig.from_mapping(raw)


def _choice(values: dict[str, Any], key: str, allowed: tuple[str, ...], empty_means: str) -> str:
    """An optional ``cai.<key>`` that must be one of ``allowed`` (lower-cased), or "" to leave it to detection."""
    value = str(values[key] or "").strip().lower()
    if value and value not in allowed:
        raise ConfigError(f"cai.{key} {value!r} is not one of {', '.join(allowed)}", f"leave it empty to {empty_means}")
    return value
