"""LLM failures, under the project's one root error (`tools.errors.SleuthError`)."""

from __future__ import annotations

from tools.errors import SleuthError


class LLMError(SleuthError):
    """Something on the LLM's side failed; the brain falls back to the heuristic playbook."""


class LLMUnavailableError(LLMError):
    """The endpoint could not be reached or kept failing (429 / 5xx / timeouts) after retries."""


class LLMOutputError(LLMError):
    """The LLM's answers would not validate, after every allowed attempt.

    Attributes:
        raw: the last raw answer (tool-call arguments or text), for the report.
        attempts: how many answers were tried.
        errors: the validation error of each attempt, in order.
    """

    def __init__(self, message: str, *, raw: str, attempts: int, errors: list[str]) -> None:
        super().__init__(message)
        self.raw = raw
        self.attempts = attempts
        self.errors = errors


class LLMBudgetExhausted(LLMError):
    """The run's token or dollar budget is spent; no further call is made."""
