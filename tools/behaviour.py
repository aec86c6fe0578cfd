"""Behaviour check: does a model show a behaviour on a prompt set, and how strongly?

Per prompt: the logit difference answer − foil at the last prompt position, the answer's
probability, whether the top-1 token is a correct answer, and for set-valued behaviours
(greater-than) the probability on the answer set minus the foil set. Prompts are right-padded
and batched; the last real position of each row is read, so padding never changes a number.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import BaseModel, ConfigDict

from tools.tasks.base import Encodings, TaskPrompt, answer_token_id


class PromptScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    logit_diff: float
    """logit(answer) − logit(foil) at the last prompt position."""
    answer_prob: float
    """Softmax probability of the answer token."""
    prob_diff: float
    """Probability on the answer set minus the foil set (= p(answer) − p(foil) for single answers)."""
    correct: bool
    """Whether the top-1 token is in the answer set."""


class TaskScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    task: str
    n: int
    accuracy: float
    logit_diff: float
    prob_diff: float
    answer_prob: float


def _token_ids(tokenizer, prompt: TaskPrompt) -> tuple[int, int, list[int], list[int]]:
    encoded: Encodings = {}  # the prompt is encoded once, not once per answer
    answer = answer_token_id(tokenizer, prompt.clean, prompt.answer, encoded=encoded)
    foil = answer_token_id(tokenizer, prompt.clean, prompt.foil, encoded=encoded)
    answers = [answer_token_id(tokenizer, prompt.clean, a, encoded=encoded) for a in prompt.answer_set()]
    foils = [answer_token_id(tokenizer, prompt.clean, f, encoded=encoded) for f in prompt.foil_set()]
    return answer, foil, answers, foils


def last_token_logits(model: torch.nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Logits at each text's last token, shape [len(texts), vocab] (right padding, batched)."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = []
    for start in range(0, len(texts), batch_size):
        enc = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts[start : start + batch_size]]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        last = mask.sum(1) - 1
        rows.append(logits[torch.arange(len(enc)), last.to(device)].float().cpu())
    return torch.cat(rows)


def score_prompts(model: torch.nn.Module, tokenizer, prompts: Sequence[TaskPrompt], batch_size: int = 32) -> list[PromptScore]:
    """Score each prompt (clean run only)."""
    ids = [_token_ids(tokenizer, p) for p in prompts]
    logits = last_token_logits(model, tokenizer, [p.clean for p in prompts], batch_size)
    probs = logits.softmax(-1)
    top = logits.argmax(-1)
    out = []
    for i, (a, f, answers, foils) in enumerate(ids):
        out.append(PromptScore(
            logit_diff=float(logits[i, a] - logits[i, f]),
            answer_prob=float(probs[i, a]),
            prob_diff=float(probs[i, answers].sum() - probs[i, foils].sum()),
            correct=int(top[i]) in set(answers),
        ))
    return out


def summarise(task: str, scores: Sequence[PromptScore]) -> TaskScore:
    n = len(scores)
    return TaskScore(
        task=task,
        n=n,
        accuracy=sum(s.correct for s in scores) / n,
        logit_diff=sum(s.logit_diff for s in scores) / n,
        prob_diff=sum(s.prob_diff for s in scores) / n,
        answer_prob=sum(s.answer_prob for s in scores) / n,
    )


class TaskCheck(BaseModel):
    """One row of the behaviour table: a task's held-out score, or why it cannot be measured."""

    model_config = ConfigDict(frozen=True)

    task: str
    score: TaskScore | None = None
    """None when the task is not expressible with this model's tokenizer."""
    reason: str | None = None
    """Why the task was not measured (for example: answers are not single tokens)."""


def check_behaviours(model: torch.nn.Module, tokenizer, tasks: dict, *, n: int = 200, seed: int = 1,
                     batch_size: int = 32) -> list[TaskCheck]:
    """Score each generator's held-out split on ``model`` (tasks: name → TaskGenerator)."""
    from tools.errors import TokenizationError

    rows = []
    for name, gen in tasks.items():
        try:
            prompts = gen.generate(n, split="heldout", seed=seed, tokenizer=tokenizer)
        except TokenizationError as e:
            rows.append(TaskCheck(task=name, reason=str(e)))
            continue
        rows.append(TaskCheck(task=name, score=summarise(name, score_prompts(model, tokenizer, prompts, batch_size))))
    return rows
