"""Seeded prompt-set generators for the behaviours circuitsleuth knows by name."""

from __future__ import annotations

from tools.errors import UnknownTaskError
from tools.tasks.base import (
    MAX_SEED,
    TaskGenerator,
    TaskPrompt,
    answer_token_id,
    check_prompt_count,
    check_seed,
    is_expressible,
)
from tools.tasks.facts import FactsTask
from tools.tasks.greater_than import GreaterThanTask
from tools.tasks.induction import InductionTask
from tools.tasks.ioi import IOITask
from tools.tasks.pronoun import PronounTask
from tools.tasks.trigger import TriggerTask

_TASKS: dict[str, type[TaskGenerator]] = {
    t.name: t for t in (IOITask, InductionTask, FactsTask, GreaterThanTask, PronounTask)
}
TASK_NAMES: tuple[str, ...] = tuple(_TASKS)
"""The standard behaviours, in the order tables show them."""


def get_task(name: str) -> TaskGenerator:
    """The generator registered under ``name``."""
    key = name.strip().lower().replace("-", "_")
    if key not in _TASKS:
        raise UnknownTaskError(
            f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)} (or 'all')"
        )
    return _TASKS[key]()


__all__ = [
    "MAX_SEED", "TASK_NAMES", "TaskGenerator", "TaskPrompt", "TriggerTask", "answer_token_id", "check_prompt_count",
    "check_seed",
    "get_task", "is_expressible",
]
