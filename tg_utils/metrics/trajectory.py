"""Geometry through training (notebook 06, issue 7): phases of the spectral curves, token
convergence per bucket, multi-token context perturbation. Pure functions of arrays; nothing here
loads a model (the states come from tg_utils.extract, the metrics from tg_utils.metrics). Results
are frozen dataclasses of numpy arrays, one entry per table row (notebook 06 writes them as
tables: tg_utils.phases.frame).

Phase rule (`mark_phases`, after the Tracing paper: warmup collapse, entropy-seeking = RankMe up
and alpha down, compression-seeking = RankMe down and alpha up)
------------------------------------------------------------------------------------------------
Inputs: checkpoint steps (ascending), RankMe and alpha-ReQ at each checkpoint.

1. Axes: x = log10(1 + step); the curves are y_R = ln(RankMe) (relative changes) and y_A = alpha.
2. Smoothing: a running median over `smooth` consecutive checkpoints (odd, default 3; 1 = none),
   the first and last `smooth // 2` values kept as they are. A running median keeps monotone curves
   monotone and steps sharp, and removes isolated spikes.
3. Slopes: per interval i (checkpoint i to i+1), s = (y[i+1] - y[i]) / (x[i+1] - x[i]) on the smoothed
   curves, i.e. change per decade of steps. A slope counts as up (+1) or down (-1) only if
   |s| >= `min_rankme_slope` (default 0.05: RankMe changing by ~5 % per decade) for RankMe and
   `min_alpha_slope` (default 0.02 per decade) for alpha; otherwise it is flat (0).
4. Interval labels: "entropy-seeking" if RankMe up and alpha down; "compression-seeking" if RankMe down
   and alpha up; anything else (a flat slope, or both up / both down) is unlabelled. "warmup collapse"
   overrides these on the leading run of intervals, from the first checkpoint (step 0, the
   initialisation), in which RankMe does not go up (alpha free), cut after the last of them in which
   it goes down (none: no collapse), stopped at `warmup_until` if given (only intervals starting
   before that step qualify). Leading flat intervals belong to the collapse: with log-spaced
   checkpoints the first updates (steps 0 -> 1 -> 2, at a tiny warmup learning rate) barely move the
   weights, so RankMe often changes by less than the threshold there before it collapses.
5. Clean-up, in three passes: (a) an unlabelled gap of at most `max_gap` intervals (default 1)
   between two runs with the same label takes that label (the runs merge); (b) a labelled run shorter
   than `min_len` intervals (default 2, i.e. 3 checkpoints) is unlabelled; (c) (a) again, so that a
   one-interval blip of another label inside a phase does not split it.
6. Phases: every remaining labelled run is one row (phase, start_step, end_step: the checkpoints at
   its ends). Consecutive phases share a boundary checkpoint or are separated by unlabelled transition
   intervals (the median flattens a turning point, so a peak usually leaves one unlabelled interval).
   A phase that does not appear has no row; a phase can appear twice. `describe_phases` says, for
   each of the three, where it falls or that it does not appear.

Caveat: without `warmup_until`, a RankMe that falls from the first checkpoint to the end (with alpha
rising) is one long "warmup collapse"; pass the learning-rate warmup length (toy models:
train_config.warmup_steps; Pythia: 1 % of training) to tie the collapse to the warmup as the paper
does, and what follows it is then labelled by the slope signs.

Token convergence (`convergence_by_bucket`): per-word cosines (from `metrics.token_convergence`)
averaged within buckets of words by token count, with the step-to-step change.

Context perturbation (`perturbation_scores`, `perturbation_by_bucket`): P1 = mean cosine between a
base sentence's last-token state and the same word's last-token state in its other contexts; P2 =
mean cosine between the base sentence's state and that of the same sentence with its last word
swapped for another word ending in the same token; P1 - P2 per layer per bucket.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np

from ._arrays import _f64, _to_numpy

PHASES = ("warmup collapse", "entropy-seeking", "compression-seeking")
WARMUP, ENTROPY, COMPRESSION = PHASES


# ============================================================================ result types

@dataclass(frozen=True)
class Phase:
    """One phase of a trajectory (a run of labelled intervals, step 6 of the rule): its label, the
    checkpoints at its ends (steps and indices), the checkpoints it spans, and the raw (unsmoothed)
    RankMe and alpha at both ends."""
    phase: str
    start_step: float
    end_step: float
    start_index: int
    end_index: int
    n_checkpoints: int
    rankme_start: float
    rankme_end: float
    alpha_start: float
    alpha_end: float


PHASE_COLUMNS = [f.name for f in fields(Phase)]


@dataclass(frozen=True)
class PhaseIntervals:
    """The phase rule interval by interval (interval i = checkpoint i to i+1), T - 1 entries each:
    start_step, end_step; rankme_slope (of ln RankMe), alpha_slope (smoothed, per decade of
    steps); rankme_sign, alpha_sign (-1/0/+1); raw_label (step 4) and label (step 5), a phase name
    or None (unlabelled)."""
    start_step: np.ndarray
    end_step: np.ndarray
    rankme_slope: np.ndarray
    alpha_slope: np.ndarray
    rankme_sign: np.ndarray
    alpha_sign: np.ndarray
    raw_label: tuple
    label: tuple


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


def _runs(labels: Sequence) -> list[tuple[object, int, int]]:
    """Runs of equal consecutive labels: (label, first index, last index)."""
    runs, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            runs.append((labels[start], start, i - 1))
            start = i
    return runs


# ============================================================================ phases

def running_median(y, window: int = 3) -> np.ndarray:
    """Running median over `window` (odd) consecutive values; the first and last window // 2 values
    are kept. y: (T,) -> (T,)."""
    y = np.asarray(y, dtype=np.float64)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"smoothing window must be an odd positive integer, got {window}")
    h = window // 2
    if h == 0 or len(y) < window:
        return y.copy()
    out = y.copy()
    out[h:len(y) - h] = np.median(np.lib.stride_tricks.sliding_window_view(y, window), axis=-1)
    return out


def _check_curves(steps, rankme, alpha):
    steps, rankme, alpha = (np.asarray(v, dtype=np.float64).ravel() for v in (steps, rankme, alpha))
    if not (len(steps) == len(rankme) == len(alpha)):
        raise ValueError(f"steps, rankme and alpha must have the same length, got "
                         f"{len(steps)}, {len(rankme)}, {len(alpha)}")
    if len(steps) < 2:
        raise ValueError("phases need at least two checkpoints")
    if np.any(np.diff(steps) <= 0) or steps[0] < 0:
        raise ValueError("steps must be non-negative and strictly increasing")
    if not (np.all(np.isfinite(rankme)) and np.all(np.isfinite(alpha))) or np.any(rankme <= 0):
        raise ValueError("rankme must be positive and finite, alpha finite")
    return steps, rankme, alpha


def _interval_labels(steps, rankme, alpha, smooth, min_rankme_slope, min_alpha_slope, min_len,
                     max_gap, warmup_until) -> dict:
    """Steps 1-5 of the phase rule on checked curves: per-interval slopes, signs and labels."""
    x = np.log10(1.0 + steps)
    dx = np.diff(x)
    s_r = np.diff(running_median(np.log(rankme), smooth)) / dx
    s_a = np.diff(running_median(alpha, smooth)) / dx
    sign_r = np.where(np.abs(s_r) >= min_rankme_slope, np.sign(s_r), 0).astype(int)
    sign_a = np.where(np.abs(s_a) >= min_alpha_slope, np.sign(s_a), 0).astype(int)
    raw: list = [None] * len(dx)
    for i in range(len(dx)):
        if sign_r[i] > 0 and sign_a[i] < 0:
            raw[i] = ENTROPY
        elif sign_r[i] < 0 and sign_a[i] > 0:
            raw[i] = COMPRESSION
    limit = np.inf if warmup_until is None else warmup_until
    last_down = -1
    for i in range(len(dx)):                       # the leading run in which RankMe does not go up
        if sign_r[i] > 0 or steps[i] >= limit:
            break
        if sign_r[i] < 0:
            last_down = i
    for i in range(last_down + 1):                 # ... up to its last interval in which it goes down
        raw[i] = WARMUP
    return {"rankme_slope": s_r, "alpha_slope": s_a, "rankme_sign": sign_r, "alpha_sign": sign_a,
            "raw_label": raw, "label": _clean_labels(raw, min_len, max_gap)}


def phase_intervals(steps, rankme, alpha, smooth: int = 3, min_rankme_slope: float = 0.05,
                    min_alpha_slope: float = 0.02, min_len: int = 2, max_gap: int = 1,
                    warmup_until: float | None = None) -> PhaseIntervals:
    """Per-interval view of the phase rule (module docstring, steps 1-5), e.g. to shade a plot.

    steps, rankme, alpha: (T,) -> PhaseIntervals with T - 1 entries (interval i = checkpoint i to
    i+1): start_step, end_step, rankme_slope (of ln RankMe), alpha_slope (smoothed, per decade of
    steps), rankme_sign, alpha_sign (-1/0/+1), raw_label (step 4) and label (step 5; None =
    unlabelled).
    """
    steps, rankme, alpha = _check_curves(steps, rankme, alpha)
    iv = _interval_labels(steps, rankme, alpha, smooth, min_rankme_slope, min_alpha_slope, min_len,
                          max_gap, warmup_until)
    return PhaseIntervals(start_step=steps[:-1], end_step=steps[1:],
                          **{k: v for k, v in iv.items() if not k.endswith("label")},
                          raw_label=tuple(iv["raw_label"]), label=tuple(iv["label"]))


def _fill_gaps(labels: list, max_gap: int) -> list:
    """Unlabelled runs of <= max_gap intervals between two runs with the same label take that label."""
    labels = list(labels)
    runs = _runs(labels)
    for k in range(1, len(runs) - 1):
        lab, a, b = runs[k]
        left, right = runs[k - 1][0], runs[k + 1][0]
        if lab is None and b - a + 1 <= max_gap and left is not None and left == right:
            labels[a:b + 1] = [left] * (b - a + 1)
    return labels


def _clean_labels(labels: list, min_len: int, max_gap: int) -> list:
    """Step 5 of the rule: fill short gaps, unlabel runs shorter than min_len, fill short gaps again."""
    labels = _fill_gaps(labels, max_gap)
    for lab, a, b in _runs(labels):
        if lab is not None and b - a + 1 < min_len:
            labels[a:b + 1] = [None] * (b - a + 1)
    return _fill_gaps(labels, max_gap)


def mark_phases(steps, rankme, alpha, smooth: int = 3, min_rankme_slope: float = 0.05,
                min_alpha_slope: float = 0.02, min_len: int = 2, max_gap: int = 1,
                warmup_until: float | None = None) -> tuple[Phase, ...]:
    """Phases of a training trajectory from its RankMe and alpha-ReQ curves (rule: module docstring).

    steps, rankme, alpha: (T,) per checkpoint, steps ascending (the first is the initialisation).
    Returns one Phase per phase found, in order (fields PHASE_COLUMNS: phase, start_step, end_step,
    start_index, end_index (checkpoint indices), n_checkpoints, and the raw (unsmoothed) RankMe and
    alpha at both ends). A phase that does not appear has no entry.
    """
    steps, rankme, alpha = _check_curves(steps, rankme, alpha)
    labels = _interval_labels(steps, rankme, alpha, smooth, min_rankme_slope, min_alpha_slope, min_len,
                              max_gap, warmup_until)["label"]
    return tuple(Phase(lab, steps[a], steps[b + 1], a, b + 1, b - a + 2, rankme[a], rankme[b + 1],
                       alpha[a], alpha[b + 1])
                 for lab, a, b in _runs(labels) if lab is not None)


def describe_phases(phases) -> list[str]:
    """One line per phase of PHASES: where it falls (steps), or that it does not appear.

    phases: the Phases of `mark_phases`, or a table of them with the PHASE_COLUMNS (anything with
    `itertuples()`, e.g. a DataFrame), read row by row."""
    rows = list(phases.itertuples() if hasattr(phases, "itertuples") else phases)
    lines = []
    for name in PHASES:
        found = [r for r in rows if r.phase == name]
        if len(found) == 0:
            lines.append(f"{name}: does not appear")
        else:
            spans = ", ".join(f"steps {r.start_step:g}-{r.end_step:g} ({r.n_checkpoints} checkpoints, "
                              f"RankMe {r.rankme_start:.3g}->{r.rankme_end:.3g}, "
                              f"alpha {r.alpha_start:.3g}->{r.alpha_end:.3g})" for r in found)
            lines.append(f"{name}: {spans}")
    return lines


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
