"""Budgets of an investigation: experiments, wall time, and (for LLM brains) tokens and dollars.

Any limit left out is unlimited. The planner stops starting new phases once one is spent;
the reporter then writes up what is established and what was left undone.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from tools.errors import UserInputError

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0}


class Budget(BaseModel):
    """The limits of one run (stored in ``run.json`` so a resumed run keeps them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_experiments: int | None = None
    max_seconds: float | None = None
    max_tokens: int | None = None
    """LLM tokens (prompt + completion) over the run; the heuristic brain uses none."""
    max_dollars: float | None = None

    @classmethod
    def from_flags(cls, *, max_experiments: int | None = None, max_time: str | None = None,
                   max_tokens: int | None = None, max_dollars: float | None = None) -> "Budget":
        """From the CLI flags, each checked: a zero or negative budget is a clear error."""
        if max_experiments is not None and max_experiments < 1:
            raise UserInputError(f"--max-experiments must be at least 1, not {max_experiments}")
        if max_tokens is not None and max_tokens < 1:
            raise UserInputError(f"--max-tokens must be at least 1, not {max_tokens}")
        if max_dollars is not None and not max_dollars > 0:
            raise UserInputError(f"--max-dollars must be more than zero, not {max_dollars}")
        seconds = parse_duration(max_time) if max_time is not None else None
        return cls(max_experiments=max_experiments, max_seconds=seconds, max_tokens=max_tokens,
                   max_dollars=max_dollars)


def parse_duration(text: str) -> float:
    """Seconds in ``"8h"``, ``"1h30m"``, ``"90s"``, ``"2.5m"`` or a plain number of seconds."""
    raw = text.strip().lower().replace(" ", "")
    try:
        seconds = float(raw)
    except ValueError:
        parts = _PART.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise UserInputError(f"--max-time {text!r} is not a duration; write e.g. 8h, 1h30m, 90s or 600") from None
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise UserInputError(f"--max-time must be a finite duration of more than zero, not {text!r}")
    return seconds
