"""Notebook 07's phrase trajectory (after Traveling Words, trajectory.py): the phrase's states at every
state index 0..L (through the activation cache), final-normed and projected into a 3-D UMAP fitted on the
embedding rows (``weights.umap.umap_trajectory``), the raw token embeddings and token + position
embeddings projected beside them (the paper's first panel, trajectory.py:56-78), per-layer norms before
and after the final norm, and the logit-lens top-1 token of every state (``models.unembed.lens_top1``).
A BOS the tokenizer adds is run through the model but left out of the tables (its state is an outlier in
norm and direction)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..cache import cached_states
from ..models.unembed import lens_top1
from ..weights import umap as U
from ..weights.norms import as_norm
from ..weights.vocab import token_strings
from .nb07_report import Trajectory

# stage of a row of the trajectory coordinates: the paper's panels (trajectory.py:56-107)
STAGE_EMBEDDING = "embedding"                 # the raw token embedding, W_E[t] (line 56-57)
STAGE_INPUT = "embedding + position"          # the raw first state, W_E[t] * scale + W_pos[p] (lines 59-67)
STAGE_NORMED = "final-normed"                 # ln_f(state l), l = 0..L (lines 80-82, 106-107)


def phrase_ids(lm, phrase: str) -> tuple[list[int], int]:
    """(token ids as the model's tokenizer encodes the phrase, number of leading BOS positions to drop)."""
    ids = lm.encode(phrase)
    drop = int(bool(lm.desc.adds_bos and ids and ids[0] == lm.desc.bos_token_id))
    if len(ids) - drop < 1:
        raise ValueError(f"the phrase {phrase!r} has no tokens under {lm.desc.spec}")
    return ids, drop


def trajectory_tables(lm, phrase: str, out_dir="outputs", n_fit: int | None = 10000, n_neighbors: int = 15,
                      n_epochs: int | None = None, seed: int = 0, rows: str = "first", metric: str = "euclidean",
                      init: str = "spectral") -> Trajectory:
    """States 0..L of the phrase (``cache.cached_states``, positions="all"), final-normed and projected into a
    3-D UMAP fitted on ``n_fit`` embedding rows (``weights.umap.umap_trajectory`` with ``rows``, ``metric``,
    ``init``; the defaults are the paper's); the raw embeddings and first states projected as they are;
    norms before / after the final norm; the logit-lens top-1 token of every final-normed state."""
    desc = lm.desc
    ids, drop = phrase_ids(lm, phrase)
    L = desc.n_layers
    st = cached_states(lm, [ids], layers=list(range(L + 1)), positions="all", dtype="float32",
                       out_dir=out_dir, progress=False, batch_size=1)
    S = st.states[0][:, drop:].to(torch.float32)                         # [L+1, T, d]
    tok_ids = ids[drop:]
    tokens = token_strings(lm.tokenizer, tok_ids)[0]
    raw = torch.cat([desc.W_E[tok_ids].to(torch.float32), S[0]])         # [2T, d]: wte(inputs), wte + wpe
    tr = U.umap_trajectory(desc.W_E, S, n_neighbors=n_neighbors, seed=seed, n_fit=n_fit, n_epochs=n_epochs,
                           norm=desc.final_norm, rows=rows, metric=metric, init=init, extra=raw)
    n_l, T = S.shape[:2]
    lay = np.repeat(np.arange(n_l), T)
    pos = np.tile(np.arange(T), n_l)
    tok = np.asarray(tokens, dtype=object)[pos]
    coords = pd.DataFrame({"stage": STAGE_NORMED, "layer": lay, "position": pos, "token": tok,
                           "x": tr.coords[..., 0].ravel(), "y": tr.coords[..., 1].ravel(),
                           "z": tr.coords[..., 2].ravel()})
    if tr.extra_coords is not None:
        ex = tr.extra_coords
        extra = pd.DataFrame({"stage": np.repeat([STAGE_EMBEDDING, STAGE_INPUT], T), "layer": 0,
                              "position": np.tile(np.arange(T), 2),
                              "token": np.tile(np.asarray(tokens, dtype=object), 2),
                              "x": ex[:, 0], "y": ex[:, 1], "z": ex[:, 2]})
        coords = pd.concat([extra, coords], ignore_index=True)
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
