"""Our automatic GRIDE scale: the window of consecutive scales where the ID-vs-scale curve is flattest,
instead of a scale chosen by eye."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRIDE_AUTO_WIDTH = 3                     # scales per window (n1, 2 n1, 4 n1: a factor 4 in neighbour rank)
GRIDE_FLAT_TOL = 0.1                     # a window is flat when its ID varies by < ~10 % (spread in ln ID)


@dataclass(frozen=True)
class GrideScale:
    """The flattest window of a GRIDE scale curve, per curve (arrays of the curves' leading shape).

    n1_low, n1_high: n1 of the window's first and last scale; n1: the chosen scale (the window's middle
    one); id: the ID at the chosen scale; spread: max - min of ln ID over the window (0 = flat)."""
    n1_low: np.ndarray | int
    n1_high: np.ndarray | int
    n1: np.ndarray | int
    id: np.ndarray | float
    spread: np.ndarray | float


def gride_auto_scale(ids, n1, width: int = GRIDE_AUTO_WIDTH, flat_tol: float = GRIDE_FLAT_TOL) -> GrideScale:
    """The scale where the GRIDE curve ids (..., S) at scales n1 (S,) (GrideResult.ids and .n1, or the
    mean curve over prompts) is flattest.

    Rule: over the windows of `width` consecutive scales (from scale 0 up to the last finite, positive
    ID), the spread of a window is max(ln ID) - min(ln ID), the ID's range relative to its size. The
    window is the first (smallest scales) whose spread is <= flat_tol, or, when none is, the one with
    the smallest spread (ties to the smaller scales); the chosen scale is its middle one (the lower
    middle for an even width) and the ID is read there. Noise inflates the ID at the smallest scales and
    curvature, boundaries and the finite sample lower it at the largest: the first plateau is the ID the
    estimator supports, at the smallest scale that is no longer noise. With fewer than `width` finite
    scales the window is all of them. Returns GrideScale (NaN / -1 where a curve has no
    finite scale)."""
    ids = np.asarray(ids, dtype=np.float64)
    n1 = np.asarray(n1, dtype=np.int64).reshape(-1)
    if ids.ndim < 1 or ids.shape[-1] != len(n1) or len(n1) == 0:
        raise ValueError(f"ids (..., S) and n1 (S,) must agree and S >= 1; got {ids.shape} and {n1.shape}.")
    if not flat_tol >= 0:
        raise ValueError(f"flat_tol must be >= 0 (a spread in ln ID), got {flat_tol}.")
    if int(width) < 2:
        raise ValueError(f"width must be >= 2 scales (a window of one is always flat), got {width}.")
    lead = ids.shape[:-1]
    flat = ids.reshape(-1, len(n1))
    out = np.full((5, len(flat)), np.nan)
    for c, curve in enumerate(flat):
        ok = np.isfinite(curve) & (curve > 0)
        n_ok = int(np.argmin(ok)) if not ok.all() else len(ok)      # leading finite scales only
        if n_ok == 0:
            continue
        w = min(int(width), n_ok)
        logs = np.log(curve[:n_ok])
        win = np.lib.stride_tricks.sliding_window_view(logs, w)
        spread = win.max(-1) - win.min(-1)
        flat = np.nonzero(spread <= flat_tol)[0]
        s = int(flat[0]) if len(flat) else int(np.argmin(spread))    # first minimum: smaller scales
        mid = s + (w - 1) // 2
        out[:, c] = n1[s], n1[s + w - 1], n1[mid], curve[mid], spread[s]
    n_lo, n_hi, n_mid = (np.where(np.isnan(v), -1, v).astype(np.int64).reshape(lead) for v in out[:3])
    res = [n_lo, n_hi, n_mid, out[3].reshape(lead), out[4].reshape(lead)]
    if not lead:
        res = [int(r) if i < 3 else float(r) for i, r in enumerate(res)]
    return GrideScale(*res)
