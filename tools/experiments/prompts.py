"""The prompt input of every experiment: clean/corrupted pairs with an answer and a foil.

`PromptPairs` is part of a spec (pure data): either explicit lists, or a task name with
``n``, ``split`` and ``seed`` for `tools.tasks` to generate them. Structural mistakes
(an empty set, lists of different lengths, an unknown task) raise `SpecError` when the
spec is built. `tokenize_prompts` turns it into a `PromptBatch` for one model, checking
what needs the tokenizer (single-token answers, clean and corrupted of equal token
length where positions must align) — still before any forward pass.

Prompts are **right**-padded: row ``i``'s real tokens sit at positions ``0 .. lengths[i]-1``
and the metric is read at ``lengths[i] - 1``. In a causal model later (padding) tokens
never influence earlier ones, so padding changes no number and no attention mask is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
import weakref
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from tools.errors import SpecError, TokenizationError, UserInputError

if TYPE_CHECKING:
    from tools.loading import LoadedModel

from tools.tasks.base import TaskPrompt


class PromptPairs(BaseModel):
    """Clean prompts with answer and foil (and optionally corrupted prompts), given or generated.

    Give either the lists (``clean``, ``answer``, ``foil``, and ``corrupted`` when the
    experiment needs it) or ``task`` with ``n``; not both.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    clean: tuple[str, ...] = ()
    """Prompts on which the model shows the behaviour."""
    corrupted: tuple[str, ...] = ()
    """Same-shape prompts with the answer-selecting information removed (empty: none)."""
    answer: tuple[str, ...] = ()
    """The expected continuation of each clean prompt, as it follows the prompt (``" Mary"``)."""
    foil: tuple[str, ...] = ()
    """The most tempting wrong continuation of each clean prompt."""
    task: str | None = None
    """A `tools.tasks` name (``ioi``, ``induction``, ...) to generate the prompts instead."""
    n: int | None = None
    """How many prompts to generate from ``task``."""
    split: Literal["train", "heldout"] = "heldout"
    """Which split of ``task`` to draw from."""
    seed: int = 0
    """Seed of the task generator."""

    @model_validator(mode="after")
    def _check_shape(self) -> "PromptPairs":
        lists = {"clean": self.clean, "corrupted": self.corrupted, "answer": self.answer,
                 "foil": self.foil}
        if self.task is not None:
            from tools.tasks import TASK_NAMES

            given = [name for name, value in lists.items() if value]
            if given:
                raise SpecError(f"prompts.{given[0]}",
                                "give either prompt lists or a task to generate them, not both")
            if self.task.strip().lower().replace("-", "_") not in TASK_NAMES:
                raise SpecError("prompts.task",
                                f"unknown task {self.task!r}; known tasks: {', '.join(TASK_NAMES)}")
            if self.n is None or self.n < 1:
                raise SpecError("prompts.n", f"a task needs n >= 1 prompts to generate, got {self.n}")
            return self
        if self.n is not None:
            raise SpecError("prompts.n", "n is only used with a task; give the prompt lists alone")
        if not self.clean:
            raise SpecError("prompts.clean", "the prompt set is empty; give at least one clean "
                            "prompt with its answer and foil, or a task and n")
        for name in ("answer", "foil"):
            if len(lists[name]) != len(self.clean):
                raise SpecError(f"prompts.{name}", f"has {len(lists[name])} entries for "
                                f"{len(self.clean)} clean prompts; give one per prompt")
        if self.corrupted and len(self.corrupted) != len(self.clean):
            raise SpecError("prompts.corrupted", f"has {len(self.corrupted)} entries for "
                            f"{len(self.clean)} clean prompts; give one per prompt (or none)")
        for name, values in lists.items():
            for i, text in enumerate(values):
                if not text:
                    raise SpecError(f"prompts.{name}[{i}]", "is an empty string")
        return self

    @property
    def has_corrupted(self) -> bool:
        """Whether corrupted prompts are given or will be generated (every task has them)."""
        return self.task is not None or bool(self.corrupted)


