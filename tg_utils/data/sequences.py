"""Sequence sets fed to the models in notebook 06: evenly spaced windows of a token stream with the
token after each as target, and how many prompts of a set fit in one forward pass."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class SequenceSet:
    """Windows of a token stream: ids (n, seq_len [+1 with BOS]), the token after each (targets),
    their starts in the stream, and the fraction of tokens shared with the next window (overlap)."""
    ids: list[list[int]]
    targets: np.ndarray
    starts: np.ndarray
    overlap: float
    stream_tokens: int


def sequence_windows(stream, seq_len: int, n_seqs: int, bos_id: int | None = None) -> SequenceSet:
    """`n_seqs` windows of `seq_len` tokens at evenly spaced starts over the stream (first window at 0,
    last ending one token before the end, so every window has a next token), each with that next
    token as target; BOS in front if `bos_id`. The windows overlap when the stream holds fewer than
    n_seqs disjoint ones (SequenceSet.overlap > 0). Deterministic."""
    s = np.asarray(stream).ravel()
    if seq_len < 1 or n_seqs < 1:
        raise ValueError(f"seq_len and n_seqs must be positive, got {seq_len}, {n_seqs}")
    last_start = len(s) - seq_len - 1
    if last_start < 0:
        raise ValueError(f"a stream of {len(s)} tokens is too short for windows of {seq_len} tokens")
    if n_seqs - 1 > last_start:
        raise ValueError(f"a stream of {len(s)} tokens has only {last_start + 1} distinct windows of "
                         f"{seq_len} tokens; lower n_seqs ({n_seqs}) or seq_len")
    starts = np.floor(np.linspace(0, last_start, n_seqs)).astype(np.int64) if n_seqs > 1 else np.zeros(1, np.int64)
    head = [] if bos_id is None else [int(bos_id)]
    ids = [head + s[a:a + seq_len].astype(np.int64).tolist() for a in starts]
    stride = np.diff(starts).min() if n_seqs > 1 else seq_len
    return SequenceSet(ids, s[starts + seq_len].astype(np.int64), starts, max(0.0, 1 - stride / seq_len), len(s))


def batch_prompts(prompts: Sequence[Sequence[int]], batch_tokens: int, chunk_size: int = 256) -> int:
    """Prompts per forward pass for a prompt set: as many of its longest prompt as fit in `batch_tokens`
    padded tokens (at least 1, at most a cache chunk)."""
    longest = max((len(p) for p in prompts), default=1)
    return int(max(1, min(chunk_size, batch_tokens // max(1, longest))))
