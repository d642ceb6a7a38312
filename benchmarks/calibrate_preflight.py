"""Measure the calibration constants of tg_utils.estimate on this machine and print them (paste the values
into tg_utils/estimate.py, with the date and the machine, when they move). Each kernel is timed twice and
the faster run is kept (the first call pays JIT / allocator warm-up).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/calibrate_preflight.py [--run-log OUT/run_log.csv]

--run-log: a smoke run's run_log.csv; each notebook's wall time there becomes its OVERHEAD_S (the smoke
profile's work is negligible next to a notebook's start, imports and figures).
"""
from __future__ import annotations

import argparse
import csv
import time

import numpy as np
import torch

from tg_utils import metrics as M
from tg_utils.experiments.nb06_measures import layer_spectra
from tg_utils.weights import umap as U


def best_of(f, n: int = 2) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def cpu_flops() -> float:
    """A 4-block Llama, d=512, 512 tokens, float32: 2 x params x tokens / seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1376,
                                     num_hidden_layers=4, num_attention_heads=8)).eval()
    ids = torch.randint(0, 8192, (1, 512))
    with torch.no_grad():
        s = best_of(lambda: m(ids))
    return 2 * sum(p.numel() for p in m.parameters()) * 512 / s


def geometry_s() -> tuple[float, float]:
    """layer_profile cost per layer = points^2 x (GEOMETRY_S x d + GEOMETRY_T2_S): timed at d = 64 and
    d = 1024 (256 points, 4 layers), the d-dependent part (distances) and the rest (selection, GRIDE)."""
    t = {}
    for d in (64, 1024):
        X = torch.randn(4, 256, d, dtype=torch.float64)
        t[d] = best_of(lambda: M.layer_profile(X, range_max=256, k_max=31)) / (4 * 256 * 256)
    a = max(0.0, (t[1024] - t[64]) / (1024 - 64))
    return a, max(0.0, t[64] - 64 * a)


def spectra_s() -> float:
    S = np.random.default_rng(0).standard_normal((512, 5, 256))
    s = best_of(lambda: layer_spectra(S))
    return s / (5 * 512 * 256 * 256)


def umap_s() -> float:
    E = torch.randn(3000, 64)
    states = torch.randn(3, 5, 64)
    s = best_of(lambda: U.umap_trajectory(E, states, n_neighbors=15, n_fit=2000, n_epochs=100))
    return s / (2000 * 100)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-log")
    a = ap.parse_args()
    print(f"CPU_FLOPS = {cpu_flops():.2e}")
    a, b = geometry_s()
    print(f"GEOMETRY_S = {a:.2e}\nGEOMETRY_T2_S = {b:.2e}")
    print(f"SPECTRA_S = {spectra_s():.2e}")
    print(f"UMAP_S = {umap_s():.2e}")
    if a.run_log:
        rows = list(csv.DictReader(open(a.run_log)))
        print("OVERHEAD_S = {" + ", ".join(f'"{r["notebook"]}": {round(float(r["wall_s"]))}' for r in rows) + "}")


if __name__ == "__main__":
    main()
