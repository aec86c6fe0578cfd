"""Which token positions an investigation's ablations act on, and how to name them in words.

A corrupted prompt differs from its clean twin at a few tokens (the repeated name in IOI,
the country in factual recall). Before the first of them the two runs of a causal model are
identical, so the information that decides the answer can only live from there on:
`scope_positions` gives those positions, counted from each prompt's end, for a prompt set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agents.llm.fence import untrusted_md
from tools.experiments.prompts import PromptPairs, tokenize_prompts

if TYPE_CHECKING:
    from tools.loading import LoadedModel


def scope_positions(model: "LoadedModel", prompts: PromptPairs) -> tuple[int, ...] | None:
    """``(-k, ..., -1)``: every position from the earliest first difference between a clean
    prompt and its corrupted twin (counted from the end) to the last token, never further back
    than the shortest prompt's second token. None when no pair differs (nothing to restrict)."""
    batch = tokenize_prompts(model, prompts, need_corrupted=True, aligned=True)
    depth = 0
    for row in range(batch.size):
        length = int(batch.lengths[row])
        differs = (batch.clean[row, :length] != batch.corrupted[row, :length]).nonzero()
        if len(differs):
            depth = max(depth, length - int(differs[0]))
    if depth == 0:
        return None
    depth = min(depth, int(batch.lengths.min()) - 1)
    return tuple(range(-depth, 0)) if depth > 0 else None


def position_tokens(model: "LoadedModel", prompts: PromptPairs, positions: tuple[int, ...]) -> dict[int, dict]:
    """Per position of the first prompt: its token as text, whether the corruption changes it,
    and whether it repeats an earlier token."""
    batch = tokenize_prompts(model, prompts, need_corrupted=prompts.has_corrupted, aligned=prompts.has_corrupted)
    length = int(batch.lengths[0])
    out = {}
    for p in positions:
        i = length + p if p < 0 else p
        out[p] = {"token": model.tokenizer.decode([int(batch.clean[0, i])]),
                  "changed": batch.corrupted is not None and int(batch.clean[0, i]) != int(batch.corrupted[0, i]),
                  "repeat": int(batch.clean[0, i]) in batch.clean[0, :i].tolist()}
    return out


def label_position(token: dict) -> str:
    """``'Mary'`` as a code span, with what is special about it (for Markdown text)."""
    notes = [n for n, on in (("changed by the corruption", token["changed"]),
                             ("a repeat of an earlier token", token["repeat"])) if on]
    return untrusted_md(repr(token["token"])) + (f" ({'; '.join(notes)})" if notes else "")


def describe_positions(model: "LoadedModel", prompts: PromptPairs, positions: tuple[int, ...]) -> dict[int, str]:
    """A label per position of the first prompt: its token, and whether the corruption changes it."""
    return {p: label_position(t) for p, t in position_tokens(model, prompts, positions).items()}
