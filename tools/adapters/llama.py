"""Llama-style decoders: Llama, Mistral, Qwen2, Qwen3 (pre-RMSNorm, rotary, grouped-query attention).

=============  =====================================================
embed          ``model.embed_tokens`` output
resid_pre.L    ``model.layers[L]`` input
attn.L         ``model.layers[L].self_attn`` output[0]
z / head.L.H   ``model.layers[L].self_attn.o_proj`` input
               (``n_heads * d_head`` wide; K/V may have fewer heads)
mlp.L          ``model.layers[L].mlp`` output
resid_post.L   ``model.layers[L]`` output
final norm     ``model.norm``;  unembed ``lm_head``
=============  =====================================================
"""

from __future__ import annotations

from tools.adapters.base import ArchitectureAdapter, ModulePaths

LLAMA_PATHS = ModulePaths(
    blocks="model.layers",
    embed="model.embed_tokens",
    attn="self_attn",
    o_proj="self_attn.o_proj",
    mlp="mlp",
    final_norm="model.norm",
    unembed="lm_head",
)


class LlamaAdapter(ArchitectureAdapter):
    family = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    paths = LLAMA_PATHS
