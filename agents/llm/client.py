"""One chat-completions call to any OpenAI-compatible endpoint, with the one retry layer.

The openai client's own retries are off (``max_retries=0``); `LLMClient.chat` retries 429,
5xx, timeouts and connection errors itself, with exponential backoff (honouring a
``Retry-After`` header), up to ``max_attempts`` tries, each under the per-call timeout. Every
call's tokens and dollars are counted (`Usage`) and handed to ``on_usage`` (the run's
``run.json``); ``limit`` is asked before each call and stops it when the budget is spent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from agents.llm.errors import LLMBudgetExhausted, LLMUnavailableError
from agents.llm.settings import LLMSettings

log = logging.getLogger(__name__)


@dataclass
class Usage:
    """What LLM calls cost: calls, prompt and completion tokens, dollars."""

    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    dollars: float = 0.0

    def add(self, other: "Usage") -> None:
        self.calls += other.calls
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.dollars += other.dollars


class LLMClient:
    """Chat completions with retries, a per-call timeout, accounting and a budget check."""

    def __init__(self, settings: LLMSettings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        from openai import OpenAI

        self.settings = settings
        self.usage = Usage()
        self.on_usage: Callable[[Usage], None] | None = None
        self.log: list[dict[str, Any]] = []
        """Every call's accounting, in order (the run store keeps them in ``llm_calls.jsonl``)."""
        self.role = "?"
        """The brain role making the calls (recorded with each call's accounting)."""
        self.incidents: list[str] = []
        """Failed tries that a later try recovered from (drained by the brain into its events)."""
        self.limit: Callable[[], str | None] | None = None
        """Returns why no further call may be made (a spent budget), or None."""
        self._sleep = sleep
        self._client = OpenAI(api_key=settings.api_key or "not-needed", base_url=settings.base_url,
                              max_retries=0, timeout=settings.timeout_s)

    @property
    def where(self) -> str:
        return self.settings.base_url or "https://api.openai.com/v1"

    def chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None) -> Any:
        """The assistant message of one completion (``.content``, ``.tool_calls``).

        Raises:
            LLMBudgetExhausted: the run's token or dollar budget is spent (no call is made).
            LLMUnavailableError: every try failed (429 / 5xx / timeout / connection), or the
                endpoint refused the request (another 4xx), with the last error.
        """
        import openai

        reason = self.limit() if self.limit is not None else None
        if reason:
            raise LLMBudgetExhausted(reason)
        last = "no attempt"
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                kwargs: dict[str, Any] = {"model": self.settings.model, "messages": messages, "temperature": 0}
                if tools:
                    kwargs["tools"] = tools
                response = self._client.chat.completions.create(**kwargs)
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError) as error:
                last = _describe(error)
                wait = _retry_after(error) or min(self.settings.max_backoff_s,
                                                  self.settings.backoff_s * 2 ** (attempt - 1))
            except openai.APIStatusError as error:
                if error.status_code < 500 and error.status_code != 429:
                    raise LLMUnavailableError(f"the LLM endpoint {self.where} refused the request: "
                                              f"{_describe(error)}") from None
                last, wait = _describe(error), self.settings.backoff_s * 2 ** (attempt - 1)
            except (openai.APIResponseValidationError, ValueError) as error:  # a body that is not JSON
                last, wait = f"unreadable response ({type(error).__name__})", self.settings.backoff_s
            else:
                self._count(response)
                if not getattr(response, "choices", None):
                    last, wait = "a response with no choices", self.settings.backoff_s
                else:
                    return response.choices[0].message
            log.info("LLM call %d/%d failed: %s", attempt, self.settings.max_attempts, last)
            if attempt < self.settings.max_attempts:
                self.incidents.append(f"try {attempt} failed ({last}); retried after {wait:.2g} s")
                self._sleep(wait)
        raise LLMUnavailableError(f"the LLM endpoint {self.where} failed {self.settings.max_attempts} "
                                  f"time{'s' * (self.settings.max_attempts > 1)}; last: {last}")

    def drain_incidents(self) -> list[str]:
        out, self.incidents = self.incidents, []
        return out

    def _count(self, response: Any) -> None:
        usage = getattr(response, "usage", None)
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
        price_in, price_out = self.settings.price(self.settings.model)
        delta = Usage(calls=1, tokens_in=tokens_in, tokens_out=tokens_out,
                      dollars=(tokens_in * price_in + tokens_out * price_out) / 1e6)
        self.usage.add(delta)
        self.log.append({"role": self.role, "model": self.settings.model, "tokens_in": tokens_in,
                         "tokens_out": tokens_out, "dollars": delta.dollars})
        if self.on_usage is not None:
            self.on_usage(delta)


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{type(error).__name__}{f' {status}' if status else ''}: {text[:200]}"


def _retry_after(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    value = getattr(response, "headers", {}).get("retry-after") if response is not None else None
    try:
        return min(60.0, float(value)) if value is not None else None
    except ValueError:
        return None
