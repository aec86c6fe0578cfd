"""The common shape of every prompt-set generator.

A generator produces :class:`TaskPrompt` items — a clean prompt, the answer the model should
give, a foil (the most tempting wrong answer), and a corrupted prompt of the same shape in which
the information that selects the answer is gone or swapped. Each generator has a ``train`` and a
``heldout`` split; the held-out split draws from names, entities, token pools or templates that
the train split never uses (each generator's docstring says which).

Answers and foils are written as the text that follows the prompt (``" Mary"``, ``"32"``), so a
single generator serves word-level, BPE and sentencepiece tokenizers alike: whether an answer is
one token is decided by tokenising ``prompt + answer`` (see :func:`answer_token_id`).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict

from tools.errors import TokenizationError, UserInputError

Split = Literal["train", "heldout"]
Metric = Literal["logit_diff", "prob_diff"]

MAX_SEED = 2**32 - 1
"""The largest seed a user may give (``--seed``, a spec's ``seed``, a question's ``seeds``). The
seeds derived from one (the critic's per-claim seed, itself below 2**32, and the ``seed * 1000 + i``
of its random directions; the held-out split's ``seed + 1000``) then stay within what numpy's and
torch's generators and the run checkpoints hold (64 bits)."""


def check_prompt_count(n: int | None) -> int | None:
    """``n`` (None: the command's default), if it is a prompt count a user may give: at least
    two, since every verdict is a bootstrap over prompts.

    Raises:
        UserInputError: one line.
    """
    if n is not None and n < 2:
        raise UserInputError(f"--n must be at least 2 (a bootstrap over prompts needs two), not {n}")
    return n


def check_seed(seed: int) -> int:
    """``seed``, if it is a seed a user may give (0 to `MAX_SEED`).

    Raises:
        UserInputError: one line.
    """
    if not 0 <= seed <= MAX_SEED:
        raise UserInputError(f"--seed must be a whole number from 0 to {MAX_SEED}, not {seed}")
    return seed


class TaskPrompt(BaseModel):
    """One item of a behaviour's prompt set."""

    model_config = ConfigDict(frozen=True)

    clean: str
    """The prompt on which the model shows the behaviour."""
    answer: str
    """The expected continuation, written as it follows the prompt (usually with a leading space)."""
    foil: str
    """The most tempting wrong continuation (for IOI: the subject; for facts: another capital)."""
    corrupted: str
    """Same shape as ``clean`` with the answer-selecting information removed or swapped."""
    answers: tuple[str, ...] = ()
    """Every correct continuation, when the behaviour accepts a set (greater-than: every greater year)."""
    foils: tuple[str, ...] = ()
    """Every wrong continuation of the set-valued metric (greater-than: every lesser year)."""

    def answer_set(self) -> tuple[str, ...]:
        return self.answers or (self.answer,)

    def foil_set(self) -> tuple[str, ...]:
        return self.foils or (self.foil,)


class TaskGenerator(ABC):
    """A seeded generator of prompt sets for one behaviour."""

    name: str
    """Registry name (``ioi``, ``induction``, ``facts``, ``greater_than``, ``pronoun``)."""
    title: str
    """Human-readable behaviour name."""
    metric: Metric = "logit_diff"
    """The behaviour's headline metric; every task also reports logit difference and accuracy."""

    @abstractmethod
    def _sample(self, rng: random.Random, split: Split) -> TaskPrompt:
        """Draw one item of ``split``."""

    def generate(
        self,
        n: int,
        *,
        split: Split = "heldout",
        seed: int = 0,
        tokenizer=None,
        max_tries: int = 50,
    ) -> list[TaskPrompt]:
        """``n`` items of ``split`` drawn with ``seed``.

        With a tokenizer, items whose answers or foils are not single tokens, or whose corrupted
        prompt tokenises to a different length than the clean one, are skipped and redrawn; if
        fewer than ``n`` usable items turn up in ``n * max_tries`` draws, a
        :class:`TokenizationError` says this behaviour cannot be expressed with that tokenizer.
        """
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
        rng = random.Random(f"{self.name}:{split}:{seed}")
        out: list[TaskPrompt] = []
        encoded: Encodings = {}  # the same prompts and answers recur from draw to draw
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > n * max_tries:
                raise TokenizationError(
                    f"task {self.name!r}: only {len(out)} of {n} prompts are expressible with this "
                    "tokenizer (answers must be single tokens and corrupted prompts the same length)"
                )
            item = self._sample(rng, split)
            if tokenizer is not None and not is_expressible(tokenizer, item, encoded=encoded):
                continue
            out.append(item)
        return out

    def training_sentences(self, n: int, *, seed: int = 0) -> list[str]:
        """``n`` full sentences of the train split (prompt, answer, and a closing token)."""
        return [p.clean + p.answer + " ." for p in self.generate(n, split="train", seed=seed)]


Encodings = dict[str, tuple[int, ...]]
"""Token ids by text, for one tokenizer, kept by a caller that encodes the same texts often
(a prompt once per candidate answer; a generator's draws). Never shared between tokenizers."""


def _encode(tokenizer, text: str, encoded: Encodings | None = None) -> list[int]:
    if encoded is None:
        return list(tokenizer(text, add_special_tokens=True)["input_ids"])
    ids = encoded.get(text)
    if ids is None:
        ids = encoded[text] = tuple(tokenizer(text, add_special_tokens=True)["input_ids"])
    return list(ids)


def answer_token_id(tokenizer, prompt: str, answer: str, *, encoded: Encodings | None = None) -> int:
    """The single token id that ``answer`` adds after ``prompt``.

    ``encoded``: token ids already computed with this tokenizer, read and extended here.

    Raises :class:`TokenizationError` if ``prompt + answer`` does not tokenise as the prompt's
    tokens followed by exactly one more token.
    """
    base = _encode(tokenizer, prompt, encoded)
    full = _encode(tokenizer, prompt + answer, encoded)
    if len(full) != len(base) + 1 or full[: len(base)] != base:
        raise TokenizationError(
            f"answer {answer!r} is not a single token after prompt {prompt[-40:]!r} for this "
            "tokenizer; choose an answer that is one token (try it with a leading space)"
        )
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and full[-1] == unk:
        raise TokenizationError(f"answer {answer!r} is not in this tokenizer's vocabulary (it maps to the unknown token)")
    return full[-1]


def is_expressible(tokenizer, item: TaskPrompt, *, encoded: Encodings | None = None) -> bool:
    """Whether every answer and foil is one token and clean/corrupted have equal length."""
    encoded = {} if encoded is None else encoded
    try:
        for a in item.answer_set() + item.foil_set() + (item.answer, item.foil):
            answer_token_id(tokenizer, item.clean, a, encoded=encoded)
    except TokenizationError:
        return False
    return len(_encode(tokenizer, item.clean, encoded)) == len(_encode(tokenizer, item.corrupted, encoded))


def split_pool(pool: Sequence[str], heldout_every: int = 4) -> tuple[list[str], list[str]]:
    """Deterministically split a pool: every ``heldout_every``-th item is held out."""
    train = [w for i, w in enumerate(pool) if i % heldout_every != heldout_every - 1]
    held = [w for i, w in enumerate(pool) if i % heldout_every == heldout_every - 1]
    return train, held


def split_templates(first: Sequence[str], second: Sequence[str], heldout_every: int = 4) -> tuple[list[str], list[str]]:
    """Templates ``first[i] + " " + second[j]`` (capitalised), split into train and held-out.

    A pair ``(i, j)`` is held out when ``(i + j) % heldout_every == 0``: every part is used by
    some train template, but no held-out template (a whole combination) ever appears in train.
    An empty part contributes nothing (no stray space).
    """
    train, held = [], []
    for i, a in enumerate(first):
        for j, b in enumerate(second):
            (held if (i + j) % heldout_every == 0 else train).append(capitalise(f"{a} {b}".strip()))
    return train, held


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def pick(rng: random.Random, pool: Sequence[str], k: int = 1, exclude: Sequence[str] = ()) -> list[str]:
    """``k`` distinct items of ``pool`` not in ``exclude``."""
    choices = [w for w in pool if w not in exclude]
    return rng.sample(choices, k)
