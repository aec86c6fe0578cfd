"""Factual recall over a fixed fact table: "The capital of France is" → " Paris".

The facts themselves are what the model must know, so they are shared by both splits; the
held-out split uses query templates never used in train. The corrupted prompt asks about
another country; its capital is the foil.
"""

from __future__ import annotations

import random

from tools.tasks.base import Split, TaskGenerator, TaskPrompt
from tools.tasks.vocab import CAPITALS

_TRAIN_TEMPLATES = (
    "The capital of {c} is",
    "The capital city of {c} is",
    "Q: What is the capital of {c}? A:",
)
_HELDOUT_TEMPLATES = (
    "As everyone knows, the capital of {c} is",
    "I read today that the capital city of {c} is",
)


class FactsTask(TaskGenerator):
    name = "facts"
    title = "factual recall (capital of a country)"

    def _sample(self, rng: random.Random, split: Split) -> TaskPrompt:
        templates = _TRAIN_TEMPLATES if split == "train" else _HELDOUT_TEMPLATES
        (c, cap), (c2, cap2) = rng.sample(CAPITALS, 2)
        t = rng.choice(templates)
        return TaskPrompt(clean=t.format(c=c), answer=" " + cap, foil=" " + cap2, corrupted=t.format(c=c2))
