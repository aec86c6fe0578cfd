"""Path patching: the effect of sender components on receiver inputs, every other path frozen.

Activation patching asks whether a component matters; path patching asks *through which
route*. Following Wang et al. 2022 (the IOI paper), one variant — a set of *senders* —
runs in three steps:

1. **Cache** the base and the source runs.
2. **Record**: run the base prompts with every sender's output set to its source-run value
   and every other attention head (its ``z``) and, by default, every MLP frozen to its
   base-run value. The residual stream then differs from the base run *only* by the
   senders' direct writes, so what each receiver reads here is the base input plus the
   senders' contribution along the direct paths. Record the receivers' inputs.
3. **Patch**: run the base prompts again with only the receivers' inputs replaced by the
   recorded values; everything downstream of the receivers is recomputed freely.

The patched metric measures the paths sender → receiver and nothing else.

Senders and receivers
=====================
* A sender is ``head.L.H`` (its ``z`` slice), ``attn.L`` (the whole attention write),
  ``mlp.L`` or ``embed`` (the token embedding). Every sender must sit in an earlier block
  than every receiver (``embed`` counts as layer -1).
* A receiver is one head's **query, key or value input** — the residual stream as that
  head's ``q`` (``k``, ``v``) computation sees it, after the block's pre-attention
  LayerNorm/RMSNorm. It is implemented by patching that head's slice of the q/k/v
  projection's output (GPT-2's fused ``c_attn``, GPT-NeoX's fused, head-interleaved
  ``query_key_value``, or the separate ``q_proj`` / ``k_proj`` / ``v_proj`` of Llama and
  Gemma). Anything applied after the projection (Gemma 3's per-head ``q_norm`` /
  ``k_norm``, rotary embeddings) is recomputed from the patched slice, which is exact:
  those act on one head's slice at one position. Or the receiver is ``logits``: the
  residual stream at the unembedding (alias ``resid_final``), i.e. the senders' *direct*
  effect on the output. ``logits`` cannot be combined with head receivers: patching the
  final residual would override whatever the head receivers changed.
* **Grouped-query attention** (Llama with fewer key/value heads, Gemma 3): a key or value
  input belongs to a key/value head *shared* by several query heads. Patching ``head.L.H``
  ``k`` patches that shared key head, so it changes the attention of every query head of
  its group; the result says which (`PathReceiverInfo.query_heads`). Patching one query
  head's private copy would need surgery inside the attention kernel, and would describe
  a computation the model does not perform.

Frozen MLPs
===========
With ``freeze_mlps=True`` (default) step 2 freezes MLPs as well as heads, so a path is
strictly direct through the residual stream (sender → receiver, nothing in between).
With ``freeze_mlps=False`` MLPs are recomputed in step 2, as in Wang et al., who count
MLPs as part of the residual pathway: sender → MLPs → receiver paths are then included.

Modes and normalisation (the convention of `tools.experiments.activation_patching`)
=====================================================================================
``noising`` (default, as in Wang et al.): base = clean, source = corrupted — does removing
the information along these paths break the behaviour? ``denoising``: base = corrupted,
source = clean — do these paths alone restore it? The metric is the logit difference
answer − foil at each prompt's last token, averaged over prompts, and in both modes::

    effect = (mean patched logit diff − mean corrupted) / (mean clean − mean corrupted)

so **0 = the corrupted run, 1 = the clean run**. Patching nothing gives the base run:
effect 1 in noising (an important path pulls it towards 0; ``1 − effect`` is the fraction
of the logit difference carried by the paths), 0 in denoising (an important path pulls it
towards 1). When clean and corrupted score the same the scale is undefined:
``normalisable`` is False and effects are NaN.

Sweeps and sets
===============
``senders`` are swept one at a time (default: every head before the receivers, giving a
layer × head matrix); each of ``sender_sets`` is patched together (an empty set is allowed:
a control that must give the base run). Variants run batched, ``k`` per forward pass
stacked along the batch; step 2 skips the blocks before a pass's earliest sender (their
output is the base run's) and stops after the last receiver; step 3 skips the blocks
before the first receiver. For the ``logits`` receiver step 3 is step 2's final residual
itself, so it is not run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from tools.components import Component, parse_component
from tools.errors import SpecError, UserInputError
from tools.experiments.patching import SiteKey, cache_run
from tools.experiments.prompts import PromptBatch, tokenize_prompts
from tools.experiments.provenance import provenance_for
from tools.experiments.readout import chunks, read_final_hidden, unembed_rows
from tools.experiments.result import ExperimentResult
from tools.experiments.spec import ExperimentSpec, check_component_name, check_positions

if TYPE_CHECKING:
    from tools.adapters.base import ArchitectureAdapter
    from tools.loading import LoadedModel

QKV = ("q", "k", "v")
SENDER_KINDS = ("embed", "head", "attn", "mlp")
LOGITS = "logits"
_LOGITS_ALIASES = ("logits", "resid_final")
_RECEIVER_TEXT = re.compile(r"^(head\.\d+\.\d+)\.([a-z]+)$")
NORMALISE_EPS = 1e-6
TOP_K = 10


# -- the spec ------------------------------------------------------------------------------


class PathReceiver(BaseModel):
    """Where the senders' paths end: a head's ``q``/``k``/``v`` input, or ``logits``.

    Also written as text: ``"head.3.1.q"`` or ``"logits"``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    component: str
    """``head.L.H``, or ``logits`` (the residual stream at the unembedding; ``resid_final``
    is accepted and stored as ``logits``)."""
    input: str | None = None
    """``q``, ``k`` or ``v`` for a head; None for ``logits``."""

    @property
    def is_logits(self) -> bool:
        return self.component == LOGITS

    def __str__(self) -> str:
        return self.component if self.input is None else f"{self.component}.{self.input}"


