"""Canonical component names, in TransformerLens vocabulary, parsed into a frozen type.

A component names one place in the model an experiment reads or writes:

==================  ===========================================================
``embed``           the token embedding (before position embeddings, if any)
``resid_pre.L``     the residual stream entering block ``L``
``attn.L``          what block ``L``'s attention sublayer adds to the residual
``head.L.H``        head ``H`` of block ``L`` (its slice of the attention output
                    projection's input, i.e. TransformerLens ``hook_z``)
``mlp.L``           what block ``L``'s MLP sublayer adds to the residual
``resid_post.L``    the residual stream leaving block ``L``
==================  ===========================================================

``parse_component`` and ``str`` round-trip: ``str(parse_component(s)) == s`` for every
well-formed ``s``. Bounds against a particular model (``L < n_layers``) are checked by
``check_component``, since the parser knows no model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from tools.errors import UserInputError

ComponentKind = Literal["embed", "resid_pre", "resid_post", "attn", "head", "mlp"]

COMPONENT_KINDS: tuple[str, ...] = get_args(ComponentKind)
"""Every kind, in the order a forward pass meets them within a block."""

_LAYERED_KINDS = ("resid_pre", "resid_post", "attn", "mlp")
_PATTERN = re.compile(r"^([a-z_]+)((?:\.\d+)*)$")
_EXAMPLES = "embed, resid_pre.3, attn.3, head.3.1, mlp.3, resid_post.3"


@dataclass(frozen=True, order=True)
class Component:
    """One named site of a transformer, e.g. ``head.1.2``."""

    kind: ComponentKind
    """What the site is: ``embed``, ``resid_pre``, ``resid_post``, ``attn``, ``head`` or ``mlp``."""
    layer: int | None = None
    """Block index (0-based); ``None`` only for ``embed``."""
    head: int | None = None
    """Head index within the block (0-based); set only for ``head``."""

    def __post_init__(self) -> None:
        if self.kind not in COMPONENT_KINDS:
            raise UserInputError(
                f"unknown component kind {self.kind!r}; use one of {', '.join(COMPONENT_KINDS)}"
            )
        needs_layer = self.kind != "embed"
        needs_head = self.kind == "head"
        if needs_layer != (self.layer is not None) or needs_head != (self.head is not None):
            raise UserInputError(
                f"component {self.kind!r} got layer={self.layer}, head={self.head}; "
                f"write components like {_EXAMPLES}"
            )
        for value in (self.layer, self.head):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise UserInputError(
                    f"component indices must be non-negative integers, got {value!r}"
                )

    def __str__(self) -> str:
        parts = [self.kind] + [str(i) for i in (self.layer, self.head) if i is not None]
        return ".".join(parts)


def parse_component(name: str) -> Component:
    """Parse a canonical name (``"head.1.2"``) into a `Component`.

    Raises:
        UserInputError: for anything that is not one of the canonical forms.
    """
    if not isinstance(name, str):
        raise UserInputError(f"a component name must be a string, got {type(name).__name__}")
    match = _PATTERN.match(name.strip())
    if match is None:
        raise UserInputError(f"malformed component name {name!r}; write one like {_EXAMPLES}")
    kind, index_text = match.group(1), match.group(2)
    indices = [int(part) for part in index_text.split(".")[1:]]
    expected = 0 if kind == "embed" else 2 if kind == "head" else 1 if kind in _LAYERED_KINDS else None
    if expected is None:
        raise UserInputError(
            f"unknown component kind {kind!r} in {name!r}; use one of {', '.join(COMPONENT_KINDS)}"
        )
    if len(indices) != expected:
        shape = {0: "embed", 1: f"{kind}.LAYER", 2: "head.LAYER.HEAD"}[expected]
        raise UserInputError(f"malformed component name {name!r}; {kind} is written {shape}")
    return Component(kind, *indices)  # type: ignore[arg-type]


def check_component(component: Component, *, n_layers: int, n_heads: int) -> Component:
    """Return ``component`` if it exists in a model of this size, else raise UserInputError."""
    if component.layer is not None and component.layer >= n_layers:
        raise UserInputError(
            f"component {component} is out of range: the model has {n_layers} layers (0..{n_layers - 1})"
        )
    if component.head is not None and component.head >= n_heads:
        raise UserInputError(
            f"component {component} is out of range: the model has {n_heads} heads per layer "
            f"(0..{n_heads - 1})"
        )
    return component
