"""Ablation of component sets: necessity (remove the set) and faithfulness (keep only the set).

To *ablate* a component is to replace its value, in a run on the clean prompts, by a value
that carries no information about the particular prompt:

* ``zero``: zeros. Simple, but pushes the model off its distribution (a head that always
  writes something large leaves a hole no real prompt produces).
* ``mean``: the component's mean value over a *reference* prompt set (by default the spec's
  own corrupted prompts; without corrupted prompts, its clean ones). What the component
  "usually" writes stays; what is specific to the prompt goes.
* ``resample``: the value the component takes on the corrupted prompt paired with each
  clean prompt (positions compared one to one, so each pair must have one token length).

Where the mean is taken (``mean_over``)
=======================================
``"prompts"``: one mean per *position* over the reference prompts (``[pos, ...]``), put back
at the same position. Defined only when every reference prompt and every clean prompt has
the same token length. ``"prompts_and_positions"``: one mean over every real token of every
reference prompt (``[...]``), put back at every position; always defined, but mixes
position-specific activity (the first token's large norm, for one). ``"auto"`` (default)
takes ``"prompts"`` when the lengths allow it, ``"prompts_from_end"`` when they do not but the
ablation is restricted to positions counted from the end (negative ``positions``) that every
prompt has, and ``"prompts_and_positions"`` otherwise; the result records which was used.
``"prompts_from_end"``: one mean per position *counted from each prompt's end* (the last
token, the one before it, ...) over the reference prompts, put back at the same offset from
the end: the per-position mean for prompts of different lengths whose final clause is
templated (IOI's "John gave a drink to"). It needs negative ``positions`` no further back than
the shortest reference prompt.

The universe of components
==========================
The components this experiment reasons about are the attention heads (``head.L.H``, ablated
through their slice of the attention output projection's input, TransformerLens
``hook_z``) and the MLPs (``mlp.L``, ablated at what the MLP adds to the residual stream,
after any post-norm) — ``universe`` chooses which of the two kinds take part (both by
default; ``("head",)`` for the common "heads only, MLPs always kept" convention). ``attn.L``
is shorthand for every head of block ``L``. The token embedding, the residual stream and
the attention output projection's bias are never ablated (the bias is a constant that
belongs to no head). Ablating "everything" means every component of the universe.

* ``mode="ablate"`` ablates the listed set (**necessity**: how much of the behaviour is
  lost without it).
* ``mode="keep"`` ablates every component of the universe *not* in the set, so only the
  set (and what is outside the universe) keeps its value (**faithfulness**: how much of
  the behaviour the set alone carries).

Scores
======
The metric is the logit difference answer − foil at each prompt's last token; scores use
the **mean over prompts of the metric** (not a mean of per-prompt ratios)::

    faithfulness = (mean kept-only − mean all-ablated) / (mean clean − mean all-ablated)
    necessity    = (mean clean − mean set-ablated)    / (mean clean − mean all-ablated)

where ``all-ablated`` has every component of the universe ablated. Keeping every component
gives faithfulness exactly 1 (nothing is ablated: the clean run itself), keeping none gives
exactly 0 (the baseline itself: identical variants run once); ablating nothing gives
necessity 0 and ablating everything 1. When the clean and all-ablated metrics are equal
(``|difference| <= 1e-6``) the scores are undefined (None). ``positions`` restricts every
ablation (of the set, of its complement and of the baseline) to those positions.

Everything runs through `tools.experiments.patching.run_patched_variants`: an ablation is a
patch whose *source* is the zeros / means / corrupted values, and blocks before the first
ablated layer are not recomputed. The clean run, the source (corrupted run or reference
means) and the everything-ablated baseline depend on the prompts, the method, the positions
and the universe but not on the set, so under `tools.experiments.memo.sharing_runs` they are
computed once and read back by the next ablation of the same prompts; the ablated set always
runs in a forward pass of its own, so a score does not depend on what ran before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import field_validator, model_validator

from tools.components import Component, parse_component
from tools.errors import SpecError, UserInputError
from tools.experiments.patching import (
    Patch,
    SiteKey,
    Variant,
    cache_run,
    run_patched_variants,
    site_key,
)
from tools.experiments.memo import fingerprint, model_key, shared
from tools.experiments.prompts import PromptBatch, PromptPairs, resolve_prompts, tokenize_prompts
from tools.experiments.provenance import provenance_for
from tools.experiments.readout import chunks, unembed_rows
from tools.experiments.result import ExperimentResult
from tools.experiments.spec import ExperimentSpec, check_component_name, check_positions

if TYPE_CHECKING:
    from tools.loading import LoadedModel

AblationMethod = Literal["zero", "mean", "resample"]
UniverseKind = Literal["head", "mlp"]
MeanOver = Literal["prompts", "prompts_from_end", "prompts_and_positions"]
NORMALISE_EPS = 1e-6
ABLATABLE_KINDS = ("head", "attn", "mlp")


class AblationSpec(ExperimentSpec):
    """Ablate a component set (or everything but it) on the clean prompts; score against the
    clean run and the everything-ablated baseline."""

    kind: Literal["ablation"] = "ablation"
    components: tuple[str, ...] = ()
    """The set: ``head.L.H``, ``attn.L`` (every head of block ``L``) and ``mlp.L`` names.
    May be empty (keep nothing / ablate nothing)."""
    method: AblationMethod = "mean"
    """``zero``, ``mean`` (over ``reference``) or ``resample`` (from the paired corrupted prompt)."""
    mode: Literal["ablate", "keep"] = "ablate"
    """``ablate``: ablate the set (necessity). ``keep``: ablate every other component of the
    universe (faithfulness)."""
    universe: tuple[UniverseKind, ...] = ("head", "mlp")
    """Kinds of component that take part: what ``keep`` mode ablates when not listed, and
    what the everything-ablated baseline ablates. Listed components must be of these kinds
    (``attn.L`` counts as heads)."""
    reference: PromptPairs | None = None
    """Mean ablation only: the prompts (their clean prompts) whose mean activation replaces
    a component. None: the spec's corrupted prompts, or its clean ones when it has none."""
    mean_over: Literal["auto", "prompts", "prompts_from_end", "prompts_and_positions"] = "auto"
    """Mean ablation only: a mean per position over prompts (``prompts``: needs one token
    length throughout), per position counted from each prompt's end (``prompts_from_end``:
    needs negative ``positions``), one over prompts and positions, or ``auto`` (the first
    that the lengths and positions allow; see the module docstring)."""
    positions: tuple[int, ...] | None = None
    """Ablate only at these positions (None: every position); negative ones count from each
    prompt's end (-1 is the last token)."""

    @field_validator("reference", mode="before")
    @classmethod
    def _reference_fields(cls, value: Any) -> Any:
        """Build the reference set here so its mistakes name ``reference.*``, not ``prompts.*``."""
        if isinstance(value, dict):
            try:
                return PromptPairs.model_validate(value)
            except SpecError as error:
                raise SpecError(_rename(error.field), error.message) from None
        return value

    @model_validator(mode="after")
    def _check(self) -> "AblationSpec":
        if not self.universe:
            raise SpecError("universe", "is empty; give at least one of 'head', 'mlp'")
        if len(set(self.universe)) != len(self.universe):
            raise SpecError("universe", "lists a kind twice")
        if len(set(self.components)) != len(self.components):
            raise SpecError("components", "lists a component twice")
        for i, name in enumerate(self.components):
            try:
                component = parse_component(name)
            except UserInputError as error:
                raise SpecError(f"components[{i}]", str(error)) from None
            if component.kind not in ABLATABLE_KINDS:
                raise SpecError(f"components[{i}]", f"{name!r} cannot be ablated here; list heads "
                                "(head.L.H), whole attention layers (attn.L) or MLPs (mlp.L)")
            kind = "head" if component.kind == "attn" else component.kind
            if kind not in self.universe:
                raise SpecError(f"components[{i}]", f"{name!r} is a {kind} component but universe "
                                f"is {list(self.universe)}; add {kind!r} to universe or drop it")
        if self.method != "mean":
            only = f"is used by mean ablation only (method is {self.method!r})"
            if self.reference is not None:
                raise SpecError("reference", only)
            if self.mean_over != "auto":
                raise SpecError("mean_over", only)
        if self.method == "resample" and not self.prompts.has_corrupted:
            raise SpecError("prompts.corrupted", "resample ablation takes each component's value "
                            "from the corrupted prompt paired with each clean prompt; give one "
                            "corrupted prompt per clean prompt (or a task)")
        return self