class PathPatchingSpec(ExperimentSpec):
    """Patch the paths from senders to receivers only (Wang et al. 2022's path patching)."""

    kind: Literal["path_patching"] = "path_patching"
    receivers: tuple[PathReceiver, ...]
    """Receivers, patched together in step 3: heads' ``q``/``k``/``v`` inputs, or ``logits``."""
    senders: tuple[str, ...] | None = None
    """Senders swept one at a time (``head.L.H``, ``attn.L``, ``mlp.L``, ``embed``).
    None: every head in the blocks before the earliest receiver (a layer × head matrix);
    ``()``: no sweep (only ``sender_sets``)."""
    sender_sets: tuple[tuple[str, ...], ...] = ()
    """Extra variants, each a set of senders patched together (``()`` is a no-path control)."""
    mode: Literal["noising", "denoising"] = "noising"
    """``noising``: base = clean, senders from corrupted (Wang et al.); ``denoising``: the reverse."""
    freeze_mlps: bool = True
    """Freeze MLPs too in step 2 (direct paths only); False recomputes them (Wang et al.)."""
    positions: tuple[int, ...] | None = None
    """Positions at which receivers' inputs are patched (default: every position); negative
    ones count from each prompt's end. The ``logits`` receiver is read at the last token only,
    so it changes only where that position is listed."""

    @field_validator("receivers", mode="before")
    @classmethod
    def _receivers_from_text(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            return value
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                item = _parse_receiver_text(f"receivers[{i}]", item)
            elif isinstance(item, dict) and item.get("component") in _LOGITS_ALIASES:
                item = dict(item, component=LOGITS)
            elif isinstance(item, PathReceiver) and item.component in _LOGITS_ALIASES:
                item = item.model_copy(update={"component": LOGITS})
            out.append(item)
        return out

    @model_validator(mode="after")
    def _check(self) -> "PathPatchingSpec":
        if not self.prompts.has_corrupted:
            raise SpecError("prompts.corrupted", "path patching needs one corrupted prompt per "
                            "clean prompt (or a task, which generates them)")
        receiver_layer = _check_receivers(self.receivers)
        if self.senders == () and not self.sender_sets:
            raise SpecError("senders", "nothing to patch: list senders to sweep, leave senders "
                            "out for every head, or give sender_sets")
        if self.senders is not None:
            _check_senders("senders", self.senders, receiver_layer)
        for i, senders in enumerate(self.sender_sets):
            _check_senders(f"sender_sets[{i}]", senders, receiver_layer)
        if self.positions is not None and not self.positions:
            raise SpecError("positions", "is empty; list at least one position or leave it out "
                            "for all")
        return self


def _parse_receiver_text(field: str, text: str) -> dict:
    name = text.strip()
    if name in _LOGITS_ALIASES:
        return {"component": LOGITS}
    match = _RECEIVER_TEXT.match(name)
    if match is None:
        raise SpecError(field, f"cannot read receiver {text!r}; write a head's input like "
                        "'head.3.1.q' (q, k or v) or 'logits'")
    return {"component": match.group(1), "input": match.group(2)}


def _check_receivers(receivers: tuple[PathReceiver, ...]) -> int:
    """Structural checks; returns the earliest receiver layer (``inf`` for logits only)."""
    if not receivers:
        raise SpecError("receivers", "is empty; give at least one receiver (a head's q, k or v "
                        "input, e.g. {'component': 'head.3.1', 'input': 'q'}, or 'logits')")
    seen: set[str] = set()
    earliest = math.inf
    for i, receiver in enumerate(receivers):
        if receiver.is_logits:
            if receiver.input is not None:
                raise SpecError(f"receivers[{i}].input", "the logits receiver takes no input "
                                "letter; leave input out")
        else:
            try:
                component = parse_component(receiver.component)
            except UserInputError as error:
                raise SpecError(f"receivers[{i}].component", str(error)) from None
            if component.kind != "head":
                raise SpecError(f"receivers[{i}].component", f"{receiver.component!r} cannot "
                                "receive: a receiver is a head (head.L.H, with input q, k or v) "
                                "or 'logits'")
            if receiver.input not in QKV:
                raise SpecError(f"receivers[{i}].input", f"a head receiver's input must be 'q', "
                                f"'k' or 'v', got {receiver.input!r}")
            earliest = min(earliest, component.layer)
        if str(receiver) in seen:
            raise SpecError(f"receivers[{i}]", f"lists {receiver} twice")
        seen.add(str(receiver))
    if any(r.is_logits for r in receivers) and len(receivers) > 1:
        raise SpecError("receivers", "'logits' cannot be combined with head receivers: patching "
                        "the final residual stream overrides whatever the heads changed; run them "
                        "as separate experiments")
    return earliest


def _check_senders(field: str, senders: tuple[str, ...], receiver_layer: float) -> None:
    for j, name in enumerate(senders):
        try:
            component = parse_component(name)
        except UserInputError as error:
            raise SpecError(f"{field}[{j}]", str(error)) from None
        if component.kind not in SENDER_KINDS:
            raise SpecError(f"{field}[{j}]", f"{name!r} cannot send: a sender is head.L.H, "
                            "attn.L, mlp.L or embed")
        if _layer(component) >= receiver_layer:
            raise SpecError(f"{field}[{j}]", f"sender {name} is not before every receiver (the "
                            f"earliest receiver is in layer {int(receiver_layer)}); a path runs "
                            "from an earlier block to a later one")
    if len(set(senders)) != len(senders):
        raise SpecError(field, "lists a sender twice")


def _layer(component: Component) -> int:
    return -1 if component.kind == "embed" else int(component.layer)


# -- the result ----------------------------------------------------------------------------


class PathReceiverInfo(BaseModel):
    """One receiver as resolved on the model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    receiver: str
    """``head.L.H.q`` / ``.k`` / ``.v`` or ``logits``."""
    layer: int
    """Block of the receiver (``n_layers`` for logits)."""
    query_heads: tuple[int, ...] = ()
    """Query heads whose attention the patch changes: the head itself, or for a key/value
    input under grouped-query attention every query head sharing that key/value head."""
    kv_head: int | None = None
    """The (possibly shared) key/value head patched, for ``k`` and ``v`` inputs."""


class PathSetEffect(BaseModel):
    """The effect of one variant: a sender (sweep) or a set of senders patched together."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    senders: tuple[str, ...]
    effect: float | None
    """Normalised effect (0 = corrupted, 1 = clean; None when not normalisable)."""
    logit_diff: float
    """Mean patched logit difference."""


class PathPatchingResult(ExperimentResult):
    """Normalised path-patching effects, headline numbers inline, per-prompt values in tensors.

    Tensors: ``clean_logit_diff`` and ``corrupted_logit_diff`` ``[prompt]``;
    ``effect.senders`` ``[sender]`` and ``logit_diff.senders`` ``[sender, prompt]`` (order of
    `senders`); ``effect.heads`` ``[layer, head]`` — the swept head senders laid out by
    layer and head, NaN for heads not swept (present when a head was swept);
    ``effect.sets`` ``[set]`` and ``logit_diff.sets`` ``[set, prompt]`` (order of
    ``spec.sender_sets``).
    """

    spec: PathPatchingSpec
    clean_logit_diff: float
    """Mean logit difference of the unpatched clean run."""
    corrupted_logit_diff: float
    """Mean logit difference of the unpatched corrupted run."""
    normalisable: bool
    """False when clean and corrupted score the same, so effects are undefined (NaN)."""
    base_effect: float
    """The effect of patching no path (the base run): 1.0 for noising, 0.0 for denoising."""
    receivers: tuple[PathReceiverInfo, ...]
    senders: tuple[str, ...]
    """The senders swept one at a time, in tensor order."""
    sender_sets: tuple[PathSetEffect, ...] = ()
    top: tuple[PathSetEffect, ...] = ()
    """Swept senders whose effect is furthest from `base_effect`, furthest first."""


# -- planning: every model-dependent check, before any forward pass -------------------------


@dataclass(frozen=True)
class QKVLayout:
    """Where one of q/k/v sits in a block's projection output: head ``i``'s slice is
    ``[offset + i * stride, offset + i * stride + d_head)`` of module ``path``'s output."""

    path: str
    """The projection module, relative to the block (``attn.c_attn``, ``self_attn.q_proj``)."""
    offset: int
    stride: int
    shared: bool
    """True when the index is a key/value head shared by a group of query heads."""


def qkv_layout(adapter: "ArchitectureAdapter", letter: str) -> QKVLayout | None:
    """The q/k/v projection layout of ``adapter``'s family, or None when it is not known.

    * GPT-2: ``attn.c_attn`` output ``[q | k | v]``, each ``n_heads × d_head``.
    * GPT-NeoX: ``attention.query_key_value`` output viewed as ``[n_heads, 3 × d_head]``,
      so head ``h`` holds ``[q_h | k_h | v_h]`` side by side.
    * Llama / Qwen / Gemma: ``self_attn.{q,k,v}_proj``; k and v have ``n_kv_heads`` heads.
    """
    from tools.adapters import GemmaAdapter, GPT2Adapter, GPTNeoXAdapter, LlamaAdapter

    index = QKV.index(letter)
    d_head = adapter.d_head
    if isinstance(adapter, GPT2Adapter):
        return QKVLayout("attn.c_attn", index * adapter.n_heads * d_head, d_head, False)
    if isinstance(adapter, GPTNeoXAdapter):
        return QKVLayout("attention.query_key_value", index * d_head, 3 * d_head, False)
    if isinstance(adapter, (LlamaAdapter, GemmaAdapter)):
        shared = letter != "q" and adapter.n_kv_heads != adapter.n_heads
        return QKVLayout(f"self_attn.{letter}_proj", 0, d_head, shared)
    return None


@dataclass
class _Plan:
    variants: list[tuple[Component, ...]]
    """Each variant's senders."""
    sweep: list[int]
    """Variant index of each swept sender."""
    sweep_names: list[str]
    sets: list[int]
    """Variant index of each sender set."""
    receivers: list[PathReceiverInfo]
    logits: bool
    first_receiver_layer: int
    last_receiver_layer: int
    """``n_layers`` for the logits receiver."""
    sites: dict[tuple[int, str], list[tuple[int, int]]]
    """(layer, projection path) -> feature ranges ``(start, stop)`` patched there, in the
    order the forward pass runs the projections (q, k, v)."""
    positions: list[int] | None
    """Checked receiver positions (None: every position)."""


def _plan(model: "LoadedModel", spec: PathPatchingSpec, prompts: PromptBatch) -> _Plan:
    adapter = model.adapter
    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    infos: list[PathReceiverInfo] = []
    sites: dict[tuple[int, str], list[tuple[int, int]]] = {}
    rank: dict[tuple[int, str], int] = {}  # q_proj runs before k_proj before v_proj
    logits = spec.receivers[0].is_logits
    for i, receiver in enumerate(spec.receivers):
        if receiver.is_logits:
            infos.append(PathReceiverInfo(receiver=LOGITS, layer=n_layers))
            continue
        component = check_component_name(f"receivers[{i}].component", receiver.component,
                                         n_layers=n_layers, n_heads=n_heads)
        layout = qkv_layout(adapter, receiver.input)
        if layout is None:
            raise SpecError(f"receivers[{i}].input", f"q/k/v receivers are not implemented for "
                            f"the {adapter.family} family; use the 'logits' receiver")
        try:
            adapter.block(model.lm, component.layer).get(layout.path)
        except (AttributeError, IndexError):
            raise SpecError(f"receivers[{i}].input", f"this {adapter.family} model has no "
                            f"{layout.path} module to patch") from None
        index, kv_head, query_heads = component.head, None, (component.head,)
        if receiver.input != "q":
            group = n_heads // adapter.n_kv_heads
            kv_head = index = component.head // group
            query_heads = tuple(range(kv_head * group, (kv_head + 1) * group))
        start = layout.offset + index * layout.stride
        site = (component.layer, layout.path)
        sites.setdefault(site, []).append((start, start + adapter.d_head))
        rank[site] = min(rank.get(site, 3), QKV.index(receiver.input))
        infos.append(PathReceiverInfo(receiver=str(receiver), layer=component.layer,
                                      query_heads=query_heads, kv_head=kv_head))
    sites = {site: sites[site] for site in sorted(sites, key=lambda site: (site[0], rank[site]))}
    layers = [info.layer for info in infos]
    first, last = min(layers), max(layers)

    def senders_of(where: str, names: tuple[str, ...]) -> tuple[Component, ...]:
        return tuple(check_component_name(f"{where}[{j}]", name, n_layers=n_layers, n_heads=n_heads)
                     for j, name in enumerate(names))

    if spec.senders is None:
        swept = tuple(Component("head", layer, head) for layer in range(first) for head in range(n_heads))
        if not swept and not spec.sender_sets:
            raise SpecError("senders", f"no head precedes a receiver in layer {first}; list "
                            "senders (embed) or move the receiver later")
    else:
        swept = senders_of("senders", spec.senders)
    sets = [senders_of(f"sender_sets[{i}]", names) for i, names in enumerate(spec.sender_sets)]
    positions = None
    if spec.positions is not None:
        positions = check_positions("positions", spec.positions, prompts.lengths.tolist())
    variants = [(c,) for c in swept] + sets
    return _Plan(
        variants=variants, sweep=list(range(len(swept))), sweep_names=[str(c) for c in swept],
        sets=list(range(len(swept), len(variants))), receivers=infos, logits=logits,
        first_receiver_layer=first, last_receiver_layer=last, sites=sites, positions=positions,
    )


# -- running -------------------------------------------------------------------------------


@torch.no_grad()
def run_path_patching(
    model: "LoadedModel", spec: PathPatchingSpec, *, batch_size: int = 128
) -> PathPatchingResult:
    """Run the spec's sender sweep and sender sets; pure (no I/O).

    ``batch_size`` is rows per forward pass (variants × prompts); it changes speed and
    memory, never the numbers.

    Raises:
        SpecError: before any forward pass, for components or positions the model does not
            have, receivers of a family without a known q/k/v layout, or clean/corrupted
            pairs of different token lengths.
    """
    prompts = tokenize_prompts(model, spec.prompts, need_corrupted=True, aligned=True)
    plan = _plan(model, spec, prompts)
    clean_ld, corrupted_ld, patched = [], [], []
    per_chunk = max(1, min(prompts.size, batch_size))
    for start in range(0, prompts.size, per_chunk):
        chunk = prompts.rows(start, min(prompts.size, start + per_chunk))
        c, x, p = _run_chunk(model, spec, plan, chunk, batch_size)
        clean_ld.append(c)
        corrupted_ld.append(x)
        patched.append(p)
    return _assemble(model, spec, plan, torch.cat(clean_ld), torch.cat(corrupted_ld),
                     torch.cat(patched, dim=1))


def _first_layer(variant: tuple[Component, ...], plan: _Plan) -> int:
    """The earliest block a variant's step 2 changes (the first receiver's when it has no sender)."""
    return min((_layer(c) for c in variant), default=plan.first_receiver_layer)


def _run_chunk(
    model: "LoadedModel", spec: PathPatchingSpec, plan: _Plan, prompts: PromptBatch, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean and corrupted logit diffs ``[batch]`` and patched ones ``[n_variants, batch]``."""
    adapter = model.adapter
    readout = prompts.readout_ids
    base_ids, source_ids = (prompts.clean, prompts.corrupted) if spec.mode == "noising" else (
        prompts.corrupted, prompts.clean)
    last = prompts.last
    frozen_layers = range(plan.last_receiver_layer)
    base_keys: set[SiteKey] = {("resid_post", layer) for layer in range(adapter.n_layers)}
    base_keys |= {("z", layer) for layer in frozen_layers}
    if spec.freeze_mlps:
        base_keys |= {("mlp", layer) for layer in frozen_layers}
    source_keys: set[SiteKey] = {_sender_key(c) for variant in plan.variants for c in variant}
    base, base_final = cache_run(model, base_ids, last, base_keys)
    source, source_final = cache_run(model, source_ids, last, source_keys)
    base_ld = _logit_diff(unembed_rows(model, base_final, readout))
    source_ld = _logit_diff(unembed_rows(model, source_final, readout))

    batch = prompts.size
    order = sorted(range(len(plan.variants)), key=lambda i: _first_layer(plan.variants[i], plan))
    per_pass = max(1, batch_size // batch)
    out: list[torch.Tensor | None] = [None] * len(plan.variants)
    for start, stop in chunks(len(order), per_pass):
        indices = order[start:stop]
        group = [plan.variants[i] for i in indices]
        recorded, final = _record(model, spec, plan, base_ids, last, base, source, group)
        if plan.logits:
            final = _keep_base_where_unpatched(plan, prompts, final, base_final, len(group))
        else:
            final = _patch_receivers(model, plan, base_ids, prompts, base, recorded, len(group))
        logits = unembed_rows(model, final, readout.repeat(len(group), 1))
        ld = _logit_diff(logits)
        for j, i in enumerate(indices):
            out[i] = ld[j * batch:(j + 1) * batch]
    patched = torch.stack(out) if out else torch.empty(0, batch)  # type: ignore[arg-type]
    clean, corrupted = (base_ld, source_ld) if spec.mode == "noising" else (source_ld, base_ld)
    return clean, corrupted, patched


def _sender_key(component: Component) -> SiteKey:
    if component.kind == "embed":
        return ("embed", -1)
    return ("z" if component.kind == "head" else component.kind, int(component.layer))


def _sender_masks(
    model: "LoadedModel", group: list[tuple[Component, ...]]
) -> dict[SiteKey, torch.Tensor]:
    """``[k, 1, 1, features]`` boolean masks: True where variant ``j`` takes the source value
    (features: ``n_heads * d_head`` for ``z``, 1 otherwise)."""
    adapter = model.adapter
    k = len(group)
    masks: dict[SiteKey, torch.Tensor] = {}
    for j, variant in enumerate(group):
        for component in variant:
            key = _sender_key(component)
            if key not in masks:
                features = adapter.n_heads * adapter.d_head if key[0] == "z" else 1
                masks[key] = torch.zeros(k, 1, 1, features, dtype=torch.bool)
            if component.kind == "head":
                d = adapter.d_head
                masks[key][j, ..., component.head * d:(component.head + 1) * d] = True
            else:
                masks[key][j] = True
    return {key: mask.to(model.device) for key, mask in masks.items()}


def _mix(mask: torch.Tensor, source: torch.Tensor, current: torch.Tensor, k: int) -> torch.Tensor:
    """``[k*batch, ...]``: ``current`` (``[k*batch, ...]``, or ``[batch, ...]`` shared by every
    variant) with variant ``j``'s rows taken from ``source`` ``[batch, ...]`` where
    ``mask[j]`` (``[k, 1, 1, F]``, broadcast over positions) is True."""
    batch = source.shape[0]
    current = current.reshape(-1, batch, *current.shape[1:])
    mixed = torch.where(mask, source.unsqueeze(0), current)
    return mixed.reshape(k * batch, *mixed.shape[2:])


def _record(
    model: "LoadedModel", spec: PathPatchingSpec, plan: _Plan, base_ids: torch.Tensor,
    last: torch.Tensor, base: dict[SiteKey, torch.Tensor], source: dict[SiteKey, torch.Tensor],
    group: list[tuple[Component, ...]],
) -> tuple[dict[tuple[int, str], Any], Any]:
    """Step 2 for ``k`` variants at once: senders from the source run, every other head (and
    MLP, when frozen) from the base run. Returns the receivers' projection outputs
    ``[k*batch, pos, width]`` per site, and for the logits receiver the final hidden state at
    the last tokens ``[k*batch, d_model]`` (else None)."""
    adapter, lm = model.adapter, model.lm
    k = len(group)
    masks = _sender_masks(model, group)
    start = min(_first_layer(variant, plan) for variant in group)
    end = plan.last_receiver_layer
    # plain values only inside the trace: a remote backend ships what the body refers to,
    # and pydantic specs do not pickle by value
    sites, freeze_mlps, to_logits = list(plan.sites), spec.freeze_mlps, plan.logits
    recorded: dict[tuple[int, str], Any] = {}
    final = None
    with model.trace(base_ids.repeat(k, 1)) as tracer:
        if start > 0:
            skip_value = base[("resid_post", start - 1)].repeat(k, 1, 1)
            for layer in range(start):
                adapter.block(lm, layer).skip(skip_value)
        if ("embed", -1) in masks:
            adapter.set_embed(lm, _mix(masks[("embed", -1)], source[("embed", -1)],
                                       adapter.embed(lm), k))
        for layer in range(max(start, 0), min(end, adapter.n_layers - 1) + 1):
            for (site_layer, path) in sites:
                if site_layer == layer:
                    recorded[(layer, path)] = adapter.block(lm, layer).get(path).output.save()
            if layer == end:
                break
            if ("z", layer) in masks:
                z = _mix(masks[("z", layer)], source[("z", layer)], base[("z", layer)], k)
            else:
                z = base[("z", layer)].repeat(k, 1, 1)
            adapter.set_z(lm, layer, z)
            if ("attn", layer) in masks:
                adapter.set_attn_out(lm, layer, _mix(masks[("attn", layer)], source[("attn", layer)],
                                                     adapter.attn_out(lm, layer), k))
            mlp_mask = masks.get(("mlp", layer))
            if freeze_mlps:
                current = base[("mlp", layer)]
            elif mlp_mask is not None:
                current = adapter.mlp_out(lm, layer)
            else:
                continue
            if mlp_mask is None:
                adapter.set_mlp_out(lm, layer, current.repeat(k, 1, 1))
            else:
                adapter.set_mlp_out(lm, layer, _mix(mlp_mask, source[("mlp", layer)], current, k))
        if to_logits:
            final = read_final_hidden(model, last.repeat(k))
        else:
            tracer.stop()
    return recorded, final


def _position_mask(plan: _Plan, prompts: PromptBatch, width: int) -> torch.Tensor:
    """``[batch, pos]``: True at the positions whose receiver inputs are patched."""
    lengths = prompts.lengths
    if plan.positions is None:
        return torch.ones(prompts.size, width, dtype=torch.bool)
    mask = torch.zeros(prompts.size, width, dtype=torch.bool)
    rows = torch.arange(prompts.size)
    for position in plan.positions:
        at = lengths + position if position < 0 else torch.full_like(lengths, position)
        mask[rows, at] = True
    return mask


def _keep_base_where_unpatched(
    plan: _Plan, prompts: PromptBatch, final: torch.Tensor, base_final: torch.Tensor, k: int
) -> torch.Tensor:
    """Logits receiver: the recorded final hidden state where the last token is a patched
    position, the base run's elsewhere."""
    if plan.positions is None:
        return final
    at_last = _position_mask(plan, prompts, prompts.clean.shape[1])[
        torch.arange(prompts.size), prompts.last].to(final.device)
    mask = at_last.repeat(k).unsqueeze(-1)
    return torch.where(mask, final, base_final.repeat(k, 1))


def _patch_receivers(
    model: "LoadedModel", plan: _Plan, base_ids: torch.Tensor, prompts: PromptBatch,
    base: dict[SiteKey, torch.Tensor], recorded: dict[tuple[int, str], Any], k: int,
) -> Any:
    """Step 3 for ``k`` variants: the base run with only the receivers' slices (at the chosen
    positions) taken from step 2. Returns the final hidden state ``[k*batch, d_model]``."""
    adapter, lm = model.adapter, model.lm
    batch, width = base_ids.shape
    positions = _position_mask(plan, prompts, width)
    masks = {}
    for site, ranges in plan.sites.items():
        features = torch.zeros(recorded[site].shape[-1], dtype=torch.bool)
        for lo, hi in ranges:
            features[lo:hi] = True
        masks[site] = (positions[:, :, None] & features).unsqueeze(0).to(model.device)
    start, sites, last = plan.first_receiver_layer, list(plan.sites), (prompts.lengths - 1).repeat(k)
    with model.trace(base_ids.repeat(k, 1)):
        if start > 0:
            skip_value = base[("resid_post", start - 1)].repeat(k, 1, 1)
            for layer in range(start):
                adapter.block(lm, layer).skip(skip_value)
        for layer, path in sites:
            envoy = adapter.block(lm, layer).get(path)
            current = envoy.output
            value = recorded[(layer, path)]
            mixed = torch.where(masks[(layer, path)], value.reshape(k, batch, *value.shape[1:]),
                                current.reshape(k, batch, *current.shape[1:]))
            envoy.output = mixed.reshape(current.shape)
        final = read_final_hidden(model, last)
    return final


def _logit_diff(logits: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` answer and foil logits -> ``[...]`` logit difference."""
    return logits[..., 0] - logits[..., 1]


# -- assembling the result -----------------------------------------------------------------


def _assemble(
    model: "LoadedModel", spec: PathPatchingSpec, plan: _Plan,
    clean: torch.Tensor, corrupted: torch.Tensor, per_variant: torch.Tensor,
) -> PathPatchingResult:
    adapter = model.adapter
    clean_mean, corrupted_mean = float(clean.mean()), float(corrupted.mean())
    denominator = clean_mean - corrupted_mean
    normalisable = abs(denominator) > NORMALISE_EPS
    means = per_variant.mean(dim=1)
    effects = (means - corrupted_mean) / denominator if normalisable else torch.full_like(means, math.nan)
    base_effect = 1.0 if spec.mode == "noising" else 0.0
    tensors = {"clean_logit_diff": clean, "corrupted_logit_diff": corrupted}
    swept: list[PathSetEffect] = []
    if plan.sweep:
        index = torch.tensor(plan.sweep, dtype=torch.long)
        tensors["effect.senders"] = effects[index]
        tensors["logit_diff.senders"] = per_variant[index]
        heads = torch.full((adapter.n_layers, adapter.n_heads), math.nan)
        for cell, name in zip(plan.sweep, plan.sweep_names):
            component = parse_component(name)
            if component.kind == "head":
                heads[component.layer, component.head] = effects[cell]
            swept.append(PathSetEffect(senders=(name,), logit_diff=float(means[cell]),
                                       effect=float(effects[cell]) if normalisable else None))
        if any(parse_component(name).kind == "head" for name in plan.sweep_names):
            tensors["effect.heads"] = heads
    set_effects = []
    if plan.sets:
        index = torch.tensor(plan.sets, dtype=torch.long)
        tensors["effect.sets"] = effects[index]
        tensors["logit_diff.sets"] = per_variant[index]
        for senders, cell in zip(spec.sender_sets, plan.sets):
            set_effects.append(PathSetEffect(
                senders=senders, logit_diff=float(means[cell]),
                effect=float(effects[cell]) if normalisable else None))
    top = sorted((e for e in swept if e.effect is not None),
                 key=lambda e: -abs(e.effect - base_effect))[:TOP_K]
    return PathPatchingResult(
        spec=spec, provenance=provenance_for(model, spec.seed),
        clean_logit_diff=clean_mean, corrupted_logit_diff=corrupted_mean,
        normalisable=normalisable, base_effect=base_effect, receivers=tuple(plan.receivers),
        senders=tuple(plan.sweep_names), sender_sets=tuple(set_effects), top=tuple(top),
        tensors={k: v.detach().cpu() for k, v in tensors.items()},
    )
