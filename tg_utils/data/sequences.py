"""Sequence sets fed to the models in notebook 06 for the spectra: the Tracing paper's documents (each
document on its own, its first <= max_len tokens, short ones dropped; `document_sequences`, the default)
or evenly spaced windows of a joined token stream (`sequence_windows`, our variant), each with the token
after it as target where there is one; and how many prompts of a set fit in one forward pass."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class SequenceSet:
    """Sequences for the spectra: ids (n, ragged for documents), the token after each (targets; -1 where
    a document ends inside the sequence), `starts` (windows: their starts in the stream; documents: the
    index of each document), the fraction of tokens shared with the next window (overlap; 0 for
    documents), the tokens of the stream / of all documents (stream_tokens), the procedure
    ("documents" or "windows") and, for documents, how many qualified before any cap (n_available)."""
    ids: list[list[int]]
    targets: np.ndarray
    starts: np.ndarray
    overlap: float
    stream_tokens: int
    procedure: str = "windows"
    n_available: int = 0


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
    return SequenceSet(ids, s[starts + seq_len].astype(np.int64), starts, max(0.0, 1 - stride / seq_len), len(s),
                       "windows", n_seqs)


def split_documents(texts: Sequence[str]) -> list[str]:
    """The documents of a corpus split as the Tracing paper's loader hands them over: one per non-empty
    line. Its scripts iterate the rows of a Hugging Face text dataset (WikiText: one row per line, i.e.
    per paragraph or heading; compute_alpha_pythia.py, prepare_dataset, lines 18-25); our articles keep
    those line breaks, so their lines are the same units (headings then fall under the length filter)."""
    return [ln for t in texts for ln in t.split("\n") if ln.strip()]


def document_sequences(docs_ids: Sequence[Sequence[int]], max_len: int = 128, min_len: int = 10,
                       bos_id: int | None = None, max_docs: int | None = None, seed: int = 0) -> SequenceSet:
    """The Tracing paper's sequences (rankme_alpha_scripts/compute_rankme_pythia.py and
    compute_alpha_pythia.py, prepare_dataset, lines 12-28): every document on its own, tokenised and
    truncated to its first `max_len` tokens (BOS, when the model adds one, counts among them, as the
    tokenizer call with truncation=True counts it), kept only if it then has more than `min_len` tokens
    (`shape[-1] > min_length`, min_length = 10), every qualifying document used. `max_docs` (None = all,
    the paper) keeps a seeded random subset, in document order. The target of a sequence is the
    document's next token after the cut (-1 where the document ends inside it). Deterministic."""
    if max_len < 1 or min_len < 0:
        raise ValueError(f"max_len must be positive and min_len non-negative, got {max_len}, {min_len}")
    head = [] if bos_id is None else [int(bos_id)]
    keep, ids, targets = [], [], []
    for i, d in enumerate(docs_ids):
        d = [int(t) for t in d]
        seq = (head + d)[:max_len]
        if len(seq) > min_len:
            keep.append(i)
            ids.append(seq)
            n_doc = len(seq) - len(head)
            targets.append(d[n_doc] if n_doc < len(d) else -1)
    n_avail = len(keep)
    if n_avail == 0:
        raise ValueError(f"no document has more than {min_len} tokens; use a corpus split with longer documents")
    if max_docs is not None and max_docs < n_avail:
        pick = np.sort(np.random.default_rng(seed).choice(n_avail, size=max_docs, replace=False))
        keep, ids, targets = [keep[j] for j in pick], [ids[j] for j in pick], [targets[j] for j in pick]
    total = int(sum(len(d) for d in docs_ids))
    return SequenceSet(ids, np.asarray(targets, np.int64), np.asarray(keep, np.int64), 0.0, total,
                       "documents", n_avail)


def batch_prompts(prompts: Sequence[Sequence[int]], batch_tokens: int, chunk_size: int = 256) -> int:
    """Prompts per forward pass for a prompt set: as many of its longest prompt as fit in `batch_tokens`
    padded tokens (at least 1, at most a cache chunk)."""
    longest = max((len(p) for p in prompts), default=1)
    return int(max(1, min(chunk_size, batch_tokens // max(1, longest))))
