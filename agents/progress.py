"""Live progress of an investigation on a terminal: one status line, rewritten in place.

Shown only when stderr is a terminal (``sleuth ask`` in a shell); quiet otherwise (pipes, CI,
``--json`` consumers that capture stderr), so logs never fill with carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


class Progress:
    """Phase, experiments done and queued, budget left, the current leading hypothesis."""

    def __init__(self, *, enabled: bool | None = None, stream: IO[str] | None = None, width: int = 160) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.width = width
        self.state: dict[str, Any] = {"phase": "start", "experiments": 0, "queued": 0, "done": 0,
                                      "budget": "unlimited", "hypothesis": None, "note": "", "llm": None}
        self._started = time.monotonic()
        self._shown = False

    def update(self, *, queued_done: int = 0, **fields: Any) -> None:
        if "queued" in fields:
            self.state["done"] = 0
        self.state["done"] += queued_done
        self.state.update({k: v for k, v in fields.items() if v is not None})
        if self.enabled:
            self._draw()

    def line(self) -> str:
        s = self.state
        text = (f"[{time.monotonic() - self._started:6.0f}s] {s['phase']:<8} experiments {s['experiments']:>4}  "
                f"jobs {s['done']}/{s['queued']}  budget left: {s['budget']}")
        if s["llm"]:
            text += f"  LLM: {s['llm']}"
        if s["hypothesis"]:
            text += f"  leading: {s['hypothesis']}"
        if s["note"]:
            text += f"  ({s['note']})"
        return text[: self.width]

    def _draw(self) -> None:
        self.stream.write("\r\x1b[2K" + self.line())
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\n")
            self.stream.flush()
