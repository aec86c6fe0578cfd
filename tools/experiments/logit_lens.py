"""Logit lens: read the residual stream after each layer as if it were the last.

At each prompt's last token, the residual stream entering block 0 (``embed``: the token
embedding, plus position embeddings where the model adds them, scaled for Gemma) and
leaving each block (``resid_post.L``) goes through the model's own final norm (with that
stream's own normalisation statistics — the standard lens, not a frozen scale),
unembedding and any logit soft-cap. The last row is the model's output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict

from tools.experiments.prompts import tokenize_prompts
from tools.experiments.provenance import provenance_for
from tools.experiments.readout import chunks, gather_rows, read_final_hidden, unembed_rows
from tools.experiments.result import ExperimentResult
from tools.experiments.spec import ExperimentSpec

if TYPE_CHECKING:
    from tools.loading import LoadedModel


class LogitLensSpec(ExperimentSpec):
    """The answer's rank, probability and logit difference after every layer."""

    kind: Literal["logit_lens"] = "logit_lens"


class LensLayer(BaseModel):
    """Mean numbers of one lens site over the prompts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site: str
    """``embed`` or ``resid_post.L``."""
    logit_diff: float
    """Mean logit difference answer − foil."""
    answer_prob: float
    """Mean probability of the answer."""
    answer_rank: float
    """Median rank of the answer (0 = top-1)."""
    top1: float
    """Fraction of prompts with the answer at rank 0."""


class LogitLensResult(ExperimentResult):
    """Per site (``embed``, ``resid_post.0`` ... ``resid_post.{L-1}``): means inline;
    tensors ``logit_diff``, ``answer_prob`` and ``answer_rank`` (int64), each ``[site, prompt]``."""

    spec: LogitLensSpec
    layers: tuple[LensLayer, ...]


@torch.no_grad()
def run_logit_lens(model: "LoadedModel", spec: LogitLensSpec, *, batch_size: int = 32) -> LogitLensResult:
    """Apply the lens at every layer; pure (no I/O). ``batch_size`` prompts per forward pass."""
    prompts = tokenize_prompts(model, spec.prompts)
    adapter, lm = model.adapter, model.lm
    final_norm = model.hf_model.get_submodule(adapter.paths.final_norm)
    sites = ["embed"] + [f"resid_post.{layer}" for layer in range(adapter.n_layers)]
    logit_diff, answer_prob, answer_rank = [], [], []
    for start, stop in chunks(prompts.size, batch_size):
        last = prompts.last[start:stop]
        width = int(last.max()) + 1
        streams: list[torch.Tensor] = []
        with model.trace(prompts.clean[start:stop, :width]):
            streams.append(gather_rows(adapter.resid_pre(lm, 0), last).save())
            for layer in range(adapter.n_layers):
                streams.append(gather_rows(adapter.resid_post(lm, layer), last).save())
            read_final_hidden(model, last)  # only to skip the full-sequence unembedding
        resid = torch.stack(streams)  # [site, batch, d_model]
        logits = unembed_rows(model, final_norm(resid).flatten(0, 1)).reshape(
            len(sites), stop - start, -1).cpu()
        rows = torch.arange(stop - start)
        a, f = prompts.answer[start:stop], prompts.foil[start:stop]
        answer_logit = logits[:, rows, a]
        logit_diff.append(answer_logit - logits[:, rows, f])
        answer_prob.append(logits.softmax(-1)[:, rows, a])
        answer_rank.append((logits > answer_logit.unsqueeze(-1)).sum(-1))
    tensors = {"logit_diff": torch.cat(logit_diff, 1), "answer_prob": torch.cat(answer_prob, 1),
               "answer_rank": torch.cat(answer_rank, 1)}
    layers = tuple(
        LensLayer(
            site=site, logit_diff=float(tensors["logit_diff"][i].mean()),
            answer_prob=float(tensors["answer_prob"][i].mean()),
            answer_rank=float(tensors["answer_rank"][i].float().median()),
            top1=float((tensors["answer_rank"][i] == 0).float().mean()),
        )
        for i, site in enumerate(sites)
    )
    return LogitLensResult(spec=spec, provenance=provenance_for(model, spec.seed), layers=layers,
                           tensors=tensors)
