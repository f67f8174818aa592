"""The Invoke namespace of containai-ops: the product, as the installed ``cai-ops`` script shows it.

``inv`` from a checkout (tasks.py) adds the developer tasks to it: test, lint and the lab."""

from __future__ import annotations

from invoke import Collection

from ops.config import DEFAULTS
from ops.tasks import doctor, pkg, repair, shell, units, update


def build_namespace() -> Collection:
    """Build the product namespace: root tasks plus one sub-collection per feature (no lab)."""
    ns = Collection()
    ns.add_task(doctor.doctor)
    ns.add_task(update.update)
    ns.add_task(repair.repair)
    ns.add_collection(Collection.from_module(shell), name="shell")
    ns.add_collection(Collection.from_module(units), name="units")
    ns.add_collection(Collection.from_module(pkg), name="pkg")
    ns.configure({"cai": dict(DEFAULTS)})
    return ns


def __getattr__(name: str) -> Collection:
    """``ops.tasks.ns``: the namespace, built when it is first asked for (``inv`` from a checkout builds
    its own from :func:`build_namespace` and never pays for this one)."""
    if name == "ns":
        globals()["ns"] = built = build_namespace()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
