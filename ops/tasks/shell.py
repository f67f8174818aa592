"""``inv shell`` and ``inv shell.run``: SSH into agent containers (see docs/shell.md)."""

from __future__ import annotations

import sys
from typing import Any

from invoke import Context, task
from invoke.exceptions import Exit

from ops.errors import ConfigError
from ops.tasks._common import cfg, cli_errors

WAIT_HELP = "seconds to wait for sshd in the container to answer (default 30)"
TARGET_HELP = ("where the container runs: local, lima:<vm> or ssh://user@host:port (default cai.target; "
               "on a Mac the Lima VM cai.lima_vm)")


@task(
    default=True,
    help={
        "container": "managed container to enter (default: the only running one)",
        "wait": WAIT_HELP,
        "target": TARGET_HELP,
    },
)
@cli_errors
def shell(c: Context, container: str = "", wait: int = 30, target: str = "") -> None:
    """Interactive login shell in an agent container over SSH, with a TTY even when stdin is piped."""
    from ops import ssh

    code = ssh.shell(cfg(c), container or None, wait=_wait(wait), target=target)
    if code:  # only reached when ssh did not replace this process
        raise Exit(code=code)


@task(
    name="run",
    iterable=["env"],
    help={
        "container": "managed container to run in",
        "cmd": "command string, run with bash -lc in the container",
        "env": "NAME=VALUE for the command's environment (repeatable; the value is passed byte for byte)",
        "detach": "start in the background, confirm it is alive, print its PID and log path, return",
        "wait": WAIT_HELP,
        "target": TARGET_HELP,
    },
)
@cli_errors
def run(
    c: Context,
    container: str = "",
    cmd: str = "",
    env: list[str] | None = None,
    detach: bool = False,
    wait: int = 30,
    target: str = "",
) -> None:
    """Run a command in an agent container (foreground, or --detach with a confirmed start)."""
    from ops import ssh

    if not container:
        raise ConfigError("no container given", "add --container NAME")
    if not cmd:
        raise ConfigError("no command given", "add --cmd 'COMMAND'")
    variables = ssh.parse_env_pairs(env)
    result = ssh.run(
        cfg(c), container, command=cmd, env=variables, detach=detach, wait=_wait(wait),
        forward_stdin=not detach, target=target,
    )
    if not detach:
        if result.exit_code:
            raise Exit(code=result.exit_code)
        return
    if result.pid is not None:
        print(f"pid {result.pid}")
        print(f"log {result.log_path}")
        return
    if result.exit_code == 0:
        print(f"finished already with status 0 (not confirmed running); log {result.log_path}",
              file=sys.stderr)
        print(f"log {result.log_path}")
        return
    tail = result.tail.rstrip("\n")
    if tail:
        print(f"--- last lines of {result.log_path} ---", file=sys.stderr)
        print(tail, file=sys.stderr)
        print("---", file=sys.stderr)
    raise Exit(
        f"error: the detached command failed at once: {result.detail} (log {result.log_path} in "
        f"{container}): fix the command and run it again",
        code=result.exit_code,
    )


def _wait(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--wait {value!r} is not a number of seconds", "use e.g. --wait 30") from None
    if seconds < 0:
        raise ConfigError("--wait must not be negative", "use e.g. --wait 30")
    return seconds