@dataclass(frozen=True, eq=False)
class PromptBatch:
    """`PromptPairs` tokenised for one model (right-padded ``[batch, pos]`` id tensors)."""

    clean: torch.Tensor
    """Clean prompt ids ``[batch, pos]``, right-padded."""
    lengths: torch.Tensor
    """Real token count of each clean prompt ``[batch]``."""
    answer: torch.Tensor
    """Answer token id of each prompt ``[batch]``."""
    foil: torch.Tensor
    """Foil token id of each prompt ``[batch]``."""
    corrupted: torch.Tensor | None
    """Corrupted prompt ids ``[batch, pos']``, right-padded, or None."""
    corrupted_lengths: torch.Tensor | None
    """Real token count of each corrupted prompt, or None."""
    texts: tuple["TaskPrompt", ...]
    """The prompts as text."""

    @property
    def size(self) -> int:
        return int(self.clean.shape[0])

    @property
    def last(self) -> torch.Tensor:
        """Index of the last real clean token of each row ``[batch]``."""
        return self.lengths - 1

    @property
    def readout_ids(self) -> torch.Tensor:
        """``[batch, 2]``: answer and foil ids, the tokens every logit-difference metric reads."""
        return torch.stack([self.answer, self.foil], dim=1)

    def rows(self, start: int, stop: int) -> "PromptBatch":
        """The prompts ``start:stop``, padding trimmed to their longest."""
        lengths = self.lengths[start:stop]
        width = int(lengths.max())
        corrupted = corrupted_lengths = None
        if self.corrupted is not None:
            corrupted_lengths = self.corrupted_lengths[start:stop]
            corrupted = self.corrupted[start:stop, : int(corrupted_lengths.max())]
        return PromptBatch(self.clean[start:stop, :width], lengths, self.answer[start:stop],
                           self.foil[start:stop], corrupted, corrupted_lengths,
                           self.texts[start:stop])


_GENERATED: "weakref.WeakKeyDictionary[Any, dict[PromptPairs, list[TaskPrompt]]]" = weakref.WeakKeyDictionary()
"""Generated prompt sets per tokenizer: generation is deterministic, and checking every answer
of a set-valued task (greater-than's every later year) against the tokenizer costs more than a
small model's forward pass, so each experiment on the same set must not pay it again."""


def resolve_prompts(pairs: PromptPairs, tokenizer) -> list["TaskPrompt"]:
    """The prompts as `TaskPrompt` items (generated with ``tokenizer`` when ``pairs.task`` is set)."""
    from tools.tasks import get_task
    from tools.tasks.base import TaskPrompt

    if pairs.task is None:
        corrupted = pairs.corrupted or pairs.clean
        return [TaskPrompt(clean=c, corrupted=x, answer=a, foil=f)
                for c, x, a, f in zip(pairs.clean, corrupted, pairs.answer, pairs.foil)]
    try:
        cache = _GENERATED.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no cache
        cache = {}
    if pairs not in cache:
        try:
            cache[pairs] = get_task(pairs.task).generate(pairs.n, split=pairs.split, seed=pairs.seed,
                                                         tokenizer=tokenizer)
        except UserInputError as error:
            raise SpecError("prompts.task", str(error)) from None
    return list(cache[pairs])


