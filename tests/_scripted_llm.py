"""A scripted OpenAI-compatible chat-completions server on localhost, for the openai brain's tests.

The real ``openai`` client talks to it over HTTP, so its request building, response parsing,
timeouts and error mapping are all exercised. A *script* decides each reply from the request
(its role, read from the system prompt) and the call's index: a tool call, text, an HTTP
error, a hang, or a body that is not JSON.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from agents.llm.fence import CLOSE, OPEN


@dataclass
class Reply:
    """One reply: ``calls`` (tool name, arguments as a dict or raw text), or ``content``, or an
    HTTP ``status`` with ``body``, after ``delay`` seconds."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    content: str | None = None
    status: int = 200
    body: str | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def tool(name: str, arguments: Any = None) -> Reply:
    return Reply(calls=[(name, {} if arguments is None else arguments)])


def role_of(request: dict[str, Any]) -> str:
    system = request["messages"][0]["content"]
    match = re.match(r"You are (?:the |a )?(\w+)", system)
    return match.group(1) if match else "?"


def fenced(request: dict[str, Any], label: str) -> Any:
    """The JSON fenced under ``label`` in the request's user message (the second message)."""
    text = request["messages"][1]["content"]
    start = text.index(f"{OPEN} {label}\n") + len(f"{OPEN} {label}\n")
    return json.loads(text[start: text.index(f"\n{CLOSE}", start)])


def narrative_for(request: dict[str, Any]) -> Reply:
    """A reporter answer that follows the rules: one sentence per claim, numbers as placeholders."""
    sentences = [{"text": f"The claim {c['id']} was {c['verdict']}: it measured {{{c['id']}.effect}} against a "
                          f"prediction of {{{c['id']}.threshold}}, on {{{c['id']}.n}} fresh prompts.",
                  "cites": [c["id"]]} for c in fenced(request, "claims")]
    return tool("submit_narrative", {"sentences": sentences})


def playbook(request: dict[str, Any], index: int) -> Reply:
    """An LLM that reads the task, accepts the playbook's every suggestion and writes by the rules."""
    role = role_of(request)
    if role == "intake":
        return tool("submit_behavior", {"task": "ioi", "reason": "the question names IOI"})
    if role == "reporter":
        return narrative_for(request)
    return tool("accept_suggestion", {"hypothesis": f"the {role} follows the playbook"})


class ScriptedLLM:
    """``with ScriptedLLM(script) as server:`` — ``server.url`` is the base URL (``.../v1``);
    ``server.requests`` lists every request body received (and ``server.roles`` their roles)."""

    def __init__(self, script: Callable[[dict[str, Any], int], Reply] = playbook) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @property
    def roles(self) -> list[str]:
        return [role_of(r) for r in self.requests]

    def __enter__(self) -> "ScriptedLLM":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer._lock:
                    index = len(outer.requests)
                    outer.requests.append(body)
                reply = outer.script(body, index)
                if reply.delay:
                    time.sleep(reply.delay)
                payload = reply.body if reply.body is not None else json.dumps(_completion(body, reply, index))
                data = payload.encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _completion(request: dict[str, Any], reply: Reply, index: int) -> dict[str, Any]:
    calls = [{"id": f"call_{index}_{i}", "type": "function",
              "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
             for i, (name, args) in enumerate(reply.calls)]
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if calls:
        message["tool_calls"] = calls
    prompt_tokens = 1 + sum(len(str(m.get("content") or "")) for m in request.get("messages", [])) // 4
    completion_tokens = len(json.dumps(message)) // 4
    return {"id": f"chatcmpl-{index}", "object": "chat.completion", "created": 0,
            "model": request.get("model", "scripted"),
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}
