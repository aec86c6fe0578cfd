"""Activation patching: which components carry the information that separates clean from corrupted.

*Denoising* runs the corrupted prompts and patches in clean values (does this component
suffice to restore the behaviour?); *noising* runs the clean prompts and patches in
corrupted values (is it necessary?). The metric is the logit difference answer − foil at
the last token, averaged over prompts, normalised so **0 = the corrupted run and 1 = the
clean run** in both modes::

    effect = (mean patched logit diff − mean corrupted) / (mean clean − mean corrupted)

When clean and corrupted score the same (``|clean − corrupted| <= 1e-6``) the scale is
undefined: ``normalisable`` is False and effects are NaN (the per-prompt logit
differences are still there).

Sweeps (`PatchSweep`): ``resid_pre`` / ``resid_post`` / ``attn`` / ``mlp`` per layer or per
layer × position, ``head`` per layer × head at all positions or per position. Component
sets patch several components together (at all positions). Everything runs through
`tools.experiments.patching.run_patched_variants` (batched, no recomputation).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from tools.components import parse_component
from tools.errors import SpecError, UserInputError
from tools.experiments.patching import (
    Patch,
    Variant,
    cache_run,
    run_patched_variants,
    shared_prefix_length,
    site_keys,
)
from tools.experiments.prompts import PromptBatch, tokenize_prompts
from tools.experiments.provenance import provenance_for
from tools.experiments.readout import unembed_rows
from tools.experiments.result import ExperimentResult
from tools.experiments.spec import (
    ExperimentSpec,
    check_component_name,
    check_indices,
    check_positions,
)

if TYPE_CHECKING:
    from tools.loading import LoadedModel

SweepSite = Literal["resid_pre", "resid_post", "attn", "mlp", "head"]
SWEEP_SITES: tuple[str, ...] = ("resid_pre", "resid_post", "attn", "mlp", "head")
NORMALISE_EPS = 1e-6
TOP_K = 10


class PatchSweep(BaseModel):
    """One family of variants: every layer (× head) (× position) of one site."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site: SweepSite
    """``resid_pre``, ``resid_post``, ``attn`` (attention output), ``mlp`` (MLP output) or
    ``head`` (one head's ``z``, i.e. its whole contribution)."""
    per_position: bool = False
    """Patch one position at a time (a ``position`` axis) instead of every position at once."""

    @property
    def name(self) -> str:
        """``"head"``, ``"head_by_pos"``, ... (the tensor names use it)."""
        return f"{self.site}_by_pos" if self.per_position else self.site


DEFAULT_SWEEPS = (
    PatchSweep(site="resid_pre", per_position=True),
    PatchSweep(site="attn"),
    PatchSweep(site="mlp"),
    PatchSweep(site="head"),
)


