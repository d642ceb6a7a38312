"""Word-level measures through training (notebook 06, issue 7), per bucket of words by token count.
Pure functions of arrays; results are frozen dataclasses (notebook 06 writes them as tables:
tg_utils.experiments.nb06_measures.frame).

Token convergence (`convergence_by_bucket`): per-word cosines (from `metrics.token_convergence`)
averaged within buckets of words by token count, with the step-to-step change.

Context perturbation (`first_base_scores`, `perturbation_scores`, `perturbation_by_bucket`): P1 = mean
cosine between a base sentence's last-token state and the same word's last-token state in its other
contexts; P2 = mean cosine between the base sentence's state and that of the same sentence with its
last word swapped for another word ending in the same token; P1 - P2 per layer per bucket.
`first_base_scores` is the paper's procedure (the word's first sentence the only base, P2 over up to 5
swapped variants of it); `perturbation_scores` our variant (every sentence a base in turn, leave one
out for P1, one swap per sentence for P2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arrays import _f64, _to_numpy


# ============================================================================ result types

@dataclass(frozen=True)
class BucketConvergence:
    """Token convergence per (step, layer, bucket), one entry per triple, sorted by step, layer,
    bucket: mean_cos, std_cos (ddof 0), n_words, delta (mean_cos minus that of the previous step,
    same layer and bucket; NaN at the first step), mean_abs_delta (mean over words of
    |cos_t - cos_{t-1}|)."""
    step: np.ndarray
    layer: np.ndarray
    bucket: np.ndarray
    mean_cos: np.ndarray
    std_cos: np.ndarray
    n_words: np.ndarray
    delta: np.ndarray
    mean_abs_delta: np.ndarray


@dataclass(frozen=True)
class PerturbationScores:
    """Per-word scores, each (n_words, n_layers): p1 (same word, other contexts), p2 (same sentence,
    last word swapped for one ending in the same token); `diff` = p1 - p2."""
    p1: np.ndarray
    p2: np.ndarray

    @property
    def diff(self) -> np.ndarray:
        return self.p1 - self.p2


@dataclass(frozen=True)
class BucketPerturbation:
    """P1, P2 and P1 - P2 per (layer, bucket), one entry per pair, sorted by layer, bucket: means
    over the bucket's words (NaN words left out), diff_std (ddof 0, over words) and n_words."""
    layer: np.ndarray
    bucket: np.ndarray
    P1: np.ndarray
    P2: np.ndarray
    P1_minus_P2: np.ndarray
    diff_std: np.ndarray
    n_words: np.ndarray


# ============================================================================ helpers

