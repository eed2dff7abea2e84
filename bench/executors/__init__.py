"""Executors: where a sweep's cells are computed. ``local`` (the default) runs them in this
process; ``ray`` runs feature extraction and probe cells on a Ray cluster (an existing
distributed engine, optional: ``pip install 'brainbench[cluster]'``). Both share the feature
cache and the store, so they store the same results for the same features.
"""

from __future__ import annotations

from brainbench.errors import BenchError
from brainbench.executors.base import BackboneBuilder, Executor, LocalExecutor, WorkItem

EXECUTORS = ("local", "ray")


def make_executor(name: str, address: str | None = None) -> Executor:
    """The executor called `name`; `address` (a Ray cluster) only means something for ray."""
    if name == "local":
        if address:
            raise BenchError(f"--ray-address {address!r} is given but --executor is local; pass "
                             "--executor ray to run on that Ray cluster")
        return LocalExecutor()
    if name == "ray":
        from brainbench.executors.ray_executor import RayExecutor

        return RayExecutor(address)
    raise BenchError(f"--executor {name!r}: expected one of {', '.join(EXECUTORS)} (local: this "
                     "process, the default; ray: a Ray cluster)")


__all__ = ["EXECUTORS", "BackboneBuilder", "Executor", "LocalExecutor", "WorkItem",
           "make_executor"]
