"""The Invoke namespace of containai-ops, shared by ``inv`` (tasks.py) and the ``cai-ops`` script."""

from __future__ import annotations

from invoke import Collection

from ops.config import DEFAULTS
from ops.tasks import doctor, lab, pkg, repair, shell, units, update


def build_namespace() -> Collection:
    """Build the namespace: root tasks plus one sub-collection per feature."""
    ns = Collection()
    ns.add_task(doctor.doctor)
    ns.add_task(update.update)
    ns.add_task(repair.repair)
    ns.add_collection(Collection.from_module(shell), name="shell")
    ns.add_collection(Collection.from_module(units), name="units")
    ns.add_collection(Collection.from_module(pkg), name="pkg")
    ns.add_collection(Collection.from_module(lab), name="lab")
    ns.configure({"cai": dict(DEFAULTS)})
    return ns


ns = build_namespace()
