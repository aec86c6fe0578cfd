"""Direct logit attribution: each head's and MLP's direct write to the logit difference.

At each prompt's last token the final residual stream is a sum of writes::

    resid_post.{L-1} = embed + Σ_l (Σ_h head.l.h + attn_bias.l) + Σ_l mlp.l

(``embed`` is ``resid_pre.0``: token embedding, plus position embeddings where the model
adds them.) The final norm is made linear by freezing its scale on the clean run, at that
position: ``s = 1 / sqrt(var(x) + eps)`` for LayerNorm (GPT-2, NeoX),
``s = 1 / sqrt(mean(x²) + eps)`` for RMSNorm (Llama, Gemma), with ``x`` the clean final
residual. LayerNorm also subtracts the mean over ``d_model``; that is linear too, so each
write is centred before it is scaled (equivalently, the direction below is centred). So a
write ``c`` contributes::

    dla(c) = centre(c) · (s · w_norm ⊙ (W_U[answer] − W_U[foil]))

where ``w_norm`` is the norm's weight (``1 + weight`` for Gemma). The constant remainder
— the final norm's bias and the unembedding's bias, projected on the same direction — is
``final_bias``. The terms add up to the model's logit difference on the clean run before
any final-logit soft-cap (soft-capping is not linear; DLA attributes the uncapped value).
Heads of post-norm families (Gemma 2/3) are linearised through their post-attention norm
on the same run (`tools.adapters.heads`), which is also exact on that run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict

from tools.experiments.prompts import tokenize_prompts
from tools.experiments.provenance import provenance_for
from tools.experiments.readout import chunks, gather_rows, read_final_hidden
from tools.experiments.result import ExperimentResult
from tools.experiments.spec import ExperimentSpec

if TYPE_CHECKING:
    from tools.loading import LoadedModel

TOP_K = 10


class DirectLogitAttributionSpec(ExperimentSpec):
    """Attribute the clean logit difference to every head and MLP (and the embedding)."""

    kind: Literal["direct_logit_attribution"] = "direct_logit_attribution"


class ComponentScore(BaseModel):
    """One component's mean direct contribution to the logit difference."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    component: str
    """``head.L.H`` or ``mlp.L``."""
    dla: float


class DirectLogitAttributionResult(ExperimentResult):
    """Means inline; per prompt in tensors ``head`` ``[layer, head, prompt]``, ``mlp``,
    ``attn_bias`` ``[layer, prompt]``, ``embed``, ``final_bias``, ``logit_diff`` ``[prompt]``."""

    spec: DirectLogitAttributionSpec
    logit_diff: float
    """Mean logit difference of the clean run (before any soft-cap)."""
    embed: float
    """Mean contribution of ``resid_pre.0``."""
    bias: float
    """Mean contribution of every bias term (attention output biases, final norm and unembedding)."""
    max_abs_error: float
    """Largest |sum of all terms − logit difference| over prompts (float rounding only)."""
    top: tuple[ComponentScore, ...]
    """Heads and MLPs with the largest |mean contribution|, largest first."""


@torch.no_grad()
def run_direct_logit_attribution(
    model: "LoadedModel", spec: DirectLogitAttributionSpec, *, batch_size: int = 32
) -> DirectLogitAttributionResult:
    """Attribute the clean logit difference; pure (no I/O). ``batch_size`` prompts per pass."""
    prompts = tokenize_prompts(model, spec.prompts)
    adapter, lm = model.adapter, model.lm
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in
                                             ("head", "mlp", "attn_bias", "embed", "final_bias", "logit_diff")}
    for start, stop in chunks(prompts.size, batch_size):
        last = prompts.last[start:stop]
        width = int(last.max()) + 1
        z, o_proj_out, mlp = [], [], []
        with model.trace(prompts.clean[start:stop, :width]):
            embed = gather_rows(adapter.resid_pre(lm, 0), last).save()
            for layer in range(adapter.n_layers):
                z.append(gather_rows(adapter.z(lm, layer), last).save())
                if adapter.has_post_norms:
                    o_proj_out.append(gather_rows(adapter.o_proj_out(lm, layer), last).save())
                mlp.append(gather_rows(adapter.mlp_out(lm, layer), last).save())
            resid = gather_rows(adapter.resid_post(lm, adapter.n_layers - 1), last).save()
            normed = read_final_hidden(model, last)
        terms = _attribute(model, prompts.answer[start:stop], prompts.foil[start:stop], embed, z,
                           o_proj_out, mlp, resid, normed)
        for key, value in terms.items():
            parts[key].append(value)
    tensors = {k: torch.cat(v, dim=-1).cpu() for k, v in parts.items()}
    total = (tensors["head"].sum((0, 1)) + tensors["attn_bias"].sum(0) + tensors["mlp"].sum(0)
             + tensors["embed"] + tensors["final_bias"])
    head_mean, mlp_mean = tensors["head"].mean(-1), tensors["mlp"].mean(-1)
    scores = [ComponentScore(component=f"head.{l}.{h}", dla=float(head_mean[l, h]))
              for l in range(adapter.n_layers) for h in range(adapter.n_heads)]
    scores += [ComponentScore(component=f"mlp.{l}", dla=float(mlp_mean[l]))
               for l in range(adapter.n_layers)]
    return DirectLogitAttributionResult(
        spec=spec, provenance=provenance_for(model, spec.seed),
        logit_diff=float(tensors["logit_diff"].mean()), embed=float(tensors["embed"].mean()),
        bias=float((tensors["attn_bias"].sum(0) + tensors["final_bias"]).mean()),
        max_abs_error=float((total - tensors["logit_diff"]).abs().max()),
        top=tuple(sorted(scores, key=lambda s: -abs(s.dla))[:TOP_K]), tensors=tensors,
    )


