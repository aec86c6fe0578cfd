"""The LLM side of the openai brain: settings, the client (retries, timeouts, accounting),
fencing of untrusted text, and typed tool calls. Nothing an LLM writes is ever executed:
every answer is a tool call validated by pydantic against a fixed vocabulary."""
