"""Neuron activations: the prompts and positions where each MLP neuron fires hardest.

A neuron of ``mlp.L`` is one coordinate of the MLP's hidden layer *after* its
nonlinearity — the vector the MLP's output projection reads:

=============  ===========================================  ===========================
family         neuron activations                           read as the input of
=============  ===========================================  ===========================
GPT-2          ``act(c_fc(x))`` (output of ``mlp.act``)     ``mlp.c_proj``
GPT-NeoX       ``act(dense_h_to_4h(x))``                    ``mlp.dense_4h_to_h``
Llama, Gemma   ``act(gate_proj(x)) * up_proj(x)``           ``mlp.down_proj``
=============  ===========================================  ===========================

so the MLP's output is ``W_out @ activations + b_out`` and a neuron's write to the residual
stream is its activation times its column of ``W_out``. (For gated MLPs this is the product
of the gate and up branches, the quantity that multiplies each output column.)

Over all real tokens of all prompts (padding never counts), each neuron's ``top_k`` largest
activations are kept with the prompt, position and token they occurred at, streamed batch by
batch, so memory does not grow with the number of prompts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from tools.errors import SpecError, UnsupportedArchitectureError
from tools.experiments.attention import clean_texts, tokenize_texts
from tools.experiments.provenance import provenance_for
from tools.experiments.readout import chunks
from tools.experiments.result import ExperimentResult
from tools.experiments.spec import ExperimentSpec, check_indices

if TYPE_CHECKING:
    from tools.loading import LoadedModel

MLP_OUT_PROJ: dict[str, str] = {
    "gpt2": "mlp.c_proj",
    "gpt_neox": "mlp.dense_4h_to_h",
    "llama": "mlp.down_proj",
    "gemma": "mlp.down_proj",
    "gemma2": "mlp.down_proj",
    "gemma3": "mlp.down_proj",
}
"""Family -> block-relative path of the MLP output projection, whose input is the neurons."""
MAX_INLINE = 64
"""At most this many neurons get their top examples written inline (all are in tensors)."""


class NeuronActivationSpec(ExperimentSpec):
    """Top-activating tokens of MLP neurons over the clean prompts.

    Only ``prompts.clean`` is read (answers and foils are not used).
    """

    kind: Literal["neuron_activations"] = "neuron_activations"
    layers: tuple[int, ...] | None = None
    """MLP layers to read (default: all), in the order of the result's ``layer`` axis."""
    neurons: tuple[int, ...] | None = None
    """Neuron indices (``0 .. d_mlp-1``) to rank in every chosen layer (default: all)."""
    top_k: int = 10
    """Examples kept per neuron (fewer when the prompts have fewer tokens in all)."""

    @model_validator(mode="after")
    def _check(self) -> "NeuronActivationSpec":
        if not 1 <= self.top_k <= 10_000:
            raise SpecError("top_k", f"must be between 1 and 10000, got {self.top_k}")
        return self


class NeuronExample(BaseModel):
    """One token where a neuron fired."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: int
    """Index of the prompt in the (resolved) clean prompt list."""
    position: int
    """Token position in that prompt (0 = first token)."""
    token: str
    """The token at that position, decoded."""
    activation: float


class NeuronTop(BaseModel):
    """A neuron's top examples, highest activation first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layer: int
    neuron: int
    examples: tuple[NeuronExample, ...]


class NeuronActivationResult(ExperimentResult):
    """Top examples per neuron; complete in tensors, the strongest neurons inline.

    Tensors (``k`` = `top_k`): ``top_activation`` ``[layer, neuron, k]`` (descending),
    ``top_prompt``, ``top_position`` and ``top_token`` (int64 ids) of each, same shape;
    ``mean_activation`` ``[layer, neuron]`` over every real token.
    """

    spec: NeuronActivationSpec
    layers: tuple[int, ...]
    """Layer of each index along ``layer``."""
    neurons: tuple[int, ...]
    """Neuron of each index along ``neuron``."""
    d_mlp: int
    top_k: int
    """Examples per neuron actually kept (``min(spec.top_k, tokens in all prompts)``)."""
    n_prompts: int
    n_tokens: int
    """Real tokens over all prompts."""
    top: tuple[NeuronTop, ...]
    """Every requested neuron when at most `MAX_INLINE`, else the `MAX_INLINE` with the
    highest top activation (highest first)."""


