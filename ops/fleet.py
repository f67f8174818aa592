"""Fleets: run one per-target operation over many targets, in bounded parallel or rolling serial mode.

The per-target operation is the same single-target code path; this module only schedules it and
collects one result per target. An unreachable target is a failed result, and the others proceed
(in parallel mode) or the rollout stops (in ``--serial`` mode, at the first failure).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ops.errors import OpsError

DEFAULT_PARALLEL = 8


@dataclass
class TargetResult:
    """The outcome of an operation on one target."""

    target: str
    exit_code: int
    summary: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False

    @property
    def ok(self) -> bool:
        """True when the operation succeeded (exit 0) on this target."""
        return self.exit_code == 0 and not self.skipped

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"target": self.target, "exit_code": self.exit_code, "ok": self.ok, "skipped": self.skipped,
                "summary": self.summary, **({"detail": self.detail} if self.detail else {})}


Operation = Callable[[str], TargetResult]


def _guarded(op: Operation, target: str) -> TargetResult:
    try:
        return op(target)
    except OpsError as exc:
        return TargetResult(target, exc.exit_code or 1, exc.line())
    except Exception as exc:  # one bad host never takes the fleet down
        return TargetResult(target, 1, f"unexpected {type(exc).__name__}: {str(exc)[:200]}")


def run_fleet(targets: list[str], op: Operation, parallel: int = DEFAULT_PARALLEL,
              serial: bool = False) -> list[TargetResult]:
    """Run ``op`` on every target. Serial mode stops at the first failure; later targets are skipped."""
    if serial:
        results: list[TargetResult] = []
        for i, target in enumerate(targets):
            result = _guarded(op, target)
            results.append(result)
            if not result.ok:
                results += [TargetResult(t, 0, "skipped: an earlier target failed", skipped=True)
                            for t in targets[i + 1:]]
                break
        return results
    if len(targets) == 1:
        return [_guarded(op, targets[0])]
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(targets)))) as pool:
        return list(pool.map(lambda t: _guarded(op, t), targets))


class TargetOutput:
    """Where one target's lines go in a fleet run: each prefixed with ``[target]``, whole lines only
    (a lock shared by the fleet keeps the targets' lines from interleaving); progress to ``stream``
    (stdout, or stderr when stdout carries the JSON document), warnings and errors to stderr."""

    def __init__(self, target: str, lock: Any, stream: Any) -> None:
        self.target, self.lock, self.stream = target, lock, stream

    def emit(self, line: str) -> None:
        """One progress line."""
        self._print(line, self.stream)

    def warn(self, line: str) -> None:
        """One warning or error line (stderr)."""
        import sys

        self._print(line, sys.stderr)

    def _print(self, line: str, stream: Any) -> None:
        with self.lock:
            print(f"[{self.target}] {line}", file=stream, flush=True)


def fleet_exit_code(results: list[TargetResult]) -> int:
    """0 when every target succeeded; 2 when the only failures are refusals (exit 2); 1 otherwise."""
    failed = [r for r in results if not r.ok and not r.skipped]
    if not failed:
        return 0 if not any(r.skipped for r in results) else 1
    return 2 if all(r.exit_code == 2 for r in failed) else 1


def render_table(results: list[TargetResult], title: str) -> None:
    """A per-target result table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("target")
    table.add_column("result")
    table.add_column("summary", overflow="fold")
    for r in results:
        status = "[dim]skipped[/]" if r.skipped else ("[green]ok[/]" if r.ok else f"[red]exit {r.exit_code}[/]")
        table.add_row(r.target, status, r.summary)
    Console().print(table)


# --- one run per host --------------------------------------------------------------------------------

def dedupe(targets: list[str], identity: Callable[[str], str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Pure: the targets in order with every later one naming the same host (same ``identity``)
    dropped; also the (dropped, kept) pairs, to tell the user."""
    seen: dict[str, str] = {}
    kept: list[str] = []
    dropped: list[tuple[str, str]] = []
    for text in targets:
        key = identity(text)
        if key in seen:
            dropped.append((text, seen[key]))
            continue
        seen[key] = text
        kept.append(text)
    return kept, dropped


def host_identity(text: str, conf: Any) -> str:
    """The host a target reaches, resolved without connecting: ``local``, or ``<address>:<port>`` from
    the ssh config the connection uses (Lima's ``ssh.config`` for ``lima:<vm>``, ``cai.ssh_config`` or
    ``~/.ssh/config`` for ``ssh://``), so ``lima:x`` and the ``ssh://`` form of the same VM are one host.
    A target that cannot be parsed or resolved is its own identity (its run reports the error)."""
    import os

    from ops.errors import TargetError
    from ops.targets import effective_target, host_ssh_config, lima_alias, lima_ssh_config, parse_target

    try:
        target = effective_target(parse_target(text, conf.lima_vm), conf)
    except TargetError:
        return f"unparsed:{text}"
    if not target.remote:
        return "local"
    try:
        if target.kind == "lima":
            lima_config = lima_ssh_config(conf, target.vm)
            host, port = _ssh_lookup(lima_config if lima_config.is_file() else None, lima_alias(target.vm), None)
        else:
            config: Any = host_ssh_config(conf)
            if config is None:
                default = os.path.expanduser("~/.ssh/config")
                config = default if os.path.isfile(default) else None
            # the connection passes the target's port explicitly: it wins over the config's Port
            host, port = _ssh_lookup(config, target.host, target.port)
    except (OSError, ValueError, TargetError):
        return f"unresolved:{target.name}"
    return f"{_address(host, port)}:{port}"


def _ssh_lookup(path: Any, alias: str, port: int | None) -> tuple[str, int]:
    """(HostName, Port) of ``alias`` in an ssh config (``port`` given on the target wins)."""
    import paramiko

    if path is None:
        return alias, port or 22
    found = paramiko.SSHConfig.from_path(str(path)).lookup(alias)
    return str(found.get("hostname", alias)), port or int(found.get("port", 22))


def _address(host: str, port: int) -> str:
    """The first address a host name resolves to (the name itself when it does not resolve)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return host.lower()
    return str(infos[0][4][0]) if infos else host.lower()
