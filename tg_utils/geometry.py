"""Layer profiles of token point clouds for one model on a prompt set: states from the activation
cache, metrics from tg_utils.metrics, results as long tables (model, revision, prompt_id,
shuffle_index, layer, metric, value), themselves cached (tg_utils.store) so a re-run reads them back.

Layers follow transformers' `hidden_states` convention, the one token_geometry uses: layer 0 is the
embedding output, layer l < L the output of block l, and layer L the final-normed output (what the
unembedding reads; for post-norm toys and encoders, the output of the last block). In state indices
(tg_utils.extract): [0, 1, ..., L-1, L+1] (or [0..L] without a final norm).

Metrics per prompt and layer: `cos_full` (mean of the full cosine matrix, diagonal included, as
token_geometry), `cos_offdiag` (the Analyzer's), `id` (GRIDE, scale n1=1) and `id_err`, the scale
curve `id_s{n1}` for n1 = 1, 2, 4, ..., `chi_{k}` between layer l and l+1 (stored at layer l, k =
1..k_max), `nn_sim` and `nn_angle` (the mean over tokens of token_geometry's nearest-neighbour
difference cosine and of its angle in degrees), and per prompt `loss` (mean next-token cross-entropy,
nats) at layer -1. With measures=True also, per prompt and layer, `entropy` (Layer by Layer's prompt
entropy), `curvature` (its token-trajectory curvature, radians), `anisotropy`, `cka_next` (linear CKA
with layer l + 1, at l) and `depth_curvature` (tg_utils.metrics.layerwise), and over all prompts' tokens
pooled (prompt_id -1) `linearity` and `linearity_residual` of layers l -> l + 1 at l (LLM-Microscope;
NaN when the pooled tokens do not outnumber the dimensions).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import metrics as M
from .cache import cached_states, prompts_hash
from .extract import extract_states
from .models import ModelSpec, load_model
from .paths import OutputDirs
from .metrics.gride_scale import gride_auto_scale
from .metrics.layerwise import layer_measures
from .metrics.similarity import cka_matrix, linearity_profile, mutual_knn_matrix
from .metrics.stats import mean_ci
from .store import cache_key, cached_table

# bump when the rows written here change: invalidates cached tables (2: verified parquet via tg_utils.store;
# 3: nn_sim and nn_angle rows)
GEOMETRY_VERSION = 3
TABLE_COLUMNS = ["model", "revision", "prompt_id", "shuffle_index", "layer", "metric", "value"]


def profile_layers(desc) -> list[int]:
    """State indices of the profile (see the module docstring): L + 1 layers."""
    last = desc.n_layers + 1 if desc.final_norm_path is not None else desc.n_layers
    return list(range(desc.n_layers)) + [last]


def profile_rows(lp: M.LayerProfile, k_max: int) -> pd.DataFrame:
    """The metrics of one prompt's LayerProfile (X of shape [L+1, N, d]) as (layer, metric, value) rows."""
    n_layers = len(lp.cos_full)
    layer = np.arange(n_layers)
    parts = [("cos_full", layer, lp.cos_full), ("cos_offdiag", layer, lp.cos_offdiag),
             ("id", layer, lp.gride.ids[:, 0]), ("id_err", layer, lp.gride.errs[:, 0]),
             ("nn_sim", layer, lp.nn_sim), ("nn_angle", layer, lp.nn_angle)]
    for j, n1 in enumerate(lp.gride.n1):
        parts.append((f"id_s{int(n1)}", layer, lp.gride.ids[:, j]))
    for k in range(1, k_max + 1):
        parts.append((f"chi_{k}", layer[:-1], lp.chi[:, k]))
    return pd.concat([pd.DataFrame({"layer": l, "metric": m, "value": np.asarray(v, dtype=float)})
                      for m, l, v in parts], ignore_index=True)


MEASURE_METRICS = ("entropy", "curvature", "anisotropy", "cka_next", "depth_curvature")


def measure_rows(X: torch.Tensor) -> pd.DataFrame:
    """The layer-wise measures of one prompt (X: [L+1, N, d]) as (layer, metric, value) rows."""
    m = layer_measures(X)
    layer = np.arange(X.shape[0])
    return pd.concat([pd.DataFrame({"layer": layer, "metric": name, "value": np.asarray(getattr(m, name), float)})
                      for name in MEASURE_METRICS], ignore_index=True)


def pooled_rows(clouds: Sequence[torch.Tensor]) -> pd.DataFrame:
    """Linearity of consecutive layers over the tokens of every prompt pooled (clouds: [L+1, N_i, d] each)
    as rows of prompt -1: `linearity` and `linearity_residual` at layer l (pair l -> l + 1); NaN when the
    pooled tokens do not outnumber the dimensions (the fit would be exact)."""
    X = torch.cat(list(clouds), dim=1).double()
    n_pairs = X.shape[0] - 1
    rows = {}
    for name, residual in (("linearity", False), ("linearity_residual", True)):
        rows[name] = (linearity_profile(X, residual=residual) if X.shape[1] > X.shape[2] + 1
                      else np.full(n_pairs, np.nan))
    return pd.concat([pd.DataFrame({"layer": np.arange(n_pairs), "metric": k, "value": v, "prompt_id": -1})
                      for k, v in rows.items()], ignore_index=True)


