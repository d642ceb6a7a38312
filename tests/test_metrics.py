"""tg_utils.metrics: reference values of the seed procedures, analytic cases, batching, errors.

The reference file (point clouds and the values DADApy 0.3, token_geometry and the Tracing paper's
code produce on them) is looked up in $TG_GEOMETRY_REFERENCE, tests/data/, then ../shared/reference/.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from tg_utils import metrics as M
from tg_utils.metrics.gride import _first_occurrences, _gride_one, _gride_ranks
from tg_utils.metrics.knn import _centred, _knn_numpy, _knn_torch, _neighbor_table
from tg_utils.metrics.selection import (_k_nearest, _k_smallest_f32, _smallest_sorted, _table_f32,
                                        _table_f64)
from tg_utils.metrics.spectra import _covariance_eigenvalues

REPO = Path(__file__).resolve().parents[1]
REFERENCE_CANDIDATES = [
    Path(os.environ.get("TG_GEOMETRY_REFERENCE", "/nonexistent")),
    REPO / "tests" / "data" / "geometry_reference.npz",
    REPO.parent / "shared" / "reference" / "geometry_reference.npz",
]
SMOLLM2 = ["smollm2_L2", "smollm2_L3", "smollm2_L12", "smollm2_L13", "smollm2_L28", "smollm2_L29"]
NAMES = ["linear", "sphere", "dups"] + SMOLLM2
PAIRS = ["linear|sphere", "smollm2_L2|smollm2_L3", "smollm2_L12|smollm2_L13",
         "smollm2_L28|smollm2_L29"]


# ============================================================================ fixtures and helpers

@pytest.fixture(scope="module", autouse=True)
def single_blas_thread():
    """One BLAS thread: on a shared, busy machine multi-threaded LAPACK calls can stall for seconds
    (results do not depend on it beyond round-off)."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def ref():
    path = next((p for p in REFERENCE_CANDIDATES if p.is_file()), None)
    assert path is not None, "geometry_reference.npz not found: it ships in tests/data/ (or set TG_GEOMETRY_REFERENCE)"
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def ref_gride(ref):
    return {name: M.gride(ref[f"X__{name}"]) for name in NAMES}


def random_cloud(n=200, d=16, seed=0, intrinsic=None):
    """Gaussian cloud (n, d); with `intrinsic`, uniform in a cube of that dimension, randomly
    rotated and translated into R^d."""
    rng = np.random.default_rng(seed)
    if intrinsic is None:
        return rng.normal(size=(n, d))
    Z = np.hstack([rng.uniform(size=(n, intrinsic)), np.zeros((n, d - intrinsic))])
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return Z @ Q.T + rng.normal(size=d)


def brute_gride(X, range_max=256):
    """GRIDE written out plainly (full distance matrix, sort, DADApy's bisection per scale)."""
    X = np.unique(np.asarray(X, dtype=np.float64), axis=0)
    D = np.sort(cdist(X, X), axis=1)                               # column 0: the point itself
    ids = []
    n1 = 1
    while 2 * n1 <= min(range_max, len(X) - 1):
        mus = D[:, 2 * n1] / D[:, n1]
        q95, q50 = np.percentile(mus, [95, 50])
        kept = mus[mus < q50 + 20 * (q95 - q50)]

        def f(d):
            one_m = np.maximum(1 - kept ** (-d), 2e-7)
            return np.sum(((1 - n1) / one_m + 2 * n1 - 1) * np.log(kept)) - (len(kept) - 1) / d
        d0, d1 = 1e-3, 1e3
        l1 = f(d1)
        while abs(d0 - d1) > 1e-7:
            d2 = (d0 + d1) / 2
            d0, d1 = (d0, d2) if f(d2) * l1 > 0 else (d2, d1)
        ids.append((d0 + d1) / 2)
        n1 *= 2
    return np.array(ids)


def brute_overlap(X_a, X_b, k_max):
    ia = np.argsort(cdist(X_a, X_a) + np.diag(np.full(len(X_a), np.inf)), axis=1)
    ib = np.argsort(cdist(X_b, X_b) + np.diag(np.full(len(X_b), np.inf)), axis=1)
    chi = np.zeros(k_max + 1)
    for k in range(1, k_max + 1):
        chi[k] = np.mean([len(set(ia[i, :k]) & set(ib[i, :k])) / k for i in range(len(X_a))])
    return chi


