"""Where repair runs: inside a container or not, and whether the engine's data root is visible here.

Kept apart from the repair engine so that doctor and the task layer can ask without importing the walk.
"""

from __future__ import annotations

import os


def in_container() -> bool:
    """True inside a container: ``/.dockerenv`` exists or PID 1's environment has ``container=``."""
    if os.path.exists("/.dockerenv"):
        return True
    try:
        with open("/proc/1/environ", "rb") as fh:
            return b"container=" in fh.read()
    except OSError:
        return False


def data_root_visible(data_root: str) -> bool:
    """True when ``<data_root>/volumes`` is a directory this process can list."""
    path = os.path.join(data_root, "volumes")
    return os.path.isdir(path) and os.access(path, os.R_OK | os.X_OK)
