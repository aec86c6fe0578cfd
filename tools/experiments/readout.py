"""Reading the metric: the final residual at each prompt's last token, and its logits.

Every experiment here scores the model at one position per prompt (the last real token),
so the unembedding is needed for ``batch`` rows, not ``batch × pos``: inside a trace,
`read_final_hidden` takes the unembedding's input at the last positions and *skips* the
unembedding (nnsight ``skip``), and `unembed_rows` applies it afterwards to those rows
only — to the whole vocabulary, or just to the answer and foil ids. For a model with a
large vocabulary (gemma-3-270m: 262k tokens) the unembedding is most of a forward pass,
so this matters; the numbers are the model's own (same weights, bias and soft-cap).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import torch

if TYPE_CHECKING:
    from tools.loading import LoadedModel


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[i, index[i]]`` for each row: ``[batch, pos, ...]`` -> ``[batch, ...]``."""
    rows = torch.arange(x.shape[0], device=x.device)
    return x[rows, index.to(x.device)]


def read_final_hidden(model: "LoadedModel", last: torch.Tensor) -> Any:
    """Inside a trace: the unembedding's input at each row's ``last`` position ``[batch, d_model]``.

    Skips the unembedding for this forward (the model's ``logits`` output is then a
    ``[batch, pos, 1]`` placeholder); call `unembed_rows` on the saved value.
    """
    unembed = model.adapter.unembed(model.lm)
    hidden = unembed.input
    final = gather_rows(hidden, last).save()
    unembed.skip(hidden[..., :1])
    return final


def unembed_rows(
    model: "LoadedModel", hidden: torch.Tensor, token_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits of final-normed rows ``[n, d_model]``: ``[n, d_vocab]``, or ``[n, k]`` for ``token_ids [n, k]``.

    Applies the unembedding's weight and bias and any final-logit soft-cap, as the model does.
    """
    module = model.hf_model.get_submodule(model.adapter.paths.unembed)
    weight, bias = module.weight, getattr(module, "bias", None)
    hidden = hidden.to(weight.dtype)
    if token_ids is None:
        logits = torch.nn.functional.linear(hidden, weight, bias)
    else:
        token_ids = token_ids.to(weight.device)
        logits = torch.einsum("nd,nkd->nk", hidden, weight[token_ids])
        if bias is not None:
            logits = logits + bias[token_ids]
    cap = model.adapter.final_logit_softcap
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive slices of ``range(n)`` at most ``size`` long."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield start, min(n, start + size)
