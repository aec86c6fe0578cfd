"""Gemma family: Gemma 1 (Llama layout), Gemma 2 and Gemma 3 text (norms after each sublayer).

All Gemma RMSNorms multiply by ``(1 + weight)``, and ``embed_tokens`` multiplies by
``sqrt(d_model)`` (so ``embed`` is already scaled). Gemma 2 and 3 normalise each
sublayer's output before the residual add::

    resid_mid  = resid_pre + post_attention_layernorm(self_attn(input_layernorm(resid_pre)))
    resid_post = resid_mid + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(resid_mid)))

so ``attn.L`` / ``mlp.L`` are those post-norms' outputs, and ``head_out`` linearises the
post-attention norm (scale frozen on the run; see `tools.adapters.heads`). Gemma 2 (and a
Gemma 3 config that sets it) soft-caps the final logits; ``resid_to_logits`` applies it.

=============  =====================================================
embed          ``model.embed_tokens`` output (scaled)
resid_pre.L    ``model.layers[L]`` input
attn.L         ``model.layers[L].post_attention_layernorm`` output (Gemma 2/3);
               ``model.layers[L].self_attn`` output[0] (Gemma 1)
z / head.L.H   ``model.layers[L].self_attn.o_proj`` input
mlp.L          ``model.layers[L].post_feedforward_layernorm`` output (Gemma 2/3);
               ``model.layers[L].mlp`` output (Gemma 1)
resid_post.L   ``model.layers[L]`` output
final norm     ``model.norm``;  unembed ``lm_head``
=============  =====================================================
"""

from __future__ import annotations

from dataclasses import replace

from tools.adapters.base import ArchitectureAdapter
from tools.adapters.llama import LLAMA_PATHS


class GemmaAdapter(ArchitectureAdapter):
    """Gemma 1: the Llama layout with ``(1 + weight)`` norms and scaled embeddings."""

    family = "gemma"
    model_types = ("gemma",)
    paths = LLAMA_PATHS
    norm_weight_offset = 1.0


class Gemma2Adapter(GemmaAdapter):
    """Gemma 2 and Gemma 3 text (``Gemma3ForCausalLM``, model_type ``gemma3_text``)."""

    family = "gemma2"
    model_types = ("gemma2",)
    paths = replace(
        LLAMA_PATHS,
        post_attn_norm="post_attention_layernorm",
        post_mlp_norm="post_feedforward_layernorm",
    )


class Gemma3Adapter(Gemma2Adapter):
    family = "gemma3"
    model_types = ("gemma3_text",)