def tokenize_prompts(
    model: "LoadedModel", pairs: PromptPairs, *, need_corrupted: bool = False, aligned: bool = False
) -> PromptBatch:
    """Tokenise ``pairs`` for ``model``; every check that needs the tokenizer happens here.

    Args:
        need_corrupted: the experiment needs corrupted prompts.
        aligned: each corrupted prompt must have its clean prompt's token length
            (positions are compared one to one, as in patching).

    Raises:
        SpecError: naming the field, for a missing corrupted set, an answer or foil that is
            not one token, or clean and corrupted prompts of different token lengths.
    """
    tokenizer = model.tokenizer
    if need_corrupted and not pairs.has_corrupted:
        raise SpecError("prompts.corrupted", "this experiment compares clean and corrupted runs; "
                        "give one corrupted prompt per clean prompt (or a task)")
    items = resolve_prompts(pairs, tokenizer)
    n = len(items)
    # One batched tokenizer call for every text this function needs (clean, clean + answer,
    # clean + foil, and corrupted): per-call overhead, not the encoding itself, dominates for
    # short prompts, and six calls per pair cost about half a forward pass of a small model.
    # Batched encoding gives each text exactly the ids of encoding it alone.
    texts = [item.clean for item in items]
    texts += [item.clean + item.answer for item in items]
    texts += [item.clean + item.foil for item in items]
    if pairs.has_corrupted:
        texts += [item.corrupted for item in items]
    encoded = _encode_many(tokenizer, texts)
    clean, with_answer, with_foil = encoded[:n], encoded[n: 2 * n], encoded[2 * n: 3 * n]
    unk = getattr(tokenizer, "unk_token_id", None)
    answers, foils = [], []
    for i, item in enumerate(items):
        if not clean[i]:
            raise SpecError(f"prompts.clean[{i}]", f"{item.clean!r} tokenises to no tokens")
        for field, text, full, out in (("answer", item.answer, with_answer[i], answers),
                                       ("foil", item.foil, with_foil[i], foils)):
            try:
                out.append(_single_token(tokenizer, unk, item.clean, text, clean[i], full))
            except TokenizationError as error:
                raise SpecError(f"prompts.{field}[{i}]", str(error)) from None
    corrupted = None
    if pairs.has_corrupted:
        corrupted = encoded[3 * n:]
        for i, (item, ids) in enumerate(zip(items, corrupted)):
            if not ids:
                raise SpecError(f"prompts.corrupted[{i}]", f"{item.corrupted!r} tokenises to no tokens")
        if aligned:
            for i, (c, x) in enumerate(zip(clean, corrupted)):
                if len(c) != len(x):
                    raise SpecError(
                        f"prompts.corrupted[{i}]",
                        f"has {len(x)} tokens but its clean prompt has {len(c)}; patching compares "
                        "positions one to one, so each pair must tokenise to the same length")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    clean_ids, lengths = _pad(clean, pad)
    corrupted_ids = corrupted_lengths = None
    if corrupted is not None:
        corrupted_ids, corrupted_lengths = _pad(corrupted, pad)
    device = model.device
    return PromptBatch(
        clean=clean_ids.to(device), lengths=lengths,
        answer=torch.tensor(answers, dtype=torch.long), foil=torch.tensor(foils, dtype=torch.long),
        corrupted=None if corrupted_ids is None else corrupted_ids.to(device),
        corrupted_lengths=corrupted_lengths, texts=tuple(items),
    )


def _encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """The ids of each text (special tokens added), as encoding it alone would give them."""
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]


def _single_token(tokenizer, unk: int | None, prompt: str, answer: str, base: list[int],
                  full: list[int]) -> int:
    """`tools.tasks.base.answer_token_id` from the already encoded ``prompt`` and ``prompt + answer``.

    Only the accepting case (``full`` is ``base`` plus one token that is not the unknown
    token, the same rule as ``answer_token_id``) is decided here, without more tokenizer calls;
    anything else is handed to ``answer_token_id`` itself, so a rejection raises exactly its
    `TokenizationError`, message included. ``unk`` is the tokenizer's ``unk_token_id`` (or
    None), looked up once per batch: the property is not free.
    """
    if len(full) == len(base) + 1 and full[: len(base)] == base and (unk is None or full[-1] != unk):
        return full[-1]
    from tools.tasks.base import answer_token_id

    return answer_token_id(tokenizer, prompt, answer)


def _pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(r) for r in rows]
    width = max(lengths)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    return ids, torch.tensor(lengths, dtype=torch.long)
