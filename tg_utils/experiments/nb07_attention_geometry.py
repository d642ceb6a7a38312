"""Notebook 07 (attention geometry, after "Traveling Words", issue 8): the per-model pipeline from the
notebook's parameters to its tidy tables; each model's report is cached in a verified folder. The
geometry itself is ``tg_utils.weights`` (pure functions of weights); this module feeds it each model's
``ModelDescription`` and collects the results.

    reports, tables = run(P)                     # P: the notebook's AttentionGeometryParams
    print(nb07_findings.findings_text(reports))

Per model (``analyse_model``):
- Embedding norms (``embedding_norm_table``): top-k / bottom-k tokens under the four scorings of
  ``weights.embedding_norm_scores`` (norm, scaled_norm, bias, both) of the matrix the output reads: the
  tied embedding, or, for untied models, the unembedding rows W_U.T *and* the input embedding W_E (column
  ``matrix``: "tied", "unembedding", "embedding"). The scaling and the bias are the final norm's; an
  RMSNorm has no bias, so bias and both do not exist there (``notes`` says so).
- Per-head SVD (``coverage_tables``, ``layer_probe``): W_qk = scale W_Q W_K^T and W_vo = W_V W_O per
  query head (grouped-query attention: the head's key/value head) through the factors. The singular values
  of every block (``weights.singular_values``) give the cumulative coverage and the rank at
  ``coverage_level`` (no vocabulary scan). For the probed blocks (first, middle, last: ``probe_layers``)
  ``weights.block_probe`` reads the top ``n_components`` sign-aligned singular pairs against the vocabulary.
- Attention-ellipse probe (``layer_probe``): the single-token nouns of data/common_nouns.txt as queries
  through the block's input norm; top keys and the tokens the update moves toward (read out through the
  final norm's weight and the unembedding), per probed block and head. The input-normed embeddings come
  from ``nb07_model_facts.InputNormedRows`` (standardised once per model).
- Trajectory (``trajectory_tables``): the phrase's states at every state index 0..L (through the activation
  cache), final-normed and projected into a 3-D UMAP fitted on the embedding rows; per-layer norms before
  and after the final norm; the logit-lens top-1 token of every state (``models.unembed.lens_top1``:
  whether it is the token itself or the next token of the phrase). A BOS the tokenizer adds is run through
  the model but left out of the tables (its state is an outlier in norm and direction).

Report cache (``report_folder``): <out_dir>/cache/attention/<spec>-<key>/, a ``tg_utils.store`` verified
folder holding every table of the report as parquet and its scalars as report.json; the key is
``store.cache_key`` of REPORT_VERSION, the weights' stamp (``ModelSpec.stamp``), every analysis parameter
and the noun list. A folder that does not verify is reported and recomputed; models without a stamp (hub
ids) are not cached.

Simplifications (in ``model_notes`` for every model, printed by the notebook): W_qk is positionless (RoPE,
or learned positions, left out: the score of two tokens at the same position); per-head q/k norms (Gemma 3)
and the biases are left out; Gemma's sandwich norm after the attention output is left out of the update
read-out; GGUF models are the dequantised quantised weights.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..cache import cached_states
from ..models import ModelSpec, load_model
from ..models.unembed import lens_top1
from ..paths import OutputDirs, resolve
from ..store import cache_key, load_frames, save_frames, verified_folder, write_folder
from ..weights import umap as U
from ..weights.factored import (COVERAGE_LEVEL, coverage_curve, coverage_table, qk_factors, singular_values,
                                vo_factors)
from ..weights.norms import as_norm
from ..weights.probe import ELLIPSE_COLUMNS, block_probe
from ..weights.vocab import CHUNK, embedding_norm_scores, single_token_nouns, token_strings, top_bottom_tokens
from .nb07_model_facts import InputNormedRows, is_tied, model_notes, probe_layers

NB = "07_attention_geometry"
NOUNS_PATH = "data/common_nouns.txt"
REPORT_VERSION = 2     # bump when analyse_model changes what it measures (2: verified folders, no pickle)
TABLES = ("norm_tokens", "norm_stats", "coverage", "curves", "directions", "nouns", "ellipse")
TRAJECTORY_TABLES = {"trajectory_coords": "coords", "trajectory_norms": "norms", "logit_lens": "lens"}


# ============================================================================ inputs

def load_common_nouns(path: str | os.PathLike = NOUNS_PATH) -> list[str]:
    """The noun list: one noun per line; blank lines and lines starting with '#' are skipped.
    A relative path is resolved from the repository root."""
    lines = resolve(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


def noun_table(tokenizer, nouns: Sequence[str]) -> pd.DataFrame:
    """The nouns that are one token (with a leading space) under this tokenizer: [noun, token_id, token]."""
    return pd.DataFrame(single_token_nouns(tokenizer, nouns))


# ============================================================================ the tables of one model

def embedding_norm_table(desc, tokenizer=None, k: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(top/bottom tokens, per-matrix statistics). Tokens: [matrix, scoring, rank, side, token_id, token,
    token_raw, score] for the tied matrix, or the unembedding rows and the embedding of an untied model.
    Statistics: [matrix, scoring, mean, std, min, max, spearman_vs_norm, top_overlap_vs_norm]."""
    fn = desc.final_norm
    g = None if fn is None else fn.scale
    b = None if fn is None else fn.bias
    if is_tied(desc):
        mats = [("tied", desc.W_E)]
    else:
        mats = [("unembedding", desc.W_U.T), ("embedding", desc.W_E)]
    tables, stats = [], []
    for name, M in mats:
        sc = embedding_norm_scores(M, g, b)
        t = pd.DataFrame(top_bottom_tokens(sc, tokenizer, k=k))
        t.insert(0, "matrix", name)
        tables.append(t)
        ranks_norm = pd.Series(sc.norm).rank().to_numpy()
        top_norm = set(t[(t.scoring == "norm") & (t.side == "top")].token_id)
        for s_name, s in sc.as_dict().items():
            top = set(t[(t.scoring == s_name) & (t.side == "top")].token_id)
            stats.append({"matrix": name, "scoring": s_name, "mean": float(np.mean(s)),
                          "std": float(np.std(s)), "min": float(np.min(s)), "max": float(np.max(s)),
                          "spearman_vs_norm": float(np.corrcoef(pd.Series(s).rank().to_numpy(),
                                                                ranks_norm)[0, 1]),
                          "top_overlap_vs_norm": len(top & top_norm) / max(1, len(top_norm))})
    return pd.concat(tables, ignore_index=True), pd.DataFrame(stats)


