"""Typed errors raised by the core; only the task layer turns them into messages and exit codes."""

from __future__ import annotations


class OpsError(Exception):
    """A failure a user can act on: what went wrong and what to do about it."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def line(self) -> str:
        """The one line printed on stderr."""
        text = self.message.rstrip(".")
        return f"{text}: {self.hint}" if self.hint else text


class ConfigError(OpsError):
    """A configuration value or flag is invalid."""


class TargetError(OpsError):
    """A target cannot be parsed or reached."""


class EngineError(OpsError):
    """The Docker engine cannot be reached or refused a request."""


class VersionParseError(OpsError):
    """A version string or tool output holds no version we can read."""


class NotFoundError(OpsError):
    """A named object (container, file, volume) does not exist."""


class RefusedError(OpsError):
    """The command refuses to proceed without an explicit flag."""

    exit_code = 2
