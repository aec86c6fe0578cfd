"""circuitsleuth memory: vector memory of findings, run store and experiment cache.

- `Workspace` (memory.workspace): the folder, its writer lock, where it is by default;
- `RunStore` / `Run` / `ExperimentCache` (memory.runstore): runs on disk, crash-safe;
- `VectorMemory` (memory.vector): chromadb collections with offline MiniLM embeddings.

Imports are lazy so ``import memory`` stays cheap; chromadb loads only with `VectorMemory`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memory.records import Claim, Cost, RunRecord, RunSummary
    from memory.runstore import ExperimentCache, Run, RunStore
    from memory.vector import Hit, VectorMemory
    from memory.session import Memory
    from memory.workspace import Workspace

_WHERE = {
    "Claim": "memory.records", "Cost": "memory.records", "RunRecord": "memory.records",
    "RunSummary": "memory.records", "ExperimentCache": "memory.runstore", "Run": "memory.runstore",
    "RunStore": "memory.runstore", "Hit": "memory.vector", "VectorMemory": "memory.vector",
    "Workspace": "memory.workspace", "Memory": "memory.session",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'memory' has no attribute {name!r}")


__all__ = sorted(_WHERE)
