"""Settings of the openai brain: one pydantic-settings object, built in the CLI, passed down.

Read from the environment (and flags): ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` as the
openai client reads them, ``SLEUTH_LLM_MODEL`` for the model, ``SLEUTH_LLM_TIMEOUT`` (seconds
per call), ``SLEUTH_LLM_MAX_ATTEMPTS``, ``SLEUTH_LLM_BACKOFF_S``, ``SLEUTH_LLM_MAX_INVALID``,
``SLEUTH_LLM_PRICES`` (a JSON object ``{"model": [dollars per million input
tokens, per million output tokens]}`` that extends or overrides the built-in table).
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    # dollars per million tokens (input, output); list prices as published by OpenAI
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}
"""Models not listed (self-hosted ones) cost nothing unless ``SLEUTH_LLM_PRICES`` prices them."""


class LLMSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, env_prefix="SLEUTH_LLM_")

    base_url: str | None = Field(None, validation_alias=AliasChoices("OPENAI_BASE_URL", "base_url"))
    """The OpenAI-compatible endpoint (``http://localhost:8000/v1`` for vLLM, ``http://localhost:11434/v1``
    for Ollama, ``http://localhost:8080/v1`` for a llama.cpp server); None: OpenAI itself."""
    api_key: str | None = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY", "api_key"))
    """The key; self-hosted servers usually accept any string."""
    model: str = Field("gpt-4o-mini", validation_alias=AliasChoices("SLEUTH_LLM_MODEL", "model"))
    timeout_s: float = Field(60.0, gt=0, validation_alias=AliasChoices("SLEUTH_LLM_TIMEOUT", "timeout_s"))
    """Per call; a call that hangs longer counts as a failure and is retried."""
    max_attempts: int = Field(4, ge=1)
    """Tries per call for 429 / 5xx / timeouts / connection errors (backoff between them)."""
    backoff_s: float = Field(1.0, ge=0)
    """First wait between tries; doubled each time, capped at ``max_backoff_s``."""
    max_backoff_s: float = Field(20.0, ge=0)
    max_invalid: int = Field(2, ge=0)
    """How many times an answer that does not validate is sent back to the LLM with the error
    before that step falls back to the heuristic brain."""
    prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict, validation_alias=AliasChoices("SLEUTH_LLM_PRICES", "prices"))

    def price(self, model: str) -> tuple[float, float]:
        """Dollars per million (input, output) tokens of ``model``."""
        table = {**DEFAULT_PRICES, **self.prices}
        return table.get(model, (0.0, 0.0))
