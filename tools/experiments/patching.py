"""One generic patching routine: run many patched variants of a base run, batched.

A *variant* is a set of `Patch`es — components whose value (at some or all positions) is
taken from a *source* run instead of the *base* run. Every named patching experiment
(residual by layer × position, attention / MLP outputs, heads at all or one position,
a chosen component set; denoising or noising) is a list of variants handed to
`run_patched_variants`; `tools.experiments.activation_patching` builds those lists.

How the work is saved
=====================
* **Batched**: ``k`` variants run in one forward pass, stacked along the batch dimension
  (``k × n_prompts`` rows, at most ``batch_size``). Each patch is a ``torch.where`` of a
  precomputed boolean mask over those rows, so one trace patches every variant at once.
* **No recomputation before the patch**: a variant whose earliest patched site is in
  block ``L`` runs exactly like the base run through blocks ``0 .. L-1``. Those blocks
  are not run: each is *skipped* (nnsight ``Envoy.skip``) with the base run's cached
  ``resid_post.(S-1)`` as its output, where ``S`` is the smallest first layer among the
  variants of that forward pass. Variants are sorted by first layer before being cut into
  forward passes, so ``S`` is (nearly) each variant's own first layer; only the token
  embedding and the model's mask / rotary set-up still run (negligible). Embedding patches
  have first layer -1 and skip nothing.
* **No attention recomputation for head patches**: when block ``S``'s only patched site
  before its MLP is ``z`` (head patches, e.g. a head sweep), block ``S``'s input is the
  base run's, so its attention computes the base run's ``z``. Given that ``z``
  (``base_attention``), the attention module is skipped: its output is the model's own
  output projection applied to the patched ``z`` (base ``z`` with the patched heads' slices
  from the source), computed before the trace.
* **Shared prefix**: where the base and source prompts have the same ids up to some
  position in every row (IOI pairs differ in one name), a causal model computes the same
  values there in both runs, so no patch changes them. From the first patched block on,
  each block's MLP runs on the later positions only, and the base run's residual fills
  the prefix of the block's output (the attention still sees every position).
* **Last block at the last position only**: the metric reads each row's last position,
  and in the last block nothing but the attention mixes positions. Its MLP is fed only
  the last position (``[rows, 1, d_model]``); the block's residual add broadcasts that
  one output over the positions, which leaves the last position exact and the others
  meaningless — nothing reads them. (Not done when the last block's ``mlp`` or
  ``resid_post`` is patched.)
* **No full unembedding**: the metric reads two logits at one position per prompt, so the
  unembedding is skipped and applied afterwards to the last-position rows and the
  answer / foil ids only (`tools.experiments.readout`).

Blocks *after* the patch must run (the patch can change them); nothing else is reused.
Numbers equal an unbatched, unskipped run to float rounding (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from tools.components import Component
from tools.experiments.memo import budget, fingerprint, model_key, nbytes, shared_covering
from tools.experiments.readout import chunks, gather_rows, read_final_hidden, unembed_rows

if TYPE_CHECKING:
    from tools.loading import LoadedModel

SiteKey = tuple[str, int]
"""``(site, layer)``: ``("embed", -1)``, ``("resid_pre", L)``, ``("z", L)`` (every head of
block ``L``), ``("attn", L)``, ``("mlp", L)``, ``("resid_post", L)``."""

_ORDER = {"embed": 0, "resid_pre": 1, "z": 2, "attn": 3, "mlp": 4, "resid_post": 5}


@dataclass(frozen=True)
class Patch:
    """Take ``component``'s value from the source run, at ``positions`` (None: every position)."""

    component: Component
    positions: tuple[int, ...] | None = None
    """Token positions; ``p >= 0`` counts from the start, ``p < 0`` from each prompt's end."""


Variant = tuple[Patch, ...]


def site_key(component: Component) -> SiteKey:
    """The site a component is read from and written to (a head lives in its block's ``z``)."""
    if component.kind == "embed":
        return ("embed", -1)
    if component.kind == "head":
        return ("z", component.layer)
    return (component.kind, component.layer)


def all_sites(n_layers: int) -> set[SiteKey]:
    """Every site of a model of ``n_layers`` blocks."""
    return {("embed", -1)} | {(site, layer) for layer in range(n_layers) for site in _ORDER if site != "embed"}


