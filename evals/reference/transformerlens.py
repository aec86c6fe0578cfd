"""Reference numbers from TransformerLens 4 (`TransformerBridge`), computed TransformerLens's way.

The correctness tests run the same weights and the same token ids through `tools/` and
through the functions here, and require agreement to 1e-4. Nothing here reuses `tools/`:
every number comes from TransformerLens's own hooks, caches and utilities —
``transformer_lens.patching.get_act_patch_*`` for patching, ``ActivationCache``'s
``stack_head_results`` / ``apply_ln_to_stack`` for direct logit attribution,
``accumulated_resid(apply_ln=True)`` for the logit lens, and plain ``run_with_hooks``
hooks on ``hook_z`` / ``hook_mlp_out`` for ablation. TransformerLens is a dev/test
dependency; `tools/` never imports it.

The bridge
==========
`boot_reference` boots a local Hugging Face folder with
``TransformerBridge.boot_transformers`` (a local folder needs no network) and turns on
compatibility mode, the HookedTransformer coordinate system TransformerLens's analysis
utilities assume (LayerNorm folded into the next weights, writing weights and the
unembedding centred). Two consequences for comparing numbers:

* Raw logits shift by a per-position constant (``center_unembed``), and the residual
  stream of a LayerNorm model loses its mean over ``d_model`` (``center_writing_weights``).
  Neither changes a logit *difference* or a log-probability, which is what is compared.
* ``fold_value_biases`` (on by default in TransformerLens) moves each head's value bias
  out of ``hook_z`` into the attention output bias. `tools/` defines a head at the
  attention output projection's input — Hugging Face's ``z``, value bias included — so the
  reference turns the fold off: then ``hook_z`` *is* that activation, and zeroing it or
  attributing a logit to it means the same thing on both sides. Patching and mean
  ablation are unaffected either way (the bias is the same constant in every run);
  zero ablation and per-head DLA are not.

Gemma 3 specifics: the embedding is scaled by ``sqrt(d_model)`` inside
``embed_tokens``, so ``hook_embed`` and ``blocks.0.hook_resid_pre`` are already scaled
(as `tools`'s ``resid_pre.0`` is); norms scale by ``1 + weight`` (``cfg.rmsnorm_uses_offset``);
``hook_attn_out`` / ``hook_mlp_out`` are the *post*-sublayer norms' outputs
(``ln1_post`` / ``ln2_post``); and a final logit soft-cap, when the config sets one, is
applied by ``adapter.apply_output_logits_transform`` (gemma-3-270m sets none).

Token ids in, numbers out
=========================
Every function takes ``tokens`` ``[batch, pos]`` — prompts of **one token length**, so
there is no padding and TransformerLens's sweeps see the same positions as ours — and
``answer`` / ``foil`` ids ``[batch]``. The metric everywhere is the logit difference
answer − foil at the last position.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Literal, Sequence

import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def boot_reference(folder: str | Path, *, fold_value_biases: bool = False) -> "TransformerBridge":
    """A `TransformerBridge` of a local HF model folder, on CPU in float32, in compatibility mode.

    ``fold_value_biases=False`` keeps each head's value bias in ``hook_z`` (see the module
    docstring); pass True for TransformerLens's default processing.
    """
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)
    bridge.eval()
    bridge.enable_compatibility_mode(disable_warnings=True, fold_value_biases=fold_value_biases)
    return bridge


def logit_diff_at_last(logits: torch.Tensor, answer: torch.Tensor, foil: torch.Tensor) -> torch.Tensor:
    """``[batch, pos, d_vocab]`` logits -> ``[batch]`` answer − foil at the last position."""
    rows = torch.arange(logits.shape[0])
    last = logits[:, -1].float()
    return last[rows, answer] - last[rows, foil]


@torch.no_grad()
def logit_diff(
    bridge: "TransformerBridge", tokens: torch.Tensor, answer: torch.Tensor, foil: torch.Tensor
) -> torch.Tensor:
    """The unpatched model's logit difference ``[batch]``."""
    return logit_diff_at_last(bridge.run_with_hooks(tokens, fwd_hooks=[]), answer, foil)


