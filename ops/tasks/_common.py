"""Shared plumbing of the task layer: typed config, error-to-exit mapping, output helpers.

Only stdlib and ``ops.config``/``ops.errors`` are imported here so that ``inv --list`` stays fast.
"""

from __future__ import annotations

import atexit
import functools
import gc
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from invoke.exceptions import Exit

from ops.config import CaiConfig, from_context
from ops.errors import OpsError

F = TypeVar("F", bound=Callable[..., Any])


def cfg(ctx: Any) -> CaiConfig:
    """The typed ``cai`` config of a task's context."""
    return from_context(ctx)


def cli_errors(func: F) -> F:
    """Turn core errors into one stderr line and the error's exit code (never a traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        collect_less()
        try:
            return func(*args, **kwargs)
        except Exit:
            raise
        except OpsError as exc:
            raise Exit(f"error: {exc.line()}", code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("error: interrupted", code=130) from None
        except Exception as exc:  # the last line of defence: one line, details on request
            if os.environ.get("CAI_DEBUG"):
                traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise Exit(
                f"error: unexpected {type(exc).__name__}: {first[:300]} "
                "(rerun with CAI_DEBUG=1 for details and report it)",
                code=1,
            ) from None

    return wrapper  # type: ignore[return-value]


def collect_less() -> None:
    """Spare a task's process the garbage collections that cannot free anything (worth tens of
    milliseconds of a short command, ``bench/cli_latency``).

    A task is the life of its process: what was loaded before it runs (Invoke, the namespace, our modules,
    the parsed flags) lives until the process ends, so the collector stops scanning it (``gc.freeze``).
    At exit (an atexit handler) the collector is not run once more over every object of the process: the
    standard streams are still flushed and every object without a reference cycle is still freed as
    usual; objects in a cycle skip their finalizers, as they would at ``os._exit`` (our files and
    connections are closed by ``with`` blocks and ``close()``, never left to a finalizer)."""
    global _exit_registered
    gc.freeze()
    if not _exit_registered:
        _exit_registered = True
        atexit.register(_exit_without_collecting)


_exit_registered = False


def _exit_without_collecting() -> None:
    gc.disable()
    gc.freeze()


def is_tty() -> bool:
    """True when stdout is a terminal (progress and colours are shown)."""
    return sys.stdout.isatty()


def targets_of(conf: CaiConfig, target: list[str] | None) -> list[str]:
    """The targets a command acts on: ``--target`` flags, else ``cai.targets``, else ``cai.target``."""
    if target:
        return list(target)
    if conf.targets:
        return list(conf.targets)
    return [conf.target]
