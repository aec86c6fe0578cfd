"""Indirect-object identification: "When Mary and John went to the store, John gave a drink to" → " Mary".

Templates are a scene clause × an action clause. Held-out split: names (every fourth female
and male name) and scene × action combinations never used in train (each part alone does occur
in train). The corrupted prompt repeats the other name in the action clause, so the answer flips
(ABBA → ABAB); the foil is the subject.
"""

from __future__ import annotations

import random

from tools.tasks.base import Split, TaskGenerator, TaskPrompt, pick, split_pool, split_templates
from tools.tasks.vocab import FEMALE_NAMES, MALE_NAMES, OBJECTS, PLACES

SCENES = (
    "When {A} and {B} went to the {place},",
    "After {A} and {B} went to the {place},",
    "While {A} and {B} were at the {place},",
    "Then, {A} and {B} had a long talk at the {place}.",
    "Yesterday {A} and {B} visited the {place}, and",
    "When {A} and {B} got to the {place},",
)
ACTIONS = (
    "{S} gave a {obj} to",
    "{S} handed a {obj} to",
    "{S} passed a {obj} to",
    "{S} sent a {obj} to",
    "{S} showed a {obj} to",
)
TRAIN_TEMPLATES, HELDOUT_TEMPLATES = split_templates(SCENES, ACTIONS)
TRAIN_NAMES, HELDOUT_NAMES = (
    [*split_pool(FEMALE_NAMES)[0], *split_pool(MALE_NAMES)[0]],
    [*split_pool(FEMALE_NAMES)[1], *split_pool(MALE_NAMES)[1]],
)


class IOITask(TaskGenerator):
    name = "ioi"
    title = "indirect object identification"

    def _sample(self, rng: random.Random, split: Split) -> TaskPrompt:
        names = TRAIN_NAMES if split == "train" else HELDOUT_NAMES
        templates = TRAIN_TEMPLATES if split == "train" else HELDOUT_TEMPLATES
        io, s = pick(rng, names, 2)
        first, second = (io, s) if rng.random() < 0.5 else (s, io)
        template = rng.choice(templates)
        fields = dict(A=first, B=second, place=rng.choice(PLACES), obj=rng.choice(OBJECTS))
        clean = template.format(S=s, **fields)
        corrupted = template.format(S=io, **fields)
        return TaskPrompt(clean=clean, answer=" " + io, foil=" " + s, corrupted=corrupted)
