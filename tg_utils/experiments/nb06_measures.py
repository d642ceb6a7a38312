"""What notebook 06 measures at one checkpoint (last-token states through the activation cache, per-layer
spectra, the last-token NLL, word states, P1 / P2) and the tidy tables of one trajectory built from
those measures (long-form spectra, eigenspectra, power-law fits, phases, convergence, perturbation)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import numpy as np
import pandas as pd

from .. import metrics as M
from ..cache import cached_states
from ..data.sequences import batch_prompts
from ..metrics import trajectory as T
from ..metrics import word_states as WS
from ..metrics.spectra import PCA_MAX_COMPONENTS
from ..models import load_model
from ..models.unembed import model_nll
from ..toy.checkpoints import read_log
from .nb06_inputs import Checkpoint, Inputs, Trajectory

SPECTRAL_METRICS = ("rankme", "rankme_singular", "alpha", "alpha_r2", "alpha_r2_100")


# ============================================================================ per-checkpoint measures

def last_states(lm, prompts: Sequence[Sequence[int]], out_dir="outputs", batch_tokens: int = 2048,
                chunk_size: int = 256) -> np.ndarray:
    """Last-token states of every state index, (n_prompts, n_states, d) float32, through the activation
    cache (prompts sorted by length for the batches, `batch_prompts` per forward pass, returned in the
    given order; no loss computed, so the forward stops after the final norm)."""
    order = np.argsort([len(p) for p in prompts], kind="stable")
    st = cached_states(lm, [list(prompts[i]) for i in order], layers=None, positions="last", out_dir=out_dir,
                       batch_size=batch_prompts(prompts, batch_tokens, chunk_size), chunk_size=chunk_size,
                       progress=False, compute_loss=False)
    x = st.stacked().float().numpy()
    out = np.empty_like(x)
    out[order] = x
    return out


def layer_spectra(states, max_components: int | None = PCA_MAX_COMPONENTS) -> dict[str, np.ndarray]:
    """Per-layer spectral metrics of last-token states (N, L, d): eigs (L, k) (covariance eigenvalues
    as fractions of the total variance, descending; k = min(N, d, max_components), the Tracing paper's
    PCA: at most 2048 components, utils/powerlaw.py:89-94), rankme and rankme_singular, alpha,
    alpha_r2, alpha_r2_100 and the fit's log-intercept, each (L,). A layer whose spectrum is undefined
    (zero variance, fewer than 13 positive eigenvalues) gets NaN."""
    X = np.asarray(states, dtype=np.float64)
    if X.ndim != 3:
        raise ValueError(f"states must be (n_prompts, n_layers, d), got {X.shape}")
    clouds = np.ascontiguousarray(X.transpose(1, 0, 2))                    # (L, N, d)
    L, n = clouds.shape[0], min(X.shape[0], X.shape[2])
    n = n if max_components is None else min(n, max_components)
    eigs = np.full((L, n), np.nan)
    out = {k: np.full(L, np.nan) for k in (*SPECTRAL_METRICS, "intercept")}
    for l in range(L):
        try:
            eigs[l] = M.eigenspectrum(clouds[l], max_components)
        except ValueError:
            continue
        out["rankme"][l] = M.rankme(eigs[l])
        out["rankme_singular"][l] = M.rankme(eigs[l], variant="singular")
        try:
            with np.errstate(invalid="ignore", divide="ignore"):     # an empty r2 window gives NaN
                a = M.alpha_req(eigs[l])
        except ValueError:
            continue
        out["alpha"][l], out["alpha_r2"][l], out["alpha_r2_100"][l] = a.alpha, a.r2, a.r2_100
        out["intercept"][l] = M.power_law_intercept(eigs[l], a.alpha)
    out["eigs"] = eigs
    return out


@dataclass(frozen=True)
class CheckpointResult:
    """Everything read from one checkpoint (the per-layer arrays have L = the number of state indices)."""
    step: int
    spectra: dict[str, np.ndarray] | None        # None: a trajectory read for the word analyses only
    nll: float
    word_states: dict[str, np.ndarray]           # prefix -> (n_words, L, d)
    p1: np.ndarray | None                        # (n_words, L), raw states
    p2: np.ndarray | None
    seconds: float
    p1_centred: np.ndarray | None = None         # (n_words, L), states minus the spectra sequences' mean state
    p2_centred: np.ndarray | None = None


def load_checkpoint(ck: Checkpoint, P):
    """The checkpoint's model (toy step from P.out_dir, or the hub id at its revision) in P's dtype and device."""
    return load_model(ck.spec, dtype=P.model_dtype, device=P.device, out_dir=P.out_dir)


def _perturbation(lm, cs, P, mu):
    """(P1, P2, P1 centred, P2 centred), each (n_words, L), by P.perturbation: "first_base" (the paper:
    word_states.first_base_scores on each word's first context and its swapped variants) or
    "leave_one_out" (ours: word_states.perturbation_scores); centred = the states minus `mu` (the mean
    spectra state, (L, d); None: not computed)."""
    base, mask = cs.stack(last_states(lm, cs.prompts(), P.out_dir, P.batch_tokens))
    if P.perturbation == "first_base":
        swap, smask = cs.stack_first_swaps(last_states(lm, cs.first_swap_prompts(), P.out_dir, P.batch_tokens))
        def score(b, s):
            return WS.first_base_scores(b, s, base_mask=mask, swap_mask=smask)
    else:
        swap, _ = cs.stack(last_states(lm, cs.swap_prompts(), P.out_dir, P.batch_tokens))
        def score(b, s):
            return WS.perturbation_scores(b, None, s, base_mask=mask)
    raw = score(base, swap)
    if mu is None:
        return raw.p1, raw.p2, None, None
    centred = score(base - mu, swap - mu)
    return raw.p1, raw.p2, centred.p1, centred.p2


def measure_checkpoint(lm, inputs: Inputs, P, step: int) -> CheckpointResult:
    """Everything notebook 06 reads from one loaded checkpoint (no spectra, NLL or centred perturbation
    when the inputs hold no spectra sequences). The NLL is the mean over the sequences that have a next
    token (a document that ends inside its first seq_len tokens has none)."""
    t0 = time.perf_counter()
    spec, nll, S = None, float("nan"), None
    if len(inputs.seqs.ids):
        S = last_states(lm, inputs.seqs.ids, P.out_dir, P.batch_tokens)
        spec = layer_spectra(S, P.max_components)
        has = inputs.seqs.targets >= 0
        v = model_nll(lm.desc, S[has, -1], inputs.seqs.targets[has]) if has.any() else None
        nll = float(np.mean(v)) if v is not None else float("nan")
    words = {p: last_states(lm, wp.ids, P.out_dir, P.batch_tokens) for p, wp in inputs.words.items()}
    p1 = p2 = c1 = c2 = None
    if inputs.contexts is not None:
        p1, p2, c1, c2 = _perturbation(lm, inputs.contexts, P, None if S is None else S.mean(0))
    return CheckpointResult(step, spec, nll, words, p1, p2, time.perf_counter() - t0, c1, c2)


# ============================================================================ one trajectory -> tables

def spectra_rows(traj: Trajectory, results: Sequence[CheckpointResult]) -> pd.DataFrame:
    """Long table (tables.LONG_COLUMNS + trajectory, step) of the spectral metrics per checkpoint and
    layer; prompt_id -1 (a metric of the whole set of sequences), shuffle_index 0; next_token_nll at the
    final-normed layer."""
    rows = []
    for r in results:
        L = len(r.spectra["rankme"])
        for m in SPECTRAL_METRICS:
            rows.append(pd.DataFrame({"layer": np.arange(L), "metric": m, "value": r.spectra[m], "step": r.step}))
        rows.append(pd.DataFrame({"layer": [L - 1], "metric": "next_token_nll", "value": [r.nll], "step": r.step}))
    df = pd.concat(rows, ignore_index=True)
    df.insert(0, "model", traj.model)
    df.insert(1, "revision", [traj.revision_label(s) for s in df.step])
    df.insert(2, "prompt_id", -1)
    df.insert(3, "shuffle_index", 0)
    df.insert(0, "trajectory", traj.name)
    return df[["model", "revision", "prompt_id", "shuffle_index", "layer", "metric", "value", "trajectory", "step"]]


def eig_rows(traj: Trajectory, results: Sequence[CheckpointResult]) -> pd.DataFrame:
    """Tidy eigenspectra: trajectory, step, layer, rank (1-based), eigenvalue (normalised, sum 1)."""
    parts = []
    for r in results:
        e = r.spectra["eigs"]
        L, n = e.shape
        parts.append(pd.DataFrame({"trajectory": traj.name, "step": r.step, "layer": np.repeat(np.arange(L), n),
                                   "rank": np.tile(np.arange(1, n + 1), L), "eigenvalue": e.ravel()}))
    return pd.concat(parts, ignore_index=True)


def fit_rows(traj: Trajectory, results: Sequence[CheckpointResult]) -> pd.DataFrame:
    """The power-law fit of every spectrum: trajectory, step, layer, alpha, intercept, r2."""
    return pd.DataFrame([{"trajectory": traj.name, "step": r.step, "layer": l, "alpha": r.spectra["alpha"][l],
                          "intercept": r.spectra["intercept"][l], "alpha_r2": r.spectra["alpha_r2"][l]}
                         for r in results for l in range(len(r.spectra["alpha"]))])


def frame(result) -> pd.DataFrame:
    """A metrics.trajectory / metrics.word_states result as a table: mark_phases' Phases one row each
    (the PHASE_COLUMNS, also when there are none), else one column per field of the result (the label
    columns of PhaseIntervals as objects: None stays None)."""
    if isinstance(result, tuple):
        return pd.DataFrame([asdict(p) for p in result], columns=T.PHASE_COLUMNS)
    cols = [f.name for f in fields(result)]
    df = pd.DataFrame({k: getattr(result, k) for k in cols if not k.endswith("label")})
    for k in cols:
        if k.endswith("label"):
            df[k] = pd.Series(list(getattr(result, k)), dtype=object)
    return df


def rule_kwargs(P) -> dict:
    """The phase-rule parameters of P (trajectory.mark_phases keywords, warmup_until aside)."""
    return dict(smooth=P.phase_smooth, min_rankme_slope=P.min_rankme_slope, min_alpha_slope=P.min_alpha_slope,
                min_len=P.phase_min_len)


def phase_tables(traj: Trajectory, spectra: pd.DataFrame, P) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(phases, intervals) of every layer of one trajectory by trajectory.mark_phases (rule parameters
    from P; warmup_until = the trajectory's warmup). Layers whose curves are undefined are skipped."""
    kw = dict(rule_kwargs(P), warmup_until=traj.warmup_until)
    ph, iv = [], []
    wide = spectra.pivot_table(index=["layer", "step"], columns="metric", values="value").reset_index()
    for layer, g in wide.groupby("layer"):
        g = g.sort_values("step")
        if not (np.isfinite(g.rankme).all() and np.isfinite(g.alpha).all() and (g.rankme > 0).all()):
            continue
        ph.append(frame(T.mark_phases(g.step, g.rankme, g.alpha, **kw)).assign(trajectory=traj.name, layer=layer))
        iv.append(frame(T.phase_intervals(g.step, g.rankme, g.alpha, **kw)).assign(trajectory=traj.name, layer=layer))
    cols_p = ["trajectory", "layer", *T.PHASE_COLUMNS]
    phases = pd.concat(ph, ignore_index=True)[cols_p] if ph else pd.DataFrame(columns=cols_p)
    intervals = pd.concat(iv, ignore_index=True) if iv else pd.DataFrame()
    if len(intervals):
        intervals = intervals[["trajectory", "layer"] + [c for c in intervals.columns if c not in ("trajectory", "layer")]]
    return phases, intervals


def convergence_rows(traj: Trajectory, inputs: Inputs, results: Sequence[CheckpointResult]) -> pd.DataFrame:
    """word_states.convergence_by_bucket of every word-prompt prefix, with trajectory and prefix columns
    ("" = the word alone)."""
    steps = [r.step for r in results]
    parts = []
    for p, wp in inputs.words.items():
        final = results[-1].word_states[p]
        cos = np.stack([M.token_convergence(r.word_states[p], final) for r in results], -1)   # (W, L, T)
        df = frame(WS.convergence_by_bucket(cos, wp.n_tokens, steps=steps))
        parts.append(df.assign(trajectory=traj.name, prefix=p))
    df = pd.concat(parts, ignore_index=True)
    return df[["trajectory", "prefix"] + [c for c in df.columns if c not in ("trajectory", "prefix")]]


def perturbation_rows(traj: Trajectory, inputs: Inputs, results: Sequence[CheckpointResult]) -> pd.DataFrame:
    """word_states.perturbation_by_bucket at every checkpoint, with trajectory, step and `states` columns:
    "raw" (cosines of the states, the definition) and "centred" (of the states minus the mean last-token
    state of the spectra sequences at that layer and checkpoint: a common direction that every state
    shares makes every raw cosine close to 1 and hides the differences)."""
    if inputs.contexts is None:
        return pd.DataFrame()
    b = inputs.contexts.word_buckets()
    parts = []
    for r in results:
        for name, (a1, a2) in (("raw", (r.p1, r.p2)), ("centred", (r.p1_centred, r.p2_centred))):
            if a1 is not None:
                parts.append(frame(WS.perturbation_by_bucket(WS.PerturbationScores(a1, a2), b))
                             .assign(trajectory=traj.name, step=r.step, states=name))
    df = pd.concat(parts, ignore_index=True)
    return df[["trajectory", "step", "states"] + [c for c in df.columns if c not in ("trajectory", "step", "states")]]


def training_log(traj: Trajectory) -> pd.DataFrame:
    """The toy run's training log (tg_utils.toy.checkpoints.read_log) with a trajectory column; empty for hub models."""
    if traj.run_dir is None:
        return pd.DataFrame()
    return read_log(traj.run_dir).assign(trajectory=traj.name)
