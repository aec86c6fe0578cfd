"""The LLM brain's prompts, kept as files beside the agent that uses them, loaded by one function.

``<role>/system.md`` and ``<role>/user.md`` are `string.Template` texts (``$name``
placeholders, nothing evaluated); `render` fills them and fails on a missing value.
Untrusted values (questions, prompts, generations, memory, results) are passed in already
fenced (`agents.llm.fence.fence`).
"""

from __future__ import annotations

from pathlib import Path
from string import Template

ROLES = ("intake", "planner", "worker", "critic", "reporter")
_HERE = Path(__file__).resolve().parent


def render(role: str, part: str, **values: str) -> str:
    """The prompt ``role/part.md`` with ``values`` substituted (a missing one raises KeyError)."""
    if role not in ROLES or part not in ("system", "user"):
        raise ValueError(f"no prompt {role}/{part}")
    return Template((_HERE / role / f"{part}.md").read_text(encoding="utf-8")).substitute(values)


def messages(role: str, **values: str) -> list[dict[str, str]]:
    """The system and user messages of ``role``."""
    return [{"role": "system", "content": render(role, "system", **values)},
            {"role": "user", "content": render(role, "user", **values)}]
