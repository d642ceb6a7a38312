"""A phrase's trajectory in a 3-D UMAP of the embedding rows, after Traveling Words (trajectory.py,
utils/umap_utils.py): the fit on embedding rows with exact kNN graphs, and every layer's state projected
into it.

UMAP trajectory (``umap_trajectory``): a 3-D UMAP fitted on embedding rows, then every layer's state of a
phrase, passed through ``norm`` (the final norm: the paper maps "every layer to the norm space used at the
end", trajectory.py:106-107), projected with ``transform``; ``extra`` points (the paper's raw token
embeddings and token + position embeddings, trajectory.py:56-67) are projected as they are. Choices, the
paper's first:
    rows    "first": the first ``n_fit`` rows of W_E (the paper: 10 000, trajectory.py:210-213);
            "random": a variant, n_fit rows drawn from the non-zero rows with numpy's default_rng(seed)
            without replacement (all rows when fewer)
    metric  "euclidean": UMAP's default, the paper's (utils/umap_utils.py:19-24); "cosine": a variant
            (states and embeddings differ in scale; cosine makes that irrelevant)
    init    "spectral": the paper's Laplacian-eigenmap start, sklearn's SpectralEmbedding(n_components=3)
            of the fitted rows (utils/umap_utils.py:12-24; its own defaults: a kNN affinity over
            n_fit / 10 neighbours), random_state=seed; "umap": UMAP's own spectral start of its graph
    n_epochs  None: UMAP's default (500 for up to 10 000 rows, as the paper); the variant uses 200
The kNN graphs are exact: the fitted rows' k nearest rows (Euclidean or cosine distance) come from one
torch matmul and are handed to UMAP as a sparse precomputed distance matrix, and new points get their exact
kNN among the fitted rows the same way (UMAP's own path approximates the kNN by NN-descent above 4096 rows,
compiles numba kernels and takes minutes on 2 cores). random_state=seed, transform_seed=seed, n_jobs=1:
the same inputs give the same coordinates (the paper sets no seed).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ._tensors import chunks, tensor
from .norms import as_norm

Tensor = torch.Tensor


@dataclass(frozen=True)
class UmapTrajectory:
    """coords [n_layers, n_tokens, 3]: each state projected into the embedding UMAP; norms
    [n_layers, n_tokens]: ||state|| as given; normed_norms: ||norm(state)|| (None without a norm);
    embedding_coords [n_fit, 3] and fit_ids [n_fit]: the fitted embedding rows (the background cloud);
    extra_coords [m, 3]: the ``extra`` points (None without); reducer: the fitted umap.UMAP (metric
    "precomputed": transform wants sparse kNN distances)."""
    coords: np.ndarray
    norms: np.ndarray
    normed_norms: np.ndarray | None
    embedding_coords: np.ndarray
    fit_ids: np.ndarray
    reducer: object
    extra_coords: np.ndarray | None = None


ROWS = ("first", "random")
METRICS = ("euclidean", "cosine")
INITS = ("spectral", "umap")


def _unit(X: Tensor) -> Tensor:
    return X / torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp_min(1e-30)


def _knn_sparse(Q: Tensor, R: Tensor, k: int, exclude_self: bool, metric: str = "cosine", chunk: int = 4096):
    """Sparse [len(Q), len(R)] matrix of distances to the k nearest rows of R (metric "cosine": Q and R
    unit rows, 1 - cos; "euclidean": ||q - r||), floored at 1e-8 so that every entry is stored;
    exclude_self drops the query's own row (Q is R)."""
    n = Q.shape[0]
    kk = k + 1 if exclude_self else k
    r2 = R.double().pow(2).sum(1) if metric == "euclidean" else None
    idx_all, dist_all = [], []
    for i, j in chunks(n, chunk):
        sims = Q[i:j] @ R.T                                          # [c, n_R]
        if metric == "euclidean":                                    # nearest = largest 2 q.r - |r|^2
            sims = 2.0 * sims.double() - r2
        vals, idx = sims.topk(kk, dim=1)
        if exclude_self:
            own = torch.arange(i, j, device=idx.device)[:, None]
            is_self = idx == own
            # a row whose own index is not among the kk (exact duplicates tie with it): drop the last
            no_self = ~is_self.any(1)
            is_self[no_self, -1] = True
            keep = ~is_self
            idx = idx[keep].reshape(j - i, k)
            vals = vals[keep].reshape(j - i, k)
        if metric == "euclidean":
            q2 = Q[i:j].double().pow(2).sum(1, keepdim=True)
            dist = (q2 - vals).clamp_min(0.0).sqrt().clamp_min(1e-8)
        else:
            dist = (1.0 - vals.double()).clamp(1e-8, 2.0)
        idx_all.append(idx.cpu())
        dist_all.append(dist.cpu())
    idx = torch.cat(idx_all).numpy().ravel()
    dist = torch.cat(dist_all).numpy().ravel()
    rows = np.repeat(np.arange(n), k)
    return sp.csr_matrix((dist, (rows, idx)), shape=(n, R.shape[0]))