class SweptSpec(ExperimentSpec):
    """The fields of an experiment over sweeps of sites (activation and attribution patching)."""

    mode: Literal["denoising", "noising"] = "denoising"
    """``denoising``: base = corrupted, values from clean; ``noising``: the reverse."""
    sweeps: tuple[PatchSweep, ...] = DEFAULT_SWEEPS
    """Which sites to sweep (default: residual by layer × position, attention, MLP, heads)."""
    layers: tuple[int, ...] | None = None
    """Restrict the sweeps to these layers (default: all)."""
    heads: tuple[int, ...] | None = None
    """Restrict head sweeps to these heads (default: all)."""
    positions: tuple[int, ...] | None = None
    """Positions of per-position sweeps (default: every position, which needs prompts of one
    token length); negative positions count from each prompt's end."""

    @field_validator("sweeps", mode="before")
    @classmethod
    def _known_sites(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            for i, sweep in enumerate(value):
                site = sweep.get("site") if isinstance(sweep, dict) else getattr(sweep, "site", None)
                if isinstance(site, str) and site not in SWEEP_SITES:
                    raise SpecError(f"sweeps[{i}].site", f"unknown site {site!r}; use one of "
                                    f"{', '.join(SWEEP_SITES)}")
        return value

    def _check_sweeps(self, experiment: str) -> None:
        """Corrupted prompts present, and no sweep named twice."""
        if not self.prompts.has_corrupted:
            raise SpecError("prompts.corrupted", f"{experiment} needs one corrupted prompt "
                            "per clean prompt (or a task, which generates them)")
        names = [sweep.name for sweep in self.sweeps]
        if len(set(names)) != len(names):
            raise SpecError("sweeps", "lists the same sweep twice")


class ActivationPatchingSpec(SweptSpec):
    """Patch clean into corrupted (or back) at each site of the chosen sweeps."""

    kind: Literal["activation_patching"] = "activation_patching"
    component_sets: tuple[tuple[str, ...], ...] = ()
    """Extra variants, each a set of components (``"head.1.2"``, ``"mlp.0"``) patched
    together at every position."""

    @model_validator(mode="after")
    def _check(self) -> "ActivationPatchingSpec":
        self._check_sweeps("activation patching")
        if not self.sweeps and not self.component_sets:
            raise SpecError("sweeps", "nothing to patch: give at least one sweep or component set")
        for i, components in enumerate(self.component_sets):
            if not components:
                raise SpecError(f"component_sets[{i}]", "is empty; list at least one component")
            for j, name in enumerate(components):
                try:
                    parse_component(name)
                except UserInputError as error:
                    raise SpecError(f"component_sets[{i}][{j}]", str(error)) from None
        return self


class SweepEffects(BaseModel):
    """Where one sweep's numbers are and how to read their axes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    """Sweep name; tensors ``effect.<name>`` and ``logit_diff.<name>``."""
    site: SweepSite
    per_position: bool
    axes: tuple[str, ...]
    """Axes of ``effect.<name>`` (``layer``, then ``head`` for heads, then ``position`` when
    per position); ``logit_diff.<name>`` has a trailing ``prompt`` axis."""
    layers: tuple[int, ...]
    """Layer of each index along ``layer``."""
    heads: tuple[int, ...] = ()
    """Head of each index along ``head`` (head sweeps only)."""
    positions: tuple[int, ...] = ()
    """Position of each index along ``position`` (per-position sweeps only)."""


class SetEffect(BaseModel):
    """The effect of patching one component set together."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    components: tuple[str, ...]
    effect: float | None
    """Normalised effect (None when not normalisable)."""
    logit_diff: float
    """Mean patched logit difference."""


class PatchEffect(BaseModel):
    """One of the largest effects of the sweeps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sweep: str
    component: str
    position: int | None
    """The patched position (None: every position)."""
    effect: float


class ActivationPatchingResult(ExperimentResult):
    """Normalised patching effects per sweep (tensors) with the headline numbers inline.

    Tensors: ``effect.<sweep>`` (axes in `SweepEffects.axes`), ``logit_diff.<sweep>`` (same
    axes + ``prompt``: per-prompt patched logit difference), ``effect.sets`` ``[n_sets]`` and
    ``logit_diff.sets`` ``[n_sets, prompt]``, ``clean_logit_diff`` and
    ``corrupted_logit_diff`` ``[prompt]``.
    """

    spec: ActivationPatchingSpec
    clean_logit_diff: float
    """Mean logit difference of the unpatched clean run."""
    corrupted_logit_diff: float
    """Mean logit difference of the unpatched corrupted run."""
    normalisable: bool
    """False when clean and corrupted score the same, so effects are undefined (NaN)."""
    sweeps: tuple[SweepEffects, ...]
    component_sets: tuple[SetEffect, ...] = ()
    top: tuple[PatchEffect, ...] = ()
    """The largest |effect| over all sweeps, largest first (empty when not normalisable)."""


@torch.no_grad()
def run_activation_patching(
    model: "LoadedModel", spec: ActivationPatchingSpec, *, batch_size: int = 128
) -> ActivationPatchingResult:
    """Run the spec's sweeps and component sets; pure (no I/O).

    ``batch_size`` is rows per forward pass (variants × prompts); it changes speed and
    memory, never the numbers.

    Raises:
        SpecError: before any forward pass, for layers, heads, positions or components the
            model does not have, or clean/corrupted pairs of different token lengths.
    """
    prompts = tokenize_prompts(model, spec.prompts, need_corrupted=True, aligned=True)
    plan = _plan(model, spec, prompts)
    clean_ld, corrupted_ld, patched = [], [], []
    per_prompt_chunk = max(1, min(prompts.size, batch_size))
    for start in range(0, prompts.size, per_prompt_chunk):
        chunk = prompts.rows(start, min(prompts.size, start + per_prompt_chunk))
        c, x, p = _run_chunk(model, spec, chunk, plan["variants"], batch_size)
        clean_ld.append(c)
        corrupted_ld.append(x)
        patched.append(p)
    clean = torch.cat(clean_ld)
    corrupted = torch.cat(corrupted_ld)
    per_variant = torch.cat(patched, dim=1)  # [n_variants, prompt]
    return _assemble(model, spec, plan, clean, corrupted, per_variant)


# -- planning (model-dependent validation happens here, before any forward pass) ---------------


def _plan(model: "LoadedModel", spec: ActivationPatchingSpec, prompts: PromptBatch) -> dict:
    adapter = model.adapter
    layers = check_indices("layers", spec.layers, adapter.n_layers, "layer")
    heads = check_indices("heads", spec.heads, adapter.n_heads, "head")
    needs_positions = any(sweep.per_position for sweep in spec.sweeps)
    lengths = prompts.lengths.tolist()
    if needs_positions or spec.positions is not None:
        positions = check_positions("positions", spec.positions, lengths)
    else:
        positions = []
    sets = [
        tuple(check_component_name(f"component_sets[{i}][{j}]", name, n_layers=adapter.n_layers,
                                   n_heads=adapter.n_heads) for j, name in enumerate(components))
        for i, components in enumerate(spec.component_sets)
    ]
    variants: list[Variant] = []
    sweeps: list[tuple[SweepEffects, list[int]]] = []  # (description, variant index per cell)
    for sweep in spec.sweeps:
        axes = ["layer"] + (["head"] if sweep.site == "head" else []) + (
            ["position"] if sweep.per_position else [])
        cells: list[int] = []
        for layer in layers:
            for head in heads if sweep.site == "head" else [None]:
                component = parse_component(
                    f"head.{layer}.{head}" if head is not None else f"{sweep.site}.{layer}")
                for position in positions if sweep.per_position else [None]:
                    cells.append(len(variants))
                    variants.append((Patch(component, None if position is None else (position,)),))
        description = SweepEffects(
            name=sweep.name, site=sweep.site, per_position=sweep.per_position, axes=tuple(axes),
            layers=tuple(layers), heads=tuple(heads) if sweep.site == "head" else (),
            positions=tuple(positions) if sweep.per_position else (),
        )
        sweeps.append((description, cells))
    set_cells = []
    for components in sets:
        set_cells.append(len(variants))
        variants.append(tuple(Patch(component) for component in components))
    return {"variants": variants, "sweeps": sweeps, "sets": set_cells}


# -- running -------------------------------------------------------------------------------


def _run_chunk(
    model: "LoadedModel", spec: ActivationPatchingSpec, prompts: PromptBatch,
    variants: list[Variant], batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean and corrupted logit diffs ``[batch]`` and patched ones ``[n_variants, batch]``."""
    readout = prompts.readout_ids
    base_ids, source_ids = (prompts.corrupted, prompts.clean) if spec.mode == "denoising" else (
        prompts.clean, prompts.corrupted)
    last = prompts.last
    n_layers = model.adapter.n_layers
    sources = site_keys(variants)
    head_layers = sorted(layer for site, layer in sources if site == "z")
    base_keys = [("resid_post", layer) for layer in range(n_layers - 1)]
    base_keys += [("z", layer) for layer in head_layers]
    base_cache, base_final = cache_run(model, base_ids, last, base_keys)
    source_cache, source_final = cache_run(model, source_ids, last, sources)
    base_ld = _logit_diff(unembed_rows(model, base_final, readout))
    source_ld = _logit_diff(unembed_rows(model, source_final, readout))
    base_resid_post = {layer: base_cache[("resid_post", layer)] for layer in range(n_layers - 1)}
    base_attention = {layer: base_cache[("z", layer)] for layer in head_layers}
    logits = run_patched_variants(
        model, base_ids, prompts.lengths, source_cache, variants, token_ids=readout,
        base_resid_post=base_resid_post, base_attention=base_attention,
        shared_prefix=shared_prefix_length(base_ids, source_ids), batch_size=batch_size,
    )
    patched = _logit_diff(logits)
    clean, corrupted = (source_ld, base_ld) if spec.mode == "denoising" else (base_ld, source_ld)
    return clean, corrupted, patched


def _logit_diff(logits: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` answer and foil logits -> ``[...]`` logit difference."""
    return logits[..., 0] - logits[..., 1]


# -- assembling the result -----------------------------------------------------------------


def _assemble(
    model: "LoadedModel", spec: ActivationPatchingSpec, plan: dict,
    clean: torch.Tensor, corrupted: torch.Tensor, per_variant: torch.Tensor,
) -> ActivationPatchingResult:
    clean_mean, corrupted_mean = float(clean.mean()), float(corrupted.mean())
    denominator = clean_mean - corrupted_mean
    normalisable = abs(denominator) > NORMALISE_EPS
    means = per_variant.mean(dim=1)
    effects = (means - corrupted_mean) / denominator if normalisable else torch.full_like(means, math.nan)
    tensors = {"clean_logit_diff": clean, "corrupted_logit_diff": corrupted}
    candidates: list[PatchEffect] = []
    descriptions = []
    for description, cells in plan["sweeps"]:
        shape = [len(description.layers)]
        shape += [len(description.heads)] if description.heads else []
        shape += [len(description.positions)] if description.per_position else []
        index = torch.tensor(cells, dtype=torch.long)
        tensors[f"effect.{description.name}"] = effects[index].reshape(shape)
        tensors[f"logit_diff.{description.name}"] = per_variant[index].reshape(*shape, -1)
        descriptions.append(description)
        if normalisable:
            candidates.extend(sweep_cells(description, effects[index].tolist()))
    set_effects = []
    if plan["sets"]:
        index = torch.tensor(plan["sets"], dtype=torch.long)
        tensors["effect.sets"] = effects[index]
        tensors["logit_diff.sets"] = per_variant[index]
        for components, cell in zip(spec.component_sets, plan["sets"]):
            set_effects.append(SetEffect(
                components=components, effect=float(effects[cell]) if normalisable else None,
                logit_diff=float(means[cell])))
    top = sorted(candidates, key=lambda e: -abs(e.effect))[:TOP_K]
    return ActivationPatchingResult(
        spec=spec, provenance=provenance_for(model, spec.seed),
        clean_logit_diff=clean_mean, corrupted_logit_diff=corrupted_mean,
        normalisable=normalisable, sweeps=tuple(descriptions),
        component_sets=tuple(set_effects), top=tuple(top),
        tensors={k: v.detach().cpu() for k, v in tensors.items()},
    )


def sweep_cells(description: SweepEffects, values: list[float]) -> list[PatchEffect]:
    """Label each value of a sweep (in its row-major order) with its component and position."""
    out = []
    i = 0
    for layer in description.layers:
        for head in description.heads or [None]:
            component = f"head.{layer}.{head}" if head is not None else f"{description.site}.{layer}"
            for position in description.positions or [None]:
                out.append(PatchEffect(sweep=description.name, component=component,
                                       position=position, effect=values[i]))
                i += 1
    return out
