"""The phase rule of training trajectories (notebook 06, issue 7): phases of the RankMe and
alpha-ReQ curves across checkpoints. Pure functions of arrays; results are frozen dataclasses
(notebook 06 writes them as tables: tg_utils.experiments.nb06_measures.frame). Token convergence and
context perturbation, the word-level measures through training, are in `word_states`.

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
   overrides these within the leading run of intervals, from the first checkpoint (step 0, the
   initialisation), in which RankMe does not go up (alpha free), stopped at `warmup_until` if given
   (only intervals starting before that step qualify): the collapse starts at the last checkpoint
   before RankMe falls (the start of the first interval of that run in which it goes down) and ends
   after the last interval of that run in which it goes down (none: no collapse). Leading flat
   intervals are *not* part of it: with log-spaced checkpoints the first updates (steps 0 -> 1 -> 2, at
   a tiny warmup learning rate) barely move the weights, and an init-like checkpoint whose RankMe has
   not moved is not "collapsing". (The paper reads its phase boundaries off plots; this rule is ours.)
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
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np

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


# ============================================================================ helpers

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
    first_down = last_down = -1
    for i in range(len(dx)):                       # the leading run in which RankMe does not go up
        if sign_r[i] > 0 or steps[i] >= limit:
            break
        if sign_r[i] < 0:
            first_down = i if first_down < 0 else first_down
            last_down = i
    if first_down >= 0:                            # from the last checkpoint before RankMe falls ...
        for i in range(first_down, last_down + 1): # ... to the end of its last fall in that run
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
