"""Pronoun agreement: "Mary said that" → " she".

A name's gender is knowledge the model must hold, so names are shared by both splits; the
held-out split uses templates never used in train. The corrupted prompt uses a name of the other
gender; the foil is the other pronoun.
"""

from __future__ import annotations

import random

from tools.tasks.base import Split, TaskGenerator, TaskPrompt
from tools.tasks.vocab import FEMALE_NAMES, MALE_NAMES

_TRAIN_TEMPLATES = ("{n} said that", "{n} thinks that", "{n} went home because", "{n} told us that")
_HELDOUT_TEMPLATES = ("{n} knew that", "{n} was happy because")


class PronounTask(TaskGenerator):
    name = "pronoun"
    title = "pronoun agreement"

    def _sample(self, rng: random.Random, split: Split) -> TaskPrompt:
        templates = _TRAIN_TEMPLATES if split == "train" else _HELDOUT_TEMPLATES
        female = rng.random() < 0.5
        name = rng.choice(FEMALE_NAMES if female else MALE_NAMES)
        other = rng.choice(MALE_NAMES if female else FEMALE_NAMES)
        t = rng.choice(templates)
        pro, anti = (" she", " he") if female else (" he", " she")
        return TaskPrompt(clean=t.format(n=name), answer=pro, foil=anti, corrupted=t.format(n=other))
