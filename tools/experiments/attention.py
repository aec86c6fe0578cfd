"""Attention patterns per head, and the scores that name a head's role.

A head's *pattern* is its attention probabilities ``A[q, k]``: how much query position
``q`` reads from key position ``k`` (rows sum to 1; ``A[q, k] = 0`` for ``k > q``).

Where the numbers come from
===========================
Fused attention kernels (PyTorch SDPA, the Hugging Face default) never materialise the
probabilities, so the traces here run with the model's *eager* attention, whose attention
modules return them as ``output[1]`` — the family's own code computes them: rotary
embeddings, Gemma 3's query/key norms and ``query_pre_attn_scalar`` scaling, grouped-query
heads, causal and sliding-window masks, any attention soft-cap. `eager_attention` switches
the model to eager for the run and restores the previous implementation in ``finally``; the
eager and SDPA paths compute the same function (to float rounding), which the tests check by
rebuilding each head's output from its pattern and the value vectors of an SDPA run.
The switch changes the model object for the duration of the call, so do not run another
experiment on the same `LoadedModel` from another thread meanwhile. It needs the model
here: a trace on a remote backend (NDIF) gets no probabilities and raises `ModelError`.

Scores (mean over prompts and over the query positions where the score is defined)
================================================================================
For a query ``q`` with token ``t_q`` (only real tokens; keys ``k < q``):

``previous_token``   ``A[q, q-1]``, over ``q >= 1``.
``duplicate_token``  ``Σ A[q, k]`` over earlier occurrences of the same token
                     (``t_k = t_q``), over queries that have one.
``induction``        ``Σ A[q, k]`` over tokens that *followed* an earlier occurrence of
                     the current token (``t_{k-1} = t_q``, ``k < q``), over queries that
                     have one. On a repeated random sequence ``s s`` of ``T`` distinct
                     tokens this is the mean of ``A[q, q-T+1]`` over the second copy.
``attend_to_token``  ``Σ A[q, k]`` over earlier positions holding the spec's token, over
                     queries after its first occurrence (only with ``attend_to_token``).

A score that is defined at no query position (no repeated token in any prompt) is NaN.

Scores of the last token (``from_last=True``), per prompt, read where a logit-difference
metric is read — what the final position pulls in:

``to_answer``        ``Σ A[last, k]`` over positions holding the answer token (name movers
                     copy the indirect object from there), over prompts that contain it.
``to_foil``          the same for the foil token.
``to_changed``       ``Σ A[last, k]`` over positions where the clean and the corrupted
                     prompt differ: how much the head reads the tokens that decide the
                     answer (needs corrupted prompts of the clean prompts' token length).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from tools.errors import ModelError, SpecError
from tools.experiments.prompts import PromptBatch, PromptPairs, resolve_prompts, tokenize_prompts
from tools.experiments.provenance import provenance_for
from tools.experiments.readout import chunks
from tools.experiments.result import ExperimentResult
from tools.experiments.spec import ExperimentSpec, check_indices

if TYPE_CHECKING:
    from tools.loading import LoadedModel

SCORE_NAMES: tuple[str, ...] = ("previous_token", "duplicate_token", "induction", "attend_to_token")
LAST_SCORE_NAMES: tuple[str, ...] = ("to_answer", "to_foil", "to_changed")
TOP_K = 10


class AttentionPatternSpec(ExperimentSpec):
    """Attention patterns of the chosen heads on the clean prompts, with role scores.

    Only ``prompts.clean`` is read (answers and foils are not used, and need not be one token),
    unless ``from_last`` asks for the scores of the last token.
    """

    kind: Literal["attention_patterns"] = "attention_patterns"
    layers: tuple[int, ...] | None = None
    """Layers to read (default: all), in the order of the result's ``layer`` axis."""
    heads: tuple[int, ...] | None = None
    """Heads to read in each layer (default: all), in the order of the ``head`` axis."""
    attend_to_token: str | None = None
    """A token whose received attention is scored (``"<bos>"``, ``" Mary"``): a vocabulary
    entry as written, or text that tokenises to exactly one token."""
    saved_prompts: int = 4
    """Keep full patterns for the first this-many prompts (0: none); scores use every prompt.
    Patterns grow as ``prompts × layers × heads × pos²``, so the default keeps a few."""
    from_last: bool = False
    """Also score what the last token attends to: the answer's and the foil's positions and
    the positions the corruption changed (``to_answer``, ``to_foil``, ``to_changed``; see the
    module docstring). Then answers and foils must be one token, as in every metric."""

    @model_validator(mode="after")
    def _check(self) -> "AttentionPatternSpec":
        if self.saved_prompts < 0:
            raise SpecError("saved_prompts", f"must be 0 or more, got {self.saved_prompts}")
        if self.attend_to_token is not None and not self.attend_to_token:
            raise SpecError("attend_to_token", "is an empty string; give a token or leave it out")
        return self


