"""Benchmark tg_utils.metrics against a plain baseline written the way the seed code works.

On one prompt's SmolLM2 clouds (target 30 layers x 1024 tokens x 576), in one process, it times
  * tg_utils: `metrics.layer_profile` (one neighbour table per cloud shared by GRIDE and NO: float32
    score matrix, partial selection, float64 distances where they matter; vectorised GRIDE over
    scales, NO from index tables) plus the mean cosine;
  * baseline: scikit-learn distance matrix, full argsort, DADApy-style bisection per scale,
    neighbourhood overlap as a Python loop over tokens and k, scikit-learn cosine matrix;
and prints both times, the ratio, the largest difference in the values (ID at every scale,
chi_k, cosine), and where tg_utils spends its time per cloud (centring, score-matrix product,
selection with float64 recomputation, GRIDE, overlap, cosine; the float64 product for
comparison). With a GPU it also times tg_utils on the GPU.

Clouds: `--clouds PATH.npy|.npz` (an array (L, N, d); for .npz the first array, or `--key`), or by
default the six SmolLM2 clouds of geometry_reference.npz ($TG_GEOMETRY_REFERENCE, tests/data/ or
../shared/reference/) repeated to 30 layers.

    .venv/bin/python benchmarks/bench_metrics.py [--clouds PATH] [--layers 30] [--repeat 1]
                                                 [--threads N]

Wall-clock and CPU (process) times are both printed: on a shared machine wall-clock is noisy, the
CPU-time ratio less so; the best of --repeat runs is reported.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np

from tg_utils import metrics
from tg_utils.metrics.cosine import _cosine_means
from tg_utils.metrics.gride import _gride_one, _gride_ranks
from tg_utils.metrics.knn import _Table, _centred
from tg_utils.metrics.selection import (_f32_candidate_count, _f32_candidates, _f32_scores,
                                        _f64_resolve, _f64_rows, _scores)

REPO = Path(__file__).resolve().parents[1]
REFERENCE_CANDIDATES = [
    Path(os.environ.get("TG_GEOMETRY_REFERENCE", "/nonexistent")),
    REPO / "tests" / "data" / "geometry_reference.npz",
    REPO.parent / "shared" / "reference" / "geometry_reference.npz",
]
SMOLLM2_LAYERS = ("smollm2_L2", "smollm2_L3", "smollm2_L12", "smollm2_L13", "smollm2_L28", "smollm2_L29")


# ============================================================================ baseline (seed style)

def _baseline_loglik_derivative(d, mus, n1, n2, N, eps):
    one_m_mus_d = 1.0 - mus ** (-d)
    one_m_mus_d[one_m_mus_d < 2 * eps] = 2 * eps
    return np.sum(((1 - n2 + n1) / one_m_mus_d + n2 - 1.0) * np.log(mus)) - (N - 1) / d


def _baseline_gride_scale(mus, n1, n2, d0=1e-3, d1=1e3, eps=1e-7):
    """One scale, as DADApy: filter, bisection on the derivative, Fisher error on all mu."""
    mus = mus.copy()
    mus[mus == 1] += 10 * np.finfo(np.float64).eps
    q3, q2 = np.percentile(mus, [95, 50])
    kept = mus[mus < 20 * (q3 - q2) + q2]
    l1 = _baseline_loglik_derivative(d1, kept, n1, n2, len(kept), eps)
    while abs(d0 - d1) > eps:
        d2 = (d0 + d1) / 2.0
        if _baseline_loglik_derivative(d2, kept, n1, n2, len(kept), eps) * l1 > 0:
            d1 = d2
        else:
            d0 = d2
    d = (d0 + d1) / 2.0
    one_m = 1.0 - mus ** (-d)
    one_m[one_m < 5 * np.finfo(np.float64).eps] = 5 * np.finfo(np.float64).eps
    j = len(mus) / d**2 + (n2 - n1 - 1) * np.sum((np.log(mus) / one_m) ** 2 * mus ** (-d))
    return d, 1 / np.sqrt(j)


def baseline_cloud(X, range_max=256, maxk=300):
    """Seed-style metrics of one cloud (token_geometry's extract + summarize, DADApy's GRIDE):
    full distance and cosine matrices, duplicates dropped by np.unique, neighbours by a full
    argsort of every row, one bisection per scale. Returns (ids per scale, distance matrix, cosines)."""
    from sklearn.metrics.pairwise import cosine_similarity, euclidean_distances

    X = np.asarray(X, dtype=np.float64)
    D = euclidean_distances(X)
    cos = cosine_similarity(X)
    n = len(X)
    cos_full, cos_off = cos.mean(), (cos.sum() - np.trace(cos)) / (n * (n - 1))

    _, first = np.unique(X, axis=0, return_index=True)
    Du = D[first][:, first]
    order = np.argsort(Du, axis=1)[:, : maxk + 1]       # DADApy's from_all_distances_to_nndistances
    Ds = np.take_along_axis(Du, order, axis=1)
    max_step = int(math.log(min(len(first) - 1, range_max), 2))
    ranks = [2**i for i in range(max_step + 1)]
    ids = [_baseline_gride_scale(Ds[:, ranks[i + 1]] / Ds[:, ranks[i]], ranks[i], ranks[i + 1])[0]
           for i in range(max_step)]
    return np.array(ids), D, (cos_full, cos_off)


def baseline_overlap(D_a, D_b, k_max=31):
    """chi_k as token_geometry computes it: argsort of both distance matrices, then a Python loop
    over tokens and k with boolean flags (position 0 of each row is the token itself)."""
    rep, next_rep = np.argsort(D_a, axis=1), np.argsort(D_b, axis=1)
    n = len(rep)
    ans = np.zeros((n, k_max + 1))
    for idx in range(n):
        rep_flags = np.zeros(n, dtype=bool)
        next_flags = np.zeros(n, dtype=bool)
        for k in range(1, k_max + 1):
            rep_flags[rep[idx, k]] = True
            next_flags[next_rep[idx, k]] = True
            ans[idx, k] = np.sum(rep_flags & next_flags) / k
    return ans.mean(axis=0)


def run_baseline(clouds, range_max=256, k_max=31):
    per_layer = [baseline_cloud(c, range_max) for c in clouds]
    ids = np.array([p[0] for p in per_layer])
    chi = np.array([baseline_overlap(a[1], b[1], k_max) for a, b in zip(per_layer, per_layer[1:])])
    cos = np.array([p[2] for p in per_layer])
    return ids, chi, cos


# ============================================================================ tg_utils

def run_tg_utils(clouds, range_max=256, k_max=31):
    prof = metrics.layer_profile(clouds, range_max=range_max, k_max=k_max)
    cos = np.stack([prof.cos_full, prof.cos_offdiag], -1)
    return prof.gride.ids, prof.chi, cos


# ============================================================================ driver

def load_clouds(path: str | None, key: str | None, n_layers: int):
    if path is None:
        found = [p for p in REFERENCE_CANDIDATES if p.is_file()]
        if not found:
            raise SystemExit("geometry_reference.npz not found: pass --clouds or set "
                             "TG_GEOMETRY_REFERENCE")
        ref = np.load(found[0])
        base = [ref[f"X__{name}"] for name in SMOLLM2_LAYERS]
        clouds = np.stack([base[i % len(base)] for i in range(n_layers)])
        names = ", ".join(SMOLLM2_LAYERS)
        return clouds, f"6 reference SmolLM2 clouds ({names}) repeated to {n_layers} layers"
    data = np.load(path)
    if isinstance(data, np.lib.npyio.NpzFile):
        key = key or data.files[0]
        data = data[key]
    clouds = np.asarray(data)
    if clouds.ndim != 3:
        raise SystemExit(f"{path}: expected an array (layers, tokens, features), got {clouds.shape}")
    return clouds, f"{path}{'[' + key + ']' if key else ''}"


def breakdown(clouds, range_max=256, k_max=31):
    """Median wall-clock milliseconds per cloud of the steps of `metrics.layer_profile` on the CPU
    (the steps of metrics.selection._table_f32 called one by one): centring; the float32
    score-matrix product; the selection of float32 candidates and of the places where their order
    is certain; the float64 recomputation (rows done in float64, distances at GRIDE's ranks,
    uncertain clusters); GRIDE; the overlap of consecutive clouds; the cosine; and, for
    comparison, what the float64 product would cost."""
    n, d = clouds.shape[1:]
    ranks = _gride_ranks(n, range_max)
    r_max = max(k_max, int(ranks.max()))
    K = _f32_candidate_count(n, r_max)
    names = ("centring", "product (float32)", "selection", "float64 distances", "GRIDE", "overlap",
             "cosine", "[product in float64]")
    steps = {name: [] for name in names}
    previous = None
    for c in clouds:
        t = [time.perf_counter()]
        Xc = _centred(c)
        sq = (Xc * Xc).sum(1)
        t.append(time.perf_counter())
        S, norms = _f32_scores(Xc, sq)
        t.append(time.perf_counter())
        cand, brk = _f32_candidates(S, norms, K, d)
        del S
        t.append(time.perf_counter())
        _f64_rows(Xc, sq, cand, brk, r_max)
        idx, d2 = _f64_resolve(Xc, sq, cand, brk, k_max, ranks)
        t.append(time.perf_counter())
        table = _Table(idx, np.sqrt(np.maximum(d2, 0.0)), np.sqrt(sq))
        _gride_one(c, range_max, table)
        t.append(time.perf_counter())
        if previous is not None:
            metrics.overlap_from_indices(previous, idx, k_max)
        previous = idx
        t.append(time.perf_counter())
        _cosine_means(c[None])
        t.append(time.perf_counter())
        _scores(Xc, sq)
        t.append(time.perf_counter())
        for name, dt in zip(steps, np.diff(t)):
            steps[name].append(dt)
    return {name: 1e3 * float(np.median(v)) for name, v in steps.items()}


def best_time(fn, repeat):
    """Best wall-clock and CPU (process) time of `repeat` runs, and the last result."""
    wall, cpu, out = math.inf, math.inf, None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return (wall, cpu), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clouds", help="PATH.npy or PATH.npz holding an array (layers, tokens, features)")
    ap.add_argument("--key", help="array name inside the .npz")
    ap.add_argument("--layers", type=int, default=30, help="layers for the default clouds")
    ap.add_argument("--range-max", type=int, default=256)
    ap.add_argument("--k-max", type=int, default=31)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side; the best is reported")
    ap.add_argument("--threads", type=int, default=None,
                    help="limit BLAS threads for both sides (default: the library's own setting)")
    args = ap.parse_args(argv)

    clouds, source = load_clouds(args.clouds, args.key, args.layers)
    print(f"clouds: {source}: {clouds.shape[0]} layers x {clouds.shape[1]} tokens x {clouds.shape[2]} "
          f"({clouds.dtype}); BLAS threads: {args.threads or 'default'}")

    run_tg_utils(clouds[:2], args.range_max, args.k_max)                # warm-up: imports, caches
    run_baseline(clouds[:2], args.range_max, args.k_max)
    if args.threads is not None:                       # after the warm-up: every BLAS is loaded
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=args.threads, user_api="blas")
    t_tg, (ids, chi, cos) = best_time(lambda: run_tg_utils(clouds, args.range_max, args.k_max),
                                      args.repeat)
    t_bl, (ids_b, chi_b, cos_b) = best_time(lambda: run_baseline(clouds, args.range_max, args.k_max),
                                            args.repeat)
    print("                                                          wall (s)   CPU (s)")
    print(f"baseline (sklearn distances, argsort, bisection, NO loop): {t_bl[0]:8.3f}  {t_bl[1]:8.3f}")
    print(f"tg_utils (float32 selection, float64 distances, GRIDE, NO): "
          f"{t_tg[0]:7.3f}  {t_tg[1]:8.3f}")
    print(f"speed-up: {t_bl[0] / t_tg[0]:.1f}x wall, {t_bl[1] / t_tg[1]:.1f}x CPU   "
          f"(tg_utils {1e3 * t_tg[0] / len(clouds):.1f} ms wall, "
          f"{1e3 * t_tg[1] / len(clouds):.1f} ms CPU per cloud; "
          f"baseline {1e3 * t_bl[0] / len(clouds):.0f} ms wall per cloud)")
    steps = breakdown(clouds, args.range_max, args.k_max)
    print("tg_utils per cloud, median wall ms: "
          + ", ".join(f"{name} {ms:.1f}" for name, ms in steps.items()))
    print(f"max |ID difference| over {ids.shape[-1]} scales: {np.nanmax(np.abs(ids - ids_b)):.2e}")
    print(f"max |chi_k difference| (k = 1..{args.k_max}):      {np.abs(chi - chi_b).max():.2e}")
    print(f"max |cosine-mean difference| (full, off-diag):    {np.abs(cos - cos_b).max():.2e}")

    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        gpu = torch.from_numpy(clouds).cuda()
        run_tg_utils(gpu[:2], args.range_max, args.k_max)               # warm-up
        torch.cuda.synchronize()
        t_gpu, (ids_g, chi_g, _) = best_time(lambda: run_tg_utils(gpu, args.range_max, args.k_max),
                                             args.repeat)
        print(f"tg_utils on {torch.cuda.get_device_name()}: {t_gpu[0]:.3f} s wall, "
              f"{1e3 * t_gpu[0] / len(clouds):.1f} ms per cloud "
              f"(max |ID diff| vs CPU {np.nanmax(np.abs(ids_g - ids)):.2e}, "
              f"max |chi diff| {np.abs(chi_g - chi).max():.2e})")
    else:
        print("GPU: none available (torch.cuda.is_available() is False)")


if __name__ == "__main__":
    main()
