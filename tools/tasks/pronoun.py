"""Pronoun agreement: "Mary said that" → " she".

A name's gender is knowledge the model must hold, so names are shared by both splits.
Templates are an opening × a reporting clause; the held-out split uses combinations never used
in train (each part alone does occur in train). The corrupted prompt uses a name of the other
gender; the foil is the other pronoun.
"""

from __future__ import annotations

import random

from tools.tasks.base import Split, TaskGenerator, TaskPrompt, split_templates
from tools.tasks.vocab import FEMALE_NAMES, MALE_NAMES

OPENINGS = ("", "Yesterday", "Later", "At the party", "In the morning")
CLAUSES = (
    "{n} said that", "{n} thinks that", "{n} knew that", "{n} told us that", "{n} wrote that",
    "{n} went home because", "{n} was happy because", "{n} left early because",
)
TRAIN_TEMPLATES, HELDOUT_TEMPLATES = split_templates(OPENINGS, CLAUSES)


class PronounTask(TaskGenerator):
    name = "pronoun"
    title = "pronoun agreement"

    def _sample(self, rng: random.Random, split: Split) -> TaskPrompt:
        templates = TRAIN_TEMPLATES if split == "train" else HELDOUT_TEMPLATES
        female = rng.random() < 0.5
        name = rng.choice(FEMALE_NAMES if female else MALE_NAMES)
        other = rng.choice(MALE_NAMES if female else FEMALE_NAMES)
        t = rng.choice(templates)
        pro, anti = (" she", " he") if female else (" he", " she")
        return TaskPrompt(clean=t.format(n=name), answer=pro, foil=anti, corrupted=t.format(n=other))

    def training_sentences(self, n: int, *, seed: int = 0) -> list[str]:
        ends = ("was tired", "liked it", "was late", "had a plan", "saw the river")
        rng = random.Random(f"{self.name}:corpus:{seed}")
        return [p.clean + p.answer + " " + rng.choice(ends) + " ." for p in self.generate(n, split="train", seed=seed)]