class HeadScore(BaseModel):
    """One head's score."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    component: str
    """``head.L.H``."""
    score: float


class AttentionPatternResult(ExperimentResult):
    """Role scores per head; patterns of the first prompts in tensors.

    Tensors: ``score.<name>`` ``[layer, head]`` for each name in ``scored`` (NaN where
    undefined); with ``from_last``, ``last.<name>`` ``[layer, head, prompt]`` per prompt (NaN
    for a prompt where the score is undefined); ``pattern`` ``[prompt, layer, head, q, k]`` for the first ``n_saved``
    prompts, zero outside each prompt's real tokens; ``pattern_tokens`` ``[prompt, pos]``
    (token ids, right-padded) and ``pattern_lengths`` ``[prompt]`` of those prompts.
    """

    spec: AttentionPatternSpec
    layers: tuple[int, ...]
    """Layer of each index along ``layer``."""
    heads: tuple[int, ...]
    """Head of each index along ``head``."""
    n_prompts: int
    n_saved: int
    """Prompts whose full patterns are in ``pattern``."""
    attend_to_token_id: int | None = None
    """The id ``attend_to_token`` resolved to (None without it)."""
    scored: tuple[str, ...]
    """The score names computed (``attend_to_token`` only when asked for)."""
    top: dict[str, tuple[HeadScore, ...]]
    """Per score, the heads with the highest score, highest first (undefined scores left out)."""


@torch.no_grad()
def run_attention_patterns(
    model: "LoadedModel", spec: AttentionPatternSpec, *, batch_size: int = 16
) -> AttentionPatternResult:
    """Read the patterns and score every chosen head; pure (no I/O).

    ``batch_size`` prompts per forward pass (memory grows as ``batch × heads × pos²`` per layer).

    Raises:
        SpecError: before any forward pass, for a layer or head the model does not have, or
            an ``attend_to_token`` that is not one token.
        ModelError: when the model's attention modules return no probabilities even in eager mode.
    """
    adapter = model.adapter
    layers = check_indices("layers", spec.layers, adapter.n_layers, "layer")
    heads = check_indices("heads", spec.heads, adapter.n_heads, "head")
    target = None if spec.attend_to_token is None else single_token_id(model, spec.attend_to_token)
    last_keys: dict[str, torch.Tensor] = {}
    if spec.from_last:
        batch = tokenize_prompts(model, spec.prompts, aligned=True)
        ids, lengths = batch.clean, batch.lengths
        last_keys = last_token_keys(batch)
    else:
        ids, lengths = tokenize_texts(model, clean_texts(model, spec.prompts), "prompts.clean")
    names = SCORE_NAMES if target is not None else SCORE_NAMES[:-1]
    last_parts: dict[str, list[torch.Tensor]] = {name: [] for name in last_keys}
    sums = {name: torch.zeros(len(layers), len(heads), dtype=torch.float64) for name in names}
    counts = {name: 0 for name in names}
    n_saved = min(spec.saved_prompts, ids.shape[0])
    saved: list[torch.Tensor] = []
    head_index = torch.tensor(heads)
    with eager_attention(model):
        for start, stop in chunks(ids.shape[0], batch_size):
            batch_lengths = lengths[start:stop]
            batch_ids = ids[start:stop, : int(batch_lengths.max())]
            pattern = read_patterns(model, batch_ids, layers)[:, :, head_index.to(batch_ids.device)]
            pattern = pattern.float().cpu()  # [batch, layer, head, q, k]
            batch_ids, batch_lengths = batch_ids.cpu(), batch_lengths.cpu()
            for name, (total, count) in score_patterns(pattern, batch_ids, batch_lengths,
                                                       target).items():
                sums[name] += total.double()
                counts[name] += count
            for name, keys in last_keys.items():
                last_parts[name].append(score_last(pattern, batch_lengths, keys[start:stop]))
            if start < n_saved:
                keep = min(stop, n_saved) - start
                width = int(batch_lengths[:keep].max())
                real = _real_mask(batch_lengths[:keep], width)  # [keep, q]
                square = (real.unsqueeze(-1) & real.unsqueeze(-2))[:, None, None]
                saved.append(pattern[:keep, ..., :width, :width] * square)
    tensors: dict[str, torch.Tensor] = {}
    top: dict[str, tuple[HeadScore, ...]] = {}
    for name in names:
        score = (sums[name] / counts[name]).float() if counts[name] else torch.full(
            (len(layers), len(heads)), math.nan)
        tensors[f"score.{name}"] = score
        top[name] = _top_heads(score, layers, heads)
    for name, parts in last_parts.items():
        per_prompt = torch.cat(parts, dim=-1)  # [layer, head, prompt]
        defined = ~per_prompt.isnan()
        score = torch.where(defined, per_prompt, 0).sum(-1) / defined.sum(-1).clamp(min=1)
        score[defined.sum(-1) == 0] = math.nan
        tensors[f"last.{name}"], tensors[f"score.{name}"] = per_prompt, score
        top[name] = _top_heads(score, layers, heads)
    names = (*names, *last_parts)
    if n_saved:
        width = int(lengths[:n_saved].max())
        tensors["pattern"] = torch.cat([_pad_square(p, width) for p in saved])
        tensors["pattern_tokens"] = ids[:n_saved, :width].cpu()
        tensors["pattern_lengths"] = lengths[:n_saved].clone()
    return AttentionPatternResult(
        spec=spec, provenance=provenance_for(model, spec.seed), layers=tuple(layers),
        heads=tuple(heads), n_prompts=int(ids.shape[0]), n_saved=n_saved,
        attend_to_token_id=target, scored=tuple(names), top=top, tensors=tensors,
    )


# -- reading patterns ------------------------------------------------------------------------


@contextmanager
def eager_attention(model: "LoadedModel") -> Iterator[None]:
    """Run the model with eager attention inside the block; restore its implementation after."""
    hf_model = model.hf_model
    previous = hf_model.config._attn_implementation
    if previous == "eager":
        yield
        return
    hf_model.set_attn_implementation("eager")
    try:
        yield
    finally:
        hf_model.set_attn_implementation(previous)


def read_patterns(model: "LoadedModel", ids: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """Attention probabilities ``[batch, layer, head, q, k]`` of ``layers`` (in that order),
    all heads, from one forward pass. Call inside `eager_attention`."""
    adapter, lm = model.adapter, model.lm
    read: dict[int, torch.Tensor] = {}
    with model.trace(ids):
        for layer in sorted(layers):  # nnsight needs forward order
            output = adapter.attn_module(lm, layer).output
            read[layer] = output[1].save() if isinstance(output, tuple) else None
    for layer, value in read.items():
        if value is None or not isinstance(value, torch.Tensor):
            raise ModelError(
                f"the attention module of layer {layer} returned no attention probabilities "
                f"(implementation {model.hf_model.config._attn_implementation!r}); attention "
                "patterns need a local model whose attention supports eager mode")
    return torch.stack([read[layer] for layer in layers], dim=1)


# -- scores ----------------------------------------------------------------------------------


def score_masks(
    ids: torch.Tensor, lengths: torch.Tensor, target: int | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each score: ``(queries [batch, q], keys [batch, q, k])`` boolean masks.

    ``keys[b, q, k]`` marks the keys whose attention counts for query ``q``; ``queries``
    marks the real query positions where the score is defined (at least one such key).
    ``ids`` ``[batch, pos]`` are right-padded to ``lengths``.
    """
    batch, width = ids.shape
    pos = torch.arange(width)
    real = _real_mask(lengths, width)  # [batch, q]
    before = (pos.unsqueeze(1) > pos.unsqueeze(0)).unsqueeze(0)  # [1, q, k]: k < q
    same = ids.unsqueeze(2) == ids.unsqueeze(1)  # [batch, q, k]: t_q == t_k
    previous = (pos.unsqueeze(1) - 1 == pos.unsqueeze(0)).unsqueeze(0).expand(batch, -1, -1)
    shifted = torch.cat([torch.full_like(ids[:, :1], -1), ids[:, :-1]], dim=1)  # t_{k-1}
    induction = (ids.unsqueeze(2) == shifted.unsqueeze(1)) & before & (pos > 0)
    keys = {"previous_token": previous, "duplicate_token": same & before, "induction": induction}
    if target is not None:
        keys["attend_to_token"] = (ids == target).unsqueeze(1) & before
    return {name: (key.any(-1) & real, key & real.unsqueeze(-1)) for name, key in keys.items()}


