"""GPT-2 (``GPT2LMHeadModel``): pre-LN blocks, Conv1D projections (``[in, out]`` weights).

=============  =====================================================
embed          ``transformer.wte`` output (position embeddings from
               ``transformer.wpe`` are added after it, so
               ``resid_pre.0 = embed + pos_embed``)
resid_pre.L    ``transformer.h[L]`` input
attn.L         ``transformer.h[L].attn`` output[0] (a tuple: out, weights)
z / head.L.H   ``transformer.h[L].attn.c_proj`` input
mlp.L          ``transformer.h[L].mlp`` output
resid_post.L   ``transformer.h[L]`` output (a tensor in transformers 5)
final norm     ``transformer.ln_f``;  unembed ``lm_head``
=============  =====================================================
"""

from __future__ import annotations

from tools.adapters.base import ArchitectureAdapter, ModulePaths


class GPT2Adapter(ArchitectureAdapter):
    family = "gpt2"
    model_types = ("gpt2",)
    paths = ModulePaths(
        blocks="transformer.h",
        embed="transformer.wte",
        attn="attn",
        o_proj="attn.c_proj",
        mlp="mlp",
        final_norm="transformer.ln_f",
        unembed="lm_head",
    )
    o_proj_input_major = True

    def __init__(self, config) -> None:
        super().__init__(config)
        self.d_mlp = getattr(config, "n_inner", None) or 4 * self.d_model
