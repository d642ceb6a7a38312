"""The one place a state becomes logits: the unembedding of a ModelDescription (W_U, b_U, soft-cap),
the chunked next-token NLL, and the logit lens (final norm, then the unembedding)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .arch import ModelDescription

DEFAULT_LOSS_CHUNK_ELEMS = 1 << 25       # 32M logits = 128 MB in float32 per chunk


def unembedding(desc: ModelDescription) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_U [d, vocab], b_U or None). Models without an unembedding (encoders) read out through the
    embedding matrix, W_E^T, as the logit lens of a tied model would."""
    if desc.W_U is not None:
        return desc.W_U, desc.b_U
    return desc.W_E.T, None


def logits(h: torch.Tensor, W_U: torch.Tensor, b_U: torch.Tensor | None = None,
           softcap: float | None = None) -> torch.Tensor:
    """Logits [..., vocab] of states h [..., d]: h W_U + b_U in W_U's dtype and device, then the
    soft-cap tanh(z / c) c when `softcap` is set (Gemma 2)."""
    W = W_U.T                                      # [V, d]: the lm_head weight itself, contiguous
    z = F.linear(h.to(W.device, W.dtype), W, b_U)
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    return z


def next_token_nll(h: torch.Tensor, targets: torch.Tensor, W_U: torch.Tensor, b_U: torch.Tensor | None = None,
                   softcap: float | None = None, chunk_elems: int = DEFAULT_LOSS_CHUNK_ELEMS) -> torch.Tensor:
    """Cross-entropy of targets [N] under logits h [N, d] @ W_U [d, V] (+ b_U, softcap), computed in chunks
    of at most chunk_elems logits. Returns [N] float32 on W_U's device (device_map="auto": the head may
    sit elsewhere than the states)."""
    step = max(1, chunk_elems // W_U.shape[1])
    targets = targets.to(W_U.device)
    out = torch.empty(h.shape[0], dtype=torch.float32, device=W_U.device)
    for s in range(0, h.shape[0], step):
        z = logits(h[s:s + step], W_U, b_U, softcap).float()
        out[s:s + step] = F.cross_entropy(z, targets[s:s + step], reduction="none")
    return out


def model_nll(desc: ModelDescription, h, targets) -> np.ndarray | None:
    """NLL (nats, float64 numpy) of `targets` (N,) under the logits of final-normed states h (N, d) through
    the model's own unembedding (bias and soft-cap included); None for models without one."""
    if desc.W_U is None:
        return None
    hh = torch.as_tensor(np.asarray(h), dtype=desc.W_U.dtype, device=desc.W_U.device)
    tt = torch.as_tensor(np.asarray(targets), device=desc.W_U.device)
    return next_token_nll(hh, tt, desc.W_U, desc.b_U, desc.logit_softcap).cpu().double().numpy()


def lens_top1(states: torch.Tensor, desc: ModelDescription, final_norm: Callable[[torch.Tensor], torch.Tensor],
              chunk: int = 256) -> torch.Tensor:
    """Logit lens: the top-1 token id [..., ] of every state [..., d] after the model's final norm
    (`final_norm`, a callable) and the unembedding (the soft-cap is monotone: it does not change the top-1)."""
    W_U, b_U = unembedding(desc)
    flat = states.reshape(-1, states.shape[-1])
    top = torch.empty(flat.shape[0], dtype=torch.long)
    for s in range(0, flat.shape[0], chunk):
        top[s:s + chunk] = logits(final_norm(flat[s:s + chunk]), W_U, b_U).argmax(-1).cpu()
    return top.reshape(states.shape[:-1])