class AblationResult(ExperimentResult):
    """Clean, ablated and everything-ablated metrics with the derived score.

    Tensors (each ``[prompt]``, logit difference answer − foil at the last token):
    ``clean_logit_diff``, ``ablated_logit_diff`` (the spec's ablation),
    ``everything_ablated_logit_diff`` (every component of the universe ablated).
    """

    spec: AblationSpec
    ablated: tuple[str, ...]
    """The components actually ablated (``head.L.H`` and ``mlp.L``, forward order): the set in
    ``ablate`` mode, the rest of the universe in ``keep`` mode."""
    n_universe: int
    """How many components the universe has (what the baseline ablates)."""
    mean_over: MeanOver | None
    """Where the mean was taken (mean ablation only)."""
    clean_logit_diff: float
    """Mean logit difference of the unablated clean run."""
    ablated_logit_diff: float
    """Mean logit difference with the spec's ablation."""
    everything_ablated_logit_diff: float
    """Mean logit difference with every component of the universe ablated."""
    normalisable: bool
    """False when clean and everything-ablated score the same, so scores are undefined."""
    faithfulness: float | None = None
    """``keep`` mode: (ablated − everything) / (clean − everything); None otherwise."""
    necessity: float | None = None
    """``ablate`` mode: (clean − ablated) / (clean − everything); None otherwise."""