def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm along the last axis (a zero vector stays zero, cosine 0)."""
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


# ============================================================================ token convergence

def convergence_by_bucket(cos, buckets, steps=None, layers=None) -> BucketConvergence:
    """Token convergence grouped by bucket.

    cos: (n_words, n_layers, n_steps) cosine between each word's state at each checkpoint and at the
      final one (e.g. `metrics.token_convergence` stacked over steps); NaN = missing (left out).
    buckets: (n_words,) bucket (token count) of each word. steps: (n_steps,) labels (default
      0..n_steps-1); layers: (n_layers,) labels (default 0..n_layers-1).
    Returns a tidy BucketConvergence, one entry per (step, layer, bucket), in that order: mean_cos,
    std_cos (ddof 0), n_words, delta (mean_cos minus that of the previous step, same layer and
    bucket; NaN at the first step) and mean_abs_delta (mean over words of |cos_t - cos_{t-1}|).
    """
    c = _to_numpy(_f64(cos))
    if c.ndim != 3:
        raise ValueError(f"cos must be (n_words, n_layers, n_steps), got shape {c.shape}")
    W, L, T = c.shape
    b = np.asarray(buckets).ravel()
    if len(b) != W:
        raise ValueError(f"{len(b)} buckets for {W} words")
    steps = np.arange(T) if steps is None else np.asarray(steps)
    layers = np.arange(L) if layers is None else np.asarray(layers)
    if len(steps) != T or len(layers) != L:
        raise ValueError(f"{len(steps)} steps / {len(layers)} layers for cos of shape {c.shape}")
    ub = np.unique(b)
    onehot = (b[None, :] == ub[:, None]).astype(np.float64)                  # (B, W)
    ok = np.isfinite(c)
    cz = np.where(ok, c, 0.0)
    n = np.einsum("bw,wlt->blt", onehot, ok.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.einsum("bw,wlt->blt", onehot, cz) / n
        var = np.einsum("bw,wlt->blt", onehot, cz ** 2) / n - mean ** 2
        d = np.abs(np.diff(c, axis=-1))                                        # (W, L, T-1)
        okd = np.isfinite(d)
        mad = np.einsum("bw,wlt->blt", onehot, np.where(okd, d, 0.0)) / \
            np.einsum("bw,wlt->blt", onehot, okd.astype(np.float64))
    delta = np.concatenate([np.full((len(ub), L, 1), np.nan), np.diff(mean, axis=-1)], -1)
    mad = np.concatenate([np.full((len(ub), L, 1), np.nan), mad], -1)
    B_, L_, T_ = np.meshgrid(np.arange(len(ub)), np.arange(L), np.arange(T), indexing="ij")
    cols = {"step": steps[T_.ravel()], "layer": layers[L_.ravel()], "bucket": ub[B_.ravel()],
            "mean_cos": mean.ravel(), "std_cos": np.sqrt(np.maximum(var, 0)).ravel(),
            "n_words": n.ravel().astype(int), "delta": delta.ravel(), "mean_abs_delta": mad.ravel()}
    order = np.lexsort((cols["bucket"], cols["layer"], cols["step"]))     # stable: ties keep order
    return BucketConvergence(**{k: v[order] for k, v in cols.items()})


# ============================================================================ context perturbation

def _with_context_axis(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise ValueError(f"{name} must be (n_words, n, n_layers, d) or (n_words, n_layers, d), got {x.shape}")
    return x


def perturbation_scores(states_base, states_other_contexts, states_swapped, base_mask=None,
                        other_mask=None) -> PerturbationScores:
    """P1 and P2 per word and layer, from last-token states.

    states_base: (W, B, L, d) the last-token state of B base sentences of each of W words at L layers
      ((W, L, d) for one base sentence per word).
    states_other_contexts: (W, C, L, d), the word's last-token state in C other contexts; or None: the
      other base sentences serve (leave one out: for base i, the contexts j != i; needs B >= 2).
    states_swapped: same shape as states_base, the base sentences with the last word swapped.
    base_mask (W, B) / other_mask (W, C): optional bool, False = missing (ragged counts).

    P1[w, l] = mean over valid pairs (base i, other j; j != i when leaving one out) of
    cos(base_i, other_j); P2[w, l] = mean over valid i of cos(base_i, swapped_i). A word with no valid
    pair gets NaN. Returns PerturbationScores(p1, p2), each (W, L).
    """
    base = _with_context_axis(_to_numpy(_f64(states_base)), "states_base")
    swap = _with_context_axis(_to_numpy(_f64(states_swapped)), "states_swapped")
    if swap.shape != base.shape:
        raise ValueError(f"states_swapped {swap.shape} must match states_base {base.shape}")
    W, B = base.shape[:2]
    mb = np.ones((W, B), bool) if base_mask is None else np.asarray(base_mask, bool).reshape(W, B)
    ub = _unit(base)
    if states_other_contexts is None:
        if B < 2:
            raise ValueError("leave-one-out P1 needs at least two base sentences per word")
        uo, mo = ub, mb
        pair = mb[:, :, None] & mb[:, None, :] & ~np.eye(B, dtype=bool)[None]     # (W, B, B)
    else:
        other = _with_context_axis(_to_numpy(_f64(states_other_contexts)),
                                   "states_other_contexts")
        if other.shape[0] != W or other.shape[2:] != base.shape[2:]:
            raise ValueError(f"states_other_contexts {other.shape} does not match states_base {base.shape}")
        C = other.shape[1]
        mo = np.ones((W, C), bool) if other_mask is None else np.asarray(other_mask, bool).reshape(W, C)
        uo = _unit(other)
        pair = mb[:, :, None] & mo[:, None, :]
    cos_pairs = np.einsum("wild,wjld->wlij", ub, uo)                                 # (W, L, B, C)
    pw = pair[:, None].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p1 = (cos_pairs * pw).sum((-1, -2)) / pw.sum((-1, -2))
        cos_swap = np.einsum("wild,wild->wli", ub, _unit(swap))                       # (W, L, B)
        m = mb[:, None].astype(np.float64)
        p2 = (cos_swap * m).sum(-1) / m.sum(-1)
    return PerturbationScores(p1, p2)


def first_base_scores(states_base, states_swaps, base_mask=None, swap_mask=None) -> PerturbationScores:
    """P1 and P2 per word and layer as Token Representation Evolution computes them
    (multitoken_context_perturbation.py:82-106 and 141-151): the base is each word's *first* sentence;
    P1 = the mean cosine between its last-token state and that of each of the word's other sentences;
    P2 = the mean cosine between it and that of each variant of the same first sentence whose last
    word was replaced (up to 5 there).

    states_base: (W, B, L, d), sentence 0 the base, 1..B-1 the other contexts; states_swaps: (W, K, L, d)
    the variants of sentence 0; base_mask (W, B) / swap_mask (W, K): optional bool, False = missing.
    A word without a valid base, other context or variant gets NaN. Returns PerturbationScores (W, L)."""
    base = _to_numpy(_f64(states_base))
    swap = _to_numpy(_f64(states_swaps))
    if base.ndim != 4 or swap.ndim != 4 or swap.shape[0] != base.shape[0] or swap.shape[2:] != base.shape[2:]:
        raise ValueError(f"states_base (W, B, L, d) and states_swaps (W, K, L, d) do not match: "
                         f"{base.shape}, {swap.shape}")
    W, B = base.shape[:2]
    K = swap.shape[1]
    mb = np.ones((W, B), bool) if base_mask is None else np.asarray(base_mask, bool).reshape(W, B)
    ms = np.ones((W, K), bool) if swap_mask is None else np.asarray(swap_mask, bool).reshape(W, K)
    u0 = _unit(base[:, 0])                                                   # (W, L, d)
    c_other = np.einsum("wld,wjld->wlj", u0, _unit(base[:, 1:]))             # (W, L, B-1)
    c_swap = np.einsum("wld,wkld->wlk", u0, _unit(swap))                     # (W, L, K)
    mo = (mb[:, 1:] & mb[:, :1])[:, None].astype(np.float64)
    mk = (ms & mb[:, :1])[:, None].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p1 = (c_other * mo).sum(-1) / mo.sum(-1)
        p2 = (c_swap * mk).sum(-1) / mk.sum(-1)
    return PerturbationScores(p1, p2)


def perturbation_by_bucket(scores: PerturbationScores, buckets, layers=None) -> BucketPerturbation:
    """P1, P2 and P1 - P2 per layer per bucket.

    scores: PerturbationScores with p1, p2 (W, L); buckets: (W,) token count of each word; layers:
    (L,) labels (default 0..L-1). Returns a tidy BucketPerturbation, one entry per (layer, bucket),
    in that order: P1, P2, P1_minus_P2 (means over the bucket's words, NaN words left out),
    diff_std (ddof 0, over words) and n_words.
    """
    p1, p2 = _to_numpy(_f64(scores.p1)), _to_numpy(_f64(scores.p2))
    W, L = p1.shape
    b = np.asarray(buckets).ravel()
    if len(b) != W:
        raise ValueError(f"{len(b)} buckets for {W} words")
    layers = np.arange(L) if layers is None else np.asarray(layers)
    ub = np.unique(b)
    rows = []
    for bucket in ub:
        sel = b == bucket
        a1, a2 = p1[sel], p2[sel]
        ok = np.isfinite(a1) & np.isfinite(a2)
        n = ok.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            m1 = np.where(ok, a1, 0).sum(0) / n
            m2 = np.where(ok, a2, 0).sum(0) / n
            d = np.where(ok, a1 - a2, 0)
            sd = np.sqrt(np.maximum((d ** 2).sum(0) / n - (m1 - m2) ** 2, 0))
        rows.append((m1, m2, m1 - m2, sd, n))
    cols = {"layer": np.tile(layers, len(ub)), "bucket": np.repeat(ub, L),          # bucket-major
            **{k: np.concatenate([r[i] for r in rows])
               for i, k in enumerate(("P1", "P2", "P1_minus_P2", "diff_std", "n_words"))}}
    order = np.lexsort((cols["bucket"], cols["layer"]))                   # stable: ties keep order
    return BucketPerturbation(**{k: v[order] for k, v in cols.items()})
