"""Scores of one investigation against its answer key: pure functions of claims and keys.

Definitions (the harness, `evals.harness`, supplies the measurements they need):

* **Reported components**: the union of the components named by the report's *supported*
  claims, in the report's order (first mention first). Claims that were refuted or
  inconclusive report nothing; routing and steering claims name no component.
* **Component recall** = |reported ∩ key| / |key|; **precision** = |reported ∩ key| /
  |reported| (None when nothing is reported, or the key is empty for recall).
* **Reported edges**: each component of a supported *writers* (direct) claim → ``logits``;
  each sender of a supported path claim → each of its receivers. Edge recall and precision
  are computed like the component ones, against the key's edges.
* **Verdict accuracy**: a claim *holds under the key* when its score, re-measured with the
  claim's own method on the key's prompt set (large, held out, drawn with a seed no
  investigation uses), reaches the claim's pre-registered threshold. A supported claim is
  right when it holds, a refuted one when it does not; inconclusive claims take no side and
  are not counted. Accuracy = right / (supported + refuted) over the claims that could be
  re-measured (None when there are none).
* **Planted first**: on a key with a planted component, whether the first supported claim in
  the report's order names a planted component first.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from pydantic import BaseModel, ConfigDict


class ReportedClaim(BaseModel):
    """A claim as the report states it, with what the key-side measurement found."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    kind: str
    """``necessity``, ``faithfulness``, ``opposition``, ``direct``, ``path``, ``routing`` or ``steering``."""
    role: str = ""
    verdict: str
    components: tuple[str, ...] = ()
    receivers: tuple[str, ...] = ()
    """Path claims: the receivers (``head.L.H.q``)."""
    threshold: float | None = None
    measured: float | None = None
    """The claim's score re-measured on the key's prompts (None: not measured)."""
    note: str = ""
    """Why a supported or refuted claim was not re-measured (it is then not judged)."""

    @property
    def holds(self) -> bool | None:
        if self.measured is None or self.threshold is None:
            return None
        return self.measured >= self.threshold

    @property
    def right(self) -> bool | None:
        """Whether the verdict agrees with the key (None: no side taken, or not measured)."""
        return verdict_right(self.verdict, self.holds)


def verdict_right(verdict: str, holds: bool | None) -> bool | None:
    if holds is None or verdict not in ("supported", "refuted"):
        return None
    return holds if verdict == "supported" else not holds


def reported_components(claims: Sequence[ReportedClaim]) -> tuple[str, ...]:
    """The union of the supported claims' components, first mention first."""
    out: dict[str, None] = {}
    for claim in claims:
        if claim.verdict == "supported":
            out.update(dict.fromkeys(claim.components))
    return tuple(out)


def reported_edges(claims: Sequence[ReportedClaim]) -> set[tuple[str, str]]:
    """(sender, receiver) pairs stated by supported writers and path claims."""
    edges: set[tuple[str, str]] = set()
    for claim in claims:
        if claim.verdict != "supported":
            continue
        if claim.kind == "direct":
            edges |= {(c, "logits") for c in claim.components}
        elif claim.kind == "path":
            edges |= {(c, r) for c in claim.components for r in claim.receivers}
    return edges


def recall_precision(reported: Iterable, key: Iterable) -> tuple[float | None, float | None]:
    """(recall, precision) of a reported set against a key set."""
    found, truth = set(reported), set(key)
    hit = len(found & truth)
    recall = hit / len(truth) if truth else None
    precision = hit / len(found) if found else None
    return recall, precision


def verdict_accuracy(claims: Sequence[ReportedClaim]) -> float | None:
    """Right verdicts over supported + refuted claims that were re-measured."""
    judged = [c.right for c in claims if c.right is not None]
    return sum(judged) / len(judged) if judged else None


def planted_first(claims: Sequence[ReportedClaim], planted: Sequence[str]) -> bool | None:
    """Whether the first supported claim (report order) names a planted component first;
    None when the key plants nothing."""
    if not planted:
        return None
    first = next((c for c in claims if c.verdict == "supported"), None)
    return bool(first is not None and first.components and first.components[0] in planted)


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None (None when there are none)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