# -- activation patching -------------------------------------------------------------------


@dataclass(frozen=True)
class PatchingReference:
    """One TransformerLens patching sweep (denoising: clean values into the corrupted run)."""

    patched: torch.Tensor
    """Patched logit difference per cell and prompt: ``[layer, pos, batch]`` (residual) or
    ``[layer, head, batch]`` (heads)."""
    effect: torch.Tensor
    """``(mean patched − mean corrupted) / (mean clean − mean corrupted)`` per cell."""
    clean: torch.Tensor
    """Unpatched clean logit difference ``[batch]``."""
    corrupted: torch.Tensor
    """Unpatched corrupted logit difference ``[batch]`` (TransformerLens's ``baseline``)."""


@torch.no_grad()
def patch_resid_pre(
    bridge: "TransformerBridge", clean: torch.Tensor, corrupted: torch.Tensor,
    answer: torch.Tensor, foil: torch.Tensor, layers: Sequence[int] | None = None,
) -> PatchingReference:
    """``get_act_patch_resid_pre`` over ``layers`` (default all) × every position."""
    from transformer_lens import patching

    return _sweep(bridge, patching.get_act_patch_resid_pre, clean, corrupted, answer, foil,
                  layers, second_axis=clean.shape[1])


@torch.no_grad()
def patch_head_all_pos(
    bridge: "TransformerBridge", clean: torch.Tensor, corrupted: torch.Tensor,
    answer: torch.Tensor, foil: torch.Tensor, layers: Sequence[int] | None = None,
) -> PatchingReference:
    """``get_act_patch_attn_head_out_all_pos`` (each head's ``hook_z`` at every position)
    over ``layers`` (default all) × every head."""
    from transformer_lens import patching

    return _sweep(bridge, patching.get_act_patch_attn_head_out_all_pos, clean, corrupted, answer,
                  foil, layers, second_axis=bridge.cfg.n_heads)


def _sweep(bridge, patch_fn, clean, corrupted, answer, foil, layers, second_axis) -> PatchingReference:
    """Run one ``get_act_patch_*`` function with per-prompt values and the corrupted baseline.

    All layers: the function's own (layer, second axis) grid. A subset of layers: an
    explicit ``index_df`` of those rows (TransformerLens then returns one value per row).
    """
    import pandas as pd

    _check_aligned(clean, corrupted)
    clean_logits, clean_cache = bridge.run_with_cache(clean)
    clean_ld = logit_diff_at_last(clean_logits, answer, foil)

    def metric(logits: torch.Tensor) -> torch.Tensor:  # [batch]
        return logit_diff_at_last(logits, answer, foil)

    if layers is None or list(layers) == list(range(bridge.cfg.n_layers)):
        result = patch_fn(bridge, corrupted, clean_cache, metric, reduce="none", baseline=True)
        patched = result.values  # [layer, second axis, batch]
    else:
        axes = list(patch_fn.keywords["index_axis_names"])  # ["layer", "pos" | "head"]
        rows = [(layer, i) for layer in layers for i in range(second_axis)]
        result = patch_fn(bridge, corrupted, clean_cache, metric, index_axis_names=None,
                          index_df=pd.DataFrame(rows, columns=axes), reduce="none", baseline=True)
        patched = result.values.reshape(len(layers), second_axis, -1)
    corrupted_ld = result.baseline
    effect = (patched.mean(-1) - corrupted_ld.mean()) / (clean_ld.mean() - corrupted_ld.mean())
    return PatchingReference(patched=patched.float(), effect=effect.float(), clean=clean_ld,
                             corrupted=corrupted_ld.float())


# -- direct logit attribution ---------------------------------------------------------------


