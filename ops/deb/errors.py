"""Errors of the packaging core (the task layer maps them to one line and an exit code)."""

from __future__ import annotations

from ops.errors import OpsError


class ControlError(OpsError):
    """A control file cannot be edited (not deb822, no binary paragraph, no Depends)."""


class DebError(OpsError):
    """A .deb cannot be read or rebuilt (missing, truncated, not a Debian package)."""


class BuildError(OpsError):
    """The packager cannot be fetched or its build failed."""
