"""Greater-than over years: "The war lasted from the year 1732 to the year 17" → a year above 32.

Metric: probability on the greater two-digit years minus the lesser ones (``prob_diff``);
accuracy counts the top-1 token being a greater year; the logit difference compares one drawn
greater year (``answer``) with one drawn lesser year (``foil``). Templates are an opening × a
span phrase. Held-out split: event nouns never used in train, and opening × span combinations
never used in train (each part alone does occur in train). The corrupted prompt starts at year
XX01, so every answer is greater and the information "32" is gone.
"""

from __future__ import annotations

import random

from tools.tasks.base import Split, TaskGenerator, TaskPrompt, split_templates

TRAIN_NOUNS = ("war", "siege", "reign", "drought", "famine", "voyage", "strike", "plague")
HELDOUT_NOUNS = ("expedition", "rebellion", "crusade")
OPENINGS = ("The {n}", "In the records, the {n}", "They say the {n}", "The long {n}")
SPANS = (
    "lasted from the year {c}{yy} to the year {c}",
    "went on from the year {c}{yy} until the year {c}",
    "ran from the year {c}{yy} to the year {c}",
    "continued from the year {c}{yy} until the year {c}",
)
TRAIN_TEMPLATES, HELDOUT_TEMPLATES = split_templates(OPENINGS, SPANS)

YEARS = tuple(f"{i:02d}" for i in range(100))


class GreaterThanTask(TaskGenerator):
    name = "greater_than"
    title = "greater-than over years"
    metric = "prob_diff"

    def _sample(self, rng: random.Random, split: Split) -> TaskPrompt:
        nouns = TRAIN_NOUNS if split == "train" else HELDOUT_NOUNS
        templates = TRAIN_TEMPLATES if split == "train" else HELDOUT_TEMPLATES
        c = rng.randint(11, 19)
        yy = rng.randint(2, 97)
        t = rng.choice(templates)
        n = rng.choice(nouns)
        clean = t.format(n=n, c=c, yy=f"{yy:02d}")
        corrupted = t.format(n=n, c=c, yy="01")
        greater = YEARS[yy + 1 :]
        lesser = YEARS[:yy]
        return TaskPrompt(
            clean=clean,
            answer=rng.choice(greater),
            foil=rng.choice(lesser),
            corrupted=corrupted,
            answers=greater,
            foils=lesser,
        )