def coverage_tables(desc, level: float = COVERAGE_LEVEL) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Singular values of every block's per-head W_qk and W_vo (``weights.singular_values``: through the
    factors; signs are irrelevant here). Returns (coverage [layer, kind, head, n_singular, rank_at_level,
    level, sigma_1, frobenius, d_head], curves [layer, kind, head, rank, sigma, coverage])."""
    cov, curves = [], []
    for l, a in enumerate(desc.attn):
        for kind, fm in (("qk", qk_factors(a.W_Q, a.W_K, desc.kv_head_map, desc.attn_scale)),
                         ("vo", vo_factors(a.W_V, a.W_O, desc.kv_head_map))):
            S = singular_values(fm)
            t = pd.DataFrame(coverage_table(S, kind, level))
            t.insert(0, "layer", l)
            cov.append(t)
            c = pd.DataFrame(coverage_curve(S, kind))
            c.insert(0, "layer", l)
            curves.append(c)
    cov = pd.concat(cov, ignore_index=True)
    cov["d_head"] = desc.d_head
    return cov, pd.concat(curves, ignore_index=True)


def layer_probe(desc, layer: int, rows_norm, nouns: pd.DataFrame | None = None, tokenizer=None,
                n_components: int = 3, k: int = 10, ellipse_heads: Sequence[int] | None = None,
                chunk: int = CHUNK) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``weights.block_probe`` on block ``layer`` of a model: its singular-direction tokens and ellipse probe
    of the nouns' tokens. ``rows_norm``: (rows, norm) from ``InputNormedRows.for_layer``. Returns
    (directions, ellipse) with DIRECTION_COLUMNS and ELLIPSE_COLUMNS (ellipse empty without nouns)."""
    rows, norm = rows_norm
    a = desc.attn[layer]
    have_nouns = nouns is not None and not nouns.empty
    fn = desc.final_norm
    res = block_probe(a.W_Q, a.W_K, a.W_V, a.W_O, rows, desc.W_U if desc.W_U is not None else desc.W_E.T,
                      norm=norm, kv_map=desc.kv_head_map, scale=desc.attn_scale,
                      query_ids=nouns["token_id"].tolist() if have_nouns else None,
                      labels=nouns["noun"].tolist() if have_nouns else None,
                      final_norm_weight=None if fn is None else fn.scale, n_components=n_components, k=k,
                      heads=ellipse_heads, tokenizer=tokenizer, layer=layer, chunk=chunk)
    ell = pd.DataFrame(columns=ELLIPSE_COLUMNS) if res.ellipse is None else pd.DataFrame(res.ellipse)
    return pd.DataFrame(res.directions), ell


