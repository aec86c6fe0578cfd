"""Attribution patching: a first-order estimate of every activation-patching effect at once.

Activation patching needs one forward pass per patched site. Attribution patching
replaces each by a linear approximation around the *base* run: if the metric ``m`` is
the mean logit difference (answer − foil at each prompt's last token) and ``a`` the
activation at a site, patching the source value ``a'`` in changes the metric by about::

    m(a') − m(a) ≈ ∂m/∂a · (a' − a)

The gradient comes from one backward pass, and it is the same backward pass for every
site, so all heads, MLPs, attention outputs and residual positions cost two forward
passes (the source run, cached without gradients, and the base run, with them) and one
backward. Denoising (the default) takes the gradient on the corrupted run and
``a' − a = clean − corrupted``; noising takes it on the clean run with
``a' − a = corrupted − clean``. Estimates are normalised exactly like
`tools.experiments.activation_patching`'s effects, so the two read on one scale
(**0 = corrupted run, 1 = clean run**)::

    effect = (mean base logit diff + mean estimated change − mean corrupted)
             / (mean clean − mean corrupted)

Sites and their values are the adapter's (`tools.experiments.patching.read_site`): a
head's activation is its slice ``[..., h*d_head:(h+1)*d_head]`` of ``z`` (the input of
the attention output projection), which is what activation patching replaces for a head.
A site summed over positions is the sum of its per-position terms (the first-order
effect of patching every position together).

Integrated gradients
====================
The gradient at the base run misjudges sites the metric is far from linear in (a head
whose output saturates a later softmax, say). ``method="integrated_gradients"`` averages
the gradient over ``ig_steps`` points on a straight path between the two runs, as
EAP-IG does (Hanna et al., 2024): ``∂m/∂a`` is taken at each point and the average is
multiplied by the same ``a' − a``. The path interpolates the **input embeddings** (the
adapter's ``embed`` site, every position), not each site's activation separately:

* one path serves every site, so each step is one forward and one backward for all of
  them (interpolating activations would need a separate path, hence separate passes,
  per layer and site kind);
* along it the attribution of the embedding itself is an exact path integral, so the
  summed attributions of the whole input embedding converge to the full effect
  (*completeness*): ``embedding_effect`` → 1 when denoising (0 when noising) as the
  steps grow, and its distance from that is a readout of the approximation's error.

What IG estimates for one site is that site's share of the effect of moving the *whole
input* from one run to the other, which is not the same thing as patching that site
alone: it tends to size the large effects better (saturation), while the plain gradient
often orders the many small ones closer to activation patching. Check both against a
few activation patches before trusting a ranking (``evals/attribution_vs_activation.py``
measures the rank agreement on IOI).

Steps sit at the midpoints ``α = (j + ½) / ig_steps`` (the midpoint rule's error falls as
``1/ig_steps²``; a left sum starting at the base run falls as ``1/ig_steps``). The steps
of a prompt chunk run stacked along the batch, ``batch_size`` rows per pass.

No parameter gradients are formed: the gradient is taken only with respect to the
activations (`torch.autograd.grad`), so nothing accumulates in the model's ``.grad``
and the backward pass skips the weight-gradient products.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import model_validator

from tools.errors import SpecError
from tools.experiments.activation_patching import (
    NORMALISE_EPS,
    PatchEffect,
    SweepEffects,
    SweptSpec,
    sweep_cells,
)
from tools.experiments.patching import SiteKey, cache_run, forward_order, read_site
from tools.experiments.prompts import PromptBatch, tokenize_prompts
from tools.experiments.provenance import provenance_for
from tools.experiments.readout import chunks, read_final_hidden, unembed_rows
from tools.experiments.result import ExperimentResult
from tools.experiments.spec import check_indices, check_positions

if TYPE_CHECKING:
    from tools.loading import LoadedModel

DEFAULT_IG_STEPS = 5
MAX_IG_STEPS = 256
TOP_K = 10
EMBED: SiteKey = ("embed", -1)
_SITE_KEY = {"resid_pre": "resid_pre", "resid_post": "resid_post", "attn": "attn", "mlp": "mlp",
             "head": "z"}


class AttributionPatchingSpec(SweptSpec):
    """Estimate the activation-patching effect of every site of the chosen sweeps by gradients.

    ``mode`` ``denoising``: gradient at the corrupted run, clean − corrupted activations;
    ``noising``: gradient at the clean run, corrupted − clean. Sweeps, layers, heads and
    positions are named and shaped as in `ActivationPatchingSpec`.
    """

    kind: Literal["attribution_patching"] = "attribution_patching"
    method: Literal["gradient", "integrated_gradients"] = "gradient"
    """``gradient``: one gradient at the base run (two forward passes, one backward);
    ``integrated_gradients``: the gradient averaged over ``ig_steps`` points between the
    two runs' input embeddings (EAP-IG)."""
    ig_steps: int | None = None
    """Interpolation points of ``integrated_gradients`` (1 .. 256; default 5). Not used by
    ``gradient``, so it must be left out there."""

    @model_validator(mode="after")
    def _check(self) -> "AttributionPatchingSpec":
        self._check_sweeps("attribution patching")
        if not self.sweeps:
            raise SpecError("sweeps", "nothing to attribute: give at least one sweep")
        if self.method == "gradient" and self.ig_steps is not None:
            raise SpecError("ig_steps", "is only used with method 'integrated_gradients'; leave "
                            "it out for 'gradient'")
        if self.ig_steps is not None and not 1 <= self.ig_steps <= MAX_IG_STEPS:
            raise SpecError("ig_steps", f"must be between 1 and {MAX_IG_STEPS}, got {self.ig_steps}")
        return self

    @property
    def steps(self) -> int:
        """Gradient evaluations per prompt: 1 for ``gradient``, ``ig_steps`` (default 5) for IG."""
        if self.method == "gradient":
            return 1
        return self.ig_steps if self.ig_steps is not None else DEFAULT_IG_STEPS