def score_patterns(
    pattern: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor, target: int | None = None
) -> dict[str, tuple[torch.Tensor, int]]:
    """Per score: ``(sum over scored queries of the attention they pay, number of those queries)``.

    ``pattern`` is ``[batch, ..., q, k]`` (e.g. ``[batch, layer, head, q, k]``); each sum has
    the middle axes (``[layer, head]``). The score is ``sum / count``; summing both over
    batches gives the mean over all scored queries of all prompts.
    """
    extra = pattern.dim() - 3
    out = {}
    for name, (queries, keys) in score_masks(ids, lengths, target).items():
        shape = (keys.shape[0],) + (1,) * extra + keys.shape[1:]
        paid = (pattern * keys.reshape(shape).to(pattern.dtype)).sum(-1)  # [batch, ..., q]
        q_shape = (queries.shape[0],) + (1,) * extra + queries.shape[1:]
        total = (paid * queries.reshape(q_shape).to(pattern.dtype)).sum(-1).sum(0)
        out[name] = (total, int(queries.sum()))
    return out


def last_token_keys(batch: "PromptBatch") -> dict[str, torch.Tensor]:
    """For each last-token score: ``[prompt, k]`` boolean masks of the keys it sums over."""
    width = batch.clean.shape[1]
    real = _real_mask(batch.lengths, width)
    ids = batch.clean.cpu()
    keys = {"to_answer": (ids == batch.answer[:, None]) & real, "to_foil": (ids == batch.foil[:, None]) & real}
    if batch.corrupted is not None and not torch.equal(batch.corrupted.cpu(), ids):
        keys["to_changed"] = (ids != batch.corrupted.cpu()[:, :width]) & real
    return keys


