"""Indirect-object identification: "When Mary and John went to the store, John gave a drink to" → " Mary".

Held-out split: names (every fourth female and male name) and templates never used in train.
The corrupted prompt repeats the other name in the second clause, so the answer flips
(ABBA → ABAB); the foil is the subject.
"""

from __future__ import annotations

import random

from tools.tasks.base import Split, TaskGenerator, TaskPrompt, pick, split_pool
from tools.tasks.vocab import FEMALE_NAMES, MALE_NAMES, OBJECTS, PLACES

_TRAIN_TEMPLATES = (
    "When {A} and {B} went to the {place}, {S} gave a {obj} to",
    "After {A} and {B} went to the {place}, {S} handed a {obj} to",
    "While {A} and {B} were at the {place}, {S} gave a {obj} to",
    "Then, {A} and {B} had a long talk at the {place}. {S} gave a {obj} to",
)
_HELDOUT_TEMPLATES = (
    "When {A} and {B} got to the {place}, {S} passed a {obj} to",
    "Yesterday {A} and {B} visited the {place}, and {S} gave a {obj} to",
)

_TRAIN_NAMES, _HELDOUT_NAMES = (
    [*split_pool(FEMALE_NAMES)[0], *split_pool(MALE_NAMES)[0]],
    [*split_pool(FEMALE_NAMES)[1], *split_pool(MALE_NAMES)[1]],
)


class IOITask(TaskGenerator):
    name = "ioi"
    title = "indirect object identification"

    def _sample(self, rng: random.Random, split: Split) -> TaskPrompt:
        names = _TRAIN_NAMES if split == "train" else _HELDOUT_NAMES
        templates = _TRAIN_TEMPLATES if split == "train" else _HELDOUT_TEMPLATES
        io, s = pick(rng, names, 2)
        first, second = (io, s) if rng.random() < 0.5 else (s, io)
        template = rng.choice(templates)
        fields = dict(A=first, B=second, place=rng.choice(PLACES), obj=rng.choice(OBJECTS))
        clean = template.format(S=s, **fields)
        corrupted = template.format(S=io, **fields)
        return TaskPrompt(clean=clean, answer=" " + io, foil=" " + s, corrupted=corrupted)
