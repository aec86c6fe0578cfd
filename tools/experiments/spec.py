"""The base of every experiment spec, and the checks specs share.

A spec is pure data: a frozen pydantic model with a ``kind`` discriminator, written by an
agent (or an LLM, as validated JSON) and never executed. Mistakes that need no model
(an empty prompt set, an unknown site name) raise `SpecError` when the spec is built;
mistakes that need the model (a layer past its depth, a position past a prompt) raise
`SpecError` in the ``run_*`` function before its first forward pass. Either way the
error names the field.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

from pydantic import BaseModel, ConfigDict

from tools.components import Component, check_component, parse_component
from tools.errors import SpecError, UserInputError
from tools.experiments.prompts import PromptPairs


class ExperimentSpec(BaseModel):
    """Fields every experiment has; subclasses add ``kind: Literal[...]`` and their own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    """Which experiment (the discriminator of `tools.experiments.AnyExperimentSpec`)."""
    prompts: PromptPairs
    """The prompts, answers and foils the experiment runs on."""

    def cache_key(self, weights_hash: str) -> str:
        """Content address of this experiment on a model: sha256 of weights hash and spec JSON."""
        text = f"{weights_hash}\n{self.model_dump_json()}"
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def seed(self) -> int | None:
        """The prompt generator's seed, or None for explicit prompts."""
        return self.prompts.seed if self.prompts.task is not None else None


def check_indices(field: str, values: Sequence[int] | None, size: int, what: str) -> list[int]:
    """``values`` (or all of ``range(size)`` when None), each checked to lie in ``0 .. size-1``."""
    if values is None:
        return list(range(size))
    if not values:
        raise SpecError(field, f"is empty; list at least one {what} or leave it out for all")
    for i, value in enumerate(values):
        if not 0 <= value < size:
            raise SpecError(f"{field}[{i}]", f"{what} {value} is out of range: the model has "
                            f"{size} {what}s (0..{size - 1})")
    if len(set(values)) != len(values):
        raise SpecError(field, f"lists a {what} twice")
    return list(values)


def check_positions(field: str, positions: Sequence[int] | None, lengths: Sequence[int]) -> list[int]:
    """Positions valid in every prompt: ``p >= 0`` from the start, ``p < 0`` from each prompt's end.

    ``None`` means every position, which needs every prompt to have the same token length.
    """
    shortest, longest = min(lengths), max(lengths)
    if positions is None:
        if shortest != longest:
            raise SpecError(field, f"the prompts have {shortest} to {longest} tokens, so 'every "
                            "position' is not defined; list positions (negative ones count from "
                            "each prompt's end, -1 is the last token)")
        return list(range(shortest))
    if not positions:
        raise SpecError(field, "is empty; list at least one position or leave it out for all")
    for i, p in enumerate(positions):
        if p >= shortest or p < -shortest:
            raise SpecError(f"{field}[{i}]", f"position {p} is past the end of a prompt of "
                            f"{shortest} tokens (valid: {-shortest}..{shortest - 1})")
    resolved = [p if p >= 0 else p + shortest for p in positions] if shortest == longest else list(positions)
    if len(set(resolved)) != len(resolved):
        raise SpecError(field, "names the same position twice")
    return list(positions)


def check_component_name(field: str, name: str, *, n_layers: int, n_heads: int) -> Component:
    """Parse a component name and check it exists in a model of this size."""
    try:
        return check_component(parse_component(name), n_layers=n_layers, n_heads=n_heads)
    except UserInputError as error:
        raise SpecError(field, str(error)) from None
