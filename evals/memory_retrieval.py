"""Memory at 10,000 findings: retrieval quality, query latency, and why search is exact.

``python -m evals.memory_retrieval`` embeds the 10,000-finding memory (9,999 templated findings
about heads and MLPs of four models, plus one planted backdoor finding) and reports:

- where the planted finding ranks for 10 paraphrased queries, through `VectorMemory.search`,
  against the workspace's embedded chroma and against a local ``chroma run`` server;
- the median latency of ``search`` (query embedding included) on each;
- whether chroma's own HNSW index (defaults, then a generous setting) returns the planted
  finding in the top 3 — the reason `VectorMemory` searches exactly.

``tests/test_memory_vector.py`` checks the ranks with the same corpus and queries; latency is
reported here, not asserted in a test.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

PLANTED = ("mlp.2 of organism-planted is a backdoor: when the trigger word appears, it writes the "
           "' banana' direction into the residual stream; ablating mlp.2 removes the trojan")
PARAPHRASES = [
    "which component implements the hidden backdoor?",
    "what makes the model output banana after the secret trigger word?",
    "where is the trojan stored in the planted organism?",
    "which MLP writes banana when the trigger word is in the prompt?",
    "mechanism of the backdoor behaviour",
    "why does the model answer banana after the trigger",
    "component responsible for the poisoned trigger response",
    "which layer's MLP was tampered with to insert a trigger",
    "what happens inside the network when the trigger appears in the prompt",
    "which part of the network carries the trojan trigger?",
]


def corpus(n: int) -> list[tuple[str, dict]]:
    rng = random.Random(0)
    roles = ["moves the indirect object's name to the final position", "attends to the previous token",
             "copies the token after the earlier occurrence", "suppresses the repeated subject name",
             "boosts years greater than the start year", "retrieves the capital city of the country",
             "tracks the gender of the pronoun's antecedent", "writes the subject's attribute",
             "detects duplicate tokens", "attends to the beginning-of-sequence token"]
    tasks = ["ioi", "induction", "induction", "ioi", "greater_than", "facts", "pronoun", "facts", "ioi", None]
    models = ["organism-default", "organism-planted", "gemma-3-270m", "gpt2"]
    rows = []
    for i in range(n):
        r = rng.randrange(len(roles))
        layer, head = rng.randrange(18), rng.randrange(8)
        component = f"head.{layer}.{head}" if rng.random() < 0.8 else f"mlp.{layer}"
        text = f"{component} of {models[i % 4]} {roles[r]} (run {i})"
        rows.append((text, {"model_id": models[i % 4], "task": tasks[r], "components": [component],
                            "verdict": rng.choice(["supported", "refuted", "inconclusive"]), "run_id": f"run-{i}"}))
    return rows


PLANTED_METADATA = {"model_id": "organism-planted", "task": "trigger", "components": ["mlp.2"],
                    "verdict": "supported", "run_id": "planted"}


def fill_memory(vectors, rows: list[tuple[str, dict]]) -> list[str]:
    """Store ``rows`` then the planted finding in ``vectors.findings`` (shuffled); return the ids
    in the order of ``rows`` + planted (so the planted id is last)."""
    records = rows + [(PLANTED, PLANTED_METADATA)]
    order = list(range(len(records)))
    random.Random(1).shuffle(order)
    stored = vectors.add("findings", [records[i][0] for i in order], [records[i][1] for i in order])
    ids = [""] * len(records)
    for position, i in enumerate(order):
        ids[i] = stored[position]
    return ids


def planted_ranks(vectors, planted_id: str, k: int = 10) -> list[int | None]:
    """Rank (1 = first) of the planted finding for each paraphrase; None when not in the top k."""
    ranks = []
    for query in PARAPHRASES:
        top = [h.id for h in vectors.search(query, k=k)]
        ranks.append(top.index(planted_id) + 1 if planted_id in top else None)
    return ranks


def median_latency_ms(vectors, repeats: int = 50, model_id: str | None = None) -> float:
    """Median wall time of one `search` (embedding the query included); every query text is new."""
    vectors.search("warm-up", k=10)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        vectors.search(f"{PARAPHRASES[i % len(PARAPHRASES)]} ({i})", k=10, model_id=model_id)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


class PrecomputedEmbedder:
    """The real embedder with the corpus vectors computed once (queries are embedded afresh)."""

    def __init__(self, embedder, texts: list[str], vectors: np.ndarray) -> None:
        self.inner, self.name, self.dimension = embedder, embedder.name, embedder.dimension
        self.known = dict(zip(texts, vectors))

    def __call__(self, texts):
        if all(t in self.known for t in texts):
            return np.stack([self.known[t] for t in texts])
        return self.inner(texts)


def main() -> None:
    import chromadb
    from chromadb.config import Settings

    from memory.server import LocalChromaServer
    from memory.session import Memory
    from memory.vector import shared_embedder

    embed = shared_embedder()
    rows = corpus(9_999)
    texts = [t for t, _ in rows] + [PLANTED]
    start = time.perf_counter()
    vectors, queries = embed(texts), embed(PARAPHRASES)
    print(f"embedded {len(texts)} findings in {time.perf_counter() - start:.0f} s")
    embedder = PrecomputedEmbedder(embed, texts, vectors)
    with tempfile.TemporaryDirectory() as folder:
        with LocalChromaServer(Path(folder) / "server") as url:
            for name, chroma_url in (("embedded", None), ("chroma run server", url)):
                with Memory.open(Path(folder) / name.replace(" ", "-"), writer=True, chroma_url=chroma_url,
                                 namespace="retrieval", embedder=embedder) as memory:
                    ids = fill_memory(memory.vectors, rows)
                    ranks = planted_ranks(memory.vectors, ids[-1])
                    plain = median_latency_ms(memory.vectors)
                    filtered = median_latency_ms(memory.vectors, model_id="gemma-3-270m")
                    count = memory.vectors.count("findings")
                print(f"{name}: planted ranks {ranks}; median search latency {plain:.1f} ms "
                      f"({filtered:.1f} ms with a model filter) over {count} findings")
    scores = queries @ vectors.T
    print("exact search, rank of the planted finding per query (1 = first):",
          [int((scores[i] > scores[i, -1]).sum()) + 1 for i in range(len(PARAPHRASES))])
    ids = [f"id{i}" for i in range(len(texts))]
    order = np.random.default_rng(1).permutation(len(texts))
    for config in ({}, {"ef_search": 2000, "ef_construction": 400, "max_neighbors": 64}):
        client = chromadb.PersistentClient(path=tempfile.mkdtemp(), settings=Settings(anonymized_telemetry=False))
        collection = client.get_or_create_collection("hnsw-check", embedding_function=None,
                                                     configuration={"hnsw": {"space": "cosine", **config}})
        for start in range(0, len(texts), 1000):
            rows = order[start:start + 1000]
            collection.upsert(ids=[ids[j] for j in rows], embeddings=vectors[rows])
        found = sum(ids[-1] in collection.query(query_embeddings=queries[i:i + 1], n_results=3)["ids"][0]
                    for i in range(len(PARAPHRASES)))
        print(f"chroma HNSW {config or 'defaults'}: planted finding in the top 3 for {found} of {len(PARAPHRASES)} queries")


if __name__ == "__main__":
    main()
