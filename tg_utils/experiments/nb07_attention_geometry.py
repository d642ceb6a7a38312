"""Notebook 07 (attention geometry, "Traveling Words: A Geometric Interpretation of Transformers", Molina
2023; issues 8 and 16): the per-model pipeline from the notebook's parameters to its tidy tables; each model's
report is cached in a verified folder (``nb07_report``). The geometry itself is ``tg_utils.weights`` (pure
functions of weights); this module feeds it each model's ``ModelDescription`` and collects the results.

    reports, tables = run(P)                     # P: the notebook's AttentionGeometryParams
    show(nb07_claims.findings_markdown(reports))      # the findings, numbers from the reports

Every table is made by the paper's procedure under the notebook's defaults (the paper's code:
santiag0m/traveling-words, cited file:line where a choice follows it); each variant of this repository is a
named option and its rows or parameters say so. Per model (``analyse_model``):
- Embedding norms (``embedding_norm_table``, ``norm_points_table``; word_embeddings.py:28-88): top-k /
  bottom-k tokens under the paper's four scorings ||e||, ||gamma e||, ||e|| + beta . e, ||gamma e|| + beta . e
  (``weights.embedding_norm_scores``) and the two variants (beta . e, sqrt(d) ||gamma e|| + beta . e; column
  ``procedure``), of the embedding (the paper's wte; "tied" when it is also the unembedding; untied models:
  the unembedding rows W_U.T too). gamma and beta are the final norm's; an RMSNorm has no bias, so the
  scorings with beta do not exist there (``notes`` says so).
- Distances to the LayerNorm images (``layernorm_distance_frame``; word_embeddings.py:91-130): for models
  whose norms are LayerNorms; RMSNorm models: not computed (a note says why).
- Per-head SVD (``coverage_tables``, ``layer_probe``; svd_analysis.py:203-311): W_qk and W_vo per query
  head through the factors; every block's singular values give the cumulative coverage (``coverage_of``:
  "sigma" the paper's, utils/plot_utils.py:123-128; "sigma2" the variant) and the rank at
  ``coverage_level``; for the probed blocks (``blocks``, else ``depths``) ``weights.block_probe`` reads the
  top ``n_components`` sign-aligned singular pairs against the vocabulary (``sign_side``: "key" the paper,
  "query" the variant).
- Attention-ellipse probe (``layer_probe``; common_nouns.py): the nouns of ``nouns_path`` that are one token
  (bare, as the paper; ``noun_prefix`` " " the variant) as queries through the block's input norm: their top
  keys per head, and the tokens the state moves toward, ln_f(e + u_h + b_O) per head and ln_f(e + sum_h u_h +
  b_O) for the block (``ellipse_readout`` "paper"; "update": the variant u_h alone), read against the
  embedding (``readout_matrix`` "embedding", the paper) or the unembedding (variant). The input-normed
  embeddings come from ``nb07_model_facts.InputNormedRows`` (standardised once per model).
- Query- and key-bias probes (``bias_table``; svd_analysis.py:313-349): for models with attention biases.
- Trajectory (``nb07_trajectory.trajectory_tables``; trajectory.py): the phrase's states, final-normed, in a
  3-D UMAP of the embedding rows (``umap_rows``/``umap_metric``/``umap_init``: the paper's first 10 000
  rows, Euclidean, Laplacian-eigenmap start; variants: random rows, cosine, UMAP's own start).

Simplifications (in ``notes`` for every model, printed by the notebook): W_qk is positionless (RoPE, or learned
positions, left out: the score of two tokens at the same position); per-head q/k norms (Gemma 3) are left out;
Gemma's sandwich norm after the attention output is left out of the value read-out; GGUF models are the
dequantised quantised weights.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..metrics.stats import spearman
from ..models import ModelSpec, load_model
from ..paths import resolve
from ..weights.biases import BIAS_COLUMNS, bias_probe
from ..weights.factored import COVERAGE_LEVEL, coverage_curve, coverage_table, qk_factors, singular_values, vo_factors
from ..weights.norms import layernorm_distance_table
from ..weights.probe import ELLIPSE_COLUMNS, block_probe
from ..weights.vocab import (CHUNK, PAPER_SETTINGS, SCORINGS, EmbeddingNormScores, embedding_norm_scores,
                             single_token_nouns, top_bottom_tokens)
from .nb07_model_facts import InputNormedRows, blocks_to_probe, final_norm_kind, is_tied, model_notes
from .nb07_report import (REPORT_VERSION, TABLES, TRAJECTORY_TABLES, ModelReport, Trajectory, read_report,
                          report_folder, write_report)
from .nb07_trajectory import phrase_ids, trajectory_tables

__all__ = ["NB", "NOUNS_PATH", "REPORT_VERSION", "TABLES", "TRAJECTORY_TABLES", "ModelReport", "Trajectory",
           "analyse_model", "bias_table", "combine", "coverage_tables", "embedding_norm_table", "layer_probe",
           "layernorm_distance_frame", "load_common_nouns", "noun_table", "norm_points_table", "phrase_ids",
           "read_report", "report_folder", "run", "run_models", "trajectory_tables", "write_report"]

NB = "07_attention_geometry"
NOUNS_PATH = "data/traveling_words_nouns.txt"     # the paper's COMMON_NOUNS.txt
NORM_POINTS = 20000        # tokens per model in the norm-scoring figure's table (all of a smaller vocabulary)


# ============================================================================ inputs

def load_common_nouns(path: str | os.PathLike = NOUNS_PATH) -> list[str]:
    """The noun list: one noun per line; blank lines and lines starting with '#' are skipped.
    A relative path is resolved from the repository root."""
    lines = resolve(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


def noun_table(tokenizer, nouns: Sequence[str], prefix: str = "") -> pd.DataFrame:
    """The nouns that are one token under this tokenizer, bare (prefix "", the paper's common_nouns.py:28-33)
    or after ``prefix`` (" ": the variant): [noun, token_id, token]."""
    return pd.DataFrame(single_token_nouns(tokenizer, nouns, prefix=prefix))


# ============================================================================ embedding norms

def _norm_matrices(desc) -> list[tuple[str, torch.Tensor]]:
    """The matrices the norm scorings read: the paper's wte (word_embeddings.py:36), named "tied" when it is
    also the unembedding; for untied models the embedding first, then the unembedding rows."""
    if is_tied(desc):
        return [("tied", desc.W_E)]
    return [("embedding", desc.W_E), ("unembedding", desc.W_U.T)]


def _scores(desc, M) -> EmbeddingNormScores:
    fn = desc.final_norm
    return embedding_norm_scores(M, None if fn is None else fn.scale, None if fn is None else fn.bias)


def embedding_norm_table(desc, tokenizer=None, k: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(top/bottom tokens, per-matrix statistics). Tokens: [matrix, scoring, procedure, paper_setting, rank,
    side, token_id, token, token_raw, score] (procedure "paper" for the four settings of word_embeddings.py,
    "variant" for bias_term and max_logit). Statistics: [matrix, scoring, procedure, mean, std, min, max,
    spearman_vs_norm, top_overlap_vs_norm]."""
    tables, stats = [], []
    for name, M in _norm_matrices(desc):
        sc = _scores(desc, M)
        t = pd.DataFrame(top_bottom_tokens(sc, tokenizer, k=k))
        t.insert(0, "matrix", name)
        t.insert(2, "procedure", t["scoring"].map(lambda x: SCORINGS[x][0]))
        t.insert(3, "paper_setting", t["scoring"].map(lambda x: PAPER_SETTINGS.get(x, "")))
        tables.append(t)
        top_norm = set(t[(t.scoring == "norm") & (t.side == "top")].token_id)
        for s_name, s in sc.as_dict().items():
            top = set(t[(t.scoring == s_name) & (t.side == "top")].token_id)
            stats.append({"matrix": name, "scoring": s_name, "procedure": SCORINGS[s_name][0],
                          "mean": float(np.mean(s)), "std": float(np.std(s)), "min": float(np.min(s)),
                          "max": float(np.max(s)),
                          "spearman_vs_norm": spearman(s, sc.norm),   # NaN for a constant scoring
                          "top_overlap_vs_norm": len(top & top_norm) / max(1, len(top_norm))})
    return pd.concat(tables, ignore_index=True), pd.DataFrame(stats)


def norm_points_table(desc, norm_tokens: pd.DataFrame, tokenizer=None, max_points: int = NORM_POINTS,
                      seed: int = 0) -> pd.DataFrame:
    """Per-token scores of the first matrix of ``_norm_matrices`` (the paper's wte) for the figure of norm
    against bias term: every token of a vocabulary up to ``max_points``, else a seeded sample of that many
    plus every token of the top / bottom lists. Columns: matrix, token_id, token, norm, scaled_norm,
    bias_term, both, max_logit (NaN where the final norm has no bias), listed (in a top / bottom list)."""
    name, M = _norm_matrices(desc)[0]
    sc = _scores(desc, M)
    V = len(sc.norm)
    listed = set(norm_tokens[norm_tokens.matrix == name].token_id.tolist())
    ids = np.arange(V)
    if V > max_points:
        ids = np.union1d(np.random.default_rng(seed).choice(V, size=max_points, replace=False),
                         np.asarray(sorted(listed), dtype=np.int64))
    nan = np.full(len(ids), np.nan)
    pick = (lambda a: nan if a is None else a[ids])
    tok = norm_tokens.drop_duplicates("token_id").set_index("token_id")["token"]
    return pd.DataFrame({"matrix": name, "token_id": ids, "token": [tok.get(int(i), "") for i in ids],
                         "norm": sc.norm[ids], "scaled_norm": sc.scaled_norm[ids], "bias_term": pick(sc.bias_term),
                         "both": pick(sc.both), "max_logit": pick(sc.max_logit), "listed": np.isin(ids, list(listed))})


def layernorm_distance_frame(desc) -> tuple[pd.DataFrame, str]:
    """The paper's distances between the embedding rows (original, centred, scaled, both) and their LayerNorm
    images (``weights.layernorm_distance_table``, word_embeddings.py:91-130) for a model whose final norm is
    a LayerNorm; (an empty table, the reason) for other models."""
    cols = ["matrix", "setting", "mean_l2_distance", "l2_std_dev", "mean_cosine_distance", "cosine_std_dev",
            "avg_norm", "scale_factor"]
    kind = final_norm_kind(desc)
    if kind != "layer":
        why = ("RMSNorm" if kind == "rms" else "no final norm")
        return pd.DataFrame(columns=cols), (
            f"distance table to the LayerNorm images (word_embeddings.py:91-130) not computed: the model's norm is "
            f"{why}, which neither centres nor has a bias, so the paper's comparison does not apply")
    t = pd.DataFrame(layernorm_distance_table(desc.W_E))
    t.insert(0, "matrix", "tied" if is_tied(desc) else "embedding")
    return t[cols], ""


# ============================================================================ per-head SVD and probes

def coverage_tables(desc, level: float = COVERAGE_LEVEL, of: str = "sigma",
                    progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Singular values of every block's per-head W_qk and W_vo (``weights.singular_values``: through the
    factors; signs are irrelevant here) and their cumulative coverage, of sigma (``of="sigma"``, the paper's
    utils/plot_utils.py:123-128) or of sigma^2 ("sigma2", the variant: Eckart-Young). Returns (coverage [layer,
    kind, head, n_singular, rank_at_level, percent_of_features, level, coverage_of, sigma_1, frobenius,
    d_head], curves [layer, kind, head, rank, sigma, coverage])."""
    cov, curves = [], []
    for l, a in enumerate(tqdm(desc.attn, desc="SVD of every block's heads", unit="block", leave=False,
                               disable=not progress)):
        for kind, fm in (("qk", qk_factors(a.W_Q, a.W_K, desc.kv_head_map, desc.attn_scale)),
                         ("vo", vo_factors(a.W_V, a.W_O, desc.kv_head_map))):
            S = singular_values(fm)
            t = pd.DataFrame(coverage_table(S, kind, level, of))
            t.insert(0, "layer", l)
            cov.append(t)
            c = pd.DataFrame(coverage_curve(S, kind, of))
            c.insert(0, "layer", l)
            curves.append(c)
    cov = pd.concat(cov, ignore_index=True)
    cov["d_head"] = desc.d_head
    return cov, pd.concat(curves, ignore_index=True)


def readout_rows(desc, readout_matrix: str = "embedding") -> torch.Tensor:
    """[d, vocab]: the matrix the W_vo output directions and the ellipse values are read against:
    "embedding" W_E.T (the paper's wte, svd_analysis.py:261, common_nouns.py:91) or "unembedding" W_U."""
    if readout_matrix == "embedding":
        return desc.W_E.T
    if readout_matrix == "unembedding":
        return desc.W_U if desc.W_U is not None else desc.W_E.T
    raise ValueError(f"readout_matrix must be 'embedding' or 'unembedding', got {readout_matrix!r}")


def layer_probe(desc, layer: int, rows_norm, nouns: pd.DataFrame | None = None, tokenizer=None,
                n_components: int = 20, k: int = 5, ellipse_heads: Sequence[int] | None = None,
                chunk: int = CHUNK, sign_side: str = "key", readout: str = "paper",
                readout_matrix: str = "embedding") -> tuple[pd.DataFrame, pd.DataFrame]:
    """``weights.block_probe`` on block ``layer`` of a model: its singular-direction tokens and ellipse probe
    of the nouns' tokens. ``rows_norm``: (rows, norm) from ``InputNormedRows.for_layer``. The paper's value
    read-out adds the token's embedding as it enters the stream (W_E[t] * embed_scale) and the biases b_V,
    b_O, and applies the final norm. Returns (directions, ellipse) with DIRECTION_COLUMNS and ELLIPSE_COLUMNS
    (ellipse empty without nouns)."""
    rows, norm = rows_norm
    a = desc.attn[layer]
    have_nouns = nouns is not None and not nouns.empty
    qids = nouns["token_id"].tolist() if have_nouns else None
    fn = desc.final_norm
    residual = None
    if have_nouns and readout == "paper":
        residual = desc.W_E[qids].to(torch.float64) * desc.embed_scale          # common_nouns.py:88
    res = block_probe(a.W_Q, a.W_K, a.W_V, a.W_O, rows, readout_rows(desc, readout_matrix), norm=norm,
                      kv_map=desc.kv_head_map, scale=desc.attn_scale, query_ids=qids,
                      labels=nouns["noun"].tolist() if have_nouns else None,
                      final_norm_weight=None if fn is None else fn.scale, n_components=n_components, k=k,
                      heads=ellipse_heads, tokenizer=tokenizer, layer=layer, chunk=chunk, sign_side=sign_side,
                      readout=readout, residual=residual, final_norm=fn, b_V=a.b_V, b_O=a.b_O)
    ell = pd.DataFrame(columns=ELLIPSE_COLUMNS) if res.ellipse is None else pd.DataFrame(res.ellipse)
    return pd.DataFrame(res.directions), ell


def bias_table(desc, layers: Sequence[int], rows: InputNormedRows, tokenizer=None, k: int = 5,
               heads: Sequence[int] | None = None) -> tuple[pd.DataFrame, str]:
    """The paper's query- and key-bias probes (``weights.bias_probe``, svd_analysis.py:313-349) at each probed
    block, against the block's input-normed embeddings: (table with BIAS_COLUMNS, note on what does not
    exist; the table is empty for a model without attention biases)."""
    parts, notes = [], []
    for l in layers:
        a = desc.attn[l]
        r, nm = rows.for_layer(l)
        res = bias_probe(a.W_Q, a.W_K, a.b_Q, a.b_K, r, nm, desc.kv_head_map, k, tokenizer, l, heads)
        if res.table is not None:
            parts.append(pd.DataFrame(res.table))
        if res.note and res.note not in notes:
            notes.append(res.note)
    t = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=BIAS_COLUMNS)
    note = "; ".join(notes)
    return t, (f"query/key-bias probes (svd_analysis.py:313-349): {note}" if note else "")


# ============================================================================ one model, every model

def _heads(n_heads: int, limit: int | None) -> list[int] | None:
    return None if limit is None or limit >= n_heads else list(range(limit))


def analyse_model(lm, P, nouns: Sequence[str], progress: bool = False) -> ModelReport:
    """Run every probe of notebook 07 on one loaded model with the notebook's parameters ``P`` (see
    ``params.notebooks.AttentionGeometryParams`` for the fields); ``progress``: a bar over the stages (one
    step per probed block) and one over the blocks' SVDs."""
    desc, tok = lm.desc, lm.tokenizer
    if not desc.is_decoder or desc.W_U is None:
        raise ValueError(f"{desc.spec}: notebook 07 probes decoder language models (it needs an unembedding)")
    times = {}
    t0 = time.perf_counter()
    layers = blocks_to_probe(desc.n_layers, P.depths, P.blocks)
    bar = tqdm(total=4 + len(layers), desc=ModelSpec.parse(desc.spec).short_name, unit="stage", leave=False,
               disable=not progress)
    bar.set_postfix_str("embedding norms")
    norm_tokens, norm_stats = embedding_norm_table(desc, tok, P.top_k)
    norm_points = norm_points_table(desc, norm_tokens, tok, seed=P.seed)
    distances, why_no_distances = layernorm_distance_frame(desc)
    times["embedding_norms"] = time.perf_counter() - t0
    bar.update()
    bar.set_postfix_str("SVD coverage of every block")

    t0 = time.perf_counter()
    coverage, curves = coverage_tables(desc, P.coverage_level, P.coverage_of, progress)
    times["coverage"] = time.perf_counter() - t0
    bar.update()

    rows = InputNormedRows(desc)
    nn_df = noun_table(tok, nouns, P.noun_prefix)
    heads = _heads(desc.n_heads, P.ellipse_heads)
    dirs, ell = [], []
    t0 = time.perf_counter()
    for l in layers:
        bar.set_postfix_str(f"directions and ellipse, block {l}")
        dl, el = layer_probe(desc, l, rows.for_layer(l), nn_df, tok, P.n_components, P.top_k, heads,
                             sign_side=P.sign_side, readout=P.ellipse_readout, readout_matrix=P.readout_matrix)
        dirs.append(dl)
        ell.append(el)
        bar.update()
    bar.set_postfix_str("attention-bias probes")
    biases, why_no_biases = bias_table(desc, layers, rows, tok, P.top_k)
    times["directions_ellipse_biases"] = time.perf_counter() - t0
    del rows
    bar.update()

    bar.set_postfix_str("trajectory (UMAP fit)")
    t0 = time.perf_counter()
    traj = trajectory_tables(lm, P.phrase, P.out_dir, P.umap_n_fit, P.umap_neighbors, P.umap_epochs, P.seed,
                             rows=P.umap_rows, metric=P.umap_metric, init=P.umap_init)
    times["trajectory"] = time.perf_counter() - t0
    bar.update()
    bar.close()
    notes = model_notes(desc) + [n for n in (why_no_distances, why_no_biases) if n]
    return ModelReport(spec=desc.spec, label=ModelSpec.parse(desc.spec).short_name, summary=desc.summary(),
                       layers=layers, notes=notes, norm_tokens=norm_tokens, norm_stats=norm_stats,
                       norm_points=norm_points, layernorm_distances=distances, coverage=coverage, curves=curves,
                       directions=pd.concat(dirs, ignore_index=True), nouns=nn_df,
                       ellipse=pd.concat(ell, ignore_index=True), bias_probes=biases, trajectory=traj,
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
            rep = analyse_model(lm, P, nouns, progress)
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
        frames = [getattr(r, name).assign(model=r.spec, label=r.label) for r in reports.values()]
        frames = [f for f in frames if len(f)] or frames[:1]
        out[name] = pd.concat(frames, ignore_index=True)
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
