"""A phrase's trajectory in a 3-D UMAP of the embedding rows: the fit on a seeded subsample of W_E with
exact cosine kNN graphs, and every layer's state projected into it.

UMAP trajectory (``umap_trajectory``): a 3-D UMAP fitted on embedding rows with the cosine metric
(states and embeddings differ in scale; cosine makes that irrelevant), then every layer's state of a
phrase projected with ``transform``. Speed: n_fit rows (default 5000) are drawn from the non-zero
rows of W_E with numpy's default_rng(seed) without replacement (all rows when fewer), their exact
cosine kNN graph is computed with one torch matmul and handed to UMAP as a sparse precomputed
distance matrix (umap's own paths compile numba kernels or brute-force a callable metric and take
minutes on 2 cores); new points get their exact kNN among the fitted rows the same way.
``n_epochs`` defaults to 200 (UMAP's own default for small data is 500). random_state=seed,
transform_seed=seed, n_jobs=1: the same inputs give the same coordinates.
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
    reducer: the fitted umap.UMAP (metric "precomputed": transform wants sparse kNN distances)."""
    coords: np.ndarray
    norms: np.ndarray
    normed_norms: np.ndarray | None
    embedding_coords: np.ndarray
    fit_ids: np.ndarray
    reducer: object


def _unit(X: Tensor) -> Tensor:
    return X / torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp_min(1e-30)


def _knn_sparse(Q: Tensor, R: Tensor, k: int, exclude_self: bool, chunk: int = 4096):
    """Sparse [len(Q), len(R)] matrix of cosine distances (1 - cos, floored at 1e-8 so that every entry is
    stored) to the k nearest rows of R; exclude_self drops the query's own row (Q is R)."""
    n = Q.shape[0]
    kk = k + 1 if exclude_self else k
    idx_all, dist_all = [], []
    for i, j in chunks(n, chunk):
        sims = Q[i:j] @ R.T                                          # [c, n_R]
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
        idx_all.append(idx.cpu())
        dist_all.append((1.0 - vals.double()).clamp(1e-8, 2.0).cpu())
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


def umap_trajectory(W_E, states, n_neighbors: int = 15, seed: int = 0, n_fit: int | None = 5000,
                    n_epochs: int | None = 200, min_dist: float = 0.1, norm=None,
                    verbose: bool = False) -> UmapTrajectory:
    """Fit a 3-D UMAP (cosine) on n_fit embedding rows (seeded subsample; None: all rows) and project a
    phrase's states [n_layers, n_tokens, d] into it -> coords [n_layers, n_tokens, 3]. ``norm`` (e.g. the
    final norm) is applied to the states before projecting (the paper plots final-normed states); the
    norms of the states before and after it come back too. Deterministic for a given seed."""
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
    nz = np.flatnonzero(torch.linalg.vector_norm(E, dim=1).cpu().numpy() > 0)
    if n_fit is not None and len(nz) > n_fit:
        fit_ids = np.sort(np.random.default_rng(seed).choice(nz, size=n_fit, replace=False))
    else:
        fit_ids = nz
    if len(fit_ids) <= n_neighbors + 1:
        raise ValueError(f"{len(fit_ids)} embedding rows are too few for n_neighbors={n_neighbors}")
    R = _unit(E[torch.as_tensor(fit_ids, device=E.device)])
    D = _knn_sparse(R, R, n_neighbors, exclude_self=True)
    D = D.maximum(D.T).tocsr()                      # symmetric kNN graph (umap checks symmetry)
    Q = _unit(S.reshape(-1, d))
    Dq = _knn_sparse(Q, R, n_neighbors, exclude_self=False)

    numba_threads = _numba_setup()
    import umap         # lazy on purpose: a slow import (numba), only when a trajectory is fitted
    with warnings.catch_warnings(), numba_threads:
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=3, n_neighbors=n_neighbors, min_dist=min_dist, metric="precomputed",
                            random_state=seed, transform_seed=seed, n_jobs=1, n_epochs=n_epochs,
                            verbose=verbose)
        emb = reducer.fit_transform(D)
        coords = reducer.transform(sp.csr_matrix(Dq))
    return UmapTrajectory(coords=np.asarray(coords, dtype=np.float64).reshape(L, T, 3), norms=norms,
                          normed_norms=normed_norms, embedding_coords=np.asarray(emb, dtype=np.float64),
                          fit_ids=fit_ids, reducer=reducer)