@dataclass(frozen=True)
class Trajectory:
    """A phrase's states projected into the embedding UMAP (see ``trajectory_tables``)."""
    coords: pd.DataFrame          # [layer, position, token, x, y, z]
    norms: pd.DataFrame           # [layer, position, token, norm, normed_norm]
    lens: pd.DataFrame            # [layer, position, token, next_token, top_token, top_id, is_self, is_next]
    background: np.ndarray        # [n_fit, 3] UMAP coordinates of the fitted embedding rows
    tokens: list[str]


def phrase_ids(lm, phrase: str) -> tuple[list[int], int]:
    """(token ids as the model's tokenizer encodes the phrase, number of leading BOS positions to drop)."""
    ids = lm.encode(phrase)
    drop = int(bool(lm.desc.adds_bos and ids and ids[0] == lm.desc.bos_token_id))
    if len(ids) - drop < 1:
        raise ValueError(f"the phrase {phrase!r} has no tokens under {lm.desc.spec}")
    return ids, drop


def trajectory_tables(lm, phrase: str, out_dir="outputs", n_fit: int | None = 5000, n_neighbors: int = 15,
                      n_epochs: int | None = 200, seed: int = 0) -> Trajectory:
    """States 0..L of the phrase (``cache.cached_states``, positions="all"), final-normed and projected into a
    3-D UMAP fitted on ``n_fit`` embedding rows (``weights.umap_trajectory``); norms before / after the
    final norm; the logit-lens top-1 token of every final-normed state (``models.unembed.lens_top1``)."""
    desc = lm.desc
    ids, drop = phrase_ids(lm, phrase)
    L = desc.n_layers
    st = cached_states(lm, [ids], layers=list(range(L + 1)), positions="all", dtype="float32",
                       out_dir=out_dir, progress=False, batch_size=1)
    S = st.states[0][:, drop:].to(torch.float32)                         # [L+1, T, d]
    tok_ids = ids[drop:]
    tokens = token_strings(lm.tokenizer, tok_ids)[0]
    tr = U.umap_trajectory(desc.W_E, S, n_neighbors=n_neighbors, seed=seed, n_fit=n_fit, n_epochs=n_epochs,
                           norm=desc.final_norm)
    n_l, T = S.shape[:2]
    lay = np.repeat(np.arange(n_l), T)
    pos = np.tile(np.arange(T), n_l)
    tok = np.asarray(tokens, dtype=object)[pos]
    coords = pd.DataFrame({"layer": lay, "position": pos, "token": tok, "x": tr.coords[..., 0].ravel(),
                           "y": tr.coords[..., 1].ravel(), "z": tr.coords[..., 2].ravel()})
    normed = tr.normed_norms if tr.normed_norms is not None else tr.norms
    norms = pd.DataFrame({"layer": lay, "position": pos, "token": tok, "norm": tr.norms.ravel(),
                          "normed_norm": normed.ravel()})
    top = lens_top1(S, desc, as_norm(desc.final_norm)).reshape(-1).numpy()     # [(L+1) * T], layer-major
    nxt = np.asarray(tok_ids[1:] + [-1])
    lens = pd.DataFrame({"layer": lay, "position": pos, "token": tok,
                         "next_token": np.asarray(tokens[1:] + [""], dtype=object)[pos],
                         "top_id": top, "top_token": token_strings(lm.tokenizer, top.tolist())[0],
                         "is_self": top == np.asarray(tok_ids)[pos], "is_next": top == nxt[pos]})
    return Trajectory(coords=coords, norms=norms, lens=lens, background=tr.embedding_coords, tokens=tokens)


# ============================================================================ one model, every model

