"""Layer profiles of token point clouds for whole models: states from the activation cache, metrics
from tg_utils.metrics, results as long tables (model, revision, prompt_id, shuffle_index, layer,
metric, value), themselves cached so a re-run reads them back.

Layers follow transformers' `hidden_states` convention, the one token_geometry uses: layer 0 is the
embedding output, layer l < L the output of block l, and layer L the final-normed output (what the
unembedding reads; for post-norm toys and encoders, the output of the last block). In state indices
(tg_utils.extract): [0, 1, ..., L-1, L+1] (or [0..L] without a final norm).

Metrics per prompt and layer: `cos_full` (mean of the full cosine matrix, diagonal included, as
token_geometry), `cos_offdiag` (the Analyzer's), `id` (GRIDE, scale n1=1) and `id_err`, the scale
curve `id_s{n1}` for n1 = 1, 2, 4, ..., `chi_{k}` between layer l and l+1 (stored at layer l, k =
1..k_max), and per prompt `loss` (mean next-token cross-entropy, nats) at layer -1.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from . import metrics as M
from .paths import OutputDirs, atomic_path

GEOMETRY_VERSION = 1     # bump when the rows written here change: invalidates cached tables


def split_spec(spec: str, out_dir="outputs") -> tuple[str, str]:
    """(model, revision) for tables: 'toy:run@12' -> ('toy:run', 'step12'); a toy spec without a step
    names its last checkpoint; 'id@rev' -> ('id', 'rev'); else (spec, '')."""
    if spec.startswith("toy:"):
        run, _, step = spec[4:].partition("@")
        if not step:
            from .toy_runs import run_dir
            from .train import list_checkpoints
            steps = list_checkpoints(run_dir(out_dir, run))
            step = str(steps[-1]) if steps else "last"
        return f"toy:{run}", f"step{step}"
    model, _, rev = spec.partition("@")
    return model, rev


def profile_layers(desc) -> list[int]:
    """State indices of the profile (see the module docstring): L + 1 layers."""
    last = desc.n_layers + 1 if desc.final_norm_path is not None else desc.n_layers
    return list(range(desc.n_layers)) + [last]


def profile_rows(lp: M.LayerProfile, k_max: int) -> pd.DataFrame:
    """The metrics of one prompt's LayerProfile (X of shape [L+1, N, d]) as (layer, metric, value) rows."""
    n_layers = len(lp.cos_full)
    layer = np.arange(n_layers)
    parts = [("cos_full", layer, lp.cos_full), ("cos_offdiag", layer, lp.cos_offdiag),
             ("id", layer, lp.gride.ids[:, 0]), ("id_err", layer, lp.gride.errs[:, 0])]
    for j, n1 in enumerate(lp.gride.n1):
        parts.append((f"id_s{int(n1)}", layer, lp.gride.ids[:, j]))
    for k in range(1, k_max + 1):
        parts.append((f"chi_{k}", layer[:-1], lp.chi[:, k]))
    return pd.concat([pd.DataFrame({"layer": l, "metric": m, "value": np.asarray(v, dtype=float)})
                      for m, l, v in parts], ignore_index=True)