def forward_order(key: SiteKey) -> tuple[int, int]:
    """Sort key putting sites in the order a forward pass meets them."""
    return key[1], _ORDER[key[0]]


def first_layer(variant: Variant) -> int:
    """The earliest block a variant changes (-1 for the embedding)."""
    return min(site_key(patch.component)[1] for patch in variant)


def read_site(model: "LoadedModel", key: SiteKey) -> Any:
    """Inside a trace: the value at ``key`` (``z`` for heads: ``[batch, pos, n_heads*d_head]``)."""
    adapter, lm = model.adapter, model.lm
    site, layer = key
    if site == "embed":
        return adapter.embed(lm)
    getter = {"resid_pre": adapter.resid_pre, "z": adapter.z, "attn": adapter.attn_out,
              "mlp": adapter.mlp_out, "resid_post": adapter.resid_post}[site]
    return getter(lm, layer)


def write_site(model: "LoadedModel", key: SiteKey, value: torch.Tensor) -> None:
    """Inside a trace: replace the value at ``key`` for the rest of this forward."""
    adapter, lm = model.adapter, model.lm
    site, layer = key
    if site == "embed":
        adapter.set_embed(lm, value)
        return
    setter = {"resid_pre": adapter.set_resid_pre, "z": adapter.set_z, "attn": adapter.set_attn_out,
              "mlp": adapter.set_mlp_out, "resid_post": adapter.set_resid_post}[site]
    setter(lm, layer, value)


@torch.no_grad()
def cache_run(
    model: "LoadedModel", ids: torch.Tensor, last: torch.Tensor, keys: Iterable[SiteKey]
) -> tuple[dict[SiteKey, torch.Tensor], torch.Tensor]:
    """One unpatched forward: the values at ``keys`` (full ``[batch, pos, ...]``) and the
    final hidden state at ``last`` (``[batch, d_model]``, for `unembed_rows`).

    Under `tools.experiments.memo.sharing_runs` a run of the same ids and positions that
    holds every one of ``keys`` is read back instead of run again; a run of them that lacks
    some is replaced by one run saving every site of the model when that fits a quarter of the
    memo's budget, else the union of the held and the asked sites
    (`tools.experiments.memo.shared_covering`). Callers never write into what it returns."""
    wanted = set(keys)

    def widened(held: tuple[dict[SiteKey, torch.Tensor], torch.Tensor] | None):
        union = set(wanted)
        if held is not None:  # asked a second time: the union, or every site when that fits
            union |= held[0].keys()
            every = all_sites(model.adapter.n_layers)
            per_site = max((nbytes(v) for v in held[0].values()), default=0)
            if per_site * len(every) <= budget() // 4:
                union |= every
        return _cache_run(model, ids, last, tuple(sorted(union, key=forward_order)))

    key = ("cache_run", model_key(model), fingerprint(ids), fingerprint(last))
    cache, final = shared_covering(key, lambda held: wanted <= held[0].keys(), widened)
    return {k: cache[k] for k in sorted(wanted, key=forward_order)}, final


def _cache_run(
    model: "LoadedModel", ids: torch.Tensor, last: torch.Tensor, ordered: Sequence[SiteKey]
) -> tuple[dict[SiteKey, torch.Tensor], torch.Tensor]:
    cache: dict[SiteKey, torch.Tensor] = {}
    with model.trace(ids):
        for key in ordered:
            cache[key] = read_site(model, key).save()
        final = read_final_hidden(model, last)
    return cache, final


def site_keys(variants: Iterable[Variant]) -> set[SiteKey]:
    """Every site some variant patches (what the source run must cache)."""
    return {site_key(patch.component) for variant in variants for patch in variant}


def shared_prefix_length(base_ids: torch.Tensor, source_ids: torch.Tensor) -> int:
    """How many leading positions hold the same ids in every row of two ``[batch, pos]`` runs."""
    differs = (base_ids != source_ids).any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else base_ids.shape[1]