@dataclass(frozen=True)
class ModelReport:
    """Everything notebook 07 measures for one model (tables carry no model column; ``combine`` adds it)."""
    spec: str
    label: str
    summary: str
    layers: list[int]
    notes: list[str]
    norm_tokens: pd.DataFrame
    norm_stats: pd.DataFrame
    coverage: pd.DataFrame
    curves: pd.DataFrame
    directions: pd.DataFrame
    nouns: pd.DataFrame
    ellipse: pd.DataFrame
    trajectory: Trajectory | None
    n_layers: int
    d_head: int
    n_heads: int
    timings: dict = field(default_factory=dict)


def _heads(n_heads: int, limit: int | None) -> list[int] | None:
    return None if limit is None or limit >= n_heads else list(range(limit))


def analyse_model(lm, P, nouns: Sequence[str]) -> ModelReport:
    """Run every probe of notebook 07 on one loaded model with the notebook's parameters ``P`` (fields
    depths, top_k, n_components, coverage_level, ellipse_heads, phrase, umap_n_fit, umap_neighbors,
    umap_epochs, seed, out_dir)."""
    desc, tok = lm.desc, lm.tokenizer
    if not desc.is_decoder or desc.W_U is None:
        raise ValueError(f"{desc.spec}: notebook 07 probes decoder language models (it needs an unembedding)")
    times = {}
    t0 = time.perf_counter()
    layers = probe_layers(desc.n_layers, P.depths)
    norm_tokens, norm_stats = embedding_norm_table(desc, tok, P.top_k)
    times["embedding_norms"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    coverage, curves = coverage_tables(desc, P.coverage_level)
    times["coverage"] = time.perf_counter() - t0

    rows = InputNormedRows(desc)
    nn_df = noun_table(tok, nouns)
    heads = _heads(desc.n_heads, P.ellipse_heads)
    dirs, ell = [], []
    t0 = time.perf_counter()
    for l in layers:
        dl, el = layer_probe(desc, l, rows.for_layer(l), nn_df, tok, P.n_components, P.top_k, heads)
        dirs.append(dl)
        ell.append(el)
    times["directions_ellipse"] = time.perf_counter() - t0
    del rows

    t0 = time.perf_counter()
    traj = trajectory_tables(lm, P.phrase, P.out_dir, P.umap_n_fit, P.umap_neighbors, P.umap_epochs, P.seed)
    times["trajectory"] = time.perf_counter() - t0
    return ModelReport(spec=desc.spec, label=ModelSpec.parse(desc.spec).short_name, summary=desc.summary(),
                       layers=layers, notes=model_notes(desc), norm_tokens=norm_tokens, norm_stats=norm_stats,
                       coverage=coverage, curves=curves, directions=pd.concat(dirs, ignore_index=True),
                       nouns=nn_df, ellipse=pd.concat(ell, ignore_index=True), trajectory=traj,
                       n_layers=desc.n_layers, d_head=desc.d_head, n_heads=desc.n_heads, timings=times)


def run_models(P, progress: bool = True, verbose: bool = True) -> dict[str, ModelReport]:
    """Load each model of ``P.models`` in turn (``models.load_model`` with P.model_dtype / P.device), analyse it and
    free it, or read its report from the cache; returns label -> ModelReport in the order of P.models."""
    nouns = load_common_nouns(P.nouns_path)[:P.n_nouns]
    reports = {}
    for spec in tqdm(P.models, desc="models", disable=not progress):
        where = report_folder(P, spec, nouns)
        rep = None if where is None else read_report(*where)
        cached = rep is not None
        if not cached:
            torch.manual_seed(P.seed)                 # per model: a model's report does not depend on the others
            t0 = time.perf_counter()
            lm = load_model(spec, dtype=P.model_dtype, device=P.device, out_dir=P.out_dir)
            t_load = time.perf_counter() - t0
            rep = analyse_model(lm, P, nouns)
            rep = dataclasses.replace(rep, timings={"load": t_load, **rep.timings})
            if where is not None:
                write_report(*where, rep)
            del lm
            gc.collect()
        reports[rep.label] = rep
        if verbose:
            t = ", ".join(f"{k} {v:.1f} s" for k, v in rep.timings.items())
            print(f"{rep.summary}\n  {t}" + (" (read from the cache)" if cached else ""))
    return reports


def combine(reports: dict[str, ModelReport]) -> dict[str, pd.DataFrame]:
    """Every table over all models, with ``model`` (spec) and ``label`` columns in front: the names of
    ``TABLES`` plus trajectory_coords, trajectory_norms, logit_lens."""
    out = {}
    for name in TABLES:
        out[name] = pd.concat([getattr(r, name).assign(model=r.spec, label=r.label) for r in reports.values()],
                              ignore_index=True)
    for name, attr in TRAJECTORY_TABLES.items():
        out[name] = pd.concat([getattr(r.trajectory, attr).assign(model=r.spec, label=r.label)
                               for r in reports.values() if r.trajectory is not None], ignore_index=True)
    for name, df in out.items():
        out[name] = df[["model", "label", *[c for c in df.columns if c not in ("model", "label")]]]
    return out


def run(P, progress: bool = True, verbose: bool = True) -> tuple[dict[str, ModelReport], dict[str, pd.DataFrame]]:
    """The notebook's pipeline: (label -> ModelReport of every model, the combined tables)."""
    reports = run_models(P, progress, verbose)
    return reports, combine(reports)


# ============================================================================ the report cache

REPORT_JSON = "report.json"
_NOT_CACHE_KEYS = ("profile", "out_dir", "figures_dir", "models")


def report_folder(P, spec: str, nouns: Sequence[str]) -> tuple[Path, str] | None:
    """(folder, key) of one model's cached report under <out_dir>/cache/attention/: the key is
    ``store.cache_key`` of REPORT_VERSION, the canonical spec and stamp of its weights, every analysis
    parameter and the noun list. None when the weights cannot be stamped (nothing is cached)."""
    canon, stamp = ModelSpec.parse(spec).stamp(P.out_dir)
    if stamp is None:
        return None
    params = {k: v for k, v in dataclasses.asdict(P).items() if k not in _NOT_CACHE_KEYS}
    key = cache_key("nb07-report", REPORT_VERSION, canon, stamp, params, list(nouns))
    slug = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in canon)
    return OutputDirs.at(P.out_dir).cache / "attention" / f"{slug}-{key}", key


