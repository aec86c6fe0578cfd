"""Vector memory on chromadb: findings, experiment summaries, hypotheses and past questions.

`VectorMemory.open` connects to a chroma server when a URL is configured (``--chroma-url`` or
``$SLEUTH_CHROMA_URL``: the path for several processes or machines) and otherwise to an
embedded ``PersistentClient`` in ``WORKSPACE/chroma``. Telemetry is off in both. Vectors come
from `MiniLMEmbedder` only: collections are created without an embedding function, so
chromadb's default embedder (which downloads a model) can never run.

Every record carries metadata: ``model_id``, ``weights_hash``, ``task``, ``run_id``,
``components`` (a list, filterable with ``$contains``), ``verdict`` and ``kind``. The queries the
agents need:

- `known_about`: everything stored about a component of a model (a metadata filter, exact);
- `similar_questions`: past questions near this one, with what was found;
- `search`: free text over all collections, optionally restricted to one model.

Whether an exact experiment already ran is not a similarity question: it is
`memory.runstore.ExperimentCache.contains` on the content hash.

Similarity search is exact (cosine over every stored vector), not chroma's HNSW: on memories
like ours — thousands of near-identical templated findings and one that is different — HNSW's
pruned graph leaves the odd one out barely reachable (``python -m evals.memory_retrieval``: on
10,000 findings the planted one is in the top 3 for 1 of 10 queries with chroma's defaults, 7 of
10 with ef_search=2000, and ranks first for all 10 exactly). Each collection keeps an in-process copy of its vectors, refreshed whenever chroma's
count differs from it (another process added records); at 384 floats a record, a million
findings need 1.5 GB and a search stays a single matrix product.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Iterable, Literal, Sequence
from urllib.parse import urlparse

import numpy as np
from pydantic import BaseModel, ConfigDict

from memory.embedding import DIMENSION, MiniLMEmbedder
from memory.workspace import Workspace
from tools.errors import StorageError, UserInputError

CHROMA_URL_ENV = "SLEUTH_CHROMA_URL"
NAMESPACE_ENV = "SLEUTH_MEMORY_NAMESPACE"
DEFAULT_NAMESPACE = "sleuth"
COLLECTIONS = ("findings", "experiments", "hypotheses", "questions")
Collection = Literal["findings", "experiments", "hypotheses", "questions"]
_EMBEDDER: MiniLMEmbedder | None = None


def shared_embedder() -> MiniLMEmbedder:
    """One embedder per process (loading it costs about a second)."""
    global _EMBEDDER
    if _EMBEDDER is None:
        _EMBEDDER = MiniLMEmbedder()
    return _EMBEDDER


class Hit(BaseModel):
    """One stored record returned by a query; ``distance`` is cosine distance (None for filters)."""

    model_config = ConfigDict(frozen=True)

    collection: str
    id: str
    text: str
    metadata: dict[str, Any]
    distance: float | None = None


def _settings():
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


def connect(workspace: Workspace | None = None, url: str | None = None):
    """A chroma client: ``HttpClient`` for ``url`` (or ``$SLEUTH_CHROMA_URL``), else a
    ``PersistentClient`` in the workspace."""
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb

    url = url or os.environ.get(CHROMA_URL_ENV) or None
    if url:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UserInputError(f"chroma URL {url!r} must look like http://HOST:PORT")
        port = parsed.port or (443 if parsed.scheme == "https" else 8000)
        try:
            client = chromadb.HttpClient(host=parsed.hostname, port=port, ssl=parsed.scheme == "https",
                                         settings=_settings())
            client.heartbeat()
        except Exception as e:  # noqa: BLE001 - any connection failure is the same message
            raise StorageError(f"cannot reach the chroma server at {url}: {e}") from e
        return client
    if workspace is None:
        raise UserInputError("vector memory needs a workspace or a chroma server URL")
    try:
        return chromadb.PersistentClient(path=str(workspace.chroma_dir), settings=_settings())
    except Exception as e:  # noqa: BLE001
        raise StorageError(f"cannot open the vector memory in {workspace.chroma_dir}: {e}") from e


class _Exact:
    """One collection's vectors, documents and metadata, held for exact search."""

    def __init__(self, ids: list[str], vectors: np.ndarray, documents: list[str], metadatas: list[dict]) -> None:
        self.ids, self.documents, self.metadatas = ids, documents, metadatas
        self.vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), DIMENSION)
        self.row = {i: n for n, i in enumerate(ids)}
        self._columns: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, collection: Any, page: int = 5000) -> "_Exact":
        ids, vectors, documents, metadatas = [], [], [], []
        offset = 0
        while True:
            got = collection.get(include=["embeddings", "documents", "metadatas"], limit=page, offset=offset)
            ids += got["ids"]
            documents += got["documents"]
            metadatas += got["metadatas"]
            if len(got["ids"]):
                vectors.append(np.asarray(got["embeddings"], dtype=np.float32))
            if len(got["ids"]) < page:
                break
            offset += page
        return cls(ids, np.concatenate(vectors) if vectors else np.zeros((0, DIMENSION), np.float32), documents, metadatas)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, documents: Sequence[str],
               metadatas: Sequence[dict]) -> None:
        self._columns.clear()
        fresh = []
        for n, i in enumerate(ids):
            if i in self.row:
                r = self.row[i]
                self.vectors[r], self.documents[r], self.metadatas[r] = vectors[n], documents[n], metadatas[n]
            else:
                fresh.append(n)
        if fresh:
            for n in fresh:
                self.row[ids[n]] = len(self.ids)
                self.ids.append(ids[n])
                self.documents.append(documents[n])
                self.metadatas.append(metadatas[n])
            new = vectors[fresh].astype(np.float32)
            self.vectors = np.concatenate([self.vectors, new])

    def nearest(self, query: np.ndarray, k: int, where: dict[str, Any] | None) -> list[tuple[int, float]]:
        if not self.ids:
            return []
        # torch, not numpy: numpy's BLAS threads would spin against the embedder's torch threads
        # (measured: 45 ms instead of 20 for embed + search on 2 cores)
        import torch

        scores = (torch.from_numpy(self.vectors) @ torch.from_numpy(np.ascontiguousarray(query))).numpy()
        if where:
            keep = np.ones(len(self.ids), dtype=bool)
            for key, value in where.items():
                if key not in self._columns:
                    self._columns[key] = np.array([m.get(key) for m in self.metadatas], dtype=object)
                keep &= self._columns[key] == value
            scores = np.where(keep, scores, -np.inf)
        k = min(k, len(self.ids))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(r), 1.0 - float(scores[r])) for r in top if np.isfinite(scores[r])]