def profile_states(lm, prompts, out_dir="outputs", batch_size: int = 4, progress: bool = True, **extract_kwargs):
    """The profile layers of every prompt at every position, through the activation cache (the one
    entry notebooks 02-05 share)."""
    return cached_states(lm, prompts, layers=profile_layers(lm.desc), positions="all", out_dir=out_dir,
                         batch_size=batch_size, progress=progress, **extract_kwargs)


def geometry_table(spec: str, prompts: Sequence[Sequence[int]], out_dir="outputs",
                   prompt_ids: Sequence[int] | None = None, shuffle_index: int = 0,
                   range_max: int = 256, k_max: int = 31, batch_size: int = 4, revision: str | None = None,
                   skip_first: int = 0, progress: bool = True, lm=None, keep_states: bool = True,
                   measures: bool = False) -> pd.DataFrame:
    """The long table of one model on a prompt set (prompts as token ids, equal or different lengths).
    spec: any model spec ('org/name@rev' included; `revision` may also be given apart).
    Reads it from <out_dir>/cache/geometry/<key>/ when it was computed before with the same inputs and
    verifies (tg_utils.store); else reads or extracts the states through the activation cache and
    computes every prompt's profile. skip_first: leading positions left out of the clouds (a BOS), still
    part of the forward pass. keep_states=False extracts in memory without writing the states to the
    activation cache (the table is still cached; notebook 04's shuffled prompts are read once, so storing
    them would only cost disk). measures=True adds the layer-wise measures (module docstring; about the
    cost of the rest of the table again, docs/METRICS.md)."""
    prompt_ids = list(range(len(prompts))) if prompt_ids is None else [int(p) for p in prompt_ids]
    if len(prompt_ids) != len(prompts):
        raise ValueError(f"{len(prompt_ids)} prompt ids for {len(prompts)} prompts")
    min_len = min(len(p) for p in prompts) - skip_first
    k_eff = min(k_max, min_len - 2)
    if k_eff < 1:
        raise ValueError(f"prompts of {min_len} tokens are too short for neighbourhood overlap; use >= 3 tokens")
    ms = ModelSpec.parse(spec, revision)
    model, rev = ms.table_key(out_dir)
    model_dtype = "float32" if lm is None else str(lm.desc.dtype).replace("torch.", "")
    canonical = ModelSpec.parse(str(ms))          # 'id@rev' and ('id', revision='rev') name one table
    key = cache_key("geometry", GEOMETRY_VERSION, str(canonical), canonical.stamp(out_dir), model_dtype,
                    prompts_hash(prompts), prompt_ids, int(shuffle_index), range_max, k_eff, skip_first,
                    *(["measures"] if measures else []))          # tables without measures keep their key

    def compute() -> pd.DataFrame:
        nonlocal lm
        if lm is None:
            lm = load_model(spec, revision=revision, out_dir=out_dir)
        if keep_states:
            st = profile_states(lm, prompts, out_dir, batch_size, progress)
        else:
            st = extract_states(lm, prompts, layers=profile_layers(lm.desc), positions="all",
                                batch_size=batch_size, progress=progress)
        frames = []
        for i, (pid, X) in enumerate(tqdm(list(zip(prompt_ids, st.states)), desc=f"geometry {spec}",
                                          disable=not progress, leave=False)):
            cloud = X[:, skip_first:].to(torch.float64)
            lp = M.layer_profile(cloud, range_max=range_max, k_max=k_eff)
            rows = profile_rows(lp, k_eff)
            if measures:
                rows = pd.concat([rows, measure_rows(cloud)], ignore_index=True)
            rows = pd.concat([rows, pd.DataFrame({"layer": [-1], "metric": ["loss"],
                                                  "value": [float(st.loss[i])]})], ignore_index=True)
            frames.append(rows.assign(prompt_id=pid))
        if measures:
            frames.append(pooled_rows([X[:, skip_first:] for X in st.states]))
        df = pd.concat(frames, ignore_index=True).assign(model=model, revision=rev, shuffle_index=shuffle_index)
        return df[TABLE_COLUMNS]

    return cached_table(OutputDirs.at(out_dir).cache / "geometry" / key, key, compute)


def mean_norms(states, skip_first: int = 0) -> np.ndarray:
    """Mean L2 norm of the token states per layer: [n_layers] over all prompts and positions."""
    tot = None
    n = 0
    for X in states.states:
        x = X[:, skip_first:].double().norm(dim=-1)         # [L, T]
        tot = x.sum(1) if tot is None else tot + x.sum(1)
        n += x.shape[1]
    return (tot / n).numpy()


def cosine_matrix(X) -> np.ndarray:
    """The N x N cosine-similarity matrix of one cloud (float64)."""
    X = np.asarray(X, dtype=np.float64)
    n = np.linalg.norm(X, axis=1, keepdims=True)
    Xn = X / np.where(n == 0, 1, n)
    return Xn @ Xn.T


