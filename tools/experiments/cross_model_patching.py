"""Cross-model activation patching: which component's changed output carries a behaviour change.

Two models with the same architecture and tokenizer — a *base* model A and a *source* model B
(say, A fine-tuned) — run the same clean prompts. For each component ``c``, A runs with ``c``'s
output replaced by B's output of ``c`` on the same prompt (every position), and the logit
difference (answer − foil at the last token) is read::

    transfer(c) = LD(A with c from B) − LD(A)                          (logit units, per prompt)
    effect(c)   = mean transfer(c) / (mean LD(B) − mean LD(A))         (share of the difference)

This is the cross-model patching of Prakash et al. (2024, "Fine-tuning enhances existing
mechanisms"). Unlike within-model patching effects, it isolates where the *computation*
changed: a component whose weights and inputs are the same in both models has bitwise the
same output in both, so its transfer is exactly zero, however differently B uses it
downstream. When one component alone changed, patching it transfers the whole difference
(everything before it is identical, everything after it is the same function of the same
input). When the change is spread over many components, each carries part (not additively).

Sites: ``head.L.H`` patches the head's ``z`` slice (its attention-weighted values, the input of
the output projection), so a change of that head's rows of ``W_O`` shows in ``attn.L`` (the
attention sublayer's whole output, which is also swept) and in the weight-change norms, not in
the head; ``mlp.L`` patches the MLP's output. Everything runs through
`tools.experiments.patching.run_patched_variants` on A, with B's values as the source.

The spec carries the source model's weights hash, so the content address of the result
(``spec.cache_key(base weights hash)``) covers both models.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import model_validator

from tools.components import parse_component
from tools.errors import SpecError, UserInputError
from tools.experiments.activation_patching import NORMALISE_EPS, SweepEffects
from tools.experiments.patching import Patch, cache_run, run_patched_variants
from tools.experiments.prompts import tokenize_prompts
from tools.experiments.provenance import provenance_for
from tools.experiments.readout import unembed_rows
from tools.experiments.result import ExperimentResult
from tools.experiments.spec import ExperimentSpec

if TYPE_CHECKING:
    from tools.loading import LoadedModel

CrossSite = Literal["head", "attn", "mlp"]
CROSS_SITES: tuple[str, ...] = ("head", "attn", "mlp")


class CrossModelPatchingSpec(ExperimentSpec):
    """Patch each component's output from the source model into the base model, on clean prompts.

    Only the clean prompts, answers and foils are read (corrupted prompts are not used).
    """

    kind: Literal["cross_model_patching"] = "cross_model_patching"
    source_model_id: str
    """The source model's name (for the record)."""
    source_weights_hash: str
    """The source model's weights hash: checked against the source model at run time, and part
    of the cache key, so a result is never served for another source."""
    sites: tuple[CrossSite, ...] = CROSS_SITES
    """Which sweeps: heads (``z`` slices), attention sublayers, MLPs; every layer each."""

    @model_validator(mode="after")
    def _check(self) -> "CrossModelPatchingSpec":
        if not self.sites:
            raise SpecError("sites", "nothing to patch: give at least one of head, attn, mlp")
        if len(set(self.sites)) != len(self.sites):
            raise SpecError("sites", "lists the same site twice")
        if not self.source_weights_hash:
            raise SpecError("source_weights_hash", "is empty; give the source model's weights hash")
        return self


class CrossModelPatchingResult(ExperimentResult):
    """Per-sweep effects (share of the base → source difference) with per-prompt logit diffs.

    Tensors: ``base_logit_diff`` and ``source_logit_diff`` ``[prompt]``; ``logit_diff.<site>``
    (``[layer, head, prompt]`` for heads, ``[layer, prompt]`` otherwise): the base model's
    logit difference with that component taken from the source; ``effect.<site>`` (the same
    axes without ``prompt``): mean transfer over the mean difference (NaN when the two models
    score the same, ``normalisable`` False).
    """

    spec: CrossModelPatchingSpec
    base_logit_diff: float
    """Mean logit difference of the base model."""
    source_logit_diff: float
    """Mean logit difference of the source model."""
    normalisable: bool
    """False when both models score the same on average, so shares are undefined (NaN)."""
    sweeps: tuple[SweepEffects, ...]


