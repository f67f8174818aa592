"""Ownership repair of managed volumes (uid/gid 65534 damage) and rootfs taint detection.

Only stdlib and ops modules are imported here; the Docker SDK is imported by the engine when used.
"""

from __future__ import annotations

from ops.repair.findings import doctor_findings

__all__ = ["doctor_findings"]
