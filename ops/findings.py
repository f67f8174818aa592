"""Findings: the one result type of every doctor check, rendered as text or JSON from the same list."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["info", "warning", "error"]
SEVERITY_ORDER = {"info": 0, "warning": 1, "error": 2}
SCHEMA = 1


@dataclass(frozen=True)
class Finding:
    """One observation about a target. ``code`` is a stable string (e.g. ``sysbox.outdated``)."""

    code: str
    severity: Severity
    target: str
    message: str
    hint: str = ""
    platform: str = ""
    data: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of this finding."""
        return asdict(self)


def worst(findings: list[Finding]) -> Severity:
    """The highest severity in a list (info when empty)."""
    best: Severity = "info"
    for f in findings:
        if SEVERITY_ORDER[f.severity] > SEVERITY_ORDER[best]:
            best = f.severity
    return best


def has_error(findings: list[Finding]) -> bool:
    """True when any finding is an error."""
    return any(f.severity == "error" for f in findings)


def to_document(findings: list[Finding], targets: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``--json`` document: ``{"schema": 1, "ok": ..., "findings": [...], "targets": [...]}``."""
    return {
        "schema": SCHEMA,
        "ok": not has_error(findings),
        "summary": {s: sum(1 for f in findings if f.severity == s) for s in ("error", "warning", "info")},
        "targets": targets or [],
        "findings": [f.as_dict() for f in findings],
    }