@dataclass(frozen=True)
class AttributionReference:
    """Direct logit attribution at the last position, through the clean run's final-norm scale."""

    head: torch.Tensor
    """``[layer, head, batch]``."""
    mlp: torch.Tensor
    """``[layer, batch]``."""
    logit_diff: torch.Tensor
    """The model's logit difference ``[batch]`` (from the bridge's logits)."""


@torch.no_grad()
def direct_logit_attribution(
    bridge: "TransformerBridge", tokens: torch.Tensor, answer: torch.Tensor, foil: torch.Tensor
) -> AttributionReference:
    """``cache.stack_head_results`` and the ``hook_mlp_out`` stack, through ``apply_ln_to_stack``
    (the cached ``ln_final.hook_scale``: centred then divided for LayerNorm, divided for RMSNorm;
    the norm's weight is folded into ``W_U``), projected on ``W_U[:, answer] − W_U[:, foil]``.

    Families that normalise the attention output before the residual add (Gemma 2/3:
    ``ln1_post``) write ``ln1_post(Σ_h result_h)``, not ``Σ_h result_h``; each head's result
    is linearised through that norm with its scale cached on this run, which reconstructs
    ``hook_attn_out`` exactly (checked here, so a wrong convention fails loudly).
    """
    logits, cache = bridge.run_with_cache(tokens)
    cfg = bridge.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    heads = cache.stack_head_results(layer=-1, pos_slice=-1)  # [layer*head, batch, d_model]
    heads = heads.reshape(n_layers, n_heads, *heads.shape[1:])
    if hasattr(bridge.blocks[0], "ln1_post"):
        heads = torch.stack([_through_post_norm(bridge, cache, layer, heads[layer])
                             for layer in range(n_layers)])
    mlps = torch.stack([cache[f"blocks.{layer}.hook_mlp_out"][:, -1] for layer in range(n_layers)])
    directions = bridge.W_U[:, answer] - bridge.W_U[:, foil]  # [d_model, batch]

    def attribute(stack: torch.Tensor) -> torch.Tensor:  # [n, batch, d_model] -> [n, batch]
        normed = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
        return torch.einsum("nbd,db->nb", normed.float(), directions.float())

    head_dla = attribute(heads.flatten(0, 1)).reshape(n_layers, n_heads, -1)
    return AttributionReference(head=head_dla, mlp=attribute(mlps),
                                logit_diff=logit_diff_at_last(logits, answer, foil))


def _through_post_norm(bridge, cache, layer: int, results: torch.Tensor) -> torch.Tensor:
    """Head results ``[head, batch, d_model]`` at the last position times ``ln1_post``'s
    frozen factor ``(offset + w) / scale`` on this run."""
    norm = bridge.blocks[layer].ln1_post
    offset = 1.0 if getattr(bridge.cfg, "rmsnorm_uses_offset", False) else 0.0
    scale = cache[f"blocks.{layer}.ln1_post.hook_scale"][:, -1]  # [batch, 1]
    writes = results * (offset + norm.weight) / scale
    b_O = bridge.blocks[layer].attn.b_O
    bias = 0.0 if b_O is None else b_O * (offset + norm.weight) / scale
    actual = cache[f"blocks.{layer}.hook_attn_out"][:, -1]
    error = (writes.sum(0) + bias - actual).abs().max().item()
    if error > 1e-4 * max(1.0, actual.abs().max().item()):
        raise AssertionError(f"layer {layer}: linearised head writes miss hook_attn_out by {error}")
    return writes


# -- logit lens ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LensReference:
    """The logit lens at the last position, sites ``blocks.0.hook_resid_pre`` (the scaled
    embedding), then each ``resid_pre`` and finally ``resid_post`` of the last block."""

    logit_diff: torch.Tensor
    """``[site, batch]``."""
    log_prob: torch.Tensor
    """Log-probability of the answer ``[site, batch]``."""


