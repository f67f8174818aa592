"""Time budgets of the update's long commands, derived from the units' own stop and start timeouts.

``systemctl restart`` returns when the unit's stop and start jobs are done: the stop hook stops the
managed containers (``cai.stop_timeout`` each, in parallel), the engine stops, then starts (its
``ExecStartPre=`` lines and dockerd until it is ready). A restart command gets the sum of those
timeouts plus a margin, never the short default of a read-only probe; apt gets its own time plus a
restart, since package scripts restart Sysbox (and, through ``PartOf=``, the engine).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ops.config import CaiConfig
from ops.units import ENGINE_UNIT, GUARD_UNIT, STOP_MARGIN

#: Used when a unit's start timeout is infinite (``TimeoutStartSec=0``) or unknown.
DEFAULT_START = 300
#: Added to every budget (systemd's own bookkeeping, a slow SSH round trip).
MARGIN = 60
#: The time apt gets on top of a restart (download-free install of one local package and its deps).
APT_BASE = 900

_UNITS_S = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1, "sec": 1, "second": 1, "seconds": 1,
            "m": 60, "min": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600,
            "hours": 3600, "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800,
            "weeks": 604800, "M": 2629800, "month": 2629800, "months": 2629800, "y": 31557600,
            "year": 31557600, "years": 31557600}
_SPAN_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]+)?")


def parse_span(text: str) -> float | None:
    """Pure parser of a systemd time span as ``systemctl show`` prints it (``1min 30s``, ``2min``,
    ``100ms``, ``infinity``): seconds, or None for infinity, zero or an unreadable value."""
    value = text.strip()
    if not value or value == "infinity":
        return None
    total = 0.0
    pos = 0
    for match in _SPAN_RE.finditer(value):
        if value[pos:match.start()].strip():
            return None
        unit = match.group(2) or "s"
        if unit not in _UNITS_S:
            return None
        total += float(match.group(1)) * _UNITS_S[unit]
        pos = match.end()
    if value[pos:].strip() or total <= 0:
        return None
    return total


@dataclass(frozen=True)
class UnitTimes:
    """A unit's start and stop timeouts in seconds (None: infinite or unknown)."""

    start: float | None
    stop: float | None


def show_command(units: tuple[str, ...] = (ENGINE_UNIT, GUARD_UNIT)) -> str:
    """The command reading the units' timeouts."""
    return "systemctl show -p Id -p TimeoutStartUSec -p TimeoutStopUSec " + " ".join(units)


def parse_show(text: str) -> dict[str, UnitTimes]:
    """Pure parser of :func:`show_command` output (one block per unit, blank-line separated)."""
    out: dict[str, UnitTimes] = {}
    for block in re.split(r"\n\s*\n", text.strip()):
        values: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
        if values.get("Id"):
            out[values["Id"]] = UnitTimes(parse_span(values.get("TimeoutStartUSec", "")),
                                          parse_span(values.get("TimeoutStopUSec", "")))
    return out


def restart_budget(conf: CaiConfig, shown: dict[str, UnitTimes], engine_unit: str = ENGINE_UNIT) -> int:
    """Pure: seconds a ``systemctl restart`` of the engine (or of Sysbox, which restarts it) may take.

    Stop: the longest of the engine's and the stop hook's stop timeouts, and at least what the hook
    needs for the containers (``cai.stop_timeout`` + margin). Start: the engine's start timeout
    (``DEFAULT_START`` when infinite). Plus ``MARGIN``. ``engine_unit`` is the layout's engine
    (``docker.service`` on lima-vm).
    """
    engine = shown.get(engine_unit, UnitTimes(None, None))
    guard = shown.get(GUARD_UNIT, UnitTimes(None, None))
    need = float(int(conf.stop_timeout) + STOP_MARGIN)
    stop = max([need, *(t for t in (engine.stop, guard.stop) if t is not None)])
    start = engine.start if engine.start is not None else float(DEFAULT_START)
    return int(stop + start + MARGIN)


def apt_budget(restart: int) -> int:
    """Pure: seconds ``apt-get install`` of the Sysbox package may take (its scripts restart Sysbox)."""
    return APT_BASE + restart
