"""Budget flags: ``--max-time 8h`` and friends."""

from __future__ import annotations

import re

from tools.errors import UserInputError

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0}


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
    if seconds <= 0:
        raise UserInputError(f"--max-time must be more than zero, not {text!r}")
    return seconds
