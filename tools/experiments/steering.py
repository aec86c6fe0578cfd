"""Steering: add ``α·v`` to one site of the forward pass and measure the behaviour, per α.

The direction ``v`` (``direction``, a ``[d_model]`` vector) is one of

``mean_difference``   ``mean_i x_i − mean_j y_j``: the value of a site (``resid_pre.L`` ...,
                      or a head's write) at one position, averaged over a positive and a
                      negative prompt set (by default the clean and the corrupted prompts) —
                      what separates the two sets there, on average.
``component_output``  ``mean_i c_i``: what one component (``head.L.H``, ``mlp.L``, ``attn.L``)
                      writes to the residual stream at one position, averaged over prompts
                      (a head's write is ``z_h @ W_O[h]``, through a frozen post-norm for
                      Gemma 2/3; see `tools.adapters.heads`).
``unembedding``       ``mean_i w ⊙ (W_U[answer_i] − W_U[foil_i])``, centred when the final
                      norm is a LayerNorm (``w``: its weight): the residual direction the
                      final norm and unembedding read as "answer over foil". Added at the last
                      layer, it raises every prompt's logit difference monotonically in α when
                      the prompts share answer and foil (the normalised stream turns towards
                      it; the tests check this) — a calibration of the instrument.

With ``normalise``, ``v`` is scaled to unit norm first, so α is the L2 norm of what is added.
At ``site`` (``embed``, ``resid_pre.L``, ``attn.L``, ``mlp.L``, ``resid_post.L``) and at
``positions`` (default every position, generated ones included) the forward pass replaces
the value ``x`` by ``x + α·v``. The metric is the logit difference answer − foil at each
prompt's last token. α = 0 adds exact zeros, so it reproduces the unsteered run.

**Control**: a random Gaussian direction of the same norm as ``v`` (seeded by
``control_seed``), steered with the same α values. A direction that matters moves the metric
far more than the control; a change the control reproduces is a side effect of perturbing
the stream by that much.

How the work is saved: every (direction, α) variant is stacked along the batch and run in one
forward pass (up to ``batch_size`` rows), and blocks before the steered site — identical to
the unsteered run in every variant — are skipped with that run's cached residual stream
(nnsight ``skip``), as in `tools.experiments.patching`.

**Steered generation** (``generate`` new tokens, greedy, for the first ``generate_prompts``
prompts, every α, steering and control): each step reruns the whole sequence with the
intervention (no key/value cache), so ``positions`` keep their meaning on the prompt and the
default "every position" includes generated tokens; a row stops at the model's EOS token.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Literal, Sequence, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tools.components import Component, parse_component
from tools.errors import SpecError, UserInputError
from tools.experiments.attention import tokenize_texts
from tools.experiments.direct_logit_attribution import final_norm_linear
from tools.experiments.patching import cache_run, read_site, site_key, write_site
from tools.experiments.prompts import PromptBatch, tokenize_prompts
from tools.experiments.provenance import provenance_for
from tools.experiments.readout import chunks, gather_rows, read_final_hidden, unembed_rows
from tools.experiments.result import ExperimentResult
from tools.experiments.spec import ExperimentSpec, check_component_name, check_positions

if TYPE_CHECKING:
    from tools.loading import LoadedModel

STEER_SITES: tuple[str, ...] = ("embed", "resid_pre", "attn", "mlp", "resid_post")
"""Kinds of site where ``α·v`` can be added (each holds a ``d_model`` vector per position)."""
DIRECTION_SITES: tuple[str, ...] = STEER_SITES + ("head",)
"""Kinds of site a direction can be read from (a head contributes its write)."""
MAX_GENERATE = 512


def _parse_site(field: str, name: str, kinds: tuple[str, ...]) -> Component:
    try:
        component = parse_component(name)
    except UserInputError as error:
        raise SpecError(field, str(error)) from None
    if component.kind not in kinds:
        raise SpecError(field, f"{name!r} is a {component.kind}; use one of "
                        f"{', '.join(kinds)} (with a layer: resid_pre.3, head.3.1)")
    return component


def _check_texts(field: str, texts: tuple[str, ...]) -> None:
    for i, text in enumerate(texts):
        if not text:
            raise SpecError(f"{field}[{i}]", "is an empty string")


class MeanDifferenceDirection(BaseModel):
    """``v`` = mean value at ``site`` over ``positive`` − mean over ``negative``, at ``position``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["mean_difference"] = "mean_difference"
    site: str
    """Where the values are read: ``resid_pre.L``, ``resid_post.L``, ``attn.L``, ``mlp.L``,
    ``embed``, or ``head.L.H`` (the head's write to the residual stream)."""
    position: int = -1
    """Token position read in every prompt; negative counts from each prompt's end."""
    positive: tuple[str, ...] = ()
    """Prompts the direction points towards (default: the spec's clean prompts)."""
    negative: tuple[str, ...] = ()
    """Prompts it points away from (default: the spec's corrupted prompts)."""

    @model_validator(mode="after")
    def _check(self) -> "MeanDifferenceDirection":
        _parse_site("direction.site", self.site, DIRECTION_SITES)
        if bool(self.positive) != bool(self.negative):
            missing = "negative" if self.positive else "positive"
            raise SpecError(f"direction.{missing}", "give both prompt sets, or neither to use the "
                            "clean and corrupted prompts")
        _check_texts("direction.positive", self.positive)
        _check_texts("direction.negative", self.negative)
        return self


