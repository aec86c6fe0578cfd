"""Variants of a user's own prompt: the same sentence with other names or other entities.

A question about one prompt ("Why does the model complete "The Eiffel Tower is located in the
city of" with "Paris"?") needs more prompts of the same shape — to find a mechanism that is not
an accident of one sentence, and to re-test claims on prompts never used to find them. Two
kinds of prompt can be varied without changing what they ask:

- **names** (IOI-like): the answer and the foil are names that occur in the prompt; every
  occurrence of the pair is replaced by another pair of names (``Mary``/``John`` ->
  ``Anna``/``Tom``), in the clean and the corrupted prompt alike.
- **entities** (factual recall): the prompt names an entity of a fact table (a country, a
  landmark) and the answer is its fact (the capital, the city); the entity is replaced by another
  one of the table, and the corrupted prompt by a third, whose fact is the foil.
- **bystanders**: otherwise, names in the prompt that are neither the answer nor the foil
  (``We saw Mary at the park and the cerulean`` -> ``banana``) are replaced by other names of
  the same gender (a name can be what the answer depends on: ``Mary said that`` -> ``she``), in
  the clean and the corrupted prompt alike; the answer and the foil stay as they are.

`derive_entity_corruption` builds the corrupted prompt and the foil for a factual prompt that
came without them. `vary_prompt` gives seeded variants, each checked against the tokenizer
(answer and foil one token, corrupted prompt of the clean one's token length). Pure functions:
no model, no I/O.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from tools.tasks.base import TaskPrompt, is_expressible
from tools.tasks.vocab import CAPITALS, FEMALE_NAMES, LANDMARKS, MALE_NAMES

FACT_TABLES: dict[str, tuple[tuple[str, str], ...]] = {"capital": CAPITALS, "landmark": LANDMARKS}
NAMES: tuple[str, ...] = FEMALE_NAMES + MALE_NAMES


def _occurs(word: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None


def _replace(text: str, mapping: dict[str, str]) -> str:
    """Replace whole-word occurrences of every key at once (so swaps do not collide)."""
    if not mapping:
        return text
    pattern = "|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True))
    return re.sub(rf"(?<!\w)(?:{pattern})(?!\w)", lambda m: mapping[m.group()], text)


def find_entity(prompt: str, answer_word: str) -> tuple[str, str] | None:
    """``(table name, entity)`` when ``prompt`` names an entity whose fact is ``answer_word``."""
    for name, table in FACT_TABLES.items():
        for entity, fact in sorted(table, key=lambda row: -len(row[0])):
            if fact == answer_word and _occurs(entity, prompt):
                return name, entity
    return None


def derive_entity_corruption(prompt: str, answer_word: str, tokenizer,
                             foil_word: str | None = None) -> tuple[str, str, str] | None:
    """``(corrupted prompt, foil word, entity replaced)`` for a factual prompt, or None.

    The entity is replaced by the first other entity of its table (in table order) whose fact
    differs from the answer (is ``foil_word``, when given), keeps the prompt's token count and
    whose fact is one token.
    """
    found = find_entity(prompt, answer_word)
    if found is None:
        return None
    table, entity = found
    for other, fact in FACT_TABLES[table]:
        if fact == answer_word or other == entity or (foil_word is not None and fact != foil_word):
            continue
        corrupted = _replace(prompt, {entity: other})
        item = TaskPrompt(clean=prompt, corrupted=corrupted, answer=_after(prompt, answer_word),
                          foil=_after(prompt, fact))
        if is_expressible(tokenizer, item):
            return corrupted, fact, entity
    return None


def vary_prompt(item: TaskPrompt, tokenizer, n: int, *, seed: int,
                exclude: Sequence[str] = ()) -> list[TaskPrompt]:
    """Up to ``n`` distinct variants of ``item`` (never one whose clean prompt is in ``exclude``
    or is the item's own), drawn with ``seed``; empty when the prompt cannot be varied."""
    answer, foil = item.answer.strip(), item.foil.strip()
    rng = random.Random(f"vary:{item.clean}:{seed}")
    seen = set(exclude) | {item.clean}
    out: list[TaskPrompt] = []
    candidates = (_name_variants(item, answer, foil, rng) or _entity_variants(item, answer, foil, rng)
                  or _bystander_variants(item, answer, foil, rng))
    for variant in candidates:
        if len(out) >= n:
            break
        if variant.clean in seen or not is_expressible(tokenizer, variant):
            continue
        seen.add(variant.clean)
        out.append(variant)
    return out


def _name_variants(item: TaskPrompt, answer: str, foil: str, rng: random.Random) -> list[TaskPrompt]:
    if not (answer in NAMES and foil in NAMES and _occurs(answer, item.clean) and _occurs(foil, item.clean)):
        return []
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b and (a, b) != (answer, foil)]
    rng.shuffle(pairs)
    return [TaskPrompt(clean=_replace(item.clean, {answer: a, foil: b}),
                       corrupted=_replace(item.corrupted, {answer: a, foil: b}),
                       answer=_after(item.clean, a), foil=_after(item.clean, b)) for a, b in pairs]


def _entity_variants(item: TaskPrompt, answer: str, foil: str, rng: random.Random) -> list[TaskPrompt]:
    found = find_entity(item.clean, answer)
    if found is None:
        return []
    table, entity = found
    rows = list(FACT_TABLES[table])
    pairs = [(x, y) for x in rows for y in rows if x[1] != y[1]]
    rng.shuffle(pairs)
    return [TaskPrompt(clean=_replace(item.clean, {entity: x[0]}), corrupted=_replace(item.clean, {entity: y[0]}),
                       answer=_after(item.clean, x[1]), foil=_after(item.clean, y[1])) for x, y in pairs]


def _bystander_variants(item: TaskPrompt, answer: str, foil: str, rng: random.Random) -> list[TaskPrompt]:
    # A name can carry what the prompt asks about (``Mary said that`` -> `` she``), so each one
    # is replaced by another of its own class: female by female, male by male.
    mappings_per_class = []
    for cls in (FEMALE_NAMES, MALE_NAMES):
        pool = [n for n in cls if n not in (answer, foil)]
        present = [n for n in pool if _occurs(n, item.clean) or _occurs(n, item.corrupted)]
        others = [n for n in pool if n not in present]
        if present and len(others) >= len(present):
            mappings_per_class.append((present, others))
    if not mappings_per_class:
        return []
    out = []
    for _ in range(4 * sum(len(others) for _, others in mappings_per_class)):
        mapping = {}
        for present, others in mappings_per_class:
            mapping.update(zip(present, rng.sample(others, len(present))))
        out.append(TaskPrompt(clean=_replace(item.clean, mapping), corrupted=_replace(item.corrupted, mapping),
                              answer=item.answer, foil=item.foil))
    return out


def _after(prompt: str, word: str) -> str:
    return word if prompt[-1:].isspace() else " " + word