def _numba_setup():
    """Before umap's numba kernels first run: choose numba's "workqueue" threading layer (unless
    NUMBA_THREADING_LAYER is set). Its default, the OpenMP layer, leaves a second OpenMP runtime in the
    process beside torch's, and afterwards every torch LAPACK call (QR, SVD) ran 20-30x slower here.
    Returns a context manager that caps numba's threads at torch's thread count (OMP_NUM_THREADS=1 means
    one thread for numba too) and restores the previous count."""
    import numba        # lazy on purpose: numba (and umap) take seconds to import; only the UMAP fit needs them

    if "NUMBA_THREADING_LAYER" not in os.environ:
        try:
            launched = numba.threading_layer()     # raises ValueError before the first parallel launch
        except ValueError:
            launched = None
        if launched is None:
            numba.config.THREADING_LAYER = "workqueue"

    @contextlib.contextmanager
    def capped():
        before = numba.get_num_threads()
        numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS, torch.get_num_threads())))
        try:
            yield
        finally:
            numba.set_num_threads(before)
    return capped()


def fit_rows(E: Tensor, n_fit: int | None, rows: str = "first", seed: int = 0) -> np.ndarray:
    """Indices of the embedding rows the UMAP is fitted on: "first": the first n_fit rows (the paper,
    trajectory.py:210-213); "random": n_fit of the non-zero rows drawn with default_rng(seed). None: all."""
    if rows not in ROWS:
        raise ValueError(f"rows must be one of {ROWS}, got {rows!r}")
    V = E.shape[0]
    if rows == "first":
        return np.arange(V if n_fit is None else min(int(n_fit), V))
    nz = np.flatnonzero(torch.linalg.vector_norm(E, dim=1).cpu().numpy() > 0)
    if n_fit is not None and len(nz) > n_fit:
        return np.sort(np.random.default_rng(seed).choice(nz, size=n_fit, replace=False))
    return nz


def spectral_init(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """The paper's UMAP start (utils/umap_utils.py:12-16): sklearn's SpectralEmbedding(n_components=3) of
    the rows with its defaults, random_state=seed."""
    from sklearn.manifold import SpectralEmbedding    # lazy on purpose: only the paper's UMAP start needs it
    return SpectralEmbedding(n_components=3, random_state=seed).fit_transform(X)


def umap_trajectory(W_E, states, n_neighbors: int = 15, seed: int = 0, n_fit: int | None = 10000,
                    n_epochs: int | None = None, min_dist: float = 0.1, norm=None, rows: str = "first",
                    metric: str = "euclidean", init: str = "spectral", extra=None,
                    verbose: bool = False) -> UmapTrajectory:
    """Fit a 3-D UMAP on ``n_fit`` embedding rows (``rows``, ``metric``, ``init``: see the module docstring;
    the defaults are the paper's) and project a phrase's states [n_layers, n_tokens, d] into it -> coords
    [n_layers, n_tokens, 3]. ``norm`` (the final norm) is applied to the states before projecting; the
    norms of the states before and after it come back too. ``extra`` [m, d]: more points projected as they
    are (no norm). Deterministic for a given seed."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    E = tensor(W_E, torch.float32)
    S = tensor(states, torch.float32).to(E.device)
    if S.ndim != 3 or S.shape[-1] != E.shape[1]:
        raise ValueError(f"states must be [n_layers, n_tokens, d={E.shape[1]}], got {tuple(S.shape)}")
    L, T, d = S.shape
    norms = torch.linalg.vector_norm(S.double(), dim=-1).cpu().numpy()
    normed_norms = None
    if norm is not None:
        S = as_norm(norm)(S.reshape(-1, d)).reshape(L, T, d).to(torch.float32)
        normed_norms = torch.linalg.vector_norm(S.double(), dim=-1).cpu().numpy()
    ids = fit_rows(E, n_fit, rows, seed)
    if len(ids) <= n_neighbors + 1:
        raise ValueError(f"{len(ids)} embedding rows are too few for n_neighbors={n_neighbors}")
    prep = _unit if metric == "cosine" else (lambda X: X)
    R = prep(E[torch.as_tensor(ids, device=E.device)])
    D = _knn_sparse(R, R, n_neighbors, exclude_self=True, metric=metric)
    D = D.maximum(D.T).tocsr()                      # symmetric kNN graph (umap checks symmetry)
    X = extra_points = None if extra is None else tensor(extra, torch.float32).to(E.device).reshape(-1, d)
    Q = torch.cat([S.reshape(-1, d)] + ([] if X is None else [X]))
    Dq = _knn_sparse(prep(Q), R, n_neighbors, exclude_self=False, metric=metric)
    start = spectral_init(R.cpu().numpy(), seed) if init == "spectral" else "spectral"

    numba_threads = _numba_setup()
    import umap         # lazy on purpose: a slow import (numba), only when a trajectory is fitted
    with warnings.catch_warnings(), numba_threads:
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=3, n_neighbors=n_neighbors, min_dist=min_dist, metric="precomputed",
                            random_state=seed, transform_seed=seed, n_jobs=1, n_epochs=n_epochs, init=start,
                            verbose=verbose)
        emb = reducer.fit_transform(D)
        coords = np.asarray(reducer.transform(sp.csr_matrix(Dq)), dtype=np.float64)
    return UmapTrajectory(coords=coords[:L * T].reshape(L, T, 3), norms=norms, normed_norms=normed_norms,
                          embedding_coords=np.asarray(emb, dtype=np.float64), fit_ids=ids, reducer=reducer,
                          extra_coords=None if extra_points is None else coords[L * T:])
