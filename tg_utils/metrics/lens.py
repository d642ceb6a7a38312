"""Logit-lens readouts of token states (nostalgebraist 2020): a state through the final norm and the
unembedding, the entropy of that next-token distribution and the surprisal of the true next token."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ._arrays import _f64, _is_torch, _to_numpy, _validated, torch


@dataclass(frozen=True)
class LensReadout:
    """Per-token logit-lens readouts of states (..., N, d), in nats.

    entropy: float64 (..., N): entropy of softmax(final_norm(h) W_U + b_U) at every position
    surprisal: float64 (..., N - 1): -log p(x_{t+1}) of the true next token at positions 0..N-2
        (NaN everywhere when no targets were given)
    """
    entropy: np.ndarray
    surprisal: np.ndarray


def _log_softmax64(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def logit_lens(states, W_U, b_U=None, final_norm: Callable | None = None, targets=None,
               softcap: float | None = None, chunk: int = 256) -> LensReadout:
    """Logit-lens entropy and surprisal of states (..., N, d) (one prompt's tokens, any leading shape,
    e.g. layers): logits z = final_norm(h) W_U + b_U (W_U: (d, V)), then soft-cap c tanh(z / c) when
    `softcap` is set (Gemma 2), log-softmax in float64. final_norm: a callable on a chunk of states (a
    torch tensor in the states' dtype; None: identity, for states already normed). targets (N,): the
    prompt's token ids; surprisal at position t is -log p(targets[t + 1]). At the last layer (the
    final-normed output, final_norm=None) the mean surprisal is the model's own next-token loss."""
    h = _validated(states, "states")
    if h.ndim < 2:
        raise ValueError(f"states must have shape (..., N, d), got {tuple(h.shape)}.")
    lead, (n, d) = tuple(h.shape[:-2]), tuple(h.shape[-2:])
    W = _validated(W_U, "W_U")
    if W.ndim != 2 or W.shape[0] != d:
        raise ValueError(f"W_U must have shape (d, V) = ({d}, V), got {tuple(W.shape)}; pass the lm_head "
                         "weight transposed.")
    if targets is not None:
        targets = np.asarray(_to_numpy(targets), dtype=np.int64).reshape(-1)
        if len(targets) != n:
            raise ValueError(f"targets must hold the prompt's {n} token ids, got {len(targets)}.")
        if targets.min() < 0 or targets.max() >= W.shape[1]:
            raise ValueError(f"targets must be token ids in [0, {W.shape[1]}).")
    flat = h.reshape(-1, d)
    ent = np.empty(flat.shape[0])
    lp_next = np.full(flat.shape[0], np.nan)
    tgt = None if targets is None else np.tile(np.append(targets[1:], -1), flat.shape[0] // n)
    for s in range(0, flat.shape[0], chunk):
        x = flat[s:s + chunk]
        if final_norm is not None:          # a torch module gets a tensor in the states' dtype
            if torch is not None and not _is_torch(x):
                x = torch.as_tensor(np.ascontiguousarray(x))
            with torch.no_grad() if torch is not None else contextlib.nullcontext():
                x = final_norm(x)
        z = _to_numpy(_f64(x)) @ _to_numpy(_f64(W))
        if b_U is not None:
            z = z + _to_numpy(_f64(_validated(b_U, "b_U")))
        if softcap:
            z = np.tanh(z / softcap) * softcap
        lp = _log_softmax64(z)
        ent[s:s + len(x)] = -(np.exp(lp) * lp).sum(-1)
        if tgt is not None:
            t = tgt[s:s + len(x)]
            ok = t >= 0
            lp_next[s:s + len(x)][ok] = -lp[np.nonzero(ok)[0], t[ok]]
    ent = ent.reshape(lead + (n,))
    surprisal = lp_next.reshape(lead + (n,))[..., :-1]
    return LensReadout(ent, surprisal)