class AttributionPatchingResult(ExperimentResult):
    """Estimated normalised effects per sweep (tensors) with the headline numbers inline.

    Tensors: ``effect.<sweep>`` (axes in `SweepEffects.axes`: ``layer``, then ``head``
    for heads, then ``position`` when per position) on activation patching's scale;
    ``attribution.<sweep>`` (same axes + ``prompt``): the estimated change of each
    prompt's logit difference when the site is patched (``∂m/∂a · (a' − a)``, logit
    units); ``attribution.embed`` ``[prompt]``: the same for the whole input embedding;
    ``clean_logit_diff`` and ``corrupted_logit_diff`` ``[prompt]``.
    """

    spec: AttributionPatchingSpec
    clean_logit_diff: float
    """Mean logit difference of the clean run."""
    corrupted_logit_diff: float
    """Mean logit difference of the corrupted run."""
    normalisable: bool
    """False when clean and corrupted score the same, so effects are undefined (NaN)."""
    steps: int
    """Gradient evaluations per prompt (1 for ``gradient``)."""
    embedding_effect: float | None
    """Estimated effect of patching the whole input embedding (every position). Exact
    attribution gives 1 when denoising and 0 when noising (IG converges there as steps
    grow); the distance is the approximation's error on that patch. None when not
    normalisable."""
    sweeps: tuple[SweepEffects, ...]
    top: tuple[PatchEffect, ...] = ()
    """The largest |effect| over all sweeps, largest first (empty when not normalisable)."""


def run_attribution_patching(
    model: "LoadedModel", spec: AttributionPatchingSpec, *, batch_size: int = 64
) -> AttributionPatchingResult:
    """Estimate every site's patching effect from gradients; pure (no I/O).

    ``batch_size`` is rows per forward pass (prompts, times interpolation steps for
    integrated gradients); it changes speed and memory, never the numbers.

    Raises:
        SpecError: before any forward pass, for layers, heads or positions the model or
            prompts do not have, or clean/corrupted pairs of different token lengths.
    """
    prompts = tokenize_prompts(model, spec.prompts, need_corrupted=True, aligned=True)
    plan = _plan(model, spec, prompts)
    clean_ld, corrupted_ld, embed, per_sweep = [], [], [], []
    rows = max(1, min(prompts.size, batch_size))
    for start in range(0, prompts.size, rows):
        chunk = prompts.rows(start, min(prompts.size, start + rows))
        clean, corrupted, terms = _run_chunk(model, spec, chunk, plan["keys"], batch_size)
        clean_ld.append(clean)
        corrupted_ld.append(corrupted)
        embed.append(terms[EMBED].sum(dim=1))
        per_sweep.append(_reduce(plan["sweeps"], terms, chunk.lengths))
    attribution = {name: torch.cat([c[name] for c in per_sweep], dim=-1)
                   for name in per_sweep[0]}
    return _assemble(model, spec, plan, torch.cat(clean_ld), torch.cat(corrupted_ld),
                     torch.cat(embed), attribution)


# -- planning (model-dependent validation happens here, before any forward pass) ---------------


