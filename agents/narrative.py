"""The reporter LLM's narrative: sentences that cite evidence, with numbers filled in by code.

The LLM writes sentences with a list of citations (claim ids, or experiment keys — 8 or more
hex digits of a stored result's content hash) and placeholders ``{claim-id.field}`` where a
number belongs. `check_narrative` rejects a sentence that cites nothing, cites what does not
exist, names an unknown placeholder, or types a digit itself (component names such as
``head.1.2`` aside); `fill_narrative` puts the stored numbers in.
"""

from __future__ import annotations

import re
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

FIELDS = ("effect", "ci_low", "ci_high", "n", "threshold")
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.-]+?)\.(" + "|".join(FIELDS) + r")\}")
_ANY_BRACE = re.compile(r"\{[^{}]*\}")
_COMPONENT = re.compile(r"\b(?:head\.\d+\.\d+|(?:mlp|attn|resid_pre|resid_post|resid_mid)\.\d+)(?:\.[qkv])?\b")
_KEY = re.compile(r"^[0-9a-f]{8,64}$")


class Sentence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=1000)
    cites: list[str] = Field(min_length=1)
    """Claim ids or experiment keys the sentence rests on."""


class Narrative(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sentences: list[Sentence] = Field(min_length=1, max_length=40)


def check_narrative(narrative: Narrative, claim_ids: set[str], evidence: set[str]) -> None:
    """Raise ``ValueError`` naming the first sentence that breaks a rule (module docstring)."""
    for i, sentence in enumerate(narrative.sentences):
        for cite in sentence.cites:
            if cite not in claim_ids and not (_KEY.match(cite) and any(k.startswith(cite) for k in evidence)):
                raise ValueError(f"sentence {i} cites {cite!r}, which is neither a claim id nor a stored "
                                 "experiment key")
        for match in _PLACEHOLDER.finditer(sentence.text):
            if match.group(1) not in claim_ids:
                raise ValueError(f"sentence {i}: placeholder {match.group(0)} names no claim")
        stripped = _PLACEHOLDER.sub(" ", sentence.text)
        if _ANY_BRACE.search(stripped):
            raise ValueError(f"sentence {i}: {_ANY_BRACE.search(stripped).group(0)} is not a placeholder; use "
                             f"{{claim-id.field}} with a field among {', '.join(FIELDS)}")
        stripped = _COMPONENT.sub(" ", stripped)
        for cite in sentence.cites:
            stripped = stripped.replace(cite, " ")
        if re.search(r"\d", stripped):
            raise ValueError(f"sentence {i} types a number ({re.search(r'[0-9][0-9.,%]*', stripped).group(0)!r}); "
                             "write a placeholder such as {claim-id.effect} instead")


def fill_narrative(narrative: Narrative, claims: Sequence) -> str:
    """The narrative as text: placeholders replaced by the stored values, citations appended."""
    by_id = {c.id: c for c in claims}

    def value(match: re.Match) -> str:
        claim, field = by_id[match.group(1)], match.group(2)
        raw = claim.n if field == "n" else claim.details.get("threshold") if field == "threshold" else \
            getattr(claim, field)
        if raw is None:
            return "n/a"
        return str(int(raw)) if field == "n" else f"{float(raw):.2f}"

    out = []
    for sentence in narrative.sentences:
        text = _PLACEHOLDER.sub(value, sentence.text.strip())
        out.append(f"{text} [{', '.join(sentence.cites)}]")
    return " ".join(out)
