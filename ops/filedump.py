"""Files read on a target in one round trip: a shell command and its pure parser.

Each path comes back as missing, unreadable (as the user the command ran as) or its content with its
mode, so that "cannot read" is never mistaken for "not there". Update reads as root through this; doctor
reads as the login user and says so when a file cannot be read.
"""

from __future__ import annotations

import base64
import binascii
import shlex
from dataclasses import dataclass

__all__ = ["UNREADABLE", "FileState", "dump_command", "parse_dump"]


@dataclass(frozen=True)
class FileState:
    """A file on the target as the user who read it sees it."""

    path: str
    exists: bool
    text: str | None = None  # None when it does not exist
    mode: int | None = None  # permission bits, when it exists


_MARK = "@@CAI-FILE "
UNREADABLE = "unreadable"


def dump_command(paths: list[str]) -> str:
    """Shell printing, per path, a marker line and then ``missing``, ``unreadable`` or
    ``<octal mode> <base64 of the content>`` (one round trip for all files)."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    # missing only when the deepest path that exists above the file is a directory that can be searched
    # (or no directory at all): behind one that cannot be searched, the file's state is unknown
    # (unreadable), not "missing"
    return (f"for f in {quoted}; do printf '\\n{_MARK}%s\\n' \"$f\"; "
            "if [ ! -e \"$f\" ] && [ ! -L \"$f\" ]; then a=$(dirname \"$f\"); "
            "while [ ! -e \"$a\" ] && [ \"$a\" != / ] && [ \"$a\" != . ]; do a=$(dirname \"$a\"); done; "
            "if [ ! -d \"$a\" ] || [ -x \"$a\" ]; then echo missing; else echo unreadable; fi; "
            "elif [ -f \"$f\" ] && c=$(base64 -w0 < \"$f\" 2>/dev/null); then "
            "printf 'file %s %s\\n' \"$(stat -L -c %a \"$f\")\" \"$c\"; "
            "else echo unreadable; fi; done; echo")


def parse_dump(text: str) -> dict[str, FileState | str]:
    """Pure parser of :func:`dump_command` output: path -> FileState, or ``UNREADABLE``."""
    found: dict[str, FileState | str] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith(_MARK):
            current = line[len(_MARK):]
            continue
        if current is None or not line.strip():
            continue
        body = line.strip()
        if body == "missing":
            found[current] = FileState(current, False)
        elif body.startswith("file "):
            parts = body.split(" ", 2)
            try:
                data = base64.b64decode(parts[2] if len(parts) > 2 else "", validate=True)
                found[current] = FileState(current, True, data.decode("utf-8", errors="replace"),
                                           int(parts[1], 8))
            except (ValueError, binascii.Error, IndexError):
                found[current] = UNREADABLE
        else:
            found[current] = UNREADABLE
        current = None
    return found
