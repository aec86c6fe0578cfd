"""Per-head outputs, in pure torch: split ``z``, project each head, linearise a post-norm.

A head's output is its slice of the attention output projection's input (``z``, the
concatenated per-head attention results), projected by that head's rows of ``W_O``.
Summed over heads, plus the projection bias, this is exactly the projection's output.

Families with a norm *after* attention (Gemma 2 and 3: ``post_attention_layernorm``)
write ``RMSNorm(o_proj(z))`` to the residual stream, which is not linear in the heads.
We linearise it around the run being analysed: the normaliser is frozen at its value on
that run, so with ``x = o_proj(z)`` (all heads together) at each position,

    scale = (weight_offset + norm_weight) / sqrt(mean(x**2) + eps)        # [..., d_model]
    write_h = project_heads(z, W_O)[..., h, :] * scale

and ``sum_h write_h + b_O * scale`` equals the real attention write on that run (up to
float rounding). On another run (a patched one) the frozen scale is only an approximation
of the norm, which is what "linearised" means; recompute the scale from that run if you
need the exact write there.
"""

from __future__ import annotations

import torch


def split_heads(z: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[..., n_heads * d_head]`` -> ``[..., n_heads, d_head]`` (a view when possible)."""
    if z.shape[-1] % n_heads:
        raise ValueError(f"last dimension {z.shape[-1]} is not divisible by n_heads={n_heads}")
    return z.reshape(*z.shape[:-1], n_heads, z.shape[-1] // n_heads)


def merge_heads(z: torch.Tensor) -> torch.Tensor:
    """``[..., n_heads, d_head]`` -> ``[..., n_heads * d_head]``."""
    return z.reshape(*z.shape[:-2], z.shape[-2] * z.shape[-1])


def project_heads(z: torch.Tensor, W_O: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Each head's output projected into the residual basis.

    Args:
        z: ``[batch, pos, n_heads * d_head]``, the input of the attention output projection.
        W_O: ``[n_heads, d_head, d_model]`` (TransformerLens layout) or
            ``[n_heads * d_head, d_model]`` (input-major, as ``x @ W_O``).
        n_heads: number of query heads.

    Returns:
        ``[batch, pos, n_heads, d_model]``; summed over heads (dim -2) plus the bias it
        is the output projection's output.
    """
    if W_O.dim() == 2:
        W_O = W_O.reshape(n_heads, W_O.shape[0] // n_heads, W_O.shape[1])
    z_heads = split_heads(z, n_heads).to(W_O.dtype)
    return torch.einsum("...hk,hkd->...hd", z_heads, W_O)


def rms_norm_scale(
    x: torch.Tensor, weight: torch.Tensor, eps: float, weight_offset: float = 0.0
) -> torch.Tensor:
    """The factor an RMSNorm multiplies ``x`` by: ``RMSNorm(x) == x * rms_norm_scale(x, ...)``.

    Computed in float32 (as Gemma's norm is) and returned as ``[..., d_model]``.
    ``weight_offset`` is 1.0 for Gemma, whose norms scale by ``(1 + weight)``.
    """
    x32 = x.float()
    inv_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return inv_rms * (weight_offset + weight.float())


def linearise_through_norm(writes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-head writes ``[batch, pos, n_heads, d_model]`` times a frozen norm ``scale`` ``[batch, pos, d_model]``."""
    return (writes.float() * scale.unsqueeze(-2)).to(writes.dtype)