# ---------------------------------------------------------------- reading the long tables

def wide(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric as a prompts x layers table (rows: (model, revision, shuffle_index, prompt_id))."""
    sub = df[df.metric == metric]
    return sub.pivot_table(index=["model", "revision", "shuffle_index", "prompt_id"], columns="layer",
                           values="value")


def profile_summary(df: pd.DataFrame, metrics: Sequence[str] = ("cos_full", "id", "chi_1"),
                    n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean and bootstrap 95 % interval over prompts, per (model, revision, shuffle_index, metric, layer)."""
    out = []
    for metric in metrics:
        w = wide(df, metric)
        for keys, g in w.groupby(level=["model", "revision", "shuffle_index"]):
            vals = g.to_numpy()
            keep = ~np.all(np.isnan(vals), axis=0)
            vals, cols = vals[:, keep], g.columns[keep]
            if len(vals) >= 3:
                ci = mean_ci(vals, axis=0, n_boot=n_boot, seed=seed)
                mean, lo, hi = ci.mean, ci.low, ci.high
            else:   # too few prompts for an interval: report the mean only
                mean = np.nanmean(vals, axis=0)
                lo = hi = np.full_like(mean, np.nan)
            out.append(pd.DataFrame({"model": keys[0], "revision": keys[1], "shuffle_index": keys[2],
                                     "metric": metric, "layer": cols, "mean": mean, "low": lo, "high": hi,
                                     "n_prompts": len(vals)}))
    out = pd.concat(out, ignore_index=True)
    depth = df[df.metric == "cos_full"].groupby(["model", "revision"]).layer.max().rename("n_layers")
    out = out.join(depth, on=["model", "revision"])
    return out.assign(relative_depth=out.layer / out.n_layers)



def id_auto_scale(df: pd.DataFrame) -> pd.DataFrame:
    """The automatic GRIDE scale (tg_utils.metrics.gride_scale) of the mean ID-vs-scale curve over
    prompts, per (model, revision, shuffle_index, layer): the ID there (`id_auto`), the chosen scale `n1`,
    the flat window `n1_low`..`n1_high` and its `spread` (ln ID range)."""
    sub = df[df.metric.str.match(r"^id_s\d+$")]
    if sub.empty:                        # no GRIDE scale rows (prompts too short for any scale)
        return pd.DataFrame(columns=["model", "revision", "shuffle_index", "layer", "id_auto", "n1", "n1_low",
                                     "n1_high", "spread"])
    curve = (sub.assign(n1=sub.metric.str[4:].astype(int))
             .groupby(["model", "revision", "shuffle_index", "layer", "n1"]).value.mean().unstack("n1"))
    curve = curve[sorted(curve.columns)]
    s = gride_auto_scale(curve.to_numpy(), np.asarray(curve.columns))
    return curve.index.to_frame(index=False).assign(id_auto=s.id, n1=s.n1, n1_low=s.n1_low,
                                                    n1_high=s.n1_high, spread=s.spread)


def cross_layer_similarity(states_a, states_b, name_a: str, name_b: str, k: int = 10,
                           skip_first: int = 0) -> pd.DataFrame:
    """Linear CKA and mutual k-NN (k neighbours) of every layer of model A with every layer of model B on
    the same prompts and tokens (one tokenizer: toy runs, checkpoints of one model), each the mean over
    prompts. states_a, states_b: the profile states (tg_utils.extract.States) of the same prompt set.
    Rows: a, b, layer_a, layer_b, relative depths depth_a, depth_b, metric ('cka' / 'mutual_knn'), value."""
    if len(states_a.states) != len(states_b.states):
        raise ValueError(f"{name_a} and {name_b} hold different prompt sets ({len(states_a.states)} and "
                         f"{len(states_b.states)} prompts); compare models on one prompt set.")
    total = {"cka": 0.0, "mutual_knn": 0.0}
    for Xa, Xb in zip(states_a.states, states_b.states):
        if Xa.shape[1] != Xb.shape[1]:
            raise ValueError(f"{name_a} and {name_b} tokenise a prompt differently ({Xa.shape[1]} and "
                             f"{Xb.shape[1]} tokens): layer similarity needs the same tokens.")
        a, b = Xa[:, skip_first:].double(), Xb[:, skip_first:].double()
        total["cka"] = total["cka"] + cka_matrix(a, b)
        total["mutual_knn"] = total["mutual_knn"] + mutual_knn_matrix(a, b, k=min(k, a.shape[1] - 1))
    la, lb = np.meshgrid(np.arange(states_a.states[0].shape[0]), np.arange(states_b.states[0].shape[0]),
                         indexing="ij")
    return pd.concat([pd.DataFrame({"a": name_a, "b": name_b, "layer_a": la.ravel(), "layer_b": lb.ravel(),
                                    "depth_a": la.ravel() / max(la.max(), 1), "depth_b": lb.ravel() / max(lb.max(), 1),
                                    "metric": m, "value": (v / len(states_a.states)).ravel()})
                      for m, v in total.items()], ignore_index=True)
