"""Normalisation layers as plain functions of [n, d] tensors: the RMSNorm / LayerNorm formulas, any norm
module or ``models.NormInfo`` as a callable, and embedding rows standardised once for many blocks.

Norms (``as_norm``): wherever a norm is accepted it may be None (identity), any callable on a [n, d]
tensor (an nn.Module such as the block's own ``input_layernorm``: Gemma's RMSNorm with its (1 + w) scale
is then exact; it runs under no_grad in the module's dtype), or an object with ``.module`` (a
``models.NormInfo``: its module is used). ``rms_norm`` / ``layer_norm`` are the explicit formulas
x / rms(x) * w and (x - mean) / std * w + b. For the QK probe the *block's attention-input norm* is
applied to the embedding rows (pre-norm models: the block's attn norm; a post-norm block reads the
un-normalised stream, so pass the norm that produced its input, or None).

A norm is standardisation followed by an affine map: ``standardised_rows`` does the first once for a
whole embedding matrix (RMSNorm: e * rsqrt(mean(e^2) + eps); LayerNorm: (e - mean) * rsqrt(var + eps)),
``affine`` is the second (times the effective weight, plus the bias), so that every block's input norm
of W_E is ``affine(scale, bias)(standardised_rows(W_E, kind, eps))``.

``layernorm_distance_table``: the paper's table of distances between the embedding rows (centred and / or
scaled) and their LayerNorm images (Traveling Words, word_embeddings.py:91-130).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

Tensor = torch.Tensor


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6,
             weight_offset: float = 0.0) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * (weight + weight_offset) over the last axis (Llama: offset 0;
    Gemma: offset 1). weight None: no scaling."""
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * (weight.to(y) + weight_offset)
    return y


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (biased variance, as nn.LayerNorm)."""
    xc = x - x.mean(-1, keepdim=True)
    y = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(y)
    if bias is not None:
        y = y + bias.to(y)
    return y


def _identity(x: Tensor) -> Tensor:
    return x


def as_norm(norm) -> Callable[[Tensor], Tensor]:
    """A norm function on [n, d] tensors from None (identity), a callable (an nn.Module runs under no_grad
    in its parameters' dtype and device; the result comes back in the input's dtype and device), or an
    object with a ``.module`` attribute (``models.NormInfo``)."""
    if norm is None:
        return _identity
    if not callable(norm) and hasattr(norm, "module"):
        return as_norm(norm.module)
    if isinstance(norm, torch.nn.Module):
        p = next(norm.parameters(), None)

        def run(x: Tensor, _m=norm, _p=p) -> Tensor:
            with torch.no_grad():
                y = _m(x if _p is None else x.to(dtype=_p.dtype, device=_p.device))
            return y.to(dtype=x.dtype, device=x.device)
        return run
    if callable(norm):
        return norm
    raise TypeError(f"cannot use {type(norm).__name__} as a norm: pass None, a callable or a NormInfo")


def standardised_rows(E: Tensor, kind: str, eps: float, chunk: int) -> Tensor:
    """The rows of E [n, d] standardised as a norm of `kind` does before its affine part, in float32,
    `chunk` rows at a time: "rms": e * rsqrt(mean(e^2) + eps); "layer": the same after subtracting the
    row mean."""
    out = torch.empty(E.shape, dtype=torch.float32, device=E.device)
    for i in range(0, E.shape[0], chunk):
        e = E[i:i + chunk].to(torch.float32)
        if kind == "layer":
            e = e - e.mean(-1, keepdim=True)
        out[i:i + chunk] = e * torch.rsqrt(e.pow(2).mean(-1, keepdim=True) + eps)
    return out


def affine(scale: Tensor | None, bias: Tensor | None) -> Callable[[Tensor], Tensor] | None:
    """R -> R * scale + bias (either may be None; both None: None), in the dtype and device of R."""
    if scale is None and bias is None:
        return None
    s = None if scale is None else scale.detach().to(torch.float32)
    b = None if bias is None else bias.detach().to(torch.float32)

    def f(R: Tensor) -> Tensor:
        out = R if s is None else R * s.to(R.device, R.dtype)
        return out if b is None else out + b.to(R.device, R.dtype)
    return f


LAYERNORM_SETTINGS = ("original", "centered", "scaled", "centered_scaled")


def layernorm_distance_table(E, eps: float = 1e-5, chunk: int = 16384) -> dict[str, np.ndarray]:
    """How far the embedding rows are from their LayerNorm images, after Traveling Words
    (word_embeddings.py:91-130, ``normalize_word_embeddings``): with n = layer_norm(e) (no weight, no bias,
    eps 1e-5 as torch's default, line 110), the rows e compared four ways, "original" e, "centered"
    e - c (c = the mean embedding row, the mean over tokens, line 104), "scaled" e * s and
    "centered_scaled" (e - c) * s, s = sqrt(d) / mean_t ||e_t|| (lines 98-99): per row the L2 distance
    ||x - n|| and the cosine distance 1 - cos(x, n) (cos with each norm floored at 1e-8, as
    torch.nn.functional.cosine_similarity), their mean and standard deviation over rows (the latter with
    Bessel's correction, torch.std's default; lines 12-21). Float64 (the paper: float32).
    Columns: setting, mean_l2_distance, l2_std_dev, mean_cosine_distance, cosine_std_dev, avg_norm,
    scale_factor."""
    E = E.detach() if isinstance(E, torch.Tensor) else torch.as_tensor(np.asarray(E))
    V, d = E.shape
    norms = torch.cat([torch.linalg.vector_norm(E[i:i + chunk].to(torch.float64), dim=1)
                       for i in range(0, V, chunk)])
    avg_norm = float(norms.mean())
    s = math.sqrt(d) / avg_norm
    center = sum(E[i:i + chunk].to(torch.float64).sum(0) for i in range(0, V, chunk)) / V
    l2 = torch.empty(len(LAYERNORM_SETTINGS), V, dtype=torch.float64)
    cos = torch.empty_like(l2)
    for i in range(0, V, chunk):
        e = E[i:i + chunk].to(torch.float64)
        n = layer_norm(e, eps=eps)
        n_len = torch.linalg.vector_norm(n, dim=1).clamp_min(1e-8)
        for k, x in enumerate((e, e - center, e * s, (e - center) * s)):
            l2[k, i:i + chunk] = torch.linalg.vector_norm(x - n, dim=1)
            x_len = torch.linalg.vector_norm(x, dim=1).clamp_min(1e-8)
            cos[k, i:i + chunk] = 1.0 - (x * n).sum(1) / (x_len * n_len)
    return {"setting": np.asarray(LAYERNORM_SETTINGS, dtype=object),
            "mean_l2_distance": l2.mean(1).numpy(), "l2_std_dev": l2.std(1).numpy(),
            "mean_cosine_distance": cos.mean(1).numpy(), "cosine_std_dev": cos.std(1).numpy(),
            "avg_norm": np.full(len(LAYERNORM_SETTINGS), avg_norm),
            "scale_factor": np.full(len(LAYERNORM_SETTINGS), s)}