@torch.no_grad()
def run_patched_variants(
    model: "LoadedModel",
    base_ids: torch.Tensor,
    lengths: torch.Tensor,
    source: dict[SiteKey, torch.Tensor],
    variants: Sequence[Variant],
    *,
    token_ids: torch.Tensor | None = None,
    base_resid_post: dict[int, torch.Tensor] | None = None,
    base_attention: dict[int, torch.Tensor] | None = None,
    shared_prefix: int = 0,
    batch_size: int = 128,
) -> torch.Tensor:
    """Logits at each prompt's last token for every variant: ``[n_variants, batch, k]``.

    Args:
        base_ids: ``[batch, pos]`` ids of the base run (right-padded).
        lengths: ``[batch]`` real length of each prompt (the metric is read at ``lengths-1``).
        source: the source run's value at every patched site (`cache_run`), same batch.
        variants: each a tuple of `Patch`es applied together.
        token_ids: ``[batch, k]`` token ids whose logits to return; None for the full
            vocabulary (``k = d_vocab``).
        base_resid_post: the base run's ``resid_post`` per layer (full ``[batch, pos,
            d_model]``); with it, blocks before each forward pass's first patched layer are
            skipped. Without it every block runs (same numbers, more work).
        base_attention: per layer, the base run's ``z`` (``("z", L)`` of `cache_run`,
            ``[batch, pos, n_heads*d_head]``); with it, a forward pass whose first patched block ``S`` has only
            ``z`` patched before its MLP (and is in this dict) does not rerun block ``S``'s
            attention. Without it the attention runs (same numbers, more work).
        shared_prefix: how many leading positions hold the same ids in the base and the
            source run in every row (`shared_prefix_length`). A causal model computes the
            same values there in both runs, so patching changes nothing there: with
            ``base_resid_post``, the MLPs of the blocks from the first patched one on run only
            on the later positions, and the base run's residual fills the prefix.
        batch_size: rows per forward pass (``variants per pass × batch``); at least one
            variant per pass.
    """
    if not variants:
        return torch.empty(0, base_ids.shape[0], 0 if token_ids is None else token_ids.shape[1])
    batch, width = base_ids.shape
    shared_prefix = max(0, min(shared_prefix, width - 1))
    order = sorted(range(len(variants)), key=lambda i: first_layer(variants[i]))
    per_pass = max(1, batch_size // batch)
    out: list[torch.Tensor | None] = [None] * len(variants)
    for start, stop in chunks(len(order), per_pass):
        indices = order[start:stop]
        group = [variants[i] for i in indices]
        logits = _run_group(model, base_ids, lengths, source, group, token_ids, base_resid_post,
                            base_attention, shared_prefix)
        for j, i in enumerate(indices):
            out[i] = logits[j * batch:(j + 1) * batch]
    return torch.stack(out)  # type: ignore[arg-type]


def _run_group(
    model: "LoadedModel",
    base_ids: torch.Tensor,
    lengths: torch.Tensor,
    source: dict[SiteKey, torch.Tensor],
    group: Sequence[Variant],
    token_ids: torch.Tensor | None,
    base_resid_post: dict[int, torch.Tensor] | None,
    base_attention: dict[int, torch.Tensor] | None,
    shared_prefix: int,
) -> torch.Tensor:
    """One forward pass patching ``len(group)`` variants stacked along the batch."""
    k = len(group)
    masks = _masks(model, group, lengths, base_ids.shape[1])
    sources = {key: source[key].repeat(k, *([1] * (source[key].dim() - 1))) for key in masks}
    ordered = sorted(masks, key=forward_order)
    start_layer = min(first_layer(v) for v in group)
    skip_value = None
    if base_resid_post is not None and start_layer > 0:
        skip_value = base_resid_post[start_layer - 1].repeat(k, 1, 1)
    attention_value = None
    if base_attention is not None and _only_z_before_mlp(masks, start_layer, base_attention):
        z_key = ("z", start_layer)
        attention_value = _patched_attention_output(
            model, start_layer, base_attention[start_layer], sources[z_key], masks[z_key], k)
        ordered.remove(z_key)
    adapter, lm = model.adapter, model.lm
    last_block = adapter.n_layers - 1
    # trace steps in forward order: (layer, order within the block, what, argument)
    steps: list[tuple[int, float, str, Any]] = [(*forward_order(key), "patch", key) for key in ordered]
    if not any(key in masks for key in (("mlp", last_block), ("resid_post", last_block))):
        steps.append((last_block, _ORDER["mlp"] - 0.5, "mlp_last", None))
    if shared_prefix > 0 and base_resid_post is not None:
        prefix_rows = {layer: base_resid_post[layer][:, :shared_prefix].repeat(k, 1, 1)
                       for layer in range(max(start_layer, 0), last_block)
                       if ("mlp", layer) not in masks and ("resid_post", layer) not in masks}
        for layer in prefix_rows:
            steps.append((layer, _ORDER["mlp"] - 0.5, "mlp_suffix", None))
            steps.append((layer, _ORDER["resid_post"] + 0.5, "prefix", prefix_rows[layer]))
    steps.sort(key=lambda step: step[:2])
    last = (lengths - 1).repeat(k)
    with model.trace(base_ids.repeat(k, 1)):
        if skip_value is not None:
            for layer in range(start_layer):
                adapter.block(lm, layer).skip(skip_value)
        if attention_value is not None:
            # every supported family unpacks ``output, weights = attention(...)``
            adapter.attn_module(lm, start_layer).skip((attention_value, None))
        for layer, _, what, argument in steps:
            if what == "patch":
                current = read_site(model, argument)
                write_site(model, argument, torch.where(masks[argument], sources[argument], current))
            elif what == "mlp_last":
                mlp = adapter.mlp_module(lm, layer)
                mlp.input = gather_rows(mlp.input, last)[:, None]
            elif what == "mlp_suffix":
                mlp = adapter.mlp_module(lm, layer)
                mlp.input = mlp.input[:, shared_prefix:].contiguous()
                mlp.output = torch.nn.functional.pad(mlp.output, (0, 0, shared_prefix, 0))
            else:  # "prefix": the base run's residual where the MLP did not run
                current = read_site(model, ("resid_post", layer))
                write_site(model, ("resid_post", layer),
                           torch.cat([argument, current[:, shared_prefix:]], dim=1))
        final = read_final_hidden(model, last)
    ids = None if token_ids is None else token_ids.repeat(k, 1)
    return unembed_rows(model, final, ids)


def _only_z_before_mlp(
    masks: dict[SiteKey, torch.Tensor], layer: int,
    base_attention: dict[int, torch.Tensor],
) -> bool:
    """Whether block ``layer``'s attention output follows from ``z`` alone: ``z`` is patched
    there, nothing before it in that block (or earlier) is, nor the attention output."""
    if layer < 0 or ("z", layer) not in masks or layer not in base_attention:
        return False
    return not any(key in masks for key in (("resid_pre", layer), ("attn", layer)))


def _patched_attention_output(
    model: "LoadedModel", layer: int, base_z: torch.Tensor,
    source_z: torch.Tensor, mask: torch.Tensor, k: int,
) -> torch.Tensor:
    """Block ``layer``'s attention output ``[k*batch, pos, d_model]`` with ``z`` patched.

    Valid while the block's input is the base run's: the attention then computes the base
    run's ``z`` (``[batch, pos, n_heads*d_head]``), and its output is the output projection
    (the model's own module, bias included) of ``where(mask, source_z, base_z)``;
    ``source_z`` and ``mask`` are already stacked ``k`` times.
    """
    adapter = model.adapter
    block = model.hf_model.get_submodule(adapter.paths.blocks)[layer]
    o_proj = block.get_submodule(adapter.paths.o_proj)
    return o_proj(torch.where(mask, source_z, base_z.repeat(k, 1, 1)))


def _masks(
    model: "LoadedModel", group: Sequence[Variant], lengths: torch.Tensor, width: int
) -> dict[SiteKey, torch.Tensor]:
    """Boolean masks ``[k*batch, pos, 1]`` (``[k*batch, pos, n_heads*d_head]`` for ``z``):
    True where a row takes the source value."""
    adapter = model.adapter
    batch = lengths.shape[0]
    rows_total = len(group) * batch
    device = model.device
    masks: dict[SiteKey, torch.Tensor] = {}
    for j, variant in enumerate(group):
        rows = torch.arange(j * batch, (j + 1) * batch)
        for patch in variant:
            key = site_key(patch.component)
            if key not in masks:
                features = adapter.n_heads * adapter.d_head if key[0] == "z" else 1
                masks[key] = torch.zeros(rows_total, width, features, dtype=torch.bool)
            if patch.component.kind == "head":
                h, d = patch.component.head, adapter.d_head
                features = slice(h * d, (h + 1) * d)
            else:
                features = slice(None)
            if patch.positions is None:
                masks[key][rows, :, features] = True
                continue
            for position in patch.positions:
                absolute = lengths + position if position < 0 else torch.full_like(lengths, position)
                masks[key][rows, absolute, features] = True
    return {key: mask.to(device) for key, mask in masks.items()}
