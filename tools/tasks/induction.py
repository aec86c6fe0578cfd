"""Induction: continue a repeated random sequence of words ("A B C D A B C" → " D").

Held-out split: token *transitions*. Every ordered pair of words is assigned to train or
held-out by a fixed hash (one in four is held out); train sequences only ever put a word
after another through a train transition, held-out sequences only through held-out ones. So
no adjacent pair of a held-out sequence ever occurs in training: the answer cannot be recalled
as "what usually follows this word" and must be copied from the context. The corrupted prompt
replaces the first occurrence with other nouns, so nothing before the second occurrence
predicts the answer; the foil is another word of the sequence.
"""

from __future__ import annotations

import hashlib
import random
from functools import lru_cache

from tools.tasks.base import Split, TaskGenerator, TaskPrompt, pick
from tools.tasks.vocab import ADJECTIVES, CAPITALS, FEMALE_NAMES, MALE_NAMES, NOUNS, OBJECTS, PLACES, VERBS_PAST

BROAD_POOL = tuple(sorted(
    set(NOUNS) | set(FEMALE_NAMES) | set(MALE_NAMES) | set(ADJECTIVES) | set(VERBS_PAST) | set(PLACES)
    | set(OBJECTS) | {w for pair in CAPITALS for w in pair}
))
"""Every content word; train sequences draw from all of it, held-out ones from the nouns."""


@lru_cache(maxsize=None)
def transition_split(a: str, b: str) -> Split:
    """Whether the transition ``a → b`` belongs to the train or the held-out split (fixed hash)."""
    h = hashlib.sha256(f"{a}\x00{b}".encode()).digest()[0]
    return "heldout" if h % 4 == 0 else "train"


@lru_cache(maxsize=None)
def _successors(a: str, pool: tuple[str, ...], split: Split) -> tuple[str, ...]:
    """The words of ``pool`` that may follow ``a`` in ``split``, in the pool's order."""
    return tuple(w for w in pool if transition_split(a, w) == split)


def sample_sequence(rng: random.Random, pool: tuple[str, ...], length: int, split: Split) -> list[str] | None:
    """A sequence of distinct words whose every adjacent pair is a ``split`` transition."""
    pool = tuple(pool)  # a list works too (the successor table is keyed by the pool)
    seq = [rng.choice(pool)]
    used = {seq[0]}
    while len(seq) < length:
        options = [w for w in _successors(seq[-1], pool, split) if w not in used]
        if not options:
            return None
        seq.append(rng.choice(options))
        used.add(seq[-1])
    # the repeat joins the last word to the first: that transition must be in the split too
    if transition_split(seq[-1], seq[0]) != split:
        return None
    return seq


class InductionTask(TaskGenerator):
    name = "induction"
    title = "induction (repeated random sequence)"

    def __init__(self, min_len: int = 5, max_len: int = 8) -> None:
        self.min_len, self.max_len = min_len, max_len

    def _sequence(self, rng: random.Random, pool: tuple[str, ...], split: Split) -> list[str]:
        while True:
            seq = sample_sequence(rng, pool, rng.randint(self.min_len, self.max_len), split)
            if seq is not None:
                return seq

    def _sample(self, rng: random.Random, split: Split) -> TaskPrompt:
        seq = self._sequence(rng, NOUNS, split)
        length = len(seq)
        k = rng.randint(2, length - 1)  # tokens of the repeat already shown
        other = pick(rng, NOUNS, length, exclude=seq)
        clean = " ".join(seq + seq[:k])
        corrupted = " ".join(other + seq[:k])
        foil = rng.choice([w for i, w in enumerate(seq) if i not in (k, k - 1)])
        return TaskPrompt(clean=clean, answer=" " + seq[k], foil=" " + foil, corrupted=corrupted)

    def training_sentences(self, n: int, *, seed: int = 0) -> list[str]:
        """Repeated train-split sequences over every content word (nouns, names, places, ...).

        Training copies over a broad vocabulary, so induction is a general copy rather than a
        lookup over a few words.
        """
        rng = random.Random(f"{self.name}:corpus:{seed}")
        out = []
        for _ in range(n):
            pool = NOUNS if rng.random() < 0.5 else BROAD_POOL
            seq = self._sequence(rng, pool, "train")
            out.append(" ".join(seq + seq) + " .")
        return out