@torch.no_grad()
def logit_lens(
    bridge: "TransformerBridge", tokens: torch.Tensor, answer: torch.Tensor, foil: torch.Tensor
) -> LensReference:
    """``cache.accumulated_resid(apply_ln=True)`` (``ln_final`` recomputed on each site's own
    statistics), then ``W_U``, ``b_U`` and the adapter's output transform (any soft-cap)."""
    _, cache = bridge.run_with_cache(tokens)
    normed = cache.accumulated_resid(layer=-1, apply_ln=True, pos_slice=-1)  # [site, batch, d]
    logits = normed @ bridge.W_U
    b_U = getattr(bridge, "b_U", None)
    if b_U is not None:
        logits = logits + b_U
    logits = bridge.adapter.apply_output_logits_transform(logits).float()
    rows = torch.arange(tokens.shape[0])
    return LensReference(
        logit_diff=logits[:, rows, answer] - logits[:, rows, foil],
        log_prob=logits.log_softmax(-1)[:, rows, answer],
    )


# -- ablation -----------------------------------------------------------------------------


@torch.no_grad()
def ablation_values(
    bridge: "TransformerBridge", method: Literal["mean", "resample"], source_tokens: torch.Tensor,
    batch: int,
) -> dict[str, torch.Tensor]:
    """What ablation puts in place of every ``blocks.L.attn.hook_z`` ``[batch, pos, head, d_head]``
    and ``blocks.L.hook_mlp_out`` ``[batch, pos, d_model]``, from one run on ``source_tokens``.

    ``mean``: the mean over the ``source_tokens`` prompts (the reference set) at each position,
    the same for every row. ``resample``: each row's value on its own source prompt (the
    paired corrupted prompts, ``batch`` of them).
    """
    n_layers = bridge.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    names += [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)]
    _, cache = bridge.run_with_cache(source_tokens, names_filter=lambda name: name in names)
    values = {}
    for name in names:
        value = cache[name]
        if method == "mean":
            value = value.mean(0, keepdim=True).expand(batch, *value.shape[1:])
        elif value.shape[0] != batch:
            raise ValueError(f"resample needs one source prompt per prompt ({batch}), got {value.shape[0]}")
        values[name] = value
    return values


@torch.no_grad()
def ablated_logit_diff(
    bridge: "TransformerBridge", tokens: torch.Tensor, answer: torch.Tensor, foil: torch.Tensor,
    *, heads: Iterable[tuple[int, int]] = (), mlps: Iterable[int] = (),
    values: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logit difference ``[batch]`` with ``heads`` (``(layer, head)``: their slice of
    ``blocks.L.attn.hook_z``) and ``mlps`` (``blocks.L.hook_mlp_out``) replaced, through
    ``run_with_hooks``: by zeros when ``values`` is None (zero ablation), else by the
    `ablation_values` at the same hook (mean or resample ablation), at every position.
    """
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    if values is not None and values["blocks.0.hook_mlp_out"].shape[:2] != tokens.shape:
        raise ValueError("ablation values must have the prompts' batch size and token length")

    def replace_heads(z: torch.Tensor, hook, layer: int) -> torch.Tensor:  # [batch, pos, head, d_head]
        z = z.clone()
        for head in by_layer[layer]:
            z[:, :, head] = 0.0 if values is None else values[f"blocks.{layer}.attn.hook_z"][:, :, head]
        return z

    def replace_mlp(out: torch.Tensor, hook, layer: int) -> torch.Tensor:  # [batch, pos, d_model]
        return torch.zeros_like(out) if values is None else values[f"blocks.{layer}.hook_mlp_out"].clone()

    hooks = [(f"blocks.{layer}.attn.hook_z", partial(replace_heads, layer=layer)) for layer in by_layer]
    hooks += [(f"blocks.{layer}.hook_mlp_out", partial(replace_mlp, layer=layer)) for layer in mlps]
    logits = bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    return logit_diff_at_last(logits, answer, foil)


def _check_aligned(clean: torch.Tensor, corrupted: torch.Tensor) -> None:
    if clean.shape != corrupted.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and corrupted {tuple(corrupted.shape)} ids "
                         "must have one shape (prompts of one token length)")
