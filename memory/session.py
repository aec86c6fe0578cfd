"""`Memory`: what an investigation opens once — workspace, run store, cache and vector memory.

::

    with Memory.open(writer=True) as memory:              # ./sleuth-workspace, embedded chroma
        run = memory.runs.create(question, model.model_id, weights_hash=model.weights_hash)
        result = run.experiment(model, spec)               # served from the cache when it ran before
        memory.vectors.add_claim(claim)

The order is deliberate: the embedder loads first (a missing package fails before anything is
touched), then the workspace lock is taken, then chroma is opened.
"""

from __future__ import annotations

import os

from memory.embedding import MiniLMEmbedder
from memory.runstore import RunStore
from memory.vector import VectorMemory, shared_embedder
from memory.workspace import Workspace


class Memory:
    def __init__(self, workspace: Workspace, vectors: VectorMemory) -> None:
        self.workspace = workspace
        self.runs = RunStore(workspace)
        self.cache = self.runs.cache
        self.vectors = vectors

    @classmethod
    def open(cls, workspace: str | os.PathLike | None = None, *, writer: bool = False,
             chroma_url: str | None = None, namespace: str | None = None,
             lock_timeout: float | None = None, embedder: MiniLMEmbedder | None = None,
             create: bool | None = None) -> "Memory":
        """``create``: whether a writer may create a missing workspace (default: a writer may)."""
        embedder = embedder or shared_embedder()
        ws = Workspace.open(workspace, writer=writer, timeout=lock_timeout, create=create)
        try:
            vectors = VectorMemory.open(ws, url=chroma_url, namespace=namespace, embedder=embedder)
        except BaseException:
            ws.close()
            raise
        return cls(ws, vectors)

    def experiment_done(self, spec, weights_hash: str) -> bool:
        """Whether this exact experiment on these exact weights is in the cache (by content hash)."""
        return self.cache.contains(spec.cache_key(weights_hash))

    def close(self) -> None:
        self.workspace.close()

    def __enter__(self) -> "Memory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
