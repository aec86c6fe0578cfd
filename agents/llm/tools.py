"""Typed tool calls: the only way an LLM's answer enters the system.

`call_tools` offers the LLM a fixed set of tools, each a pydantic model of its arguments
(sent as the tool's JSON schema). Every call it answers with is parsed and validated; a call
that names an unknown tool, carries arguments that are not JSON, fail validation or fail the
caller's own ``check`` — or an answer with no tool call at all — goes back to the LLM with
the error, up to ``max_invalid`` times, after which `LLMOutputError` carries the raw answer
and every error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from agents.llm.client import LLMClient
from agents.llm.errors import LLMOutputError


@dataclass(frozen=True)
class Tool:
    model: type[BaseModel]
    description: str

    def schema(self, name: str) -> dict[str, Any]:
        return {"type": "function", "function": {"name": name, "description": self.description,
                                                 "parameters": self.model.model_json_schema()}}


def call_tools(client: LLMClient, messages: list[dict[str, Any]], tools: dict[str, Tool], *,
               max_invalid: int, check: Callable[[str, BaseModel], None] | None = None,
               errors: list[str] | None = None) -> list[tuple[str, BaseModel]]:
    """The validated ``(tool name, arguments)`` of the LLM's answer, in the order given.

    ``errors`` (a list, when given) receives every problem sent back to the LLM, including
    those a later answer corrected.

    ``check(name, arguments)`` may raise ``ValueError`` for what a schema cannot say (a job
    the vocabulary would reject, a sentence without a citation); the message goes back too.
    """
    schemas = [tool.schema(name) for name, tool in tools.items()]
    conversation = list(messages)
    errors = [] if errors is None else errors
    raw = ""
    for _ in range(max_invalid + 1):
        message = client.chat(conversation, tools=schemas)
        calls = list(getattr(message, "tool_calls", None) or [])
        raw = "; ".join(f"{c.function.name}({c.function.arguments})" for c in calls) if calls \
            else (getattr(message, "content", None) or "")
        if not calls:
            problem = ("the answer was empty" if not raw.strip() else "the answer was text, not a tool call") + \
                f"; answer by calling one of: {', '.join(tools)}"
            errors.append(problem)
            conversation += [{"role": "assistant", "content": raw or ""}, {"role": "user", "content": problem}]
            continue
        parsed, feedback = [], []
        for call in calls:
            name, problem = call.function.name, None
            if name not in tools:
                problem = f"unknown tool {name!r}; the tools are: {', '.join(tools)}"
            else:
                try:
                    arguments = json.loads(call.function.arguments or "{}")
                    value = tools[name].model.model_validate(arguments)
                    if check is not None:
                        check(name, value)
                    parsed.append((name, value))
                except json.JSONDecodeError as error:
                    problem = f"the arguments of {name} are not valid JSON ({error.msg} at column {error.colno})"
                except ValidationError as error:
                    problem = f"the arguments of {name} do not validate: {_first_errors(error)}"
                except ValueError as error:
                    problem = f"{name} was rejected: {error}"
            feedback.append((call, problem or "ok"))
            if problem:
                errors.append(problem)
        if all(text == "ok" for _, text in feedback):
            return parsed
        conversation.append({"role": "assistant", "content": getattr(message, "content", None) or "",
                             "tool_calls": [{"id": c.id, "type": "function",
                                             "function": {"name": c.function.name,
                                                          "arguments": c.function.arguments}} for c in calls]})
        conversation += [{"role": "tool", "tool_call_id": c.id, "content": text} for c, text in feedback]
    raise LLMOutputError(f"the LLM's answer did not validate after {max_invalid + 1} attempts: {errors[-1]}",
                         raw=raw, attempts=max_invalid + 1, errors=errors)


def _first_errors(error: ValidationError, limit: int = 3) -> str:
    parts = []
    for e in error.errors()[:limit]:
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        parts.append(f"{where}: {e['msg']}")
    more = len(error.errors()) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
