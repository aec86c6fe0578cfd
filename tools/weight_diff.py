"""How much each component's weights changed between two models of one architecture.

``‖W_B − W_A‖ / ‖W_A‖`` (Frobenius norms over every parameter slice the component owns) per
component. Not behaviour-specific: a change of weights says nothing about which behaviour it
moves, so these norms are reported beside the behavioural comparisons, never as evidence of a
behaviour change.

What a component owns:

=================  ==========================================================================
``head.L.H``       its rows of the attention output projection (``W_O``) and its slices of the
                   query, key and value projections (weights and biases): GPT-2's fused
                   ``c_attn`` columns, NeoX's fused ``query_key_value`` rows (laid out per head),
                   or the separate ``q_proj`` / ``k_proj`` / ``v_proj`` rows of Llama- and
                   Gemma-style models, where a key/value head shared by several query heads
                   (grouped-query attention) counts for each of them
``attn.L``         every parameter of block L's attention sublayer (all heads, biases, any q/k norm)
``mlp.L``          every parameter of block L's MLP
``embed``          the token (and position) embeddings
``other``          everything else: the blocks' norms, the final norm, an untied unembedding
=================  ==========================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch
from pydantic import BaseModel, ConfigDict

from tools.errors import UserInputError

if TYPE_CHECKING:
    from tools.loading import LoadedModel


class WeightChange(BaseModel):
    """One component's weight change."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    component: str
    """``head.L.H``, ``attn.L``, ``mlp.L``, ``embed`` or ``other``."""
    norm: float
    """``‖W_B − W_A‖`` over the component's parameters."""
    base_norm: float
    """``‖W_A‖`` over the same parameters."""
    relative: float
    """``norm / base_norm`` (0 when the base norm is 0 and nothing changed)."""
    parameters: int
    """How many scalar parameters the component owns."""


class WeightChangeResult(BaseModel):
    """Every component's weight change, in forward order, and the identities of the two models."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_model_id: str
    base_weights_hash: str
    model_id: str
    weights_hash: str
    changes: tuple[WeightChange, ...]

    def by_component(self) -> dict[str, WeightChange]:
        return {c.component: c for c in self.changes}


@torch.no_grad()
def weight_change_norms(base: "LoadedModel", model: "LoadedModel") -> WeightChangeResult:
    """Per-component ``‖W_B − W_A‖ / ‖W_A‖``; pure (reads the weights, changes nothing).

    Raises:
        UserInputError: the two state dicts do not have the same parameter names and shapes.
    """
    sa, sb = _named(base), _named(model)
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        differ = sorted(set(sa) ^ set(sb))[:3] or [k for k in sa if sa[k].shape != sb[k].shape][:3]
        raise UserInputError(f"{base.model_id} and {model.model_id} do not have the same parameters "
                             f"(e.g. {', '.join(differ)}); weight changes need the same architecture")
    adapter = base.adapter
    blocks = adapter.paths.blocks
    changes: list[WeightChange] = []
    owned: set[str] = set()
    embed_names = [k for k in sa if k.startswith(adapter.paths.embed + ".") or _is_position_embedding(k, blocks)]
    changes.append(_change("embed", [(sa[k], sb[k]) for k in embed_names]))
    owned |= set(embed_names)
    for layer in range(adapter.n_layers):
        prefix = f"{blocks}.{layer}."
        attn_names = [k for k in sa if k.startswith(prefix + adapter.paths.attn + ".")]
        for head in range(adapter.n_heads):
            pairs = list(_head_slices(base, model, sa, sb, layer, head))
            changes.append(_change(f"head.{layer}.{head}", pairs))
        changes.append(_change(f"attn.{layer}", [(sa[k], sb[k]) for k in attn_names]))
        mlp_names = [k for k in sa if k.startswith(prefix + adapter.paths.mlp + ".")]
        changes.append(_change(f"mlp.{layer}", [(sa[k], sb[k]) for k in mlp_names]))
        owned |= set(attn_names) | set(mlp_names)
    rest = [k for k in sa if k not in owned]
    changes.append(_change("other", [(sa[k], sb[k]) for k in rest]))
    return WeightChangeResult(base_model_id=base.model_id, base_weights_hash=base.weights_hash,
                              model_id=model.model_id, weights_hash=model.weights_hash, changes=tuple(changes))


def _named(model: "LoadedModel") -> dict[str, torch.Tensor]:
    """Parameters by name (a tied tensor once, under its first name)."""
    seen, out = set(), {}
    for name, tensor in model.hf_model.state_dict().items():
        if not tensor.is_floating_point():
            continue  # buffers such as causal masks
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach()
    return out


def _is_position_embedding(name: str, blocks: str) -> bool:
    return name.endswith("wpe.weight") and not name.startswith(blocks)


def _change(component: str, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> WeightChange:
    diff = sum(float((b.double() - a.double()).pow(2).sum()) for a, b in pairs)
    ref = sum(float(a.double().pow(2).sum()) for a, _ in pairs)
    norm, base_norm = diff ** 0.5, ref ** 0.5
    relative = norm / base_norm if base_norm > 0 else (0.0 if norm == 0 else float("inf"))
    return WeightChange(component=component, norm=norm, base_norm=base_norm, relative=relative,
                        parameters=sum(a.numel() for a, _ in pairs))


def _head_slices(base: "LoadedModel", model: "LoadedModel", sa: dict, sb: dict, layer: int,
                 head: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (base, model) slices of every parameter head ``head`` of ``layer`` owns."""
    adapter = base.adapter
    yield adapter.W_O(base.lm, layer)[head], adapter.W_O(model.lm, layer)[head]
    d, h = adapter.d_head, head
    attn = f"{adapter.paths.blocks}.{layer}.{adapter.paths.attn}."
    if adapter.family == "gpt2":  # c_attn: Conv1D [d_model, 3 * d_model], columns q | k | v
        width = adapter.n_heads * d
        columns = torch.cat([torch.arange(part * width + h * d, part * width + (h + 1) * d) for part in range(3)])
        for name in ("c_attn.weight", "c_attn.bias"):
            if attn + name in sa:
                yield sa[attn + name][..., columns], sb[attn + name][..., columns]
    elif adapter.family == "gpt_neox":  # query_key_value: rows laid out [head, (q, k, v), d_head]
        rows = slice(h * 3 * d, (h + 1) * 3 * d)
        for name in ("query_key_value.weight", "query_key_value.bias"):
            if attn + name in sa:
                yield sa[attn + name][rows], sb[attn + name][rows]
    else:  # separate q_proj / k_proj / v_proj, out-major rows; K/V heads shared under GQA
        kv = h // max(1, adapter.n_heads // adapter.n_kv_heads)
        for proj, index in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
            for part in ("weight", "bias"):
                name = f"{attn}{proj}.{part}"
                if name in sa:
                    rows = slice(index * d, (index + 1) * d)
                    yield sa[name][rows], sb[name][rows]