def _attribute(
    model: "LoadedModel", answer: torch.Tensor, foil: torch.Tensor, embed: torch.Tensor,
    z: list[torch.Tensor], o_proj_out: list[torch.Tensor], mlp: list[torch.Tensor],
    resid: torch.Tensor, normed: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Every term for one batch of prompts (all ``[..., batch]``), in float32."""
    adapter, lm = model.adapter, model.lm
    unembed = model.hf_model.get_submodule(adapter.paths.unembed)
    W_U, b_U = unembed.weight.float(), getattr(unembed, "bias", None)
    answer, foil = answer.to(W_U.device), foil.to(W_U.device)
    u = W_U[answer] - W_U[foil]  # [batch, d_model]
    scale, weight, bias, centre = final_norm_linear(model, resid)
    direction = scale * weight * u
    if centre:
        direction = direction - direction.mean(-1, keepdim=True)
    constant = torch.zeros(u.shape[0], device=u.device)
    if bias is not None:
        constant = constant + u @ bias
    if b_U is not None:
        constant = constant + (b_U[answer] - b_U[foil]).float()

    def project(x: torch.Tensor) -> torch.Tensor:  # [batch, ..., d_model] -> [batch, ...]
        d = direction.reshape(direction.shape[0], *([1] * (x.dim() - 2)), -1)
        return (x.float() * d).sum(-1)

    heads, attn_bias, mlps = [], [], []
    for layer in range(adapter.n_layers):
        out = o_proj_out[layer] if adapter.has_post_norms else None
        heads.append(project(adapter.head_writes(lm, layer, z[layer], out)).T)  # [head, batch]
        b_O = adapter.b_O(lm, layer)
        if b_O is None:
            attn_bias.append(torch.zeros_like(constant))
        else:
            bias_write = b_O.float().expand_as(embed)
            if out is not None:
                bias_write = bias_write * adapter.post_attn_norm_scale(lm, layer, out)
            attn_bias.append(project(bias_write))
        mlps.append(project(mlp[layer]))
    logit_diff = project_logit_diff(model, normed, u, b_U, answer, foil)
    return {"head": torch.stack(heads), "attn_bias": torch.stack(attn_bias), "mlp": torch.stack(mlps),
            "embed": project(embed), "final_bias": constant, "logit_diff": logit_diff}


def project_logit_diff(
    model: "LoadedModel", normed: torch.Tensor, u: torch.Tensor, b_U: torch.Tensor | None,
    answer: torch.Tensor, foil: torch.Tensor,
) -> torch.Tensor:
    """The model's logit difference from final-normed rows, before any soft-cap."""
    value = (normed.float() * u).sum(-1)
    if b_U is not None:
        value = value + (b_U[answer] - b_U[foil]).float()
    return value


def final_norm_linear(
    model: "LoadedModel", resid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    """The final norm as an affine map frozen on ``resid`` ``[batch, d_model]``.

    Returns ``(scale [batch, 1], weight [d_model], bias [d_model] | None, centre)`` with
    ``norm(resid) == (centre(resid) if centre else resid) * scale * weight + bias``.
    """
    adapter = model.adapter
    norm = model.hf_model.get_submodule(adapter.paths.final_norm)
    x = resid.float()
    eps = adapter._norm_eps(norm)
    if isinstance(norm, torch.nn.LayerNorm):
        scale = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
        weight = norm.weight.float() if norm.weight is not None else torch.ones(x.shape[-1])
        bias = norm.bias.float() if norm.bias is not None else None
        return scale, weight, bias, True
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    weight = adapter.norm_weight_offset + norm.weight.float()
    bias = getattr(norm, "bias", None)
    return scale, weight, None if bias is None else bias.float(), False
