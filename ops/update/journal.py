"""The update journal: which managed containers were running, written on the target BEFORE any is
stopped, updated after each step, cleared only when they run again. ``inv update --resume`` reads it;
a plain ``inv update`` refuses while it exists (it is never overwritten by a new run).

Every write is durable: a temporary file beside it, fsync (``sync FILE``), rename, fsync of the
directory (see ``ops.update.hostio.install_command``), so a power cut leaves the old or the new
journal, never none."""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ops.config import CaiConfig
from ops.errors import OpsError

SCHEMA = 1
NAME = "update-journal.json"


@dataclass(frozen=True)
class Journal:
    """An update in progress on one target."""

    target: str
    containers: tuple[str, ...]  # names of the managed containers that were running
    steps: tuple[str, ...]  # planned step actions
    done: tuple[str, ...] = ()
    started: float = field(default_factory=time.time)
    schema: int = SCHEMA

    def with_done(self, action: str) -> Journal:
        """The journal with one more step done."""
        return replace(self, done=(*self.done, action))


def path(conf: CaiConfig) -> str:
    """Where the journal lives on the target."""
    return f"{conf.state_dir.rstrip('/')}/{NAME}"


def dumps(j: Journal) -> str:
    """Serialize a journal."""
    data: dict[str, Any] = asdict(j)
    data["containers"] = list(j.containers)
    data["steps"] = list(j.steps)
    data["done"] = list(j.done)
    return json.dumps(data, indent=2) + "\n"


def loads(text: str, where: str = "journal") -> Journal:
    """Pure parser of a journal; a damaged one is a clear error (never silently ignored)."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or int(data.get("schema", 0)) != SCHEMA:
            raise ValueError("unknown schema")
        containers = data["containers"]
        if not isinstance(containers, list) or not all(isinstance(c, str) for c in containers):
            raise ValueError("containers is not a list of names")
        return Journal(
            target=str(data.get("target", "")),
            containers=tuple(containers),
            steps=tuple(str(s) for s in data.get("steps", [])),
            done=tuple(str(s) for s in data.get("done", [])),
            started=float(data.get("started", 0)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise OpsError(f"the update journal {where} is damaged ({exc})",
                       "read it, start the containers it names by hand, then delete it") from None


def write(host: Any, conf: CaiConfig, j: Journal) -> None:
    """Write the journal atomically on the target (``host`` is an ``ops.update.hostio.Host``)."""
    try:
        host.write_text(path(conf), dumps(j), 0o600)
    except OpsError as exc:
        raise OpsError(f"cannot write the update journal {path(conf)} ({exc.message}); nothing was stopped",
                       f"make cai.state_dir ({conf.state_dir}) writable or point it elsewhere") from None


def read(host: Any, conf: CaiConfig) -> Journal | None:
    """The journal on the target, or None (read as root; an unreadable journal is an error)."""
    text = host.read_text(path(conf))
    if text is None:
        return None
    return loads(text, path(conf))


def clear(host: Any, conf: CaiConfig) -> None:
    """Remove the journal (after every journaled container runs again)."""
    host.sh(f"rm -f {shlex.quote(path(conf))}", what="removing the update journal")
