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
"""
from __future__ import annotations

from typing import Callable

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
