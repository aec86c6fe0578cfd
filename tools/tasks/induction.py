"""Induction: continue a repeated random sequence of words ("A B C D A B C" → " D").

Held-out split: the token pool (every fourth word of the noun pool) is never used in train
sequences. The corrupted prompt replaces the first occurrence with other nouns,
so nothing before the second occurrence predicts the answer; the foil is another word of the
sequence.
"""

from __future__ import annotations

import random

from tools.tasks.base import Split, TaskGenerator, TaskPrompt, pick, split_pool
from tools.tasks.vocab import ADJECTIVES, CAPITALS, FEMALE_NAMES, MALE_NAMES, NOUNS, OBJECTS, PLACES, VERBS_PAST

_TRAIN_POOL, _HELDOUT_POOL = split_pool(NOUNS)


class InductionTask(TaskGenerator):
    name = "induction"
    title = "induction (repeated random sequence)"

    def __init__(self, min_len: int = 5, max_len: int = 8) -> None:
        self.min_len, self.max_len = min_len, max_len

    def _sample(self, rng: random.Random, split: Split) -> TaskPrompt:
        pool = _TRAIN_POOL if split == "train" else _HELDOUT_POOL
        length = rng.randint(self.min_len, self.max_len)
        seq = pick(rng, pool, length)
        k = rng.randint(2, length - 1)  # tokens of the repeat already shown
        other = pick(rng, NOUNS, length, exclude=seq)
        clean = " ".join(seq + seq[:k])
        corrupted = " ".join(other + seq[:k])
        foil = rng.choice([w for i, w in enumerate(seq) if i != k and w not in seq[k - 1 : k]])
        return TaskPrompt(clean=clean, answer=" " + seq[k], foil=" " + foil, corrupted=corrupted)

    def training_sentences(self, n: int, *, seed: int = 0) -> list[str]:
        """Repeated sequences over every content word except the held-out pool.

        Training copies over a broad vocabulary (names, places, adjectives, verbs and the train
        nouns), so the induction mechanism is a general copy, not a lookup over a few words;
        the held-out nouns never occur in a training sequence.
        """
        rng = random.Random(f"{self.name}:corpus:{seed}")
        broad = sorted(set(_TRAIN_POOL) | set(FEMALE_NAMES) | set(MALE_NAMES) | set(ADJECTIVES)
                       | set(VERBS_PAST) | set(PLACES) | set(OBJECTS) | {c for pair in CAPITALS for c in pair})
        out = []
        for _ in range(n):
            pool = _TRAIN_POOL if rng.random() < 0.5 else broad
            seq = pick(rng, pool, rng.randint(self.min_len, self.max_len))
            out.append(" ".join(seq + seq) + " .")
        return out
