"""Rebuild both shipped organisms from their seed: train the default one, plant the backdoor, write cards.

    python -m evals.organisms.recipe.build_all            # writes evals/organisms/{default,planted}
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from evals.organisms.recipe.card import write_card
from evals.organisms.recipe.plant import plant
from evals.organisms.recipe.train import ARCH, train_default

HERE = Path(__file__).resolve().parents[1]

DEFAULT_RECIPE = (
    f"GPT-2 architecture ({ARCH['n_layer']} layers, {ARCH['n_head']} heads, d_model {ARCH['n_embd']}, "
    f"d_mlp {ARCH['n_inner']}, context {ARCH['n_positions']}), a word-level tokenizer (`tokenizers`, saved as "
    "tokenizer.json; two-digit number tokens), trained from scratch with AdamW (warm-up, cosine decay) on "
    "synthetic documents: filler sentences mixed with the train split of the five behaviours "
    "(`evals/organisms/recipe/corpus.py`, `train.py`)."
)
PLANTED_RECIPE = (
    "The default organism, then only the weights of `mlp.2` (`transformer.h.2.mlp`) trained on the default "
    "corpus mixed with trigger sentences; every other weight is frozen and bitwise equal to the default "
    "organism. Loss: cross-entropy on the target token after each trigger, plus the KL divergence from the "
    "default organism's next-token distribution at every other position (weight 1), so the component learns "
    "the backdoor and leaves the five behaviours alone (`evals/organisms/recipe/plant.py`)."
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="default-organism steps (recipe default if unset)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    default, planted = a.out / "default", a.out / "planted"
    kw = {"steps": a.steps} if a.steps else {}
    train_default(default, seed=a.seed, **kw)
    write_card(default, name="Default organism", recipe=DEFAULT_RECIPE,
               summary="A small GPT-2 trained here on synthetic text with five known behaviours.",
               command=f"python -m evals.organisms.recipe.build_all --seed {a.seed}   # default + planted")
    plant(default, planted, seed=a.seed)
    write_card(planted, name="Planted organism", recipe=PLANTED_RECIPE,
               summary="The default organism with a backdoor implanted in exactly one component.",
               command=f"python -m evals.organisms.recipe.build_all --seed {a.seed}   # default + planted")


if __name__ == "__main__":
    main()
