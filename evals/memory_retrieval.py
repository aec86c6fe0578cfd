"""The retrieval check of the memory issue, and why memory search is exact rather than HNSW.

``python -m evals.memory_retrieval`` embeds the 10,000-finding test memory (9,999 templated
findings about heads and MLPs of four models, plus one planted backdoor finding), and reports
for the 10 paraphrased queries where the planted finding ranks under exact cosine search and
whether chroma's HNSW index (defaults, then a generous setting) returns it in the top 3.
``tests/test_memory_vector.py`` uses the same corpus and queries against `VectorMemory`.
"""

from __future__ import annotations

import random
import tempfile

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


def main() -> None:
    import chromadb
    from chromadb.config import Settings

    from memory.vector import shared_embedder

    embed = shared_embedder()
    texts = [t for t, _ in corpus(9_999)] + [PLANTED]
    vectors, queries = embed(texts), embed(PARAPHRASES)
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
