"""Untrusted text (the user's prompts, model generations, memory contents, results) goes to
an LLM only inside a fence that says it is data, never instructions."""

from __future__ import annotations

import json
import re
from typing import Any

OPEN, CLOSE = "<<<DATA", "DATA>>>"


def fence(value: Any, label: str = "data") -> str:
    """``value`` (text, or anything JSON-able) between fence markers; markers inside it are
    defused so the data cannot close its own fence."""
    text = value if isinstance(value, str) else json.dumps(value, indent=1, sort_keys=True, default=str)
    text = text.replace(OPEN, "<<DATA").replace(CLOSE, "DATA>>")
    return f"{OPEN} {label}\n{text}\n{CLOSE}"


def untrusted_md(text: str) -> str:
    """``text`` as a Markdown code span: shown verbatim, never rendered as Markdown or HTML."""
    flat = " ".join(str(text).split())
    ticks = "`"
    while ticks in flat:
        ticks += "`"
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{ticks}{pad}{flat}{pad}{ticks}"


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|<>~])")


def md_escape(text: str) -> str:
    """``text`` with Markdown and HTML punctuation backslash-escaped: it renders as the words it is."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))