class ComponentOutputDirection(BaseModel):
    """``v`` = mean of what ``component`` writes at ``position`` over ``texts``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["component_output"] = "component_output"
    component: str
    """``head.L.H``, ``mlp.L`` or ``attn.L`` (also ``resid_pre.L`` / ``resid_post.L`` / ``embed``)."""
    position: int = -1
    """Token position read in every prompt; negative counts from each prompt's end."""
    texts: tuple[str, ...] = ()
    """Prompts to average over (default: the spec's clean prompts)."""

    @model_validator(mode="after")
    def _check(self) -> "ComponentOutputDirection":
        _parse_site("direction.component", self.component, DIRECTION_SITES)
        _check_texts("direction.texts", self.texts)
        return self


class UnembeddingDirection(BaseModel):
    """``v`` = the residual direction the final norm and unembedding read as answer − foil."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["unembedding"] = "unembedding"


Direction = Annotated[
    Union[MeanDifferenceDirection, ComponentOutputDirection, UnembeddingDirection],
    Field(discriminator="kind"),
]


class SteeringSpec(ExperimentSpec):
    """Add ``α·v`` at a site for each α; score the clean prompts (and optionally generate)."""

    kind: Literal["steering"] = "steering"
    direction: Direction
    """How ``v`` is built (``mean_difference``, ``component_output`` or ``unembedding``)."""
    site: str
    """Where ``α·v`` is added: ``resid_pre.L``, ``attn.L``, ``mlp.L``, ``resid_post.L`` or ``embed``."""
    positions: tuple[int, ...] | None = None
    """Positions to steer (negative: from each prompt's end); default every position,
    including padding and generated tokens."""
    alphas: tuple[float, ...] = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)
    """Multiples of ``v`` to add: the dose-response axis."""
    normalise: bool = False
    """Scale ``v`` to unit norm first (α is then the norm of what is added)."""
    control: bool = True
    """Also steer with a random direction of the same norm (the control)."""
    control_seed: int = 0
    """Seed of the random control direction."""
    generate: int = 0
    """Greedy new tokens per steered prompt (0: no generation)."""
    generate_prompts: int = 4
    """Generate for the first this-many clean prompts."""

    @model_validator(mode="after")
    def _check(self) -> "SteeringSpec":
        _parse_site("site", self.site, STEER_SITES)
        if not self.alphas:
            raise SpecError("alphas", "is empty; give at least one multiple of the direction")
        for i, alpha in enumerate(self.alphas):
            if not math.isfinite(alpha):
                raise SpecError(f"alphas[{i}]", f"must be a finite number, got {alpha}")
        if len(set(self.alphas)) != len(self.alphas):
            raise SpecError("alphas", "lists the same value twice")
        if not 0 <= self.generate <= MAX_GENERATE:
            raise SpecError("generate", f"must be between 0 and {MAX_GENERATE}, got {self.generate}")
        if self.generate_prompts < 1:
            raise SpecError("generate_prompts", f"must be at least 1, got {self.generate_prompts}")
        direction = self.direction
        if (isinstance(direction, MeanDifferenceDirection) and not direction.positive
                and not self.prompts.has_corrupted):
            raise SpecError("prompts.corrupted", "a mean-difference direction without its own "
                            "prompt sets contrasts the clean and the corrupted prompts; give "
                            "corrupted prompts, or direction.positive and direction.negative")
        return self


class SteeredGeneration(BaseModel):
    """One greedy continuation under steering."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    direction: Literal["steering", "control"]
    alpha: float
    prompt: int
    """Index of the clean prompt."""
    text: str
    """The generated tokens only (up to and including an EOS token), decoded."""


class SteeringResult(ExperimentResult):
    """Mean logit difference per α inline; per prompt and the vectors in tensors.

    Tensors: ``direction`` and (with the control) ``control_direction`` ``[d_model]`` — the
    vectors added per unit α; ``logit_diff`` and ``control_logit_diff`` ``[alpha, prompt]``;
    ``baseline_logit_diff`` ``[prompt]`` (no intervention); with generation,
    ``generated_ids`` ``[direction, alpha, prompt, token]`` (direction 0 = steering,
    1 = control; -1 after a row's EOS).
    """

    spec: SteeringSpec
    alphas: tuple[float, ...]
    direction_norm: float
    """L2 norm of the vector added per unit α (1 when normalised, unless ``v`` was zero)."""
    raw_direction_norm: float
    """L2 norm of ``v`` before any normalisation."""
    baseline_logit_diff: float
    """Mean logit difference of the unsteered clean run."""
    logit_diff: tuple[float, ...]
    """Mean logit difference for each α along ``v``."""
    control_logit_diff: tuple[float, ...] = ()
    """Mean logit difference for each α along the random control (empty without it)."""
    generations: tuple[SteeredGeneration, ...] = ()


@torch.no_grad()
def run_steering(model: "LoadedModel", spec: SteeringSpec, *, batch_size: int = 64) -> SteeringResult:
    """Build the direction, steer at every α (and the control), score, generate; pure (no I/O).

    ``batch_size`` is rows per forward pass (variants × prompts); it never changes a number
    beyond float rounding.

    Raises:
        SpecError: before any forward pass, for a site or layer the model does not have, a
            position past a prompt, an answer or foil that is not one token, or a generation
            longer than the model's context.
    """
    adapter = model.adapter
    prompts = tokenize_prompts(model, spec.prompts)
    site = check_component_name("site", spec.site, n_layers=adapter.n_layers, n_heads=adapter.n_heads)
    lengths = prompts.lengths.tolist()
    positions = None if spec.positions is None else check_positions("positions", spec.positions, lengths)
    build_direction = _plan_direction(model, spec, prompts)
    n_generate = min(spec.generate_prompts, prompts.size) if spec.generate else 0
    if n_generate:
        _check_context(model, spec.generate, max(lengths[:n_generate]))

    v = build_direction()
    raw_norm = float(v.norm())
    if spec.normalise and raw_norm > 0:
        v = v / raw_norm
    vectors = [v]
    if spec.control:
        vectors.append(random_direction(v.shape[0], float(v.norm()), spec.control_seed))
    dtype, device = model.dtype, model.device
    stacked = torch.stack([alpha * u for u in vectors for alpha in spec.alphas]).to(device, dtype)

    baseline, steered = [], []
    for start, stop in chunks(prompts.size, batch_size):
        chunk = prompts.rows(start, stop)
        b, s = _score_chunk(model, chunk, site, positions, stacked, batch_size)
        baseline.append(b)
        steered.append(s)
    baseline_ld = torch.cat(baseline)
    per_variant = torch.cat(steered, dim=1).reshape(len(vectors), len(spec.alphas), prompts.size)

    tensors = {"direction": vectors[0].float().cpu(), "logit_diff": per_variant[0],
               "baseline_logit_diff": baseline_ld}
    if spec.control:
        tensors["control_direction"] = vectors[1].float().cpu()
        tensors["control_logit_diff"] = per_variant[1]
    generations: list[SteeredGeneration] = []
    if n_generate:
        head = prompts.rows(0, n_generate)
        ids = generate_steered(model, head.clean, head.lengths, site, positions, stacked,
                               spec.generate, batch_size)
        ids = ids.reshape(len(vectors), len(spec.alphas), n_generate, spec.generate)
        tensors["generated_ids"] = ids
        for d, name in enumerate(("steering", "control")[: len(vectors)]):
            for a, alpha in enumerate(spec.alphas):
                for p in range(n_generate):
                    tokens = [int(t) for t in ids[d, a, p] if t >= 0]
                    generations.append(SteeredGeneration(
                        direction=name, alpha=alpha, prompt=p, text=model.tokenizer.decode(tokens)))
    return SteeringResult(
        spec=spec, provenance=provenance_for(model, spec.seed), alphas=spec.alphas,
        direction_norm=float(vectors[0].norm()), raw_direction_norm=raw_norm,
        baseline_logit_diff=float(baseline_ld.mean()),
        logit_diff=tuple(float(x) for x in per_variant[0].mean(-1)),
        control_logit_diff=tuple(float(x) for x in per_variant[1].mean(-1)) if spec.control else (),
        generations=tuple(generations), tensors=tensors,
    )


def random_direction(d_model: int, norm: float, seed: int) -> torch.Tensor:
    """A Gaussian random ``[d_model]`` float32 vector of L2 norm ``norm`` (the same for a seed)."""
    generator = torch.Generator().manual_seed(seed)
    r = torch.randn(d_model, generator=generator)
    return r * (norm / float(r.norm()))


# -- the direction (validated before, computed after, any forward pass) ------------------------


def _plan_direction(model: "LoadedModel", spec: SteeringSpec, prompts: PromptBatch):
    """Check the direction against the model; return a function that computes it ``[d_model]``."""
    adapter = model.adapter
    direction = spec.direction
    if isinstance(direction, UnembeddingDirection):
        return lambda: unembedding_direction(model, prompts.answer, prompts.foil)
    if isinstance(direction, MeanDifferenceDirection):
        field, name = "direction.site", direction.site
    else:
        field, name = "direction.component", direction.component
    component = check_component_name(field, name, n_layers=adapter.n_layers, n_heads=adapter.n_heads)
    if isinstance(direction, MeanDifferenceDirection):
        if direction.positive:
            sets = {"direction.positive": direction.positive, "direction.negative": direction.negative}
        else:
            sets = {"prompts.clean": [item.clean for item in prompts.texts],
                    "prompts.corrupted": [item.corrupted for item in prompts.texts]}
    else:
        texts = direction.texts or [item.clean for item in prompts.texts]
        sets = {"direction.texts" if direction.texts else "prompts.clean": texts}
    encoded = []
    for set_field, texts in sets.items():
        ids, lengths = tokenize_texts(model, texts, set_field)
        try:
            check_positions("direction.position", [direction.position], lengths.tolist())
        except SpecError as error:
            raise SpecError("direction.position", f"{error.message} (in {set_field})") from None
        encoded.append((ids, lengths))
    if len(encoded) == 1:
        return lambda: mean_activation(model, *encoded[0], component, direction.position)
    return lambda: (mean_activation(model, *encoded[0], component, direction.position)
                    - mean_activation(model, *encoded[1], component, direction.position))


@torch.no_grad()
def mean_activation(
    model: "LoadedModel", ids: torch.Tensor, lengths: torch.Tensor, component: Component,
    position: int, batch_size: int = 64,
) -> torch.Tensor:
    """Mean over prompts of ``component``'s ``d_model`` value at ``position``: ``[d_model]`` float32.

    A head contributes its write to the residual stream (``z_h @ W_O[h]``, linearised through
    a post-attention norm on the same run); other components their value.
    """
    adapter, lm = model.adapter, model.lm
    total = torch.zeros(adapter.d_model, dtype=torch.float64)
    for start, stop in chunks(ids.shape[0], batch_size):
        batch_lengths = lengths[start:stop]
        index = batch_lengths + position if position < 0 else torch.full_like(batch_lengths, position)
        out = None  # the o_proj output, needed to linearise a post-attention norm
        with model.trace(ids[start:stop, : int(batch_lengths.max())]):
            if component.kind == "head":
                z = gather_rows(adapter.z(lm, component.layer), index).save()
                if adapter.has_post_norms:
                    out = gather_rows(adapter.o_proj_out(lm, component.layer), index).save()
            else:
                value = gather_rows(read_site(model, site_key(component)), index).save()
        if component.kind == "head":
            value = adapter.head_writes(lm, component.layer, z, out)[:, component.head]
        total += value.double().sum(0).cpu()
    return (total / ids.shape[0]).float()


def unembedding_direction(model: "LoadedModel", answer: torch.Tensor, foil: torch.Tensor) -> torch.Tensor:
    """``mean_i w ⊙ (W_U[answer_i] − W_U[foil_i])``, centred for a LayerNorm: ``[d_model]`` float32."""
    adapter = model.adapter
    unembed = model.hf_model.get_submodule(adapter.paths.unembed)
    W_U = unembed.weight.float()
    u = W_U[answer.to(W_U.device)] - W_U[foil.to(W_U.device)]  # [prompt, d_model]
    _, weight, _, centre = final_norm_linear(model, torch.zeros(1, adapter.d_model, device=W_U.device))
    v = weight.to(u.device) * u
    if centre:
        v = v - v.mean(-1, keepdim=True)
    return v.mean(0).cpu()


# -- steered forward passes ----------------------------------------------------------------------


def _score_chunk(
    model: "LoadedModel", prompts: PromptBatch, site: Component, positions: list[int] | None,
    vectors: torch.Tensor, batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unsteered logit diffs ``[batch]`` and steered ones ``[n_vectors, batch]``."""
    readout = prompts.readout_ids
    start_layer = 0 if site.kind == "embed" else site.layer
    keys = [("resid_post", start_layer - 1)] if start_layer > 0 else []
    cache, final = cache_run(model, prompts.clean, prompts.last, keys)
    baseline = _logit_diff(unembed_rows(model, final, readout))
    skip_value = cache[keys[0]] if keys else None
    mask = position_mask(prompts.lengths, prompts.clean.shape[1], positions).to(vectors)
    batch = prompts.size
    per_pass = max(1, batch_size // batch)
    steered = []
    for start, stop in chunks(vectors.shape[0], per_pass):
        k = stop - start
        delta = mask.repeat(k, 1, 1) * vectors[start:stop].repeat_interleave(batch, 0).unsqueeze(1)
        final = _steered_final(model, prompts.clean.repeat(k, 1), prompts.last.repeat(k), site,
                               delta, start_layer, None if skip_value is None else skip_value.repeat(k, 1, 1))
        steered.append(_logit_diff(unembed_rows(model, final, readout.repeat(k, 1))).reshape(k, batch))
    return baseline.cpu(), torch.cat(steered).cpu()


def _steered_final(
    model: "LoadedModel", ids: torch.Tensor, last: torch.Tensor, site: Component,
    delta: torch.Tensor, start_layer: int = 0, skip_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """One forward pass with ``delta`` ``[rows, pos, d_model]`` added at ``site``; the final
    hidden state at ``last`` ``[rows, d_model]``. With ``skip_value`` (the unsteered
    ``resid_post.{start_layer-1}``), blocks before ``start_layer`` are not run."""
    adapter, lm = model.adapter, model.lm
    key = site_key(site)
    with model.trace(ids):
        if skip_value is not None:
            for layer in range(start_layer):
                adapter.block(lm, layer).skip(skip_value)
        write_site(model, key, read_site(model, key) + delta)
        final = read_final_hidden(model, last)
    return final


def position_mask(lengths: torch.Tensor, width: int, positions: Sequence[int] | None) -> torch.Tensor:
    """``[batch, width, 1]`` float: 1 at the steered positions of each row (all when None)."""
    batch = lengths.shape[0]
    if positions is None:
        return torch.ones(batch, width, 1)
    mask = torch.zeros(batch, width, 1)
    rows = torch.arange(batch)
    for p in positions:
        mask[rows, lengths + p if p < 0 else torch.full_like(lengths, p)] = 1.0
    return mask


@torch.no_grad()
def generate_steered(
    model: "LoadedModel", ids: torch.Tensor, lengths: torch.Tensor, site: Component,
    positions: Sequence[int] | None, vectors: torch.Tensor, n_new: int, batch_size: int = 64,
) -> torch.Tensor:
    """Greedy continuations of every prompt under every vector: ``[n_vectors * batch, n_new]``
    token ids (row ``v * batch + i``: vector ``v``, prompt ``i``), -1 after a row's EOS.

    ``ids`` ``[batch, pos]`` right-padded to ``lengths``; ``positions`` refer to the prompt
    (None: every position, generated ones included).
    """
    batch = ids.shape[0]
    rows = vectors.shape[0] * batch
    all_ids = ids.repeat(vectors.shape[0], 1)
    all_lengths = lengths.repeat(vectors.shape[0])
    all_vectors = vectors.repeat_interleave(batch, 0)
    out = []
    for start, stop in chunks(rows, batch_size):
        out.append(_generate_rows(model, all_ids[start:stop], all_lengths[start:stop], site,
                                  positions, all_vectors[start:stop], n_new))
    return torch.cat(out)


def _generate_rows(
    model: "LoadedModel", ids: torch.Tensor, lengths: torch.Tensor, site: Component,
    positions: Sequence[int] | None, vectors: torch.Tensor, n_new: int,
) -> torch.Tensor:
    rows = ids.shape[0]
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    buffer = torch.full((rows, ids.shape[1] + n_new), pad, dtype=torch.long, device=ids.device)
    buffer[:, : ids.shape[1]] = ids
    current = lengths.clone()
    out = torch.full((rows, n_new), -1, dtype=torch.long)
    done = torch.zeros(rows, dtype=torch.bool)
    eos = _eos_ids(model)
    row_index = torch.arange(rows)
    for step in range(n_new):
        width = int(current.max())
        mask = position_mask(lengths, width, positions).to(vectors)
        delta = mask * vectors.unsqueeze(1)
        final = _steered_final(model, buffer[:, :width], current - 1, site, delta)
        token = unembed_rows(model, final).argmax(-1).cpu()
        live = ~done
        out[live, step] = token[live]
        device = buffer.device
        buffer[row_index[live].to(device), current[live].to(device)] = token[live].to(device)
        current[live] += 1
        done |= live & torch.isin(token, eos)
        if bool(done.all()):
            break
    return out


def _eos_ids(model: "LoadedModel") -> torch.Tensor:
    """The token ids that end a generation (the generation config's, else the tokenizer's)."""
    config = getattr(model.hf_model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        eos = model.tokenizer.eos_token_id
    values = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return torch.tensor(values, dtype=torch.long)


def _check_context(model: "LoadedModel", n_new: int, longest: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and longest + n_new > int(limit):
        raise SpecError("generate", f"{longest} prompt tokens + {n_new} new ones exceed the model's "
                        f"context of {limit} positions; generate fewer tokens")


def _logit_diff(logits: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` answer and foil logits -> ``[...]`` logit difference."""
    return logits[..., 0] - logits[..., 1]