def _report_frames(rep: ModelReport) -> dict[str, pd.DataFrame]:
    frames = {name: getattr(rep, name) for name in TABLES}
    if rep.trajectory is not None:
        frames.update({name: getattr(rep.trajectory, attr) for name, attr in TRAJECTORY_TABLES.items()})
        frames["trajectory_background"] = pd.DataFrame(rep.trajectory.background, columns=["x", "y", "z"])
    return frames


def write_report(folder: Path, key: str, rep: ModelReport) -> None:
    """Store `rep` as a verified folder: each table as <name>.parquet, the rest as report.json."""
    frames = _report_frames(rep)
    meta = {"spec": rep.spec, "label": rep.label, "summary": rep.summary, "layers": list(rep.layers),
            "notes": list(rep.notes), "n_layers": rep.n_layers, "d_head": rep.d_head, "n_heads": rep.n_heads,
            "timings": dict(rep.timings),
            "trajectory_tokens": None if rep.trajectory is None else list(rep.trajectory.tokens)}

    def write(tmp: Path) -> None:
        save_frames(tmp, frames)
        (tmp / REPORT_JSON).write_text(json.dumps(meta, indent=1))
    write_folder(folder, key, write, meta={"frames": list(frames)})


def read_report(folder: Path, key: str) -> ModelReport | None:
    """The report stored in `folder` for `key`, or None when there is none or it does not verify (a folder
    that is there but wrong is reported in one line; the caller recomputes it)."""
    manifest = verified_folder(folder, key)
    if manifest is None:
        return None
    meta = json.loads((Path(folder) / REPORT_JSON).read_text())
    frames = load_frames(Path(folder), manifest["meta"]["frames"])
    traj = None
    if meta["trajectory_tokens"] is not None:
        traj = Trajectory(**{attr: frames[name] for name, attr in TRAJECTORY_TABLES.items()},
                          background=frames["trajectory_background"].to_numpy(),
                          tokens=meta["trajectory_tokens"])
    return ModelReport(spec=meta["spec"], label=meta["label"], summary=meta["summary"], layers=meta["layers"],
                       notes=meta["notes"], **{name: frames[name] for name in TABLES}, trajectory=traj,
                       n_layers=meta["n_layers"], d_head=meta["d_head"], n_heads=meta["n_heads"],
                       timings=meta["timings"])