def check_comparable(base: "LoadedModel", source: "LoadedModel") -> None:
    """Raise `UserInputError` unless the two models share a tokenizer and an architecture.

    Same tokenizer: the same vocabulary (every token string with the same id) and the same
    special tokens, so one prompt set is the same ids in both. Same architecture: the same
    family, layers, heads, head size and width, so every component exists in both.
    """
    va, vb = base.tokenizer.get_vocab(), source.tokenizer.get_vocab()
    if va != vb:
        only_a = len(set(va) - set(vb))
        only_b = len(set(vb) - set(va))
        raise UserInputError(
            f"{base.model_id} and {source.model_id} have different tokenizers ({len(va)} vs {len(vb)} "
            f"tokens; {only_a} only in the first, {only_b} only in the second, "
            f"{sum(va[t] != vb[t] for t in set(va) & set(vb))} shared tokens with other ids); "
            "comparing models needs the same tokenizer")
    specials = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
    differ = [s for s in specials if getattr(base.tokenizer, s, None) != getattr(source.tokenizer, s, None)]
    if differ:
        raise UserInputError(f"{base.model_id} and {source.model_id} have the same vocabulary but other "
                             f"special tokens ({', '.join(differ)}); comparing models needs the same tokenizer")
    a, b = base.adapter, source.adapter
    dims = ("family", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_model")
    mismatched = [f"{d} {getattr(a, d)} vs {getattr(b, d)}" for d in dims if getattr(a, d) != getattr(b, d)]
    if mismatched:
        raise UserInputError(f"{base.model_id} and {source.model_id} have different architectures "
                             f"({'; '.join(mismatched)}); per-component comparisons need the same one")


@torch.no_grad()
def run_cross_model_patching(
    model: "LoadedModel", source: "LoadedModel", spec: CrossModelPatchingSpec, *, batch_size: int = 128
) -> CrossModelPatchingResult:
    """Patch every component of ``spec.sites`` from ``source`` into ``model``; pure (no I/O).

    Raises:
        UserInputError: the models differ in tokenizer or architecture, or ``source`` is not
            the model the spec names (another weights hash).
        SpecError: answers or foils that are not one token (before any forward pass).
    """
    if source.weights_hash != spec.source_weights_hash:
        raise UserInputError(f"source_weights_hash: the spec names source weights "
                             f"{spec.source_weights_hash[:12]} but {source.model_id} has "
                             f"{source.weights_hash[:12]}")
    check_comparable(model, source)
    prompts = tokenize_prompts(model, spec.prompts)
    adapter = model.adapter
    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    sweeps, variants = _plan(spec, n_layers, n_heads)
    keys = {("z" if site == "head" else site, layer) for site in spec.sites for layer in range(n_layers)}
    base_keys = keys | {("resid_post", layer) for layer in range(n_layers - 1)} | {
        ("z", layer) for layer in range(n_layers)}
    readout = prompts.readout_ids
    source_cache, source_final = cache_run(source, prompts.clean, prompts.last, keys)
    base_cache, base_final = cache_run(model, prompts.clean, prompts.last, base_keys)
    source_ld = _logit_diff(unembed_rows(source, source_final, readout))
    base_ld = _logit_diff(unembed_rows(model, base_final, readout))
    logits = run_patched_variants(
        model, prompts.clean, prompts.lengths, {k: source_cache[k] for k in keys},
        [variant for _, variant in variants], token_ids=readout,
        base_resid_post={layer: base_cache[("resid_post", layer)] for layer in range(n_layers - 1)},
        base_attention={layer: base_cache[("z", layer)] for layer in range(n_layers)},
        shared_prefix=0,  # another model: no position computes the same values in both runs
        batch_size=batch_size)
    patched = _logit_diff(logits).cpu()  # [n_variants, prompt]
    base_ld, source_ld = base_ld.cpu(), source_ld.cpu()
    base_mean, source_mean = float(base_ld.mean()), float(source_ld.mean())
    denominator = source_mean - base_mean
    normalisable = abs(denominator) > NORMALISE_EPS
    tensors = {"base_logit_diff": base_ld, "source_logit_diff": source_ld}
    start = 0
    for sweep in sweeps:
        size = len(sweep.layers) * (len(sweep.heads) or 1)
        block = patched[start:start + size]
        start += size
        shape = [len(sweep.layers)] + ([len(sweep.heads)] if sweep.heads else [])
        tensors[f"logit_diff.{sweep.name}"] = block.reshape(*shape, -1)
        effect = (block.mean(-1) - base_mean) / denominator if normalisable else torch.full((size,), math.nan)
        tensors[f"effect.{sweep.name}"] = effect.reshape(shape)
    return CrossModelPatchingResult(
        spec=spec, provenance=provenance_for(model, spec.seed), base_logit_diff=base_mean,
        source_logit_diff=source_mean, normalisable=normalisable, sweeps=tuple(sweeps), tensors=tensors)


def _plan(spec: CrossModelPatchingSpec, n_layers: int, n_heads: int):
    sweeps, variants = [], []
    for site in spec.sites:
        heads = tuple(range(n_heads)) if site == "head" else ()
        sweeps.append(SweepEffects(name=site, site=site, per_position=False,
                                   axes=("layer", "head") if heads else ("layer",),
                                   layers=tuple(range(n_layers)), heads=heads))
        for layer in range(n_layers):
            for head in heads or (None,):
                name = f"head.{layer}.{head}" if head is not None else f"{site}.{layer}"
                variants.append((name, (Patch(parse_component(name)),)))
    return sweeps, variants


def _logit_diff(logits: torch.Tensor) -> torch.Tensor:
    return logits[..., 0] - logits[..., 1]