@torch.no_grad()
def run_neuron_activations(
    model: "LoadedModel", spec: NeuronActivationSpec, *, batch_size: int = 32
) -> NeuronActivationResult:
    """Rank each chosen neuron's activations over every real token; pure (no I/O).

    Raises:
        SpecError: before any forward pass, for a layer or neuron index the model does not have.
        UnsupportedArchitectureError: for a family whose MLP hidden layer is not mapped here.
    """
    adapter = model.adapter
    layers = check_indices("layers", spec.layers, adapter.n_layers, "layer")
    path = mlp_hidden_path(model)
    d_mlp = mlp_width(model, path)
    neurons = check_indices("neurons", spec.neurons, d_mlp, "neuron")
    ids, lengths = tokenize_texts(model, clean_texts(model, spec.prompts), "prompts.clean")
    n_tokens = int(lengths.sum())
    k = min(spec.top_k, n_tokens)
    index = torch.tensor(neurons, device=ids.device)
    best_value = torch.empty(len(layers), len(neurons), 0)
    best_where = torch.empty(len(layers), len(neurons), 0, 2, dtype=torch.long)  # (prompt, pos)
    total = torch.zeros(len(layers), len(neurons), dtype=torch.float64)
    for start, stop in chunks(ids.shape[0], batch_size):
        batch_lengths = lengths[start:stop]
        width = int(batch_lengths.max())
        acts = read_neurons(model, ids[start:stop, :width], layers, path)[..., index]
        acts = acts.float().cpu()  # [layer, batch, pos, neuron]
        real = torch.arange(width).unsqueeze(0) < batch_lengths.unsqueeze(1)  # [batch, pos]
        total += (acts * real[None, :, :, None]).sum((1, 2)).double()
        flat = acts.masked_fill(~real[None, :, :, None], -torch.inf).flatten(1, 2)  # [layer, b*p, n]
        value, where = flat.topk(min(k, flat.shape[1]), dim=1)  # [layer, k', neuron]
        value, where = value.transpose(1, 2), where.transpose(1, 2)  # [layer, neuron, k']
        found = torch.stack([start + where // width, where % width], dim=-1)
        best_value, best_where = _merge(best_value, best_where, value, found, k)
    prompt, position = best_where[..., 0], best_where[..., 1]
    token = ids.cpu()[prompt, position]
    tensors = {"top_activation": best_value, "top_prompt": prompt, "top_position": position,
               "top_token": token, "mean_activation": (total / n_tokens).float()}
    return NeuronActivationResult(
        spec=spec, provenance=provenance_for(model, spec.seed), layers=tuple(layers),
        neurons=tuple(neurons), d_mlp=d_mlp, top_k=k, n_prompts=int(ids.shape[0]),
        n_tokens=n_tokens, top=_inline(model, layers, neurons, tensors), tensors=tensors,
    )


def mlp_hidden_path(model: "LoadedModel") -> str:
    """Block-relative path of the module whose input is the MLP's post-nonlinearity hidden layer."""
    family = model.adapter.family
    path = MLP_OUT_PROJ.get(family)
    if path is None:
        raise UnsupportedArchitectureError(
            f"neuron activations are not mapped for the {family} family; add its MLP output "
            "projection to tools.experiments.neurons.MLP_OUT_PROJ")
    return path


def mlp_width(model: "LoadedModel", path: str) -> int:
    """``d_mlp``: the input width of the MLP output projection of block 0."""
    block = model.hf_model.get_submodule(model.adapter.paths.blocks)[0]
    module = block.get_submodule(path)
    width = getattr(module, "in_features", None) or getattr(module, "nx", None)
    return int(width if width is not None else model.adapter.d_mlp)


def read_neurons(model: "LoadedModel", ids: torch.Tensor, layers: list[int], path: str) -> torch.Tensor:
    """Neuron activations ``[layer, batch, pos, d_mlp]`` of ``layers`` (in that order), one pass."""
    adapter, lm = model.adapter, model.lm
    read: dict[int, Any] = {}
    with model.trace(ids):
        for layer in sorted(layers):  # nnsight needs forward order
            read[layer] = adapter.block(lm, layer).get(path).input.save()
    return torch.stack([read[layer] for layer in layers])


def _merge(
    value: torch.Tensor, where: torch.Tensor, new_value: torch.Tensor, new_where: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest of two ``[layer, neuron, *]`` candidate lists, with their locations."""
    value = torch.cat([value, new_value], dim=-1)
    where = torch.cat([where, new_where], dim=-2)
    keep = min(k, value.shape[-1])
    value, order = value.topk(keep, dim=-1)
    where = torch.gather(where, -2, order.unsqueeze(-1).expand(*order.shape, 2))
    return value, where


def _inline(
    model: "LoadedModel", layers: list[int], neurons: list[int], tensors: dict[str, torch.Tensor]
) -> tuple[NeuronTop, ...]:
    value = tensors["top_activation"]
    cells = [(i, j) for i in range(len(layers)) for j in range(len(neurons))]
    if len(cells) > MAX_INLINE:
        cells.sort(key=lambda c: -float(value[c[0], c[1], 0]))
        cells = cells[:MAX_INLINE]
    out = []
    for i, j in cells:
        examples = tuple(
            NeuronExample(prompt=int(tensors["top_prompt"][i, j, r]),
                          position=int(tensors["top_position"][i, j, r]),
                          token=model.tokenizer.decode([int(tensors["top_token"][i, j, r])]),
                          activation=float(value[i, j, r]))
            for r in range(value.shape[-1]))
        out.append(NeuronTop(layer=layers[i], neuron=neurons[j], examples=examples))
    return tuple(out)