@torch.no_grad()
def run_ablation(
    model: "LoadedModel", spec: AblationSpec, *, batch_size: int = 128
) -> AblationResult:
    """Run the spec's ablation and the everything-ablated baseline; pure (no I/O).

    ``batch_size`` is rows per forward pass (variants × prompts); it changes speed and
    memory, never the numbers.

    Raises:
        SpecError: before any forward pass, for components the model does not have,
            positions past a prompt, corrupted prompts of another token length (resample),
            or reference prompts of mismatched lengths (``mean_over="prompts"``).
    """
    adapter = model.adapter
    prompts = tokenize_prompts(model, spec.prompts, aligned=spec.method == "resample")
    listed = _expand(spec, adapter.n_layers, adapter.n_heads)
    universe = universe_components(spec.universe, adapter.n_layers, adapter.n_heads)
    positions = None
    if spec.positions is not None:
        positions = tuple(check_positions("positions", spec.positions, prompts.lengths.tolist()))
    ablated = listed if spec.mode == "ablate" else [c for c in universe if c not in set(listed)]
    mean_source = mean_over = None
    if spec.method == "mean":
        reference_ids, reference_lengths, field = _reference(model, spec, prompts)
        mean_over = _mean_over(spec, field, prompts.lengths, reference_lengths)
        if mean_over == "prompts_from_end":
            _check_from_end(spec, field, reference_lengths)
    # -- no forward pass before this line ------------------------------------------------
    keys = {site_key(c) for c in universe}
    source_key: tuple = (spec.method,)
    if spec.method == "mean":
        depth = -min(spec.positions or (0,))
        source_key = ("means", model_key(model), fingerprint(reference_ids), fingerprint(reference_lengths),
                      tuple(sorted(keys)), mean_over, depth)
        mean_source = shared(source_key, lambda: _means(
            model, reference_ids, reference_lengths, keys, mean_over=mean_over, depth=depth,
            batch_size=batch_size))
    variant = tuple(Patch(c, positions) for c in ablated)
    everything = tuple(Patch(c, positions) for c in universe)
    clean, mode_ld, base_ld = [], [], []
    per_chunk = max(1, min(prompts.size, batch_size))
    for start, stop in chunks(prompts.size, per_chunk):
        c, a, b = _run_chunk(model, spec, prompts.rows(start, stop), keys, variant, everything,
                             mean_source, mean_over, batch_size, source_key)
        clean.append(c)
        mode_ld.append(a)
        base_ld.append(b)
    return _assemble(model, spec, ablated, len(universe), mean_over,
                     torch.cat(clean), torch.cat(mode_ld), torch.cat(base_ld))


