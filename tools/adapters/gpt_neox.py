"""GPT-NeoX / Pythia (``GPTNeoXForCausalLM``): rotary attention, usually parallel residual.

With ``use_parallel_residual`` (every Pythia model) attention and MLP both read
``resid_pre`` and ``resid_post = resid_pre + attn_out + mlp_out``; there is no
residual stream between them, so no attention -> MLP path within one block. Without it
the block is sequential, like GPT-2. The sites are the same either way.

=============  =====================================================
embed          ``gpt_neox.embed_in`` output
resid_pre.L    ``gpt_neox.layers[L]`` input
attn.L         ``gpt_neox.layers[L].attention`` output[0]
z / head.L.H   ``gpt_neox.layers[L].attention.dense`` input
mlp.L          ``gpt_neox.layers[L].mlp`` output
resid_post.L   ``gpt_neox.layers[L]`` output
final norm     ``gpt_neox.final_layer_norm``;  unembed ``lm_head``
               (named ``embed_out`` before transformers 5)
=============  =====================================================
"""

from __future__ import annotations

from tools.adapters.base import ArchitectureAdapter, ModulePaths


class GPTNeoXAdapter(ArchitectureAdapter):
    family = "gpt_neox"
    model_types = ("gpt_neox",)
    paths = ModulePaths(
        blocks="gpt_neox.layers",
        embed="gpt_neox.embed_in",
        attn="attention",
        o_proj="attention.dense",
        mlp="mlp",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head",
    )

    def __init__(self, config) -> None:
        super().__init__(config)
        self.parallel_residual = bool(getattr(config, "use_parallel_residual", True))