def model_prompts(lm, corpus, split: str, n_tokens: int, n_prompts: int, bos: bool = False,
                  per_article: int = 1):
    """The prompt set of one model: the first n_tokens tokens (its own tokenizer) of the split's
    articles; with `bos` the model's BOS/CLS id in front (one more position, dropped from the clouds
    by geometry_table(skip_first=1)). Refuses prompts longer than the model's context."""
    from .corpus import build_prompts
    ps = build_prompts(corpus.split(split), lm.tokenizer, n_tokens, n_prompts, per_article=per_article)
    if bos:
        bos_id = lm.desc.bos_token_id
        if bos_id is None:
            raise ValueError(f"{lm.spec} has no BOS/CLS token: remove it from bos_models")
        ps.ids = [[bos_id] + p for p in ps.ids]
        ps.bos = True
    if len(ps.ids[0]) > lm.desc.context:
        raise ValueError(f"{lm.spec}: prompts of {len(ps.ids[0])} positions exceed its context of "
                         f"{lm.desc.context}; lower n_tokens")
    return ps


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def geometry_table(spec: str, prompts: Sequence[Sequence[int]], out_dir="outputs",
                   prompt_ids: Sequence[int] | None = None, shuffle_index: int = 0,
                   range_max: int = 256, k_max: int = 31, batch_size: int = 4, revision: str | None = None,
                   skip_first: int = 0, progress: bool = True, lm=None, keep_states: bool = True) -> pd.DataFrame:
    """The long table of one model on a prompt set (prompts as token ids, equal or different lengths).
    Reads it from <out_dir>/cache/geometry/ when it was computed before with the same inputs; else
    reads or extracts the states through the activation cache and computes every prompt's profile.
    skip_first: leading positions left out of the clouds (a BOS), still part of the forward pass.
    keep_states=False extracts in memory without writing the states to the activation cache (the table
    is still cached; notebook 04's shuffled prompts are read once, so storing them would only cost disk)."""
    from .cache import cached_states, prompts_hash, source_stamp
    from .extract import resolve_layers  # noqa: F401  (import check: extraction stack available)
    prompt_ids = list(range(len(prompts))) if prompt_ids is None else list(prompt_ids)
    if len(prompt_ids) != len(prompts):
        raise ValueError(f"{len(prompt_ids)} prompt ids for {len(prompts)} prompts")
    min_len = min(len(p) for p in prompts) - skip_first
    k_eff = min(k_max, min_len - 2)
    if k_eff < 1:
        raise ValueError(f"prompts of {min_len} tokens are too short for neighbourhood overlap; use >= 3 tokens")
    model, rev = split_spec(spec if revision is None else f"{spec}@{revision}", out_dir)
    key = _key(GEOMETRY_VERSION, spec, revision, source_stamp(spec, out_dir), prompts_hash(prompts),
               prompt_ids, shuffle_index, range_max, k_eff, skip_first)
    path = OutputDirs.at(out_dir).cache / "geometry" / f"{key}.csv"
    if path.exists():
        df = pd.read_csv(path, keep_default_na=False, na_values=["NaN", "nan"])   # keep revision "" as ""
        return df.assign(value=pd.to_numeric(df["value"], errors="coerce"))        # older files: "" = NaN
    if lm is None:
        from .models import load_model
        lm = load_model(spec, revision=revision, out_dir=out_dir)
    if keep_states:
        st = profile_states(lm, prompts, out_dir, batch_size, progress)
    else:
        from .extract import extract_states
        st = extract_states(lm, prompts, layers=profile_layers(lm.desc), positions="all", batch_size=batch_size,
                            progress=progress)
    frames = []
    from tqdm.auto import tqdm
    for i, (pid, X) in enumerate(tqdm(list(zip(prompt_ids, st.states)), desc=f"geometry {spec}",
                                      disable=not progress, leave=False)):
        lp = M.layer_profile(X[:, skip_first:].to(torch.float64), range_max=range_max, k_max=k_eff)
        rows = profile_rows(lp, k_eff)
        rows = pd.concat([rows, pd.DataFrame({"layer": [-1], "metric": ["loss"],
                                              "value": [float(st.loss[i])]})], ignore_index=True)
        frames.append(rows.assign(prompt_id=pid))
    df = pd.concat(frames, ignore_index=True).assign(model=model, revision=rev, shuffle_index=shuffle_index)
    df = df[["model", "revision", "prompt_id", "shuffle_index", "layer", "metric", "value"]]
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, na_rep="NaN")
    return df


def profile_states(lm, prompts, out_dir="outputs", batch_size: int = 4, progress: bool = True, **extract_kwargs):
    """The profile layers of every prompt at every position, through the activation cache (the one
    entry notebooks 02-05 share)."""
    from .cache import cached_states
    return cached_states(lm, prompts, layers=profile_layers(lm.desc), positions="all", out_dir=out_dir,
                         batch_size=batch_size, progress=progress, **extract_kwargs)


def mean_norms(states, skip_first: int = 0) -> np.ndarray:
    """Mean L2 norm of the token states per layer: [n_layers] over all prompts and positions."""
    tot = None
    n = 0
    for X in states.states:
        x = X[:, skip_first:].double().norm(dim=-1)         # [L, T]
        tot = x.sum(1) if tot is None else tot + x.sum(1)
        n += x.shape[1]
    return (tot / n).numpy()


