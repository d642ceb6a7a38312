"""Geometry metrics of token point clouds: pure functions of arrays (numpy, torch, scipy only).

A *cloud* is the N token states of one prompt at one layer, an array of shape (N, d). Every
function accepts numpy arrays or torch tensors (any device, any float dtype) and is batched over
leading dimensions: an input of shape (..., N, d) (e.g. prompts x layers x tokens x features)
gives outputs with the same leading shape (...). Results are numpy arrays, or Python floats for a
single cloud; distances are always float64. Definitions: docs/METRICS.md.

Neighbours are computed once per cloud and shared by GRIDE and the neighbourhood overlap
(`layer_profile` does this for a stack of layers): on CPU a float32 score matrix (a symmetric
rank-k update) selects the candidates, a rigorous error bound tells where the float32 order is
certain, and the float64 distances that matter are recomputed, so the results equal the float64
ones (see `selection`); `knn` returns the full float64 table; on an accelerator, a float64 matmul
and topk. No Python loop runs over tokens; loops run over clouds, blocks of rows, scales or
solver steps.

Public API (all re-exported here: `from tg_utils import metrics as M; M.gride(X)`)
----------
cosine_similarity_mean(X, include_diagonal=True)      -> float | (...,)
knn(X, k)                                             -> Neighbors(indices, distances), (..., N, k)
gride(X, range_max=256, neighbors=None)               -> GrideResult (ids, errs, rs per scale, ...)
neighborhood_overlap(X_a, X_b, k_max=31, ...)         -> (..., k_max + 1); index k holds chi_k
eigenspectrum(X)                                      -> (..., min(N, d)), descending, sums to 1
rankme(eigs, variant="covariance")                    -> float | (...,)
alpha_req(eigs)                                       -> AlphaReq(alpha, r2, r2_100)
power_law_intercept(eigs, alpha)                      -> float | (...,): alpha-ReQ fit's log-intercept
token_convergence(states_t, states_final)             -> (...,): cosine per matching state
nn_sim(X)                                             -> (..., N): cos(x_i - nn1, x_i - nn2) per token
nn_angle(cos)                                         -> its angle in degrees
layer_profile(X, range_max=256, k_max=31)             -> LayerProfile (ID, chi_k, cosine, nn_sim per layer)

Modules
-------
_arrays     input validation, dtype / torch helpers, batching, the one-thread scope
cosine      cosine_similarity_mean, token_convergence
selection   partial selections; float32 selection with float64 resolution of a score matrix
knn         Neighbors, knn and the neighbour table the metrics share
gride       GrideResult, gride, gride_scales, gride_from_rank_distances
overlap     neighborhood_overlap, overlap_from_indices
nnsim       nn_sim (token_geometry's nearest-neighbour difference cosine), nn_angle
spectra     eigenspectrum, rankme, AlphaReq, alpha_req, power_law_intercept
profile     LayerProfile, layer_profile
stats       bootstrap means with intervals, Pearson correlations
trajectory  the phase rule of training trajectories (RankMe / alpha-ReQ curves -> phases)
word_states token convergence and context perturbation per bucket of words
information Layer by Layer's matrix (prompt, dataset) entropies and token-trajectory curvature;
            our depth curvature
similarity  linear CKA, mutual k-NN alignment, LLM-Microscope's linearity, anisotropy
lens        logit-lens entropy and surprisal of states (final norm and unembedding given)
gride_scale the automatic GRIDE scale (the first flat window of the ID-vs-scale curve)
            (stats, trajectory, word_states, information, similarity, lens, gride_scale are not
            re-exported: import the module)
The functions `knn` and `gride` shadow their modules as attributes of this package; import a
module's private helpers with `from tg_utils.metrics.knn import ...` (which reads sys.modules).
"""
from __future__ import annotations

from .cosine import cosine_similarity_mean, token_convergence
from .gride import (GRIDE_D0, GRIDE_D1, GRIDE_TOL, GrideResult, gride, gride_from_rank_distances,
                    gride_scales)
from .knn import Neighbors, knn
from .nnsim import nn_angle, nn_sim
from .overlap import neighborhood_overlap, overlap_from_indices
from .profile import LayerProfile, layer_profile
from .spectra import (ALPHA_FIT_RANKS, ALPHA_R2_FIRST_RANK, AlphaReq, alpha_req, eigenspectrum,
                      power_law_intercept, rankme)

__all__ = [
    "Neighbors", "GrideResult", "AlphaReq", "LayerProfile",
    "cosine_similarity_mean", "knn", "gride", "gride_scales", "gride_from_rank_distances",
    "neighborhood_overlap", "overlap_from_indices", "eigenspectrum", "rankme", "alpha_req",
    "power_law_intercept", "token_convergence", "layer_profile", "nn_sim", "nn_angle",
    "GRIDE_D0", "GRIDE_D1", "GRIDE_TOL", "ALPHA_FIT_RANKS", "ALPHA_R2_FIRST_RANK",
]
