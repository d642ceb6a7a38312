"""An n-gram index of a token stream (a suffix array) and infini-gram's ∞-gram probability: counts of any
n-gram by binary search, P(next | context) backed off to the longest suffix of the context that occurs.

    idx = SuffixIndex.build(tokens)            # int array; O(n log^2 n) prefix doubling (numpy lexsort)
    idx.count([5, 7, 9])                       # occurrences of the n-gram in the stream
    p, n = idx.infgram_prob(context, nxt)      # ∞-gram probability and the suffix length n it used
    lp, lens = idx.continuation_logprob(prefix, continuation)   # per token: log P∞, suffix length

Definition (Liu et al., "Infini-gram", 2024; the api.infini-gram.io `infgram_prob` query that the
Tracing paper's memorization_scripts/compute_infgrams.py:37-50 calls per answer token): for a context
w_1..w_{i-1} and a next token w_i, let s be the longest suffix of the context with cnt(s) > 0 (the empty
suffix, count = number of tokens, if none); P∞(w_i | context) = cnt(s + w_i) / cnt(s). Here cnt(s) counts
the occurrences of s that are followed by a token (an occurrence that ends the stream is no context;
the empty suffix: every token), so the probabilities of all next tokens sum to 1. The probability can be 0 (s occurs, never followed by w_i).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["SuffixIndex", "suffix_array", "brute_count", "continuation_logprob_original"]


def suffix_array(tokens) -> np.ndarray:
    """The suffix array of an int token stream: start positions of its suffixes in lexicographic order
    (a suffix that is a prefix of another sorts first). Prefix doubling: ranks of the first 2^k tokens
    of every suffix, sorted by (rank, rank 2^k later) with np.lexsort until all ranks differ; rounds =
    ceil(log2(longest repeated substring)) + 1, each an O(n log n) sort."""
    t = np.asarray(tokens)
    if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"tokens must be a 1-D int array, got {t.dtype} of shape {t.shape}")
    n = len(t)
    if n == 0:
        return np.zeros(0, np.int64)
    _, rank = np.unique(t, return_inverse=True)
    rank = rank.astype(np.int64) + 1                        # 0 is kept for "past the end"
    k = 1
    while True:
        second = np.zeros(n, np.int64)
        if k < n:
            second[:n - k] = rank[k:]
        sa = np.lexsort((second, rank))
        r1, r2 = rank[sa], second[sa]
        new = np.empty(n, np.int64)
        new[sa] = np.cumsum(np.r_[True, (r1[1:] != r1[:-1]) | (r2[1:] != r2[:-1])])
        rank = new
        if rank.max() == n or k >= n:
            return sa.astype(np.int64)
        k *= 2


def brute_count(tokens, ngram) -> int:
    """Occurrences of `ngram` in `tokens` by a sliding window (reference for tests; O(n m))."""
    t, g = list(np.asarray(tokens).tolist()), list(ngram)
    if not g:
        return len(t)
    return sum(t[i:i + len(g)] == g for i in range(len(t) - len(g) + 1))


@dataclass(frozen=True)
class SuffixIndex:
    """A token stream and its suffix array (int64 each: 16 bytes per token)."""
    tokens: np.ndarray
    sa: np.ndarray

    @classmethod
    def build(cls, tokens) -> "SuffixIndex":
        t = np.ascontiguousarray(np.asarray(tokens), dtype=np.int64)
        return cls(t, suffix_array(t))

    @property
    def nbytes(self) -> int:
        return int(self.tokens.nbytes + self.sa.nbytes)

    def _range(self, ngram: Sequence[int]) -> tuple[int, int]:
        """[lo, hi) of the suffix array whose suffixes start with `ngram` (narrowed one token at a time:
        within a range sharing j tokens, the (j+1)-th token is non-decreasing; a suffix too short to have
        it sorts first, read as -1)."""
        tok, sa, n = self.tokens, self.sa, len(self.tokens)
        lo, hi = 0, n
        for j, w in enumerate(ngram):
            w = int(w)

            def at(i):
                p = int(sa[i]) + j
                return int(tok[p]) if p < n else -1
            a, b = lo, hi                       # first index with at(i) >= w
            while a < b:
                m = (a + b) // 2
                if at(m) < w:
                    a = m + 1
                else:
                    b = m
            c, b = a, hi                        # first index with at(i) > w
            while c < b:
                m = (c + b) // 2
                if at(m) <= w:
                    c = m + 1
                else:
                    b = m
            lo, hi = a, c
            if lo >= hi:
                return lo, lo
        return lo, hi

    def count(self, ngram: Sequence[int]) -> int:
        """Occurrences of `ngram` in the stream (the empty n-gram: the stream's length)."""
        lo, hi = self._range(ngram)
        return hi - lo

    def context_count(self, ngram: Sequence[int]) -> int:
        """Occurrences of `ngram` followed by a token (count minus one if the stream ends with it; the
        empty n-gram: every token follows it)."""
        c = self.count(ngram)
        m = len(ngram)
        if c and m and m <= len(self.tokens) and np.array_equal(self.tokens[-m:], np.asarray(ngram, np.int64)):
            c -= 1
        return c

    def longest_suffix(self, context: Sequence[int]) -> int:
        """Length of the longest suffix of `context` followed by a token somewhere in the stream (0 if
        none). Occurrence is monotone in the suffix (a longer suffix occurs only where a shorter one
        does), so the start is found by binary search."""
        ctx = list(context)
        lo, hi = 0, len(ctx)                    # find the smallest start i with context_count(ctx[i:]) > 0
        while lo < hi:
            m = (lo + hi) // 2
            if self.context_count(ctx[m:]) > 0:
                hi = m
            else:
                lo = m + 1
        return len(ctx) - lo

    def infgram_prob(self, context: Sequence[int], nxt: int) -> tuple[float, int]:
        """(P∞(nxt | context), the suffix length used): cnt(s + nxt) / cnt(s), s the longest suffix of
        the context that is followed by a token in the stream."""
        ctx = list(context)
        n = self.longest_suffix(ctx)
        s = ctx[len(ctx) - n:] if n else []
        den = self.context_count(s)
        if den == 0:
            return 0.0, n
        return self.count(s + [int(nxt)]) / den, n

    def continuation_logprob(self, prefix: Sequence[int], continuation: Sequence[int]):
        """Per token of `continuation`: (log P∞ of the token given prefix + the continuation's earlier
        tokens (-inf where 0), the suffix length used), as two arrays."""
        ctx, lp, lens = list(prefix), [], []
        for w in continuation:
            p, n = self.infgram_prob(ctx, w)
            lp.append(math.log(p) if p > 0 else -math.inf)
            lens.append(n)
            ctx.append(int(w))
        return np.asarray(lp, float), np.asarray(lens, np.int64)


def continuation_logprob_original(token_logprobs) -> float:
    """A continuation's ∞-gram log-probability as the Tracing paper's compute_infgrams.py:72-80 sums it:
    tokens of probability 0 are left out of the sum (their probability set to 1), and a continuation whose
    every token has probability 0 is NaN."""
    lp = np.asarray(token_logprobs, float)
    ok = np.isfinite(lp)
    return float(lp[ok].sum()) if ok.any() else float("nan")