# ---------------------------------------------------------------------------- round-off of tables
#
# Every neighbour table gets its squared distances from the Gram formula |x_i|^2 + |x_j|^2 -
# 2 x_i.x_j on the centred cloud. Its three d-term sums are off by at most gamma_d ~ d eps times
# |x_i||x_j| (or |x|^2) in any summation order, with or without FMA: the freedom that BLAS kernels
# (and torch's sampled product) use differently on different CPUs. With the two additions and the
# centring, a computed squared distance is off by at most
#     b_ij = (d + 4) eps (|x_i| + |x_j|)^2  <=  (d + 4) eps (2 |x_i| + |x_i - x_j|)^2
# (triangle inequality), and cdist's by less ((d + 2) eps |x_i - x_j|^2). So two computations of
# a squared distance differ by at most 2 b_ij, and so do the r-th smallest values of a row (an
# order statistic moves no more than the values do), whichever points hold rank r. Neighbour orders
# agree exactly where consecutive squared distances are further apart than that (`order_margin` >
# 1); exact ties (copies of one point) can come in either order, by CPU.

EPS = float(np.finfo(np.float64).eps)
# GRIDE from two computations of the same distances (round-off apart): the replayed bisection returns
# the midpoint of a bracket narrower than GRIDE_TOL around the likelihood's root, and round-off moves
# that root by ~1e-12 relative, so the IDs agree within GRIDE_TOL (+ 1e-9 for the root's move).
GRIDE_ATOL = M.GRIDE_TOL + 1e-9


def d2_round_off(d, norm_i, dist):
    """b_ij above for points of norm norm_i at distance dist (broadcast) in a cloud of d features."""
    return (d + 4) * EPS * (2 * norm_i + dist) ** 2


def assert_d2_close(d2, d2_ref, Xc):
    """Squared distances d2 (N, R) and d2_ref of two computations, row i from point i of the centred
    cloud Xc, within 2 b_ij (plus 4 eps relative: a distance squared back after its square root)."""
    norms = np.sqrt((Xc * Xc).sum(1))[:, None]
    tol = 2 * d2_round_off(Xc.shape[1], norms, np.sqrt(np.maximum(d2_ref, 0))) + 4 * EPS * np.abs(d2_ref)
    excess = np.abs(d2 - d2_ref) - tol
    assert excess.max() <= 0, f"{(excess > 0).sum()} squared distances differ by more than round-off"


def same_point(X):
    """For every row of X, the first index of its identical rows (copies of a point: one index)."""
    _, first, inverse = np.unique(X, axis=0, return_index=True, return_inverse=True)
    return first[inverse.ravel()]


def order_margin(X, k):
    """Smallest ratio, over every point i and consecutive neighbours j, j' among its k + 1 nearest
    (copies of one point skipped), of the cdist gap |x_i - x_j'|^2 - |x_i - x_j|^2 to 2 (b_ij +
    b_ij'): cdist's own error and a table's at both ends. > 1: every float64 table orders the k
    nearest neighbours of every point as exact arithmetic does (copies aside), on any CPU."""
    Xc = X - X.mean(0)
    D2 = cdist(Xc, Xc, "sqeuclidean")
    np.fill_diagonal(D2, np.inf)
    nn = np.argsort(D2, axis=1)[:, :k + 1]
    d2 = np.take_along_axis(D2, nn, axis=1)
    b = d2_round_off(X.shape[1], np.sqrt((Xc * Xc).sum(1))[:, None], np.sqrt(d2))
    same = same_point(X)
    distinct = same[nn[:, :-1]] != same[nn[:, 1:]]
    return (np.diff(d2, axis=1) / (2 * (b[:, :-1] + b[:, 1:])))[distinct].min()


# ============================================================================ reference values

