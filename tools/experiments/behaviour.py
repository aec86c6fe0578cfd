"""Behaviour: how strongly the model does the task, per prompt, at the last token.

Per prompt: the logit difference answer − foil, the answer's probability, and whether the
answer is the top-1 token. With corrupted prompts, their logit difference (same answer
and foil) too — the gap between the two is what patching experiments divide by.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from tools.experiments.prompts import tokenize_prompts
from tools.experiments.provenance import provenance_for
from tools.experiments.readout import chunks, read_final_hidden, unembed_rows
from tools.experiments.result import ExperimentResult
from tools.experiments.spec import ExperimentSpec

if TYPE_CHECKING:
    from tools.loading import LoadedModel


class BehaviourExperimentSpec(ExperimentSpec):
    """Score the clean (and corrupted, when given) prompts.

    Named apart from the agents' intake ``BehaviorSpec``, which describes a behaviour in
    words; this is the experiment that measures one.
    """

    kind: Literal["behaviour"] = "behaviour"


class BehaviourResult(ExperimentResult):
    """Mean scores inline; per-prompt ones in tensors ``logit_diff``, ``answer_prob``,
    ``correct`` (bool) and, with corrupted prompts, ``corrupted_logit_diff`` — each ``[prompt]``."""

    spec: BehaviourExperimentSpec
    n_prompts: int
    logit_diff: float
    """Mean logit difference answer − foil on the clean prompts."""
    answer_prob: float
    """Mean probability of the answer."""
    accuracy: float
    """Fraction of prompts whose top-1 token is the answer."""
    corrupted_logit_diff: float | None = None
    """Mean logit difference on the corrupted prompts (None without them)."""


class _Scores(NamedTuple):
    logit_diff: torch.Tensor
    answer_prob: torch.Tensor
    correct: torch.Tensor


@torch.no_grad()
def run_behaviour(
    model: "LoadedModel", spec: BehaviourExperimentSpec, *, batch_size: int = 32
) -> BehaviourResult:
    """Score every prompt; pure (no I/O). ``batch_size`` prompts per forward pass."""
    prompts = tokenize_prompts(model, spec.prompts)
    clean = _score(model, prompts.clean, prompts.lengths, prompts.answer, prompts.foil, batch_size)
    tensors = {"logit_diff": clean.logit_diff, "answer_prob": clean.answer_prob,
               "correct": clean.correct}
    corrupted_mean = None
    if prompts.corrupted is not None:
        corrupted = _score(model, prompts.corrupted, prompts.corrupted_lengths, prompts.answer,
                           prompts.foil, batch_size)
        tensors["corrupted_logit_diff"] = corrupted.logit_diff
        corrupted_mean = float(corrupted.logit_diff.mean())
    return BehaviourResult(
        spec=spec, provenance=provenance_for(model, spec.seed), n_prompts=prompts.size,
        logit_diff=float(clean.logit_diff.mean()), answer_prob=float(clean.answer_prob.mean()),
        accuracy=float(clean.correct.float().mean()), corrupted_logit_diff=corrupted_mean,
        tensors=tensors,
    )


def _score(
    model: "LoadedModel", ids: torch.Tensor, lengths: torch.Tensor, answer: torch.Tensor,
    foil: torch.Tensor, batch_size: int,
) -> _Scores:
    logit_diff, answer_prob, correct = [], [], []
    for start, stop in chunks(ids.shape[0], batch_size):
        width = int(lengths[start:stop].max())
        with model.trace(ids[start:stop, :width]):
            final = read_final_hidden(model, lengths[start:stop] - 1)
        logits = unembed_rows(model, final).cpu()
        rows = torch.arange(stop - start)
        a, f = answer[start:stop], foil[start:stop]
        logit_diff.append(logits[rows, a] - logits[rows, f])
        answer_prob.append(logits.softmax(-1)[rows, a])
        correct.append(logits.argmax(-1) == a)
    return _Scores(logit_diff=torch.cat(logit_diff), answer_prob=torch.cat(answer_prob),
                   correct=torch.cat(correct))
