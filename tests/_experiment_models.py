"""Shared pieces of the experiment tests: tiny random models and prompt sets (no download)."""

from __future__ import annotations

import random

import torch

from tests.test_adapters import tiny_model, tiny_tokenizer
from tools.experiments import PromptPairs
from tools.loading import LoadedModel, wrap_model

EXPERIMENT_FAMILIES = ("gpt2", "gemma3", "llama", "gpt_neox")


def tiny_loaded(family: str, seed: int = 0) -> LoadedModel:
    """A 2-layer random model of ``family`` with the 64-word tokenizer ``w0 .. w61``."""
    return wrap_model(tiny_model(family, seed), tiny_tokenizer(), model_id=f"tiny-{family}")


def word_pairs(n: int = 3, length: int | list[int] = 6, seed: int = 0,
               same: bool = False) -> PromptPairs:
    """``n`` random word prompts; corrupted ones have the same lengths (or equal clean if ``same``)."""
    rng = random.Random(seed)
    lengths = length if isinstance(length, list) else [length] * n

    def text(k: int) -> str:
        return " ".join(f"w{rng.randrange(0, 60)}" for _ in range(k))

    clean = [text(k) for k in lengths]
    corrupted = list(clean) if same else [text(k) for k in lengths]
    answer = [f" w{rng.randrange(0, 30)}" for _ in lengths]
    foil = [f" w{rng.randrange(30, 60)}" for _ in lengths]
    return PromptPairs(clean=clean, corrupted=corrupted, answer=answer, foil=foil)


def hf_last_logits(model: LoadedModel, pairs: PromptPairs, corrupted: bool = False) -> torch.Tensor:
    """Plain Hugging Face logits at each prompt's last token, one unpadded prompt at a time."""
    rows = []
    for text in pairs.corrupted if corrupted else pairs.clean:
        ids = torch.tensor([model.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            rows.append(model.hf_model(ids).logits[0, -1])
    return torch.stack(rows)


def token_ids(model: LoadedModel, words: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([model.tokenizer.convert_tokens_to_ids(w.strip()) for w in words])


def uneven_pairs() -> PromptPairs:
    """Two pairs whose second corrupted prompt is one token longer than its clean prompt."""
    pairs = word_pairs(n=2)
    return pairs.model_copy(update={"corrupted": (pairs.corrupted[0], pairs.corrupted[1] + " w5")})
