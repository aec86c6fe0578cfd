"""Architecture adapters: one per model family, chosen by ``config.model_type``.

``adapter_for(config)`` returns the adapter instance for a Hugging Face config or raises
``UnsupportedArchitectureError``. See `tools.adapters.base` for what an adapter offers
and each family's module for its site map.
"""

from __future__ import annotations

from typing import Any

from tools.adapters.base import ArchitectureAdapter, ModulePaths
from tools.adapters.gemma import Gemma2Adapter, Gemma3Adapter, GemmaAdapter
from tools.adapters.gpt2 import GPT2Adapter
from tools.adapters.gpt_neox import GPTNeoXAdapter
from tools.adapters.heads import (
    linearise_through_norm,
    merge_heads,
    project_heads,
    rms_norm_scale,
    split_heads,
)
from tools.adapters.llama import LlamaAdapter
from tools.errors import UnsupportedArchitectureError

ADAPTER_CLASSES: tuple[type[ArchitectureAdapter], ...] = (
    GPT2Adapter,
    GPTNeoXAdapter,
    LlamaAdapter,
    GemmaAdapter,
    Gemma2Adapter,
    Gemma3Adapter,
)

_BY_MODEL_TYPE: dict[str, type[ArchitectureAdapter]] = {
    model_type: cls for cls in ADAPTER_CLASSES for model_type in cls.model_types
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_BY_MODEL_TYPE))
"""Every ``config.model_type`` with an adapter."""

_HINTS = {
    "gemma3": "this is the multimodal Gemma 3 checkpoint; load a text-only one "
    "(Gemma3ForCausalLM, model_type gemma3_text), e.g. google/gemma-3-270m or gemma-3-1b",
}


def adapter_for(config: Any) -> ArchitectureAdapter:
    """The adapter for a Hugging Face config.

    Raises:
        UnsupportedArchitectureError: when no adapter serves ``config.model_type``.
    """
    model_type = getattr(config, "model_type", None)
    cls = _BY_MODEL_TYPE.get(model_type)
    if cls is None:
        hint = _HINTS.get(model_type, "use a model of one of these families or add an adapter "
                          "in tools/adapters/")
        raise UnsupportedArchitectureError(
            f"no architecture adapter for model_type {model_type!r} "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)}); {hint}"
        )
    return cls(config)


__all__ = [
    "ADAPTER_CLASSES",
    "SUPPORTED_MODEL_TYPES",
    "ArchitectureAdapter",
    "GPT2Adapter",
    "GPTNeoXAdapter",
    "Gemma2Adapter",
    "Gemma3Adapter",
    "GemmaAdapter",
    "LlamaAdapter",
    "ModulePaths",
    "adapter_for",
    "linearise_through_norm",
    "merge_heads",
    "project_heads",
    "rms_norm_scale",
    "split_heads",
]