@pytest.mark.parametrize("name", NAMES)
def test_gride_matches_dadapy_reference(ref, ref_gride, name):
    g = ref_gride[name]
    np.testing.assert_array_equal(g.n1, 2 ** np.arange(8))
    np.testing.assert_array_equal(g.n2, 2 ** np.arange(1, 9))
    assert g.n_unique == int(ref[f"gride_n_unique__{name}"])
    np.testing.assert_allclose(g.ids, ref[f"gride_ids__{name}"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(g.errs, ref[f"gride_errs__{name}"], rtol=1e-6)
    np.testing.assert_allclose(g.rs, ref[f"gride_rs__{name}"], rtol=1e-6)
    assert g.id == pytest.approx(ref[f"gride_ids__{name}"][0], abs=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_cosine_eigenspectrum_rankme_alpha_match_reference(ref, name):
    X = ref[f"X__{name}"]
    assert M.cosine_similarity_mean(X) == pytest.approx(ref[f"cos_mean_full__{name}"], abs=1e-6)
    assert M.cosine_similarity_mean(X, include_diagonal=False) == pytest.approx(
        ref[f"cos_mean_offdiag__{name}"], abs=1e-6)
    eigs = M.eigenspectrum(X)
    np.testing.assert_allclose(eigs, ref[f"eig_ratio__{name}"], rtol=1e-6)
    for spectrum in (eigs, ref[f"eig_ratio__{name}"]):
        assert M.rankme(spectrum) == pytest.approx(ref[f"rankme__{name}"], rel=1e-6)
        a = M.alpha_req(spectrum)
        assert a.alpha == pytest.approx(ref[f"alpha__{name}"], rel=1e-6)
        assert a.r2 == pytest.approx(ref[f"r2__{name}"], abs=1e-6)
        assert a.r2_100 == pytest.approx(ref[f"r2_100__{name}"], abs=1e-6)


@pytest.mark.parametrize("pair", PAIRS)
def test_neighborhood_overlap_matches_reference(ref, pair):
    """chi_k to 1e-12: the neighbourhoods of these clouds are certain in float64 (order_margin > 1,
    by a factor >= 1e4), so any CPU gets the reference's top-k sets exactly."""
    a, b = pair.split("|")
    assert order_margin(ref[f"X__{a}"], 31) > 1 and order_margin(ref[f"X__{b}"], 31) > 1
    chi = M.neighborhood_overlap(ref[f"X__{a}"], ref[f"X__{b}"], k_max=31)
    assert chi.shape == (32,) and chi[0] == 0
    np.testing.assert_allclose(chi, ref[f"no_chi__{pair}"], rtol=0, atol=1e-12)


def test_layer_profile_shares_one_knn_table_and_matches_reference(ref, ref_gride):
    stack = np.stack([ref[f"X__{n}"] for n in SMOLLM2])            # 6 "layers"
    prof = M.layer_profile(stack[None])                            # (1 prompt, 6 layers)
    assert prof.gride.ids.shape == (1, 6, 8) and prof.chi.shape == (1, 5, 32)
    for l, name in enumerate(SMOLLM2):                             # the distances gride uses
        np.testing.assert_array_equal(prof.gride.ids[0, l], ref_gride[name].ids)
        assert prof.cos_full[0, l] == pytest.approx(ref[f"cos_mean_full__{name}"], abs=1e-6)
        assert prof.cos_offdiag[0, l] == pytest.approx(ref[f"cos_mean_offdiag__{name}"], abs=1e-6)
    for l in (0, 2, 4):                                            # the consecutive reference pairs
        pair = f"{SMOLLM2[l]}|{SMOLLM2[l + 1]}"
        np.testing.assert_allclose(prof.chi[0, l], ref[f"no_chi__{pair}"], rtol=0, atol=1e-12)


def test_gride_reuses_a_precomputed_table(ref, ref_gride):
    X = ref["X__smollm2_L12"]
    nb = M.knn(X, 256)
    assert nb.indices.shape == nb.distances.shape == (1024, 256)
    g = M.gride(X, neighbors=nb)                                   # float64 product's distances
    np.testing.assert_allclose(g.ids, ref_gride["smollm2_L12"].ids, rtol=0, atol=GRIDE_ATOL)
    chi = M.neighborhood_overlap(X, ref["X__smollm2_L13"], neighbors_a=nb,   # top-k sets certain
                                 neighbors_b=M.knn(ref["X__smollm2_L13"], 31))
    np.testing.assert_allclose(chi, ref["no_chi__smollm2_L12|smollm2_L13"], rtol=0, atol=1e-12)


# ============================================================================ analytic cases

@pytest.mark.parametrize("d", [2, 3, 5])
def test_gride_uniform_cube_gives_its_dimension(d):
    X = random_cloud(n=2000, d=24, seed=d, intrinsic=d)
    g = M.gride(X, range_max=32)
    assert abs(g.id - d) < 0.1 * d
    assert np.all(np.abs(g.ids - d) < 0.15 * d)


def test_gride_equals_plain_implementation_on_small_clouds():
    X = random_cloud(n=150, d=10, seed=3, intrinsic=4)
    g = M.gride(X)                                                 # scales n2 = 2..128 (< 150)
    np.testing.assert_array_equal(g.n1, [1, 2, 4, 8, 16, 32, 64])
    np.testing.assert_allclose(g.ids, brute_gride(X), rtol=0, atol=1e-7)


def test_identical_clouds_have_full_overlap():
    X = random_cloud(n=100, d=8)                                   # the same computation twice
    chi = M.neighborhood_overlap(X, X.copy(), k_max=31)
    assert chi[0] == 0
    np.testing.assert_array_equal(chi[1:], 1.0)


def test_overlap_and_knn_equal_brute_force():
    X_a, X_b = random_cloud(n=120, d=6, seed=1), random_cloud(n=120, d=9, seed=2)
    X_b[:, :6] += 2 * X_a                                          # partly shared structure
    assert order_margin(X_a, 15) > 1 and order_margin(X_b, 10) > 1  # certain orders: exact below
    np.testing.assert_allclose(M.neighborhood_overlap(X_a, X_b, k_max=10),
                               brute_overlap(X_a, X_b, 10), rtol=0, atol=1e-12)
    nb = M.knn(X_a, 15)
    D = cdist(X_a, X_a) + np.diag(np.full(len(X_a), np.inf))
    np.testing.assert_array_equal(nb.indices, np.argsort(D, axis=1)[:, :15])
    assert_d2_close(nb.distances ** 2, np.sort(D, axis=1)[:, :15] ** 2, X_a - X_a.mean(0))


def test_rotation_and_translation_change_nothing():
    rng = np.random.default_rng(7)
    X = random_cloud(n=300, d=12, seed=4, intrinsic=5) + 0.01 * rng.normal(size=(300, 12))
    Y = random_cloud(n=300, d=12, seed=5)
    Q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    X2, Y2 = X @ Q + 3.0, Y @ Q - 1.5
    np.testing.assert_allclose(M.gride(X2).ids, M.gride(X).ids, rtol=0, atol=1e-6)
    # the rotation moves the squared distances by a few round-off bounds: orders stay certain
    assert order_margin(X, 31) > 10 and order_margin(Y, 31) > 10
    np.testing.assert_array_equal(M.neighborhood_overlap(X2, Y2), M.neighborhood_overlap(X, Y))
    np.testing.assert_allclose(M.eigenspectrum(X2), M.eigenspectrum(X), rtol=1e-8, atol=1e-15)
    assert M.cosine_similarity_mean(X @ Q) == pytest.approx(M.cosine_similarity_mean(X), abs=1e-12)


def test_duplicates_are_dropped_before_gride():
    X = random_cloud(n=300, d=10, seed=6, intrinsic=3)
    X_dup = np.concatenate([X, X[:50], X[10:20]])[np.random.default_rng(0).permutation(360)]
    g, g_dup = M.gride(X), M.gride(X_dup)                          # rows permuted: the centring
    assert g_dup.n_unique == 300                                   # and distances round apart
    np.testing.assert_allclose(g_dup.ids, g.ids, rtol=0, atol=GRIDE_ATOL)
    np.testing.assert_allclose(g_dup.rs, g.rs, rtol=1e-12)
    g_nb = M.gride(X_dup, neighbors=M.knn(X_dup, 200))             # a table with duplicates
    np.testing.assert_allclose(g_nb.ids, g.ids, rtol=0, atol=GRIDE_ATOL)


def test_power_law_spectrum_gives_its_exponent():
    for a in (0.5, 1.0, 1.7):
        eigs = np.arange(1, 577, dtype=np.float64) ** -a
        res = M.alpha_req(eigs / eigs.sum())
        assert res.alpha == pytest.approx(a, rel=1e-9)
        assert res.r2 == pytest.approx(1.0, abs=1e-9) and res.r2_100 == pytest.approx(1.0, abs=1e-9)
    noisy = np.arange(1, 577) ** -1.2 * np.exp(0.05 * np.random.default_rng(0).normal(size=576))
    assert M.alpha_req(np.sort(noisy)[::-1]).alpha == pytest.approx(1.2, abs=0.05)


def test_rankme_variants():
    flat = np.full(64, 1 / 64)
    assert M.rankme(flat) == pytest.approx(64, rel=1e-4)
    assert M.rankme(flat, variant="singular") == pytest.approx(64, rel=1e-4)
    one = np.zeros(64)
    one[0] = 1.0
    assert M.rankme(one) == pytest.approx(1.0, rel=1e-3)         # 63 zeros still carry eps
    eigs = np.array([0.64, 0.36])                                  # singular values 0.8, 0.6
    p = np.array([0.8, 0.6]) / 1.4 + 1e-7
    assert M.rankme(eigs, variant="singular") == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    with pytest.raises(ValueError, match="variant"):
        M.rankme(eigs, variant="svd")


def test_eigenspectrum_equals_pca_also_with_fewer_tokens_than_features():
    from sklearn.decomposition import PCA
    for n, d in ((50, 20), (20, 50)):
        X = random_cloud(n=n, d=d, seed=n)
        eigs = M.eigenspectrum(X)
        assert eigs.shape == (min(n, d),)
        np.testing.assert_allclose(eigs, PCA().fit(X).explained_variance_ratio_, rtol=1e-7,
                                   atol=1e-14)


def test_cosine_means_equal_the_full_matrix():
    from sklearn.metrics.pairwise import cosine_similarity
    X = random_cloud(n=60, d=5, seed=9) + 0.5
    X[3] = 0.0                                                     # a zero state: cosine 0
    C = cosine_similarity(X)
    assert M.cosine_similarity_mean(X) == pytest.approx(C.mean(), abs=1e-12)
    off = (C.sum() - np.trace(C)) / (60 * 59)
    assert M.cosine_similarity_mean(X, include_diagonal=False) == pytest.approx(off, abs=1e-12)


def test_token_convergence_is_a_cosine_per_word_and_layer():
    rng = np.random.default_rng(0)
    final = rng.normal(size=(4, 3, 8))                             # words x layers x d
    t = np.stack([2 * final[0], -final[1], final[2], np.zeros((3, 8))])
    t[2, :, 0] += 100.0
    cos = M.token_convergence(t, final)
    assert cos.shape == (4, 3)
    np.testing.assert_allclose(cos[0], 1.0)
    np.testing.assert_allclose(cos[1], -1.0)
    norms = np.linalg.norm(t[2], axis=-1) * np.linalg.norm(final[2], axis=-1)
    expected = (t[2] * final[2]).sum(-1) / norms
    np.testing.assert_allclose(cos[2], expected, rtol=1e-12)
    assert np.all(cos[3] == 0.0)
    assert M.token_convergence(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == 0.0


# ============================================================================ neighbour tables

def lattice_cloud(n_dup=60, noise=1e-6, seed=0):
    """Points of a 9 x 9 x 9 grid (spacing 1, many equal distances) moved by `noise` (near-ties:
    squared distances ~1e-11 to 1e-6 apart, which float32 scores cannot order but float64 ones
    can), rotated into R^24 far from the origin, plus n_dup exact copies of random rows;
    shuffled."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(9.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    Z = np.hstack([grid + noise * rng.normal(size=grid.shape), np.zeros((len(grid), 21))])
    Q, _ = np.linalg.qr(rng.normal(size=(24, 24)))
    X = Z @ Q.T + 50.0 * rng.normal(size=24)
    X = np.concatenate([X, X[rng.choice(len(X), n_dup, replace=False)]])
    return X[rng.permutation(len(X))]


def brute_order(X):
    """Neighbours of every point (self excluded) by cdist distance, exact ties by index, and the
    sorted distances: (N, N - 1) each."""
    D = cdist(X, X)
    np.fill_diagonal(D, np.inf)
    cols = np.broadcast_to(np.arange(len(X)), D.shape)
    order = np.lexsort((cols, D), axis=-1)[:, :-1]
    return order, np.take_along_axis(D, order, axis=1)


@pytest.mark.parametrize("margin", [None, 0, 4])
def test_float32_selection_equals_float64_on_near_ties_and_duplicates(margin):
    """Neighbour orders are compared up to the order of copies of one point (exact ties: which of
    two equal distances BLAS rounds lower differs by CPU, issue 23): indices map to the first of
    their identical rows. Every other order is certain in float64 (order_margin > 1), not in
    float32."""
    X = lattice_cloud()
    same = same_point(X)                                           # 60 copies: exact ties
    assert len(np.unique(same)) == 729 and order_margin(X, 31) > 1
    ranks = _gride_ranks(len(X), 256)                              # 1, 2, 4, ..., 256
    order, D = brute_order(X)
    Xc = _centred(X)
    sq = (Xc * Xc).sum(1)
    X32 = Xc.astype(np.float32)                                    # float32 alone gets it wrong
    S32 = sq.astype(np.float32) - 2 * X32 @ X32.T
    np.fill_diagonal(S32, np.inf)
    wrong32 = same[np.argsort(S32, axis=1, kind="stable")[:, :31]] != same[order[:, :31]]
    assert wrong32.any(1).mean() > 0.5
    idx32, d2_32 = _table_f32(Xc, sq, 31, ranks, margin=margin)    # small margins: float64 rows
    idx64, d2_64 = _table_f64(Xc, sq, 31, ranks)
    np.testing.assert_array_equal(same[idx32], same[order[:, :31]])
    np.testing.assert_array_equal(same[idx64], same[order[:, :31]])
    for d2 in (d2_32, d2_64):                                      # Gram formula vs cdist
        assert_d2_close(d2, D[:, ranks - 1] ** 2, Xc)
    table = _neighbor_table(X, 31, ranks)                          # the default path: float32
    if margin is None:                                             # the same computation
        np.testing.assert_array_equal(table.indices, idx32)
    np.testing.assert_array_equal(same[table.indices], same[idx32])


def test_overlap_with_reordered_features_is_exact_on_near_ties():
    """Reversing the features changes every dot product's summation order, hence how exact ties
    (copies of a point) are broken; without copies the near ties are still ordered for certain
    (order_margin > 1), so the neighbourhoods, and chi_k, are exactly the same."""
    X = lattice_cloud(n_dup=0)
    assert len(np.unique(X, axis=0)) == len(X) and order_margin(X, 31) > 1
    chi = M.neighborhood_overlap(X, X[:, ::-1].copy())              # the same distances
    np.testing.assert_array_equal(chi, 1.0 * (np.arange(32) > 0))


@pytest.mark.parametrize("name", ["smollm2_L3", "smollm2_L12", "dups"])
def test_float32_selection_equals_float64_on_reference_clouds(ref, name):
    """SmolLM2 states hold a few huge ones (the first token's is ~200x the median at L12). 'dups'
    holds copies of points (exact ties): indices are compared up to their order."""
    X = ref[f"X__{name}"]
    same = same_point(X)
    assert order_margin(X, 31) > 1
    Xc = _centred(X)
    sq = (Xc * Xc).sum(1)
    ranks = _gride_ranks(len(Xc), 256)
    idx32, d2_32 = _table_f32(Xc, sq, 31, ranks)
    idx64, d2_64 = _table_f64(Xc, sq, 31, ranks)
    np.testing.assert_array_equal(same[idx32], same[idx64])
    assert_d2_close(d2_32, d2_64, Xc)                               # two Gram computations


def test_gride_on_near_ties_and_duplicates_equals_plain_implementation():
    X = lattice_cloud(seed=1)
    g = M.gride(X)
    assert g.n_unique == 729
    np.testing.assert_allclose(g.ids, brute_gride(X), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(M.layer_profile(X[None]).gride.ids[0], g.ids)


def test_partial_selections_order_ties_by_index():
    rng = np.random.default_rng(3)
    S = rng.integers(0, 6, size=(40, 50)).astype(np.float64)       # many exact ties
    S[np.arange(40), np.arange(40)] = np.inf
    cols = np.broadcast_to(np.arange(50), S.shape)
    expected = np.lexsort((cols, S), axis=-1)
    for k in (1, 7, 20, 49):
        idx, vals = _k_nearest(S, k)
        np.testing.assert_array_equal(idx, expected[:, :k])
        np.testing.assert_array_equal(vals, np.sort(S, axis=1)[:, :k])
        idx32, vals32 = _k_smallest_f32(S.astype(np.float32), k)
        np.testing.assert_array_equal(idx32, expected[:, :k])
        np.testing.assert_array_equal(vals32, np.sort(S, axis=1)[:, :k])
    np.testing.assert_array_equal(_smallest_sorted(S, 13), np.sort(S, axis=1)[:, :13])
    signed = np.array([[-0.5, 3.0, -2.0, 0.0, np.inf, 1e-30, -1e-30]], dtype=np.float32)
    np.testing.assert_array_equal(_k_smallest_f32(signed, 6)[0], [[2, 0, 6, 3, 5, 1]])


# ============================================================================ batching, dtypes, devices

def test_batched_equals_unbatched():
    clouds = np.stack([random_cloud(n=80, d=6, seed=s, intrinsic=3) for s in range(6)])
    # tables of different computations (layer_profile's, neighborhood_overlap's) are compared
    # exactly below: their orders are certain on these clouds
    assert min(order_margin(c, 9) for c in clouds) > 1
    clouds = clouds.reshape(2, 3, 80, 6)                           # prompts x layers x tokens x d
    g = M.gride(clouds, range_max=32)
    assert g.ids.shape == (2, 3, 5) and g.n_unique.shape == (2, 3)
    chi = M.neighborhood_overlap(clouds[:, :-1], clouds[:, 1:], k_max=9)
    cos = M.cosine_similarity_mean(clouds)
    eigs = M.eigenspectrum(clouds)
    nb = M.knn(clouds, 7)
    prof = M.layer_profile(clouds, range_max=32, k_max=9)
    for p in range(2):
        for l in range(3):
            single = M.gride(clouds[p, l], range_max=32)
            np.testing.assert_array_equal(g.ids[p, l], single.ids)
            np.testing.assert_array_equal(prof.gride.ids[p, l], single.ids)   # same distances
            assert cos[p, l] == pytest.approx(M.cosine_similarity_mean(clouds[p, l]), abs=1e-15)
            np.testing.assert_allclose(eigs[p, l], M.eigenspectrum(clouds[p, l]), rtol=1e-12)
            np.testing.assert_array_equal(nb.indices[p, l], M.knn(clouds[p, l], 7).indices)
            if l < 2:
                one = M.neighborhood_overlap(clouds[p, l], clouds[p, l + 1], k_max=9)
                np.testing.assert_array_equal(chi[p, l], one)
                np.testing.assert_array_equal(prof.chi[p, l], one)
    a = M.alpha_req(np.stack([M.eigenspectrum(random_cloud(n=300, d=120, seed=s)) for s in (1, 2)]))
    assert a.alpha.shape == (2,)
    assert a.alpha[1] == pytest.approx(M.alpha_req(M.eigenspectrum(random_cloud(300, 120, 2))).alpha)


def test_float32_numpy_and_torch_inputs_agree_with_float64():
    X64 = random_cloud(n=150, d=12, seed=11, intrinsic=4)
    X32 = X64.astype(np.float32)
    ref = M.gride(X32.astype(np.float64))
    # a CPU tensor is read as a numpy array; float32 clouds are cast to float64: the same
    # computation as ref's, hence the same IDs
    for X in (X32, torch.from_numpy(X32), torch.from_numpy(X32.astype(np.float64))):
        np.testing.assert_array_equal(M.gride(X).ids, ref.ids)
    np.testing.assert_allclose(M.gride(X32).ids, M.gride(X64).ids, rtol=0, atol=1e-3)
    np.testing.assert_allclose(M.eigenspectrum(torch.from_numpy(X32)), M.eigenspectrum(X32))
    assert M.cosine_similarity_mean(torch.from_numpy(X32)) == M.cosine_similarity_mean(X32)


def test_accelerator_code_paths_equal_numpy():
    """The torch branches run for tensors on an accelerator; called directly on CPU tensors here."""
    X = random_cloud(n=200, d=10, seed=12, intrinsic=4)
    # torch's and numpy's products round apart; the orders are certain all the same
    assert order_margin(X, 64) > 1
    idx_t, d_t = _knn_torch(torch.from_numpy(X - X.mean(0)), 64)
    idx_n, d_n = _knn_numpy(X - X.mean(0), 64)
    np.testing.assert_array_equal(idx_t, idx_n)
    assert_d2_close(d_t ** 2, d_n ** 2, X - X.mean(0))
    X_dup = np.concatenate([X, X[:30]])
    np.testing.assert_array_equal(_first_occurrences(torch.from_numpy(X_dup)), np.arange(200))
    np.testing.assert_array_equal(_first_occurrences(X_dup), np.arange(200))
    ids_t = _gride_one(torch.from_numpy(X_dup), 256)[0]
    np.testing.assert_allclose(ids_t, M.gride(X).ids, rtol=0, atol=GRIDE_ATOL)
    for n, d in ((50, 20), (20, 50)):
        Y = random_cloud(n=n, d=d, seed=d)
        np.testing.assert_allclose(_covariance_eigenvalues(torch.from_numpy(Y)),
                                   _covariance_eigenvalues(Y), rtol=1e-9, atol=1e-12)


# ============================================================================ small clouds and errors

def test_scales_a_small_cloud_cannot_reach_are_dropped():
    for n, expected in ((40, [1, 2, 4, 8, 16]), (33, [1, 2, 4, 8, 16]), (32, [1, 2, 4, 8]),
                        (3, [1])):
        g = M.gride(random_cloud(n=n, d=5, seed=n))
        np.testing.assert_array_equal(g.n1, expected)
        assert g.ids.shape == g.errs.shape == g.rs.shape == (len(expected),)
    assert len(M.gride(random_cloud(n=500, d=5), range_max=16).n1) == 4   # n2 <= range_max
    small, large = random_cloud(n=40, d=5, seed=1), random_cloud(n=40, d=5, seed=2)
    small[20:] = small[:20]                                        # 20 distinct points
    g = M.gride(np.stack([small, large]))
    np.testing.assert_array_equal(g.n1, [1, 2, 4, 8, 16])
    np.testing.assert_array_equal(g.n_unique, [20, 40])
    assert np.isnan(g.ids[0, 4:]).all() and np.isfinite(g.ids[0, :4]).all()
    np.testing.assert_array_equal(g.ids[0, :4], M.gride(small[:20]).ids)


def test_clear_errors():
    X = random_cloud(n=50, d=4)
    with pytest.raises(ValueError, match="at least 3 distinct points"):
        M.gride(np.repeat(X[:2], 10, axis=0))
    bad = X.copy()
    bad[3, 1] = np.nan
    for fn in (M.gride, M.eigenspectrum, M.cosine_similarity_mean, lambda a: M.knn(a, 3)):
        with pytest.raises(ValueError, match="NaN or inf"):
            fn(bad)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        M.neighborhood_overlap(X, bad)
    with pytest.raises(ValueError, match="same tokens"):
        M.neighborhood_overlap(X, X[:40])
    with pytest.raises(ValueError, match="k_max"):
        M.neighborhood_overlap(X[:20], X[:20], k_max=31)
    with pytest.raises(ValueError, match="N - 1"):
        M.knn(X, 50)
    with pytest.raises(ValueError, match=r"\(\.\.\., N, d\)"):
        M.gride(np.arange(5.0))
    with pytest.raises(ValueError, match="same shape"):
        M.token_convergence(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="positive eigenvalues"):
        M.alpha_req(np.full(10, 0.1))
    with pytest.raises(ValueError, match="descending"):
        M.alpha_req(np.linspace(0.1, 1.0, 200))
    with pytest.raises(ValueError, match="range_max"):
        M.gride(X, range_max=1)


def test_undefined_inputs_raise_instead_of_returning_numbers():
    with pytest.raises(ValueError, match="all-zero spectrum"):
        M.rankme(np.zeros(16))
    with pytest.raises(ValueError, match="all-zero spectrum"):
        M.rankme(np.stack([np.full(4, 0.25), np.zeros(4)]))           # one bad row in a batch
    idx = np.argsort(np.random.default_rng(0).random((10, 10)), axis=1)[:, :3]
    M.overlap_from_indices(idx, idx, k_max=3)
    for bad in (idx + 10, idx - 1):
        with pytest.raises(ValueError, match="outside 0..9"):
            M.overlap_from_indices(idx, bad, k_max=3)