def wide(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric as a prompts x layers table (rows: (model, revision, shuffle_index, prompt_id))."""
    sub = df[df.metric == metric]
    return sub.pivot_table(index=["model", "revision", "shuffle_index", "prompt_id"], columns="layer",
                           values="value")


def profile_summary(df: pd.DataFrame, metrics: Sequence[str] = ("cos_full", "id", "chi_1"),
                    n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean and bootstrap 95 % interval over prompts, per (model, revision, shuffle_index, metric, layer)."""
    from .metrics.stats import mean_ci
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


# ---------------------------------------------------------------- running models over the prompt set

def toy_specs(runs: Sequence[str], random: bool = True) -> list[str]:
    """Model specs of toy runs: the random initialisation (step 0) when asked, then the trained model."""
    return [s for r in runs for s in ([f"toy:{r}@0"] if random else []) + [f"toy:{r}"]]


def run_model(spec: str, P, corpus, progress: bool = True, **load_kwargs):
    """Load one model, build its prompt set (PromptParams fields of P) and fill the activation cache.
    Returns (lm, prompts, states)."""
    from .models import load_model
    lm = load_model(spec, out_dir=P.out_dir, **load_kwargs)
    prompts = model_prompts(lm, corpus, P.prompt_split, P.n_tokens, P.n_prompts,
                            bos=spec in P.bos_models)
    st = profile_states(lm, prompts.ids, P.out_dir, P.batch_size, progress,
                        **({"remote": True} if getattr(P, "remote", False) else {}))
    return lm, prompts, st


def norm_rows(spec: str, lm, st, skip_first: int, out_dir="outputs") -> pd.DataFrame:
    """Mean state norm per layer of one model, as tidy rows with relative depth."""
    model, rev = split_spec(spec, out_dir)
    norms = mean_norms(st, skip_first)
    L = len(norms) - 1
    return pd.DataFrame({"model": model, "revision": rev, "layer": np.arange(L + 1),
                         "relative_depth": np.arange(L + 1) / L, "mean_norm": norms})


def model_geometry(spec: str, P, corpus, progress: bool = True, **load_kwargs):
    """The long geometry table of one model on its prompt set (PromptParams fields of P, plus
    range_max and k_max). Returns (table, lm, prompts)."""
    from .models import load_model
    lm = load_model(spec, out_dir=P.out_dir, **load_kwargs)
    prompts = model_prompts(lm, corpus, P.prompt_split, P.n_tokens, P.n_prompts, bos=spec in P.bos_models)
    df = geometry_table(spec, prompts.ids, P.out_dir, range_max=P.range_max, k_max=P.k_max,
                        batch_size=P.batch_size, skip_first=1 if prompts.bos else 0, progress=progress, lm=lm)
    return df, lm, prompts


def heatmap_matrices(lm, prompts, P, rel_layers: Sequence[float], prompt: int, n_tokens: int) -> dict[int, np.ndarray]:
    """Cosine matrices of the first n_tokens tokens of one prompt at layers chosen by relative depth."""
    from .plots import cosine_matrix
    st = profile_states(lm, prompts.ids, P.out_dir, P.batch_size, progress=False)
    X = st.states[prompt][:, 1 if prompts.bos else 0:]
    L = X.shape[0] - 1
    layers = sorted({int(round(r * L)) for r in rel_layers})
    return {l: cosine_matrix(X[l, :n_tokens]) for l in layers}


def scale_curves(long: pd.DataFrame) -> pd.DataFrame:
    """Mean over prompts of the GRIDE ID at every scale: model, revision, layer, n1, id."""
    sub = long[long.metric.str.match(r"id_s\d+$")]
    sub = sub.assign(n1=sub.metric.str[4:].astype(int))
    return sub.groupby(["model", "revision", "layer", "n1"], as_index=False).value.mean().rename(
        columns={"value": "id"})


def plot_scale_curves(long: pd.DataFrame, specs: Sequence[str], out_dir="outputs"):
    """ID against scale n1 at the first, middle and last layer, one panel per model."""
    import matplotlib.pyplot as plt
    from .plots import _label
    curves = scale_curves(long)
    keys = [split_spec(s, out_dir) for s in specs]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.4), squeeze=False, sharey=True)
    shown = []
    for ax, (model, rev) in zip(axes[0], keys):
        c = curves[(curves.model == model) & (curves.revision == rev)]
        L = c.layer.max()
        for layer in sorted({0, L // 2, L}):
            g = c[c.layer == layer]
            ax.plot(g.n1, g.id, marker=".", label=f"layer {layer}")
            shown.append(g)
        ax.set(xscale="log", xlabel="scale n1", title=_label(model, rev))
        ax.xaxis.set_major_formatter(plt.ScalarFormatter())
    axes[0][0].set_ylabel("GRIDE intrinsic dimension")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig, pd.concat(shown, ignore_index=True)


def describe_profiles(summary: pd.DataFrame) -> str:
    """One line per model: cosine at the first / middle / last layer, the ID peak and where it sits,
    the chi_1 range (all means over prompts)."""
    lines = []
    for label, g in summary.groupby("label", sort=False):
        def prof(metric):
            return g[g.metric == metric].sort_values("layer")
        cos, idp, chi = prof("cos_full"), prof("id"), prof("chi_1")
        L = int(cos.layer.max())
        c = cos.set_index("layer")["mean"]
        peak = idp.loc[idp["mean"].idxmax()]
        lines.append(f"{label:28s} cos {c.loc[0]:.2f} -> {c.loc[L // 2]:.2f} -> {c.loc[L]:.2f} (first/mid/last); "
                     f"ID peak {peak['mean']:.1f} at layer {int(peak.layer)}/{L} (depth {peak.layer / L:.2f}); "
                     f"chi_1 {chi['mean'].min():.2f}..{chi['mean'].max():.2f}")
    return "\n".join(lines)
