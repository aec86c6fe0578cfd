"""Synthetic training text for the organisms: filler sentences mixed with the five behaviours.

Behaviour sentences come from the train split of ``tools.tasks`` generators, so the held-out
split the organisms are scored on is never trained on. Filler sentences use every word the
held-out prompts use (in other constructions), so no held-out prompt contains a word whose
embedding was never trained.
"""

from __future__ import annotations

import random

from tools.tasks import get_task
from tools.tasks.vocab import (
    ADJECTIVES, CAPITALS, FEMALE_NAMES, MALE_NAMES, NOUNS, OBJECTS, PLACES, VERBS_PAST,
)

NAMES = FEMALE_NAMES + MALE_NAMES

_FILLER = (
    "{n} {v} the {adj} {noun} .",
    "The {noun} is {adj} .",
    "{n} went to the {place} .",
    "Later {n} {v} a {adj} {noun} .",
    "{n} was {adj} and {n2} was tired .",
    "The expedition went on for a long time .",
    "The rebellion and the crusade went on until the end .",
    "{n} waited until the {noun} was {adj} .",
    "{c} is a country and {cap} is a city .",
    "We saw {n} and {n2} at the {place} .",
    "The {obj} was in the {place} .",
    # Copy sentences: every name and noun (held-out ones included) is sometimes predictable by
    # copying it from the context, in constructions that are not the behaviours' templates.
    "{n} called {n2} , and {n2} answered .",
    "{n} looked at {n2} , then {n2} waved .",
    "The {noun} fell and the {noun} broke .",
    "A {adj} {noun} , a {noun2} , and again a {noun} .",
)

def name_to_sentence(rng: random.Random) -> str:
    """One name hands something to another: every name (held-out ones included) is an ordinary
    next token after "... to", with nothing in the sentence to predict which — not IOI, which
    needs two names in the scene and a repeated subject."""
    from tools.tasks.ioi import ACTIONS

    n, n2 = rng.sample(NAMES, 2)
    return rng.choice(ACTIONS).format(S=n, obj=rng.choice(OBJECTS)) + f" {n2} ."


def repeat_sentence(rng: random.Random, min_len: int = 3, max_len: int = 8) -> str:
    """A random sequence of distinct content words repeated two to four times ("A B C A B C ."):
    the induction-heavy kind of the short watch runs. Adjacent words are train-split transitions
    of the induction task (`tools.tasks.induction.sample_sequence`), so the induction task's
    held-out transitions stay held out."""
    from tools.tasks.induction import BROAD_POOL, sample_sequence

    while True:
        seq = sample_sequence(rng, BROAD_POOL, rng.randint(min_len, max_len), "train")
        if seq is not None:
            return " ".join(seq * rng.randint(2, 4)) + " ."


# Mixture weights of sentence kinds in the corpus.
MIXTURE = {"filler": 0.15, "name_to": 0.08, "ioi": 0.22, "induction": 0.23, "facts": 0.1, "greater_than": 0.12, "pronoun": 0.1}


def filler_sentence(rng: random.Random) -> str:
    c, cap = rng.choice(CAPITALS)
    n, n2 = rng.sample(NAMES, 2)
    return rng.choice(_FILLER).format(
        n=n, n2=n2, v=rng.choice(VERBS_PAST), adj=rng.choice(ADJECTIVES), noun=rng.choice(NOUNS),
        noun2=rng.choice(NOUNS),
        place=rng.choice(PLACES), obj=rng.choice(OBJECTS), c=c, cap=cap,
    )


class SentenceSampler:
    """Draws corpus sentences by the mixture; behaviour sentences come in pre-drawn pools.

    Kinds: ``filler``, ``name_to``, ``repeats`` (drawn fresh each time) and the task names
    (``ioi``, ``induction``, ... : the train split of their generators, pre-drawn)."""

    def __init__(self, seed: int, pool_size: int = 20000, mixture: dict[str, float] = MIXTURE) -> None:
        self.rng = random.Random(f"corpus:{seed}")
        self.kinds = list(mixture)
        self.weights = [mixture[k] for k in self.kinds]
        self.pools = {
            k: get_task(k).training_sentences(pool_size, seed=seed) for k in self.kinds
            if k not in ("filler", "name_to", "repeats")
        }

    def sentence(self) -> str:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind == "filler":
            return filler_sentence(self.rng)
        if kind == "name_to":
            return name_to_sentence(self.rng)
        if kind == "repeats":
            return repeat_sentence(self.rng)
        return self.rng.choice(self.pools[kind])


def vocabulary_text(seed: int = 0) -> list[str]:
    """Text that covers every word of both splits, to build the word-level vocabulary from."""
    rng = random.Random(seed)
    lines = [filler_sentence(rng) for _ in range(3000)]
    from tools.tasks import TASK_NAMES

    for name in TASK_NAMES:
        task = get_task(name)
        for split in ("train", "heldout"):
            for p in task.generate(400, split=split, seed=seed):
                lines += [p.clean + p.answer, p.corrupted + p.foil]
    lines += [" ".join(NAMES + NOUNS + ADJECTIVES + VERBS_PAST + PLACES + OBJECTS)]
    lines += [" ".join(f"{i:02d}" for i in range(100))]
    lines += ["was tired liked it was late had a plan saw the river"]
    return lines