def _plan(model: "LoadedModel", spec: AttributionPatchingSpec, prompts: PromptBatch) -> dict:
    adapter = model.adapter
    layers = check_indices("layers", spec.layers, adapter.n_layers, "layer")
    heads = check_indices("heads", spec.heads, adapter.n_heads, "head")
    lengths = prompts.lengths.tolist()
    if any(sweep.per_position for sweep in spec.sweeps) or spec.positions is not None:
        positions = check_positions("positions", spec.positions, lengths)
    else:
        positions = []
    sweeps = []
    for sweep in spec.sweeps:
        is_head = sweep.site == "head"
        axes = ("layer",) + (("head",) if is_head else ()) + (
            ("position",) if sweep.per_position else ())
        sweeps.append(SweepEffects(
            name=sweep.name, site=sweep.site, per_position=sweep.per_position, axes=axes,
            layers=tuple(layers), heads=tuple(heads) if is_head else (),
            positions=tuple(positions) if sweep.per_position else (),
        ))
    keys = {(_SITE_KEY[s.site], layer) for s in sweeps for layer in s.layers}
    return {"sweeps": sweeps, "keys": sorted(keys, key=forward_order)}


# -- running -------------------------------------------------------------------------------


def _run_chunk(
    model: "LoadedModel", spec: AttributionPatchingSpec, prompts: PromptBatch,
    keys: list[SiteKey], batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor, dict[SiteKey, torch.Tensor]]:
    """Clean and corrupted logit diffs ``[batch]`` and each site's attribution terms
    ``[batch, pos]`` (``[batch, pos, n_heads]`` for ``z``; ``EMBED`` included)."""
    readout, last = prompts.readout_ids, prompts.last
    base_ids, source_ids = (prompts.corrupted, prompts.clean) if spec.mode == "denoising" else (
        prompts.clean, prompts.corrupted)
    cached = [EMBED, *keys]
    source, source_final = cache_run(model, source_ids, last, cached)
    source_ld = _read_logit_diff(model, source_final, readout)
    if spec.method == "gradient":
        base_embed = _embed(model, base_ids)
        base, grads, base_ld = _gradient_run(model, base_ids, last, readout, keys, base_embed)
    else:
        base, base_final = cache_run(model, base_ids, last, cached)
        base_ld = _read_logit_diff(model, base_final, readout)
        grads = _integrated_gradients(model, base_ids, last, readout, keys, base[EMBED],
                                      source[EMBED], spec.steps, batch_size)
    n_heads = model.adapter.n_heads
    terms = {key: _dot(grads[key], source[key] - base[key], n_heads if key[0] == "z" else None)
             for key in cached}
    clean, corrupted = (source_ld, base_ld) if spec.mode == "denoising" else (base_ld, source_ld)
    return clean, corrupted, terms


def _embed(model: "LoadedModel", ids: torch.Tensor) -> torch.Tensor:
    """The token embeddings of ``ids`` (the adapter's ``embed`` site), without a trace."""
    with torch.no_grad():
        return model.hf_model.get_submodule(model.adapter.paths.embed)(ids)


def _gradient_run(
    model: "LoadedModel", ids: torch.Tensor, last: torch.Tensor, readout: torch.Tensor,
    keys: list[SiteKey], embed: torch.Tensor,
) -> tuple[dict[SiteKey, torch.Tensor], dict[SiteKey, torch.Tensor], torch.Tensor]:
    """One forward with ``embed`` as the token embeddings, and one backward.

    Returns each site's value and the gradient of the summed logit difference with respect
    to it (row ``i``'s gradient is that of prompt ``i``'s own logit difference: rows do not
    interact), both ``[batch, pos, ...]`` and detached, and the logit differences ``[batch]``.
    """
    adapter, lm = model.adapter, model.lm
    leaf = embed.detach().clone().requires_grad_(True)
    values: dict[SiteKey, Any] = {}
    with torch.enable_grad():
        with model.trace(ids):
            adapter.set_embed(lm, leaf)
            for key in keys:
                values[key] = read_site(model, key).save()
            final = read_final_hidden(model, last)
        logit_diff = _logit_diff(unembed_rows(model, final, readout))
        inputs = [leaf] + [values[key] for key in keys]
        grads = torch.autograd.grad(logit_diff.sum(), inputs, allow_unused=True)
    out_values = {EMBED: leaf.detach()}
    out_values.update({key: values[key].detach() for key in keys})
    out_grads = {}
    for key, value, grad in zip([EMBED, *keys], inputs, grads):
        out_grads[key] = torch.zeros_like(value) if grad is None else grad
    return out_values, out_grads, logit_diff.detach()


