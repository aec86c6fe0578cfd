"""The architecture adapter: canonical component names -> module sites of one model family.

An adapter is built from a Hugging Face config and knows two things about its family:
where each site lives in the module tree (`ModulePaths`) and the family's quirks
(a Conv1D output projection, parallel residual, norms after the sublayers, a
``(1 + weight)`` RMSNorm, logit soft-capping).

Every ``lm`` below is the nnsight model (``LoadedModel.lm``). The value accessors
(``resid_pre``, ``z``, ``attn_out``, ...) are meant to be called *inside* a trace and
return live tensors; nnsight >= 0.5 runs the trace body against the real forward, so:

* sites must be read in forward-execution order within one trace (``embed``, then for
  each block: ``resid_pre``, ``z``, ``o_proj_out`` / ``head_out``, ``attn_out``,
  ``mlp_out``, ``resid_post``; then ``logits``). Asking for an earlier site after a
  later one raises nnsight's ``OutOfOrderError``;
* a value kept past the ``with`` block needs ``.save()``;
* a setter replaces the site's value for the rest of this forward only (nothing
  persists on the model), so no clean-up is needed.

Weight accessors (``W_O``, ``b_O``) and ``final_norm`` / ``unembed`` / ``resid_to_logits``
work inside and outside a trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from tools.adapters.heads import linearise_through_norm, project_heads, rms_norm_scale, split_heads
from tools.components import Component, check_component


@dataclass(frozen=True)
class ModulePaths:
    """Dotted module paths of one family; block-relative ones are under ``blocks.L``."""

    blocks: str
    """The ModuleList of transformer blocks, from the root (``transformer.h``)."""
    embed: str
    """The token-embedding module, from the root."""
    attn: str
    """The attention sublayer, block-relative; its output (or output[0]) is its write."""
    o_proj: str
    """The attention output projection, block-relative; its input is ``z``."""
    mlp: str
    """The MLP sublayer, block-relative."""
    final_norm: str
    """The norm before the unembedding, from the root."""
    unembed: str
    """The unembedding (LM head), from the root."""
    post_attn_norm: str | None = None
    """A norm applied to the attention output before the residual add (Gemma 2/3)."""
    post_mlp_norm: str | None = None
    """A norm applied to the MLP output before the residual add (Gemma 2/3)."""


class ArchitectureAdapter:
    """Maps canonical components to module sites for one family. Subclasses set the ClassVars."""

    family: ClassVar[str]
    """Human name of the family, e.g. ``"gpt2"``."""
    model_types: ClassVar[tuple[str, ...]]
    """The ``config.model_type`` values this adapter serves."""
    paths: ClassVar[ModulePaths]
    """Where each site lives."""
    o_proj_input_major: ClassVar[bool] = False
    """True when the output projection's weight is ``[in, out]`` (GPT-2's Conv1D)."""
    norm_weight_offset: ClassVar[float] = 0.0
    """1.0 for Gemma, whose RMSNorm multiplies by ``(1 + weight)``."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.n_layers: int = int(config.num_hidden_layers)
        self.n_heads: int = int(config.num_attention_heads)
        self.n_kv_heads: int = int(getattr(config, "num_key_value_heads", None) or self.n_heads)
        self.d_model: int = int(config.hidden_size)
        self.d_head: int = int(getattr(config, "head_dim", None) or self.d_model // self.n_heads)
        self.d_vocab: int = int(config.vocab_size)
        self.d_mlp: int | None = getattr(config, "intermediate_size", None)
        self.parallel_residual: bool = False
        """True when attention and MLP both read ``resid_pre`` (GPT-NeoX / Pythia)."""
        self.final_logit_softcap: float | None = getattr(config, "final_logit_softcapping", None)

    @property
    def vocab_size(self) -> int:
        """Alias of ``d_vocab``."""
        return self.d_vocab

    @property
    def has_post_norms(self) -> bool:
        """True when sublayer outputs pass a norm before the residual add (head writes are linearised)."""
        return self.paths.post_attn_norm is not None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_layers={self.n_layers}, n_heads={self.n_heads}, "
            f"n_kv_heads={self.n_kv_heads}, d_model={self.d_model}, d_head={self.d_head}, "
            f"d_vocab={self.d_vocab})"
        )

    # -- envoys (modules) ------------------------------------------------------------

    def block(self, lm: Any, layer: int) -> Any:
        """The envoy of block ``layer``."""
        return lm.get(self.paths.blocks)[layer]

    def _in_block(self, lm: Any, layer: int, path: str) -> Any:
        return self.block(lm, layer).get(path)

    def attn_module(self, lm: Any, layer: int) -> Any:
        """The envoy of the attention sublayer of block ``layer``."""
        return self._in_block(lm, layer, self.paths.attn)

    def o_proj(self, lm: Any, layer: int) -> Any:
        """The envoy of the attention output projection of block ``layer``."""
        return self._in_block(lm, layer, self.paths.o_proj)

    def mlp_module(self, lm: Any, layer: int) -> Any:
        """The envoy of the MLP sublayer of block ``layer``."""
        return self._in_block(lm, layer, self.paths.mlp)

    def post_attn_norm(self, lm: Any, layer: int) -> Any | None:
        """The envoy of the post-attention norm, or None for families without one."""
        path = self.paths.post_attn_norm
        return None if path is None else self._in_block(lm, layer, path)

    def final_norm(self, lm: Any) -> Any:
        """The envoy of the final norm (callable on a residual tensor, in or out of a trace)."""
        return lm.get(self.paths.final_norm)

    def unembed(self, lm: Any) -> Any:
        """The envoy of the unembedding / LM head (callable on a normed residual)."""
        return lm.get(self.paths.unembed)

    def check_modules(self, lm: Any) -> None:
        """Raise AttributeError if a path of this adapter is missing from ``lm``'s tree."""
        for path in (self.paths.embed, self.paths.final_norm, self.paths.unembed):
            lm.get(path)
        if len(lm.get(self.paths.blocks)) != self.n_layers:
            raise AttributeError(f"{self.paths.blocks} does not hold {self.n_layers} blocks")
        for path in (self.paths.attn, self.paths.o_proj, self.paths.mlp,
                     self.paths.post_attn_norm, self.paths.post_mlp_norm):
            if path is not None:
                self._in_block(lm, 0, path)

    # -- weights ---------------------------------------------------------------------

    def W_O(self, lm: Any, layer: int) -> torch.Tensor:
        """Output-projection weight as ``[n_heads, d_head, d_model]`` (TransformerLens layout)."""
        weight = self.o_proj(lm, layer).weight
        if not self.o_proj_input_major:
            weight = weight.T
        return weight.reshape(self.n_heads, self.d_head, self.d_model)

    def b_O(self, lm: Any, layer: int) -> torch.Tensor | None:
        """Output-projection bias ``[d_model]``, or None when the projection has none."""
        return getattr(self.o_proj(lm, layer), "bias", None)

    # -- values inside a trace, in forward order --------------------------------------

    def embed(self, lm: Any) -> torch.Tensor:
        """Token embeddings ``[batch, pos, d_model]`` (GPT-2: without position embeddings)."""
        return lm.get(self.paths.embed).output

    def resid_pre(self, lm: Any, layer: int) -> torch.Tensor:
        """The residual stream entering block ``layer``: its first input."""
        return self.block(lm, layer).input

    def z(self, lm: Any, layer: int) -> torch.Tensor:
        """Concatenated per-head attention results ``[batch, pos, n_heads * d_head]`` (o_proj input)."""
        return self.o_proj(lm, layer).input

    def o_proj_out(self, lm: Any, layer: int) -> torch.Tensor:
        """The output projection's output ``[batch, pos, d_model]`` (before any post-norm)."""
        return self.o_proj(lm, layer).output

    def head_out(self, lm: Any, layer: int) -> torch.Tensor:
        """Each head's write to the residual stream, ``[batch, pos, n_heads, d_model]``.

        Reads ``z`` and, for post-norm families, ``o_proj_out``. nnsight serves a module's
        input only until the module has run, so read ``z`` yourself *before* calling this
        if you need it too (or save ``z`` / ``o_proj_out`` and use `head_writes`).
        """
        z = self.z(lm, layer)
        o_proj_out = self.o_proj_out(lm, layer) if self.has_post_norms else None
        return self.head_writes(lm, layer, z, o_proj_out)

    def head_writes(
        self, lm: Any, layer: int, z: torch.Tensor, o_proj_out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-head residual writes ``[batch, pos, n_heads, d_model]`` from ``z`` (pure; in or out of a trace).

        ``project_heads(z, W_O)``; for families with a post-attention norm, multiplied by
        that norm's scale frozen on the run that produced ``o_proj_out`` (required then;
        see `tools.adapters.heads`). The o_proj bias is not attributed to any head:
        ``attn_out == head_writes.sum(-2) + b_O`` (times the same frozen scale for
        post-norm families).
        """
        writes = project_heads(z, self.W_O(lm, layer), self.n_heads)
        norm = self.post_attn_norm(lm, layer)
        if norm is None:
            return writes
        if o_proj_out is None:
            raise ValueError(
                f"{self.family} normalises the attention output; pass o_proj_out from the same run"
            )
        scale = self.post_attn_norm_scale(lm, layer, o_proj_out)
        return linearise_through_norm(writes, scale)

    def post_attn_norm_scale(self, lm: Any, layer: int, o_proj_out: torch.Tensor) -> torch.Tensor:
        """``[batch, pos, d_model]`` factor with ``post_attn_norm(x) == x * scale`` for ``x = o_proj_out``."""
        norm = self.post_attn_norm(lm, layer)
        if norm is None:
            return torch.ones_like(o_proj_out)
        return rms_norm_scale(o_proj_out, norm.weight, self._norm_eps(norm), self.norm_weight_offset)

    def attn_out(self, lm: Any, layer: int) -> torch.Tensor:
        """What the attention sublayer adds to the residual stream (after any post-norm)."""
        return _first(self._attn_write_envoy(lm, layer).output)

    def mlp_out(self, lm: Any, layer: int) -> torch.Tensor:
        """What the MLP sublayer adds to the residual stream (after any post-norm)."""
        return _first(self._mlp_write_envoy(lm, layer).output)

    def resid_post(self, lm: Any, layer: int) -> torch.Tensor:
        """The residual stream leaving block ``layer``: its output."""
        return _first(self.block(lm, layer).output)

    def logits(self, lm: Any) -> torch.Tensor:
        """The model's logits ``[batch, pos, d_vocab]`` (after any soft-capping)."""
        return lm.output.logits

    # -- setters inside a trace (this forward only) ------------------------------------

    def set_embed(self, lm: Any, value: torch.Tensor) -> None:
        """Replace the token embeddings."""
        _set_output(lm.get(self.paths.embed), value)

    def set_resid_pre(self, lm: Any, layer: int, value: torch.Tensor) -> None:
        """Replace the residual stream entering block ``layer``."""
        self.block(lm, layer).input = value

    def set_z(self, lm: Any, layer: int, value: torch.Tensor) -> None:
        """Replace the o_proj input ``[batch, pos, n_heads * d_head]`` (all heads)."""
        self.o_proj(lm, layer).input = value

    def set_attn_out(self, lm: Any, layer: int, value: torch.Tensor) -> None:
        """Replace what attention adds to the residual stream."""
        _set_output(self._attn_write_envoy(lm, layer), value)

    def set_mlp_out(self, lm: Any, layer: int, value: torch.Tensor) -> None:
        """Replace what the MLP adds to the residual stream."""
        _set_output(self._mlp_write_envoy(lm, layer), value)

    def set_resid_post(self, lm: Any, layer: int, value: torch.Tensor) -> None:
        """Replace the residual stream leaving block ``layer``."""
        _set_output(self.block(lm, layer), value)

    # -- generic read / write by component ---------------------------------------------

    def read(self, lm: Any, component: Component) -> torch.Tensor:
        """The value at ``component`` inside a trace; a head reads its ``z`` slice ``[batch, pos, d_head]``."""
        check_component(component, n_layers=self.n_layers, n_heads=self.n_heads)
        if component.kind == "embed":
            return self.embed(lm)
        if component.kind == "head":
            return split_heads(self.z(lm, component.layer), self.n_heads)[..., component.head, :]
        getter = {"resid_pre": self.resid_pre, "attn": self.attn_out,
                  "mlp": self.mlp_out, "resid_post": self.resid_post}[component.kind]
        return getter(lm, component.layer)

    def write(self, lm: Any, component: Component, value: torch.Tensor) -> None:
        """Replace the value at ``component`` inside a trace; a head replaces its ``z`` slice."""
        check_component(component, n_layers=self.n_layers, n_heads=self.n_heads)
        if component.kind == "embed":
            self.set_embed(lm, value)
            return
        if component.kind == "head":
            z = self.z(lm, component.layer).clone()
            split_heads(z, self.n_heads)[..., component.head, :] = value
            self.set_z(lm, component.layer, z)
            return
        setter = {"resid_pre": self.set_resid_pre, "attn": self.set_attn_out,
                  "mlp": self.set_mlp_out, "resid_post": self.set_resid_post}[component.kind]
        setter(lm, component.layer, value)

    # -- pure helpers -----------------------------------------------------------------

    def resid_to_logits(self, lm: Any, resid: torch.Tensor) -> torch.Tensor:
        """Final norm, unembedding and any logit soft-cap applied to a residual tensor."""
        logits = self.unembed(lm)(self.final_norm(lm)(resid))
        if self.final_logit_softcap:
            cap = self.final_logit_softcap
            logits = torch.tanh(logits / cap) * cap
        return logits

    # -- family hooks -----------------------------------------------------------------

    def _attn_write_envoy(self, lm: Any, layer: int) -> Any:
        path = self.paths.post_attn_norm or self.paths.attn
        return self._in_block(lm, layer, path)

    def _mlp_write_envoy(self, lm: Any, layer: int) -> Any:
        path = self.paths.post_mlp_norm or self.paths.mlp
        return self._in_block(lm, layer, path)

    @staticmethod
    def _norm_eps(norm: Any) -> float:
        for name in ("eps", "variance_epsilon", "epsilon"):
            value = getattr(norm, name, None)
            if isinstance(value, float):
                return value
        raise AttributeError(f"cannot find the epsilon of norm {norm!r}")


def _first(value: Any) -> Any:
    """A module's main output: element 0 of a tuple output, else the output itself."""
    return value[0] if isinstance(value, tuple) else value


def _set_output(envoy: Any, value: torch.Tensor) -> None:
    """Replace a module's main output, keeping the rest of a tuple output."""
    current = envoy.output
    envoy.output = (value, *current[1:]) if isinstance(current, tuple) else value
