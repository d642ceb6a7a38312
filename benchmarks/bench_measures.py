"""Cost of the layer-wise measures (tg_utils.geometry measures=True) against the rest of the geometry
table, per model, on the states notebook 03 profiles (activation cache under --out).

    .venv/bin/python benchmarks/bench_measures.py --profile smoke --models smollm2-135m
    .venv/bin/python benchmarks/bench_measures.py --profile default --models smollm2-135m

Per model: the time of layer_profile over every prompt (the table as it was), of layer_measures (entropy,
curvature, anisotropy, CKA, depth curvature) and of the pooled linearity; medians of --repeat runs, one
thread. The extraction (cached) is not timed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from threadpoolctl import threadpool_limits

from tg_utils import metrics as M
from tg_utils.data.corpus import load_corpus
from tg_utils.experiments.nb02_extract_states import load, prompts_for
from tg_utils.geometry import pooled_rows, profile_states
from tg_utils.metrics.layerwise import layer_measures
from tg_utils.params import load_profile, params_class


def timed(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--out", default="outputs/bench-measures")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    values = dict(load_profile(a.profile).get("03_geometry_metrics", {}), out_dir=a.out, models=a.models)
    P = params_class("03_geometry_metrics").from_dict(values, "03_geometry_metrics")
    corpus = load_corpus(P.corpus, P.corpus_path)
    for spec in a.models:
        lm = load(spec, P)
        prompts = prompts_for(spec, lm, P, corpus)
        st = profile_states(lm, prompts.ids, P.out_dir, P.batch_size, progress=False)
        skip = 1 if prompts.bos else 0
        clouds = [X[:, skip:].to(torch.float64) for X in st.states]
        k = min(P.k_max, min(c.shape[1] for c in clouds) - 2)
        with threadpool_limits(1):
            base = timed(lambda: [M.layer_profile(c, range_max=P.range_max, k_max=k) for c in clouds], a.repeat)
            meas = timed(lambda: [layer_measures(c) for c in clouds], a.repeat)
            lin = timed(lambda: pooled_rows([X[:, skip:] for X in st.states]), a.repeat)
        L, N, d = clouds[0].shape
        print(f"{spec} [{a.profile}: {len(clouds)} prompts x {N} tokens, {L} layers, d={d}]: layer_profile "
              f"{base:.2f} s, layer_measures {meas:.2f} s (+{100 * meas / base:.0f} %), pooled linearity "
              f"{lin:.2f} s (+{100 * lin / base:.0f} %)")


if __name__ == "__main__":
    main()