def _integrated_gradients(
    model: "LoadedModel", ids: torch.Tensor, last: torch.Tensor, readout: torch.Tensor,
    keys: list[SiteKey], base_embed: torch.Tensor, source_embed: torch.Tensor, steps: int,
    batch_size: int,
) -> dict[SiteKey, torch.Tensor]:
    """Each site's gradient averaged over ``steps`` midpoints between the two embeddings."""
    batch = ids.shape[0]
    alphas = [(j + 0.5) / steps for j in range(steps)]
    delta = source_embed - base_embed
    total: dict[SiteKey, torch.Tensor] = {}
    for start, stop in chunks(steps, max(1, batch_size // batch)):
        k = stop - start
        alpha = torch.tensor(alphas[start:stop], dtype=delta.dtype, device=delta.device)
        embeds = (base_embed + alpha.view(-1, 1, 1, 1) * delta).reshape(k * batch, *delta.shape[1:])
        _, grads, _ = _gradient_run(model, ids.repeat(k, 1), last.repeat(k),
                                    readout.repeat(k, 1), keys, embeds)
        for key, grad in grads.items():
            summed = grad.reshape(k, batch, *grad.shape[1:]).sum(dim=0)
            total[key] = total[key] + summed if key in total else summed
    return {key: grad / steps for key, grad in total.items()}


def _dot(grad: torch.Tensor, delta: torch.Tensor, n_heads: int | None) -> torch.Tensor:
    """``grad · delta`` over the feature axis: ``[batch, pos]``, or ``[batch, pos, n_heads]``
    (one dot product per head slice of ``z``) when ``n_heads`` is given."""
    product = grad.float() * delta.float()
    if n_heads is not None:
        return product.reshape(*product.shape[:-1], n_heads, -1).sum(dim=-1)
    return product.sum(dim=-1)


def _reduce(
    sweeps: list[SweepEffects], terms: dict[SiteKey, torch.Tensor], lengths: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Each sweep's attribution ``[layer, (head), (position), prompt]`` for one chunk."""
    out = {}
    for sweep in sweeps:
        key_site = _SITE_KEY[sweep.site]
        per_layer = []
        for layer in sweep.layers:
            value = terms[(key_site, layer)]  # [batch, pos] or [batch, pos, n_heads]
            if sweep.heads:
                value = value[..., list(sweep.heads)].movedim(-1, 0)  # [head, batch, pos]
            if sweep.per_position:
                index = torch.stack([lengths + p if p < 0 else torch.full_like(lengths, p)
                                     for p in sweep.positions], dim=1).to(value.device)
                index = index.expand(*value.shape[:-2], *index.shape)
                value = value.gather(-1, index).movedim(-2, -1)  # [..., position, batch]
            else:
                value = value.sum(dim=-1)  # [..., batch]
            per_layer.append(value)
        out[sweep.name] = torch.stack(per_layer)
    return out


@torch.no_grad()
def _read_logit_diff(model: "LoadedModel", final: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
    """Logit difference ``[batch]`` of final hidden rows (`read_final_hidden`), no graph."""
    return _logit_diff(unembed_rows(model, final, readout))


def _logit_diff(logits: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` answer and foil logits -> ``[...]`` logit difference."""
    return logits[..., 0] - logits[..., 1]


# -- assembling the result -----------------------------------------------------------------


def _assemble(
    model: "LoadedModel", spec: AttributionPatchingSpec, plan: dict, clean: torch.Tensor,
    corrupted: torch.Tensor, embed: torch.Tensor, attribution: dict[str, torch.Tensor],
) -> AttributionPatchingResult:
    clean_mean, corrupted_mean = float(clean.mean()), float(corrupted.mean())
    denominator = clean_mean - corrupted_mean
    normalisable = abs(denominator) > NORMALISE_EPS
    base_mean = corrupted_mean if spec.mode == "denoising" else clean_mean

    def normalise(change: torch.Tensor) -> torch.Tensor:
        if not normalisable:
            return torch.full_like(change, math.nan)
        return (base_mean + change - corrupted_mean) / denominator

    tensors = {"clean_logit_diff": clean, "corrupted_logit_diff": corrupted,
               "attribution.embed": embed}
    candidates: list[PatchEffect] = []
    for sweep in plan["sweeps"]:
        effect = normalise(attribution[sweep.name].mean(dim=-1))
        tensors[f"effect.{sweep.name}"] = effect
        tensors[f"attribution.{sweep.name}"] = attribution[sweep.name]
        if normalisable:
            candidates.extend(sweep_cells(sweep, effect.flatten().tolist()))
    top = sorted(candidates, key=lambda e: -abs(e.effect))[:TOP_K]
    return AttributionPatchingResult(
        spec=spec, provenance=provenance_for(model, spec.seed),
        clean_logit_diff=clean_mean, corrupted_logit_diff=corrupted_mean,
        normalisable=normalisable, steps=spec.steps,
        embedding_effect=float(normalise(embed.mean())) if normalisable else None,
        sweeps=tuple(plan["sweeps"]), top=tuple(top),
        tensors={k: v.detach().cpu() for k, v in tensors.items()},
    )
