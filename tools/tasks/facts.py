"""Factual recall over a fixed fact table: "The capital of France is" → " Paris".

The facts themselves are what the model must know, so they are shared by both splits.
Templates are a framing × a query; the held-out split uses combinations never used in train
(each part alone does occur in train). The corrupted prompt asks about another country; its
capital is the foil.
"""

from __future__ import annotations

import random

from tools.tasks.base import Split, TaskGenerator, TaskPrompt, split_templates
from tools.tasks.vocab import CAPITALS

FRAMES = ("", "As everyone knows,", "I read today that", "In the news,", "My teacher said")
QUERIES = ("the capital of {c} is", "the capital city of {c} is", "the main city of {c} is")
TRAIN_TEMPLATES, HELDOUT_TEMPLATES = split_templates(FRAMES, QUERIES, 3)


class FactsTask(TaskGenerator):
    name = "facts"
    title = "factual recall (capital of a country)"

    def _sample(self, rng: random.Random, split: Split) -> TaskPrompt:
        templates = TRAIN_TEMPLATES if split == "train" else HELDOUT_TEMPLATES
        (c, cap), (c2, cap2) = rng.sample(CAPITALS, 2)
        t = rng.choice(templates)
        return TaskPrompt(clean=t.format(c=c), answer=" " + cap, foil=" " + cap2, corrupted=t.format(c=c2))
