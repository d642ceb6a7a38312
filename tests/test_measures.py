"""Layer by Layer's information measures, similarity of clouds, logit lens and the automatic GRIDE
scale (tg_utils.metrics.information / similarity / lens / gride_scale): analytic cases, direct
re-derivations from the papers' definitions on small clouds, errors on bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tg_utils import metrics as M
from tg_utils.metrics.gride_scale import gride_auto_scale
from tg_utils.metrics.information import (curvature, dataset_entropy, depth_curvature, matrix_entropy,
                                          prompt_embeddings, unit_rows)
from tg_utils.metrics.lens import logit_lens
from tg_utils.metrics.similarity import anisotropy, consecutive, linear_cka, linearity, mutual_knn


def rot(d, rng):
    return np.linalg.qr(rng.standard_normal((d, d)))[0]


# ------------------------------------------------------------------ matrix entropy

def ref_entropy(X, clamp=True):
    """Layer by Layer's prompt entropy, spelled out: centre, unit rows, the smaller Gram product,
    clamp, trace-normalise, -sum p ln p over the positive eigenvalues, / min(ln N, ln d)."""
    Z = X - X.mean(0)
    Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    n, d = Z.shape
    K = Z.T @ Z if n > d else Z @ Z.T
    if clamp:
        K = np.clip(K, 0, None)
    K = K / np.trace(K)
    lam = np.linalg.eigvalsh(K)
    lam = lam[lam > 0] / lam[lam > 0].sum()
    return -(lam * np.log(lam)).sum() / min(math.log(n), math.log(d))


@pytest.mark.parametrize("n,d", [(40, 8), (8, 40), (30, 30)])
@pytest.mark.parametrize("clamp", [True, False])
def test_entropy_rederivation(n, d, clamp):
    X = np.random.default_rng(n * d).standard_normal((n, d)) * np.linspace(0.1, 3, d)
    assert matrix_entropy(X, clamp=clamp) == pytest.approx(ref_entropy(X, clamp), rel=1e-10)


def test_entropy_isotropic_max_and_rank_one_zero():
    rng = np.random.default_rng(0)
    d = 8
    iso = rng.standard_normal((20000, d))
    h = matrix_entropy(iso, clamp=False)
    assert h == pytest.approx(1.0, abs=2e-4)                        # ln d / ln d
    aniso = iso * np.linspace(0.2, 2.0, d)
    assert matrix_entropy(aniso, clamp=False) < h - 0.01
    u = np.abs(rng.standard_normal(d))                               # a rank-one cloud t_i u
    line = rng.standard_normal((500, 1)) * u + 3.0
    assert matrix_entropy(line, clamp=False) == pytest.approx(0.0, abs=1e-9)
    assert matrix_entropy(line) == pytest.approx(0.0, abs=1e-9)      # u >= 0: the clamp leaves it rank one
    assert matrix_entropy(line, normalization="raw") == pytest.approx(0.0, abs=1e-9)


def test_entropy_renyi_alpha_and_options():
    X = np.random.default_rng(1).standard_normal((50, 6))
    Z = unit_rows(X)
    lam = np.linalg.eigvalsh(Z.T @ Z)
    p = lam[lam > 0] / lam[lam > 0].sum()
    assert matrix_entropy(X, alpha=2, clamp=False, normalization="raw") == pytest.approx(-math.log((p**2).sum()))
    spectral = matrix_entropy(X, clamp=False, normalization="raw")
    assert spectral == pytest.approx(-(p * np.log(p)).sum())
    # the spectral variant is rotation invariant; the reference's clamp is not
    R = rot(6, np.random.default_rng(2))
    assert matrix_entropy(X @ R, clamp=False) == pytest.approx(matrix_entropy(X, clamp=False))
    batch = np.stack([X, X @ R])
    assert np.allclose(matrix_entropy(batch, clamp=False), matrix_entropy(X, clamp=False))
    for bad in (dict(alpha=0), dict(normalization="log2")):
        with pytest.raises(ValueError):
            matrix_entropy(X, **bad)


def test_dataset_entropy_and_pooling():
    rng = np.random.default_rng(3)
    P = rng.standard_normal((12, 7, 5))                               # 12 prompts x 7 tokens x d = 5
    E = prompt_embeddings(P, "mean")
    assert np.allclose(E, unit_rows(P).mean(1))
    assert np.allclose(prompt_embeddings(P, "last"), P[:, -1])
    K = np.clip(E.T @ E, 0, None)
    lam = np.linalg.eigvalsh(K)
    p = lam[lam > 0] / lam[lam > 0].sum()
    assert dataset_entropy(E) == pytest.approx(-(p * np.log(p)).sum() / math.log(5))
    with pytest.raises(ValueError, match="pooling"):
        prompt_embeddings(P, "first")


# ------------------------------------------------------------------ curvature

def test_curvature_straight_line_zero_and_rederivation():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal(6), rng.standard_normal(6)
    line = a + np.sort(rng.uniform(0, 5, 20))[:, None] * b
    assert curvature(line, normalize_rows=False) == pytest.approx(0.0, abs=1e-7)
    assert curvature(line, absolute=False, normalize_rows=False) == pytest.approx(0.0, abs=1e-7)
    # a square path: every turn 90 degrees
    sq = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], float)
    assert curvature(sq, normalize_rows=False) == pytest.approx(math.pi / 2)
    back = np.array([[0.0], [1.0], [0.0]]) * np.ones((1, 3))          # a reversal: pi, or 0 with |cos|
    assert curvature(back, absolute=False, normalize_rows=False) == pytest.approx(math.pi)
    assert curvature(back, normalize_rows=False) == pytest.approx(0.0, abs=1e-7)
    X = rng.standard_normal((9, 4))
    Z = unit_rows(X)
    v = np.diff(Z, axis=0)
    ang = [math.acos(min(1.0, abs(v[k] @ v[k + 1]) / np.linalg.norm(v[k]) / np.linalg.norm(v[k + 1])))
           for k in range(len(v) - 1)]
    assert curvature(X) == pytest.approx(np.mean(ang))
    assert np.allclose(curvature(np.stack([X, X])), np.mean(ang))
    with pytest.raises(ValueError, match="3 tokens"):
        curvature(X[:2])


def test_depth_curvature():
    rng = np.random.default_rng(5)
    x0, step = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    straight = np.stack([x0 + l * step for l in range(5)])            # every token on a line through depth
    c = depth_curvature(straight)
    assert np.isnan(c[0]) and np.isnan(c[-1]) and np.allclose(c[1:-1], 0.0, atol=1e-7)
    X = rng.standard_normal((4, 6, 3))
    v1, v2 = X[1] - X[0], X[2] - X[1]
    cos = (v1 * v2).sum(1) / np.linalg.norm(v1, axis=1) / np.linalg.norm(v2, axis=1)
    assert depth_curvature(X)[1] == pytest.approx(np.arccos(cos).mean())


# ------------------------------------------------------------------ similarity

def test_cka_invariances_and_rederivation():
    rng = np.random.default_rng(6)
    A = rng.standard_normal((30, 5)) * np.arange(1, 6)
    B = 3.7 * A @ rot(5, rng) + 2.0
    assert linear_cka(A, B) == pytest.approx(1.0, abs=1e-12)
    C = rng.standard_normal((30, 7))
    K, L = A @ A.T, C @ C.T
    H = np.eye(30) - 1 / 30
    hsic = lambda K, L: np.trace(K @ H @ L @ H)                       # noqa: E731 (the biased HSIC)
    assert linear_cka(A, C) == pytest.approx(hsic(K, L) / math.sqrt(hsic(K, K) * hsic(L, L)))
    assert 0 <= linear_cka(A, C) < 1
    assert np.allclose(linear_cka(np.stack([A, A]), np.stack([B, C[:, :5]])), [1.0, linear_cka(A, C[:, :5])])
    with pytest.raises(ValueError, match="same tokens"):
        linear_cka(A, C[:20])


def test_mutual_knn():
    rng = np.random.default_rng(7)
    A = rng.standard_normal((40, 6))
    assert mutual_knn(A, 2.0 * A @ rot(6, rng), k=5) == pytest.approx(1.0)
    B = rng.standard_normal((40, 6))
    k = 5
    def knn(X):
        U = X / np.linalg.norm(X, axis=1, keepdims=True)
        S = U @ U.T
        np.fill_diagonal(S, -np.inf)
        return [set(np.argsort(-s)[:k]) for s in S]
    expect = np.mean([len(a & b) / k for a, b in zip(knn(A), knn(B))])
    assert mutual_knn(A, B, k=k) == pytest.approx(expect)
    with pytest.raises(ValueError):
        mutual_knn(A, B, k=40)


def test_linearity_and_anisotropy():
    rng = np.random.default_rng(8)
    A = rng.standard_normal((200, 6))
    M_ = rng.standard_normal((6, 9))
    assert linearity(A, A @ M_ + 1.5) == pytest.approx(1.0, abs=1e-10)
    assert linearity(A, rng.standard_normal((200, 6))) < 0.2
    assert linearity(A, np.tanh(3 * A)) < linearity(A, np.tanh(0.3 * A)) < 1
    # re-derivation: 1 - ||X T - Y||^2 on centred, unit-Frobenius clouds
    Bn = np.tanh(A) + 0.1 * rng.standard_normal(A.shape)
    X, Y = A - A.mean(0), Bn - Bn.mean(0)
    X, Y = X / np.linalg.norm(X), Y / np.linalg.norm(Y)
    T = np.linalg.pinv(X) @ Y
    assert linearity(A, Bn) == pytest.approx(1 - ((X @ T - Y) ** 2).sum())
    Yr = Bn - A
    Yr = (Yr - Yr.mean(0)) / np.linalg.norm(Yr - Yr.mean(0))
    assert linearity(A, Bn, residual=True) == pytest.approx(1 - ((X @ np.linalg.pinv(X) @ Yr - Yr) ** 2).sum())
    with pytest.raises(ValueError, match="more tokens than dimensions"):
        linearity(A[:6], A[:6])
    stack = np.stack([A, A @ M_[:, :6], np.tanh(A)])
    assert np.allclose(consecutive(stack, linearity), [linearity(A, A @ M_[:, :6]), linearity(A @ M_[:, :6], np.tanh(A))])
    # anisotropy: sigma_1^2 / sum sigma^2 of the centred cloud
    X = rng.standard_normal((100, 4)) * [5, 1, 1, 1] + 10
    s = np.linalg.svd(X - X.mean(0), compute_uv=False)
    assert anisotropy(X) == pytest.approx(s[0] ** 2 / (s ** 2).sum())
    s0 = np.linalg.svd(X, compute_uv=False)
    assert anisotropy(X, centre=False) == pytest.approx(s0[0] ** 2 / (s0 ** 2).sum())
    assert anisotropy(np.outer(rng.standard_normal(50), rng.standard_normal(4))) == pytest.approx(1.0)


# ------------------------------------------------------------------ logit lens

def test_lens_matches_model_loss_at_last_layer():
    torch.manual_seed(0)
    n, d, V = 12, 8, 30
    norm = torch.nn.LayerNorm(d).double()
    W = torch.randn(d, V, dtype=torch.float64)
    b = torch.randn(V, dtype=torch.float64)
    h = torch.randn(n, d, dtype=torch.float64)
    ids = torch.randint(0, V, (n,))
    z = norm(h) @ W + b
    loss = torch.nn.functional.cross_entropy(z[:-1], ids[1:]).item()
    r = logit_lens(h, W, b, final_norm=norm, targets=ids)
    assert r.surprisal.shape == (n - 1,) and r.entropy.shape == (n,)
    assert r.surprisal.mean() == pytest.approx(loss, rel=1e-12)
    p = torch.softmax(z, -1)
    assert np.allclose(r.entropy, -(p * p.log()).sum(-1).detach().numpy())
    normed = norm(h).detach()
    r2 = logit_lens(np.stack([normed.numpy()] * 2), W.numpy(), b.numpy(), targets=ids.numpy(), chunk=5)
    assert np.allclose(r2.surprisal, r.surprisal) and r2.surprisal.shape == (2, n - 1)
    flat = logit_lens(normed, torch.zeros(d, V, dtype=torch.float64))
    assert np.allclose(flat.entropy, math.log(V)) and np.isnan(flat.surprisal).all()
    with pytest.raises(ValueError, match="W_U"):
        logit_lens(h, W.T)
    with pytest.raises(ValueError, match="targets"):
        logit_lens(h, W, targets=ids[:-1])


# ------------------------------------------------------------------ automatic GRIDE scale

def test_auto_scale_rule_on_curves():
    n1 = 2 ** np.arange(6)
    curve = np.array([9.0, 6.0, 4.1, 4.0, 4.05, 2.5])
    s = gride_auto_scale(curve, n1)
    assert (s.n1_low, s.n1, s.n1_high) == (4, 8, 16) and s.id == 4.0
    assert s.spread == pytest.approx(math.log(4.1 / 4.0))
    b = gride_auto_scale(np.stack([curve, np.full(6, 3.0)]), n1)
    assert list(b.n1) == [8, 2] and list(b.id) == [4.0, 3.0]          # a flat curve: the smallest scales
    slow = np.array([10.0, 9.6, 9.2, 8.0, 7.9, 7.85])                 # first flat window (spread 0.08 <= 0.1)
    assert gride_auto_scale(slow, n1).n1 == 2                         # beats the flattest one (8, 16, 32)
    assert gride_auto_scale(slow, n1, flat_tol=0.0).n1 == 16
    short = gride_auto_scale(np.array([5.0, 4.0, np.nan, np.nan, np.nan, np.nan]), n1)
    assert (short.n1_low, short.n1_high) == (1, 2)
    with pytest.raises(ValueError, match="width"):
        gride_auto_scale(curve, n1, width=1)


def _embedded(Y, D, noise, rng):
    Q = np.linalg.qr(rng.standard_normal((D, Y.shape[1])))[0]
    return Y @ Q.T + noise * rng.standard_normal((len(Y), D))


@pytest.mark.parametrize("kind", ["cube", "sphere"])
@pytest.mark.parametrize("d", [2, 5, 10, 20])
def test_auto_scale_recovers_known_id(kind, d):
    """Uniform cubes and spheres of dimension d in D = max(2d + 10, 40) dimensions with noise 0.01: the
    ID at the automatic scale is within 12 % of d up to d = 5, 15 % at d = 10 and 30 % at d = 20 (GRIDE
    itself underestimates large IDs at N = 2000 at every scale; the rule cannot undo that); at d = 2,
    scale 0 measures the noise (ID > 2d) and the rule does not."""
    rng = np.random.default_rng(100 + d)
    N = 2000
    if kind == "cube":
        Y = rng.uniform(size=(N, d))
    else:
        Y = rng.standard_normal((N, d + 1))
        Y /= np.linalg.norm(Y, axis=1, keepdims=True)
    g = M.gride(_embedded(Y, max(2 * d + 10, 40), 0.01, rng), range_max=1024)
    s = gride_auto_scale(g.ids, g.n1)
    tol = {2: 0.12, 5: 0.12, 10: 0.15, 20: 0.3}[d]
    assert abs(s.id - d) / d < tol, (g.ids, s)
    assert s.n1_low <= s.n1 <= s.n1_high and s.id == g.ids[list(g.n1).index(s.n1)]
    if d == 2:
        assert abs(g.ids[0] - d) / d > 1.0                           # scale 0 measures the noise


# ------------------------------------------------------------------ one pass per layer

@pytest.mark.parametrize("n,d", [(12, 20), (25, 6)])
def test_layer_measures_equal_the_functions(n, d):
    from tg_utils.metrics.layerwise import layer_measures
    rng = np.random.default_rng(n)
    X = rng.standard_normal((2, 5, n, d)).cumsum(1) * np.linspace(0.5, 2, d)
    X[0, 0, 3] = X[0, 0, 4]                                           # a repeated token (zero displacement)
    m = layer_measures(X)
    assert np.allclose(m.entropy, matrix_entropy(X), rtol=1e-9, atol=1e-12)
    assert np.allclose(m.curvature, curvature(X), rtol=1e-7, atol=1e-9)
    assert np.allclose(m.anisotropy, anisotropy(X), rtol=1e-9)
    assert np.allclose(m.cka_next[..., :-1], consecutive(X, linear_cka), rtol=1e-9)
    assert np.isnan(m.cka_next[..., -1]).all()
    assert np.allclose(m.depth_curvature, depth_curvature(X), equal_nan=True)


def test_linearity_profile_and_cka_gram_form():
    from tg_utils.metrics.similarity import linearity_profile
    rng = np.random.default_rng(11)
    X = rng.standard_normal((4, 60, 5))
    X[2] = np.tanh(X[1]) + 0.05 * X[2]
    assert np.allclose(linearity_profile(X), consecutive(X, linearity))
    assert np.allclose(linearity_profile(X, residual=True), consecutive(X, linearity, residual=True))
    A, B = rng.standard_normal((10, 20)), rng.standard_normal((10, 30))  # N < d: the Gram form
    K, L = A @ A.T, B @ B.T
    H = np.eye(10) - 0.1
    hsic = lambda K, L: np.trace(K @ H @ L @ H)                       # noqa: E731
    assert linear_cka(A, B) == pytest.approx(hsic(K, L) / math.sqrt(hsic(K, K) * hsic(L, L)))
    assert linear_cka(A, 0.5 * A @ rot(20, rng)) == pytest.approx(1.0)


def test_layer_by_layer_matrices():
    from tg_utils.metrics.similarity import cka_matrix, mutual_knn_matrix
    rng = np.random.default_rng(12)
    XA = rng.standard_normal((3, 15, 6))
    XB = np.stack([2 * XA[1] @ rot(6, rng), rng.standard_normal((15, 6)), np.tanh(XA[0])])
    C = cka_matrix(XA, XB)
    assert C.shape == (3, 3) and C[1, 0] == pytest.approx(1.0)
    assert np.allclose(C, [[linear_cka(a, b) for b in XB] for a in XA])
    K = mutual_knn_matrix(XA, XB, k=4)
    assert K[1, 0] == pytest.approx(1.0)
    assert np.allclose(K, [[mutual_knn(a, b, k=4) for b in XB] for a in XA])
    with pytest.raises(ValueError, match="same N"):
        cka_matrix(XA, XB[:, :10])
