"""Running the real CLI as a user does, for the integration and lab tests: ``python -m invoke`` from
the repository root, piped (no TTY, stdin from /dev/null), in an environment free of the toolkit's own
settings unless a test sets them; and the ssh config a user writes for ``ssh://`` targets."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without INVOKE_CAI_*, LIMA_HOME and CAI_DEBUG, then ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("INVOKE_CAI_") and k not in ("LIMA_HOME", "CAI_DEBUG")}
    env.update(extra or {})
    return env


def inv(*args: str, env: Mapping[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``inv ARGS`` from the repository root; ``env`` is laid over :func:`clean_env`."""
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=clean_env(env), text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)


def popen_inv(*args: str, env: Mapping[str, str] | None = None,
              merge_stderr: bool = False) -> subprocess.Popen[str]:
    """Start ``inv ARGS`` in its own process group (so a test can kill it and its ssh forward)."""
    return subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=REPO, env=clean_env(env), text=True,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def ssh_config(path: Path, key: str, pattern: str = "127.0.0.*") -> Path:
    """One ssh config for the ssh:// targets, read by Fabric and by the OpenSSH engine tunnel alike."""
    path.write_text("\n".join([
        f"Host {pattern}",
        f'  IdentityFile "{key}"',
        "  IdentitiesOnly yes",
        "  StrictHostKeyChecking no",
        "  UserKnownHostsFile /dev/null",
        "  PreferredAuthentications publickey",
        "  BatchMode yes",
        "  LogLevel ERROR",
        "",
    ]))
    return path