# -- planning (model-dependent validation, before any forward pass) ---------------------------


def _expand(spec: AblationSpec, n_layers: int, n_heads: int) -> list[Component]:
    """The listed set as heads and MLPs (``attn.L`` -> every head of ``L``), in forward order."""
    out: set[Component] = set()
    for i, name in enumerate(spec.components):
        component = check_component_name(f"components[{i}]", name, n_layers=n_layers,
                                         n_heads=n_heads)
        if component.kind == "attn":
            out.update(Component("head", component.layer, h) for h in range(n_heads))
        else:
            out.add(component)
    return sorted(out, key=_order)


def universe_components(kinds: tuple[str, ...], n_layers: int, n_heads: int) -> list[Component]:
    """Every head and / or MLP of the model, in forward order."""
    out = []
    for layer in range(n_layers):
        if "head" in kinds:
            out.extend(Component("head", layer, h) for h in range(n_heads))
        if "mlp" in kinds:
            out.append(Component("mlp", layer))
    return out


def _order(component: Component) -> tuple[int, int, int]:
    return component.layer, component.kind == "mlp", component.head or 0


def _reference(
    model: "LoadedModel", spec: AblationSpec, prompts: PromptBatch
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Ids ``[n_ref, pos]`` (right-padded) and lengths ``[n_ref]`` of the mean's reference
    prompts, and the field that names them in errors."""
    if spec.reference is None:
        if prompts.corrupted is not None:
            return prompts.corrupted, prompts.corrupted_lengths, "prompts.corrupted"
        return prompts.clean, prompts.lengths, "prompts.clean"
    try:
        items = resolve_prompts(spec.reference, model.tokenizer)
    except SpecError as error:
        raise SpecError(_rename(error.field), error.message) from None
    rows = []
    for i, item in enumerate(items):
        ids = list(model.tokenizer(item.clean, add_special_tokens=True)["input_ids"])
        if not ids:
            raise SpecError(f"reference.clean[{i}]", f"{item.clean!r} tokenises to no tokens")
        rows.append(ids)
    tokenizer = model.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    ids = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids.to(model.device), lengths, "reference.clean"


def _mean_over(spec: AblationSpec, field: str, lengths: torch.Tensor,
               reference_lengths: torch.Tensor) -> MeanOver:
    """Resolve ``mean_over``; a per-position mean needs one token length everywhere."""
    target = int(lengths[0])
    if spec.mean_over in ("prompts_and_positions", "prompts_from_end"):
        return spec.mean_over
    aligned = bool((lengths == target).all() and (reference_lengths == target).all())
    if aligned:
        return "prompts"
    if spec.mean_over == "auto":
        from_end = (spec.positions is not None and all(p < 0 for p in spec.positions)
                    and -min(spec.positions) <= int(reference_lengths.min()))
        return "prompts_from_end" if from_end else "prompts_and_positions"
    if not bool((lengths == target).all()):
        raise SpecError("mean_over", f"a per-position mean needs clean prompts of one token "
                        f"length, they have {int(lengths.min())} to {int(lengths.max())}; use "
                        "'prompts_and_positions'")
    i = int((reference_lengths != target).nonzero()[0])
    raise SpecError(f"{field}[{i}]", f"has {int(reference_lengths[i])} tokens but the clean "
                    f"prompts have {target}; a per-position mean (mean_over='prompts') compares "
                    "positions one to one, so every reference prompt must have that length")


def _check_from_end(spec: AblationSpec, field: str, reference_lengths: torch.Tensor) -> None:
    """A mean counted from the end needs negative positions that every reference prompt has."""
    if spec.positions is None or any(p >= 0 for p in spec.positions):
        raise SpecError("mean_over", "'prompts_from_end' puts means back at offsets from each "
                        "prompt's end, so list the positions to ablate as negative numbers "
                        "(-1 is the last token)")
    depth, shortest = -min(spec.positions), int(reference_lengths.min())
    if depth > shortest:
        i = int((reference_lengths < depth).nonzero()[0])
        raise SpecError(f"{field}[{i}]", f"has {int(reference_lengths[i])} tokens, fewer than the "
                        f"{depth} positions from the end that 'prompts_from_end' averages over")


def _rename(field: str) -> str:
    """``prompts.x`` -> ``reference.x`` (errors raised by `PromptPairs` name their own fields)."""
    if field.startswith("prompts"):
        return "reference" + field[len("prompts"):]
    return f"reference.{field}"


# -- running -------------------------------------------------------------------------------


def _means(
    model: "LoadedModel", ids: torch.Tensor, lengths: torch.Tensor, keys: set[SiteKey], *,
    mean_over: MeanOver, depth: int, batch_size: int,
) -> dict[SiteKey, torch.Tensor]:
    """Mean value of each site over the reference prompts: ``[pos, features]`` per position
    (``prompts``), ``[depth, features]`` per offset from the end (``prompts_from_end``, row
    ``k`` is offset ``-(k+1)``), else ``[features]`` over every real token. Accumulated in
    float32, returned in the model's dtype."""
    sums: dict[SiteKey, torch.Tensor] = {}
    for start, stop in chunks(ids.shape[0], batch_size):
        chunk_lengths = lengths[start:stop]
        width = int(chunk_lengths.max())
        cache, _ = cache_run(model, ids[start:stop, :width], chunk_lengths - 1, keys)
        real = (torch.arange(width)[None, :] < chunk_lengths[:, None]).to(model.device)
        from_end = (chunk_lengths[:, None] - 1 - torch.arange(depth)[None, :]).to(model.device)
        for key, value in cache.items():
            value = value.float()
            if mean_over == "prompts":
                part = value.sum(0)
            elif mean_over == "prompts_from_end":
                index = from_end[..., None].expand(-1, -1, value.shape[-1])
                part = value.gather(1, index).sum(0)
            else:
                part = value[real].sum(0)
            sums[key] = part if key not in sums else sums[key] + part
    count = int(lengths.sum()) if mean_over == "prompts_and_positions" else ids.shape[0]
    dtype = next(model.hf_model.parameters()).dtype
    return {key: (total / count).to(dtype) for key, total in sums.items()}


def _run_chunk(
    model: "LoadedModel", spec: AblationSpec, prompts: PromptBatch, keys: set[SiteKey],
    variant: Variant, everything: Variant, mean_source: dict[SiteKey, torch.Tensor] | None,
    mean_over: MeanOver | None, batch_size: int, source_key: tuple,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean, spec-ablated and everything-ablated logit differences ``[batch]``.

    The clean run, the corrupted run (resample) and the everything-ablated baseline go
    through `shared`; the spec's own variant always runs alone, so its numbers are the same
    whether or not those came from the memo."""
    readout = prompts.readout_ids
    n_layers = model.adapter.n_layers
    base_keys = {("resid_post", layer) for layer in range(n_layers - 1)}
    clean_cache, final = cache_run(model, prompts.clean, prompts.last, base_keys | keys)
    clean = _logit_diff(unembed_rows(model, final, readout))
    batch, width = prompts.clean.shape
    if spec.method == "zero":
        source = {key: torch.zeros_like(clean_cache[key]) for key in keys}
    elif mean_over == "prompts_and_positions":
        source = {key: mean.expand(batch, width, mean.shape[-1]) for key, mean in mean_source.items()}
    elif mean_over == "prompts_from_end":
        source = {key: _place_from_end(mean, prompts.lengths, width) for key, mean in mean_source.items()}
    elif spec.method == "mean":
        source = {key: mean.expand(batch, *mean.shape) for key, mean in mean_source.items()}
    else:
        source_key = ("corrupted", fingerprint(prompts.corrupted))
        source, _ = cache_run(model, prompts.corrupted, prompts.last, keys)
    base_resid_post = {l: clean_cache[("resid_post", l)] for l in range(n_layers - 1)}

    def run(v: Variant) -> torch.Tensor:
        logits = run_patched_variants(model, prompts.clean, prompts.lengths, source, [v], token_ids=readout,
                                      base_resid_post=base_resid_post, batch_size=batch_size)
        return _logit_diff(logits)[0]

    base = clean
    if everything:
        key = ("everything", model_key(model), fingerprint(prompts.clean), fingerprint(prompts.lengths),
               fingerprint(readout), source_key, everything[0].positions, tuple(sorted(keys)))
        base = shared(key, lambda: run(everything))
    # ablating nothing is the clean run, ablating everything the baseline: neither runs again
    ablated = clean if not variant else base if variant == everything else run(variant)
    return clean, ablated, base


def _place_from_end(mean: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``[depth, features]`` means per offset from the end -> ``[batch, width, features]`` with
    row ``k`` at position ``length - 1 - k`` of each prompt (zeros elsewhere: never patched,
    since the ablation is restricted to offsets within ``depth``)."""
    depth, features = mean.shape
    out = mean.new_zeros(len(lengths), width, features)
    for row, length in enumerate(lengths.tolist()):
        k = min(depth, length)
        out[row, length - k: length] = mean[:k].flip(0)
    return out


def _logit_diff(logits: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` answer and foil logits -> ``[...]`` logit difference."""
    return logits[..., 0] - logits[..., 1]


def _assemble(
    model: "LoadedModel", spec: AblationSpec, ablated: list[Component], n_universe: int,
    mean_over: MeanOver | None, clean: torch.Tensor, mode_ld: torch.Tensor, base: torch.Tensor,
) -> AblationResult:
    clean_mean, ablated_mean = float(clean.mean()), float(mode_ld.mean())
    base_mean = float(base.mean())
    denominator = clean_mean - base_mean
    normalisable = abs(denominator) > NORMALISE_EPS
    faithfulness = necessity = None
    if normalisable and spec.mode == "keep":
        faithfulness = (ablated_mean - base_mean) / denominator
    if normalisable and spec.mode == "ablate":
        necessity = (clean_mean - ablated_mean) / denominator
    tensors = {"clean_logit_diff": clean, "ablated_logit_diff": mode_ld,
               "everything_ablated_logit_diff": base}
    return AblationResult(
        spec=spec, provenance=provenance_for(model, spec.seed),
        ablated=tuple(str(c) for c in ablated), n_universe=n_universe, mean_over=mean_over,
        clean_logit_diff=clean_mean, ablated_logit_diff=ablated_mean,
        everything_ablated_logit_diff=base_mean, normalisable=normalisable,
        faithfulness=faithfulness, necessity=necessity,
        tensors={k: v.detach().cpu() for k, v in tensors.items()},
    )