def score_last(pattern: torch.Tensor, lengths: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``[layer, head, batch]``: attention of each prompt's last token on ``keys`` ``[batch, k]``
    (NaN for a prompt with no such key). ``pattern`` is ``[batch, layer, head, q, k]``."""
    rows = torch.arange(pattern.shape[0])
    last = pattern[rows, :, :, lengths - 1]  # [batch, layer, head, k]
    paid = (last * keys[:, None, None, : last.shape[-1]].to(last.dtype)).sum(-1)
    paid[~keys.any(-1)] = math.nan
    return paid.permute(1, 2, 0)


def _top_heads(score: torch.Tensor, layers: Sequence[int], heads: Sequence[int]) -> tuple[HeadScore, ...]:
    ranked = [(float(score[i, j]), layer, head) for i, layer in enumerate(layers)
              for j, head in enumerate(heads) if not math.isnan(float(score[i, j]))]
    ranked.sort(key=lambda item: -item[0])
    return tuple(HeadScore(component=f"head.{layer}.{head}", score=value)
                 for value, layer, head in ranked[:TOP_K])


# -- prompts as plain texts --------------------------------------------------------------------


def clean_texts(model: "LoadedModel", pairs: PromptPairs) -> list[str]:
    """The clean prompts of ``pairs`` (generated with the model's tokenizer for a task)."""
    return [item.clean for item in resolve_prompts(pairs, model.tokenizer)]


def tokenize_texts(
    model: "LoadedModel", texts: Sequence[str], field: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids ``[n, pos]`` (on the model's device) and lengths ``[n]`` (CPU) of texts.

    For experiments that read only prompts — no answer or foil to check. ``field`` names
    the texts in a `SpecError` (``"prompts.clean"`` -> ``"prompts.clean[3]"``).
    """
    tokenizer = model.tokenizer
    if not texts:
        raise SpecError(field, "is empty; give at least one prompt")
    rows = []
    for i, text in enumerate(texts):
        row = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        if not row:
            raise SpecError(f"{field}[{i}]", f"{text!r} tokenises to no tokens")
        rows.append(row)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids.to(model.device), torch.tensor([len(r) for r in rows], dtype=torch.long)


def single_token_id(model: "LoadedModel", token: str, field: str = "attend_to_token") -> int:
    """The id of ``token``: a vocabulary entry as written (``"<bos>"``, ``"ĠMary"``), else text
    that tokenises (without special tokens) to exactly one token (``" Mary"``)."""
    tokenizer = model.tokenizer
    vocab = tokenizer.get_vocab()
    if token in vocab:
        return int(vocab[token])
    ids = list(tokenizer(token, add_special_tokens=False)["input_ids"])
    unk = getattr(tokenizer, "unk_token_id", None)
    if len(ids) != 1 or (unk is not None and ids[0] == unk):
        raise SpecError(field, f"{token!r} is not one token for this tokenizer (it tokenises to "
                        f"{len(ids)} tokens{', unknown' if unk in ids else ''}); give a single "
                        "token, e.g. with a leading space")
    return int(ids[0])


def _real_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``[batch, pos]``: True at each prompt's real (non-padding) positions."""
    return torch.arange(width).unsqueeze(0) < lengths.cpu().unsqueeze(1)


def _pad_square(pattern: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the last two axes of ``pattern`` to ``width``."""
    missing = width - pattern.shape[-1]
    return torch.nn.functional.pad(pattern, (0, missing, 0, missing)) if missing else pattern