class VectorMemory:
    """The four collections of one namespace, with the queries the agents use."""

    def __init__(self, client: Any, embedder: MiniLMEmbedder, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.client = client
        self.embed = embedder
        self.namespace = namespace
        self._collections = {}
        self._exact: dict[str, _Exact] = {}
        self._checked: dict[str, float] = {}
        self.refresh_s = 1.0
        """How stale a search may be about records other processes added (seconds)."""
        for name in COLLECTIONS:
            self._collections[name] = client.get_or_create_collection(
                f"{namespace}-{name}", embedding_function=None,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"embedder": embedder.name, "dimension": embedder.dimension})
            made_with = (self._collections[name].metadata or {}).get("embedder")
            if made_with not in (None, embedder.name):
                raise StorageError(f"memory collection {namespace}-{name} was built with the embedder "
                                   f"{made_with!r}, not {embedder.name!r}; use another namespace")

    @classmethod
    def open(cls, workspace: Workspace | None = None, *, url: str | None = None,
             namespace: str | None = None, embedder: MiniLMEmbedder | None = None) -> "VectorMemory":
        """Load the embedder first (a missing package fails here, at start-up), then connect."""
        embedder = embedder or shared_embedder()
        namespace = namespace or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE
        return cls(connect(workspace, url), embedder, namespace)

    # -- writing ----------------------------------------------------------------------------
    def add(self, collection: Collection, texts: Sequence[str], metadatas: Sequence[dict[str, Any]],
            ids: Sequence[str] | None = None, *, batch_size: int = 1000) -> list[str]:
        """Embed and upsert records; ``ids`` default to a hash of text and metadata, so storing
        the same record twice keeps one copy."""
        if len(texts) != len(metadatas) or (ids is not None and len(ids) != len(texts)):
            raise ValueError("texts, metadatas and ids must have the same length")
        metadatas = [_clean_metadata(m) for m in metadatas]
        ids = list(ids) if ids is not None else [_record_id(t, m) for t, m in zip(texts, metadatas)]
        target = self._collection(collection)
        for start in range(0, len(texts), batch_size):
            chunk = slice(start, start + batch_size)
            vectors = self.embed(texts[chunk])
            target.upsert(ids=ids[chunk], embeddings=vectors, documents=list(texts[chunk]),
                          metadatas=metadatas[chunk])
            if collection in self._exact:
                self._exact[collection].upsert(ids[chunk], vectors, list(texts[chunk]), metadatas[chunk])
        return ids

    def add_finding(self, text: str, *, model_id: str, weights_hash: str | None = None,
                    task: str | None = None, run_id: str | None = None,
                    components: Iterable[str] = (), verdict: str | None = None,
                    kind: str = "finding", id: str | None = None, **extra: Any) -> str:
        meta = dict(model_id=model_id, weights_hash=weights_hash, task=task, run_id=run_id,
                    components=list(components), verdict=verdict, kind=kind, **extra)
        return self.add("findings", [text], [meta], None if id is None else [id])[0]

    def add_claim(self, claim: Any, text: str | None = None) -> str:
        """Store a `memory.records.Claim` as a finding (id = the claim's run and id)."""
        return self.add_finding(text or claim.statement, model_id=claim.model_id, weights_hash=claim.weights_hash,
                                task=claim.task, run_id=claim.run_id, components=claim.components,
                                verdict=claim.verdict, kind="claim", id=f"{claim.run_id}/{claim.id}",
                                effect=claim.effect)

    def add_experiment_summary(self, key: str, text: str, *, model_id: str, weights_hash: str | None,
                               experiment: str, run_id: str | None = None, task: str | None = None,
                               components: Iterable[str] = ()) -> str:
        meta = dict(model_id=model_id, weights_hash=weights_hash, run_id=run_id, task=task,
                    components=list(components), kind=experiment)
        return self.add("experiments", [text], [meta], [key])[0]

    def add_hypothesis(self, text: str, *, model_id: str, run_id: str | None = None, task: str | None = None,
                       components: Iterable[str] = (), verdict: str | None = None,
                       id: str | None = None) -> str:
        meta = dict(model_id=model_id, run_id=run_id, task=task, components=list(components),
                    verdict=verdict, kind="hypothesis")
        return self.add("hypotheses", [text], [meta], None if id is None else [id])[0]

    def add_question(self, question: str, *, run_id: str, model_id: str, answer: str | None = None,
                     status: str | None = None) -> str:
        meta = dict(model_id=model_id, run_id=run_id, answer=answer, status=status, kind="question")
        return self.add("questions", [question], [meta], [run_id])[0]

    # -- reading ----------------------------------------------------------------------------
    def known_about(self, component: str, model_id: str, *, weights_hash: str | None = None,
                    collections: Sequence[Collection] = ("findings", "experiments", "hypotheses"),
                    limit: int = 100) -> list[Hit]:
        """Every record that names ``component`` for ``model_id`` (exact metadata match)."""
        where = _where({"model_id": model_id, "weights_hash": weights_hash},
                       {"components": {"$contains": component}})
        hits = []
        for name in collections:
            got = self._collection(name).get(where=where, limit=limit, include=["documents", "metadatas"])
            hits += [Hit(collection=name, id=i, text=d, metadata=m)
                     for i, d, m in zip(got["ids"], got["documents"], got["metadatas"])]
        return hits

    def similar_questions(self, question: str, *, model_id: str | None = None, k: int = 5) -> list[Hit]:
        """Past questions closest to ``question``; each hit's metadata has its run and answer."""
        return self.search(question, model_id=model_id, k=k, collections=("questions",))

    def search(self, text: str, *, model_id: str | None = None, k: int = 10,
               collections: Sequence[Collection] = COLLECTIONS) -> list[Hit]:
        """The ``k`` records nearest to ``text`` across ``collections``, nearest first."""
        if k < 1:
            raise UserInputError(f"k must be at least 1, not {k}")
        vector = self.embed([text])[0]
        where = {"model_id": model_id} if model_id else None
        hits = []
        for name in collections:
            exact = self._exact_index(name)
            hits += [Hit(collection=name, id=exact.ids[r], text=exact.documents[r], metadata=exact.metadatas[r],
                         distance=distance) for r, distance in exact.nearest(vector, k, where)]
        return sorted(hits, key=lambda h: h.distance)[:k]

    def _exact_index(self, name: str) -> _Exact:
        """The collection's exact index. Records this object adds go straight in; records other
        processes add are picked up by comparing chroma's count, at most every ``refresh_s``."""
        collection = self._collection(name)
        current = self._exact.get(name)
        now = time.monotonic()
        if current is None or now - self._checked.get(name, -1e9) >= self.refresh_s:
            if current is None or len(current.ids) != collection.count():
                current = self._exact[name] = _Exact.load(collection)
            self._checked[name] = now
        return current

    def count(self, collection: Collection | None = None) -> int:
        names = [collection] if collection else COLLECTIONS
        return sum(self._collection(n).count() for n in names)

    def _collection(self, name: str):
        try:
            return self._collections[name]
        except KeyError:
            raise UserInputError(f"unknown memory collection {name!r}; one of {', '.join(COLLECTIONS)}") from None


def _where(equal: dict[str, Any], *extra: dict[str, Any]) -> dict[str, Any]:
    clauses = [{k: v} for k, v in equal.items() if v is not None] + list(extra)
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _clean_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """chromadb takes str/int/float/bool and non-empty lists of one of those; drop None and []."""
    out = {}
    for key, value in meta.items():
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        if isinstance(value, (list, tuple)):
            value = [str(v) for v in value]
        elif not isinstance(value, (str, int, float, bool)):
            value = str(value)
        out[key] = value
    return out


def _record_id(text: str, meta: dict[str, Any]) -> str:
    blob = text + "\x00" + repr(sorted(meta.items()))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


__all__ = ["VectorMemory", "Hit", "connect", "COLLECTIONS"]
