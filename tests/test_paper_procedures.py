"""Traveling Words (Molina 2023), faithfully: each of the paper's procedures as notebook 07 runs it, against a
direct re-derivation written here from the paper's code (santiag0m/traveling-words: word_embeddings.py,
svd_analysis.py, common_nouns.py, trajectory.py), on a tiny random GPT-2 (transformers' GPT2Config, saved
with save_pretrained beside a small tokenizer and loaded by folder) and on the toy Standard model (LayerNorm
with bias, GELU, biases everywhere). The re-derivations read the raw modules (GPT-2's Conv1D c_attn / c_proj,
wte, ln_1, ln_f), not the ModelDescription. Plus the obvious cases: gamma = 1 and beta = 0 make every
scoring the plain norm; a head whose W_qk has rank one selects one direction. No network."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as Fn

from tg_utils import weights as W
from tg_utils.experiments import nb07_attention_geometry as X
from tg_utils.experiments import nb07_claims as C
from tg_utils.experiments import nb07_findings as F
from tg_utils.experiments import nb07_model_facts as MF
from tg_utils.models import describe, load_model
from tg_utils.params import params_class
from tg_utils.weights import umap as WU

from fakes import fake_umap

D, LAYERS, HEADS, K = 32, 3, 4, 5
NOUNS = ["The", "a", "in", "fox", "is", "over", "dog", "quick", "zebra"]   # 5 are one token bare


# ----------------------------------------------------------------------------- tiny models

@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, word_tokenizer, one_thread):
    """A tiny random GPT-2, every weight perturbed (LayerNorm gains and biases, attention biases), saved with
    save_pretrained beside the tokenizer and loaded by folder."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(word_tokenizer), n_embd=D, n_layer=LAYERS, n_head=HEADS, n_positions=64,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder)
    word_tokenizer.save_pretrained(folder)
    return load_model(str(folder))


def toy_standard(seed: int = 0, vocab: int = 120):
    """The toy Standard model (LayerNorm with bias, GELU, biased linear layers), every bias and gain perturbed."""
    from tg_utils.toy.model import ToyTransformer, preset
    torch.manual_seed(seed)
    m = ToyTransformer(preset("standard-preln", n_layer=LAYERS, d_model=D, n_head=HEADS, d_ff=64, vocab_size=vocab,
                              context=48)).eval().requires_grad_(False)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n and n.endswith("weight"):
                p.copy_(torch.rand_like(p) + 0.5)
            elif n.endswith("bias"):
                p.normal_(0, 0.2)
    return m


def gpt2_parts(lm, layer: int):
    """The paper's per-head pieces read straight from GPT-2's modules (utils/model_utils.py:66-107, with
    transformers' Conv1D storing [in, out]): wq, wk, wv heads [d, dh] (x @ w), wo heads [dh, d], biases."""
    blk = lm.model.transformer.h[layer]
    w, b = blk.attn.c_attn.weight.detach().double(), blk.attn.c_attn.bias.detach().double()
    dh = D // HEADS
    wq, wk, wv = w.split(D, dim=1)
    bq, bk, bv = b.split(D)
    wo = blk.attn.c_proj.weight.detach().double()
    heads = lambda m: [m[:, h * dh:(h + 1) * dh] for h in range(HEADS)]
    return dict(wq=heads(wq), wk=heads(wk), wv=heads(wv), wo=[wo[h * dh:(h + 1) * dh] for h in range(HEADS)],
                bq=[bq[h * dh:(h + 1) * dh] for h in range(HEADS)], bk=[bk[h * dh:(h + 1) * dh] for h in range(HEADS)],
                bv=[bv[h * dh:(h + 1) * dh] for h in range(HEADS)], bo=blk.attn.c_proj.bias.detach().double(),
                ln_1=blk.ln_1, dh=dh, block=blk)


def ln(module, x):
    with torch.no_grad():
        return module(x.float()).double()


def topk(scores: torch.Tensor, k: int = K) -> list[int]:
    return scores.argsort(descending=True)[:k].tolist()


# ----------------------------------------------------------------------------- embedding norms

def paper_scorings(e: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> dict[str, torch.Tensor]:
    """word_embeddings.py:35-46 for the four (scale, bias) settings."""
    out = {}
    for name, scale, bias in (("norm", False, False), ("scaled_norm", True, False), ("bias", False, True),
                              ("both", True, True)):
        bias_score = (beta.view(1, -1) @ e.T).T[:, 0]
        x = (torch.diag(gamma) @ e.T).T if scale else e
        norms = torch.linalg.norm(x, dim=1)
        out[name] = norms + bias_score if bias else norms
    return out


def test_four_scorings_on_gpt2(gpt2, word_tokenizer):
    e = gpt2.model.transformer.wte.weight.detach().double()
    ln_f = gpt2.model.transformer.ln_f
    ref = paper_scorings(e, ln_f.weight.detach().double(), ln_f.bias.detach().double())
    sc = W.embedding_norm_scores(gpt2.desc.W_E, gpt2.desc.final_norm.scale, gpt2.desc.final_norm.bias)
    for name, r in ref.items():
        np.testing.assert_allclose(getattr(sc, name), r.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(sc.bias_term, (e @ ln_f.bias.detach().double()).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sc.max_logit, math.sqrt(D) * ref["scaled_norm"].numpy() + sc.bias_term, rtol=1e-12)
    tokens, stats = X.embedding_norm_table(gpt2.desc, word_tokenizer, K)
    assert set(tokens.matrix) == {"tied"}
    assert set(tokens[tokens.procedure == "paper"].scoring) == {"norm", "scaled_norm", "bias", "both"}
    assert set(tokens[tokens.procedure == "variant"].scoring) == {"bias_term", "max_logit"}
    assert dict(zip(tokens.scoring, tokens.paper_setting))["both"] == "bias_and_scale"
    for name, r in ref.items():
        top = tokens[(tokens.scoring == name) & (tokens.side == "top")].sort_values("rank")
        bottom = tokens[(tokens.scoring == name) & (tokens.side == "bottom")].sort_values("rank")
        assert top.token_id.tolist() == topk(r)                       # argsort descending [:k], line 47
        assert bottom.token_id.tolist() == r.argsort()[:K].tolist()   # "Bottom 1" = the lowest, lines 48, 73-79
    assert set(stats.procedure) == {"paper", "variant"}


def test_unit_gamma_zero_beta_make_every_scoring_the_norm():
    e = torch.randn(50, 8, dtype=torch.float64)
    sc = W.embedding_norm_scores(e, torch.ones(8), torch.zeros(8))
    n = torch.linalg.norm(e, dim=1).numpy()
    for name in ("norm", "scaled_norm", "bias", "both"):
        np.testing.assert_allclose(getattr(sc, name), n, rtol=1e-14, err_msg=name)
    np.testing.assert_allclose(sc.bias_term, 0.0)
    np.testing.assert_allclose(sc.max_logit, math.sqrt(8) * n, rtol=1e-14)
    rms = W.embedding_norm_scores(e, torch.ones(8), None)            # no bias: only the two norms
    assert rms.bias is None and rms.both is None and set(rms.as_dict()) == {"norm", "scaled_norm"}
    assert "no bias" in rms.note


# ----------------------------------------------------------------------------- distances to the LayerNorm images

def test_layernorm_distance_table_on_gpt2(gpt2):
    e = gpt2.model.transformer.wte.weight.detach().double()            # word_embeddings.py:91-130
    avg = torch.linalg.norm(e, dim=1).mean()
    s = D ** 0.5 / avg
    c = e.mean(dim=0, keepdim=True)
    e_norm = Fn.layer_norm(e, normalized_shape=[D])
    got = pd.DataFrame(W.layernorm_distance_table(gpt2.desc.W_E)).set_index("setting")
    for name, mat in zip(["original", "centered", "scaled", "centered_scaled"], [e, e - c, e * s, (e - c) * s]):
        l2 = torch.linalg.norm(mat - e_norm, dim=1)
        cos = 1 - Fn.cosine_similarity(mat, e_norm)
        row = got.loc[name]
        np.testing.assert_allclose([row.mean_l2_distance, row.l2_std_dev, row.mean_cosine_distance,
                                    row.cosine_std_dev], [l2.mean(), l2.std(), cos.mean(), cos.std()],
                                   rtol=1e-9, err_msg=name)
        assert row.avg_norm == pytest.approx(avg.item()) and row.scale_factor == pytest.approx(s.item())
    t, why = X.layernorm_distance_frame(gpt2.desc)
    assert len(t) == 4 and why == "" and set(t.matrix) == {"tied"}


# ----------------------------------------------------------------------------- singular directions and signs

def paper_directions(U, S, Vt, left_ref, right_ref, c: int, k: int = K):
    """svd_analysis.py:81-116: each pair's sign from its right vector against right_ref (lines 50-78: +1 iff
    max(v . E) >= max(-v . E)), the left vector (times sigma) takes it; top-k of each against its matrix."""
    left, right = [], []
    for i in range(c):
        v, u = Vt[i], U[:, i] * S[i]
        sign = 1.0 if (right_ref @ v).max() >= (right_ref @ -v).max() else -1.0
        left.append(topk(left_ref @ (sign * u), k))
        right.append(topk(right_ref @ (sign * v), k))
    return left, right


@pytest.mark.parametrize("layer", [0, 2])
def test_singular_directions_key_side_sign_on_gpt2(gpt2, layer):
    p = gpt2_parts(gpt2, layer)
    e = gpt2.model.transformer.wte.weight.detach().double()
    e_norm = ln(p["ln_1"], e)                                            # svd_analysis.py:210-213
    rows = MF.InputNormedRows(gpt2.desc)
    c = 4
    dirs, _ = X.layer_probe(gpt2.desc, layer, rows.for_layer(layer), None, None, n_components=c, k=K)
    for h in range(HEADS):
        qk = p["wq"][h] @ p["wk"][h].T / p["dh"] ** 0.5                  # lines 230-235
        vo = p["wv"][h] @ p["wo"][h]                                     # line 237
        for kind, M, sides, refs in (("qk", qk, ("query", "key"), (e_norm, e_norm)),
                                     ("vo", vo, ("input", "output"), (e_norm, e))):   # lines 248-263
            U, S, Vt = torch.linalg.svd(M)
            left, right = paper_directions(U, S, Vt, *refs, c)
            for comp in range(c):
                for side, want in zip(sides, (left[comp], right[comp])):
                    sel = dirs[(dirs.kind == kind) & (dirs.side == side) & (dirs["head"] == h)
                               & (dirs.component == comp)].sort_values("rank")
                    assert sel.token_id.tolist() == want, (kind, side, h, comp)
                    assert sel.sigma.iloc[0] == pytest.approx(S[comp].item(), rel=1e-9)


def test_query_side_variant_is_the_other_rule(gpt2):
    """sign_side="query" sets W_qk's sign on the query side; where the two rules disagree the lists swap
    ends (the key side's top list under one rule is its bottom list under the other)."""
    p = gpt2_parts(gpt2, 1)
    e_norm = ln(p["ln_1"], gpt2.model.transformer.wte.weight.detach().double())
    rows = MF.InputNormedRows(gpt2.desc)
    c = 6
    key, _ = X.layer_probe(gpt2.desc, 1, rows.for_layer(1), None, None, n_components=c, k=K)
    qry, _ = X.layer_probe(gpt2.desc, 1, rows.for_layer(1), None, None, n_components=c, k=K, sign_side="query")
    disagree = 0
    for h in range(HEADS):
        U, S, Vt = torch.linalg.svd(p["wq"][h] @ p["wk"][h].T / p["dh"] ** 0.5)
        for comp in range(c):
            u, v = U[:, comp], Vt[comp]
            su = 1.0 if (e_norm @ u).max() >= (e_norm @ -u).max() else -1.0
            sv = 1.0 if (e_norm @ v).max() >= (e_norm @ -v).max() else -1.0
            disagree += su != sv
            for side, x in (("query", u), ("key", v)):
                sel = qry[(qry.kind == "qk") & (qry.side == side) & (qry["head"] == h) & (qry.component == comp)]
                assert sel.sort_values("rank").token_id.tolist() == topk(e_norm @ (su * x))
    assert disagree > 0                         # the test exercises pairs where the rules differ
    assert not key[key.kind == "qk"].token_id.equals(qry[qry.kind == "qk"].token_id)
    vo = lambda d: d[d.kind == "vo"].reset_index(drop=True)
    pd.testing.assert_frame_equal(vo(key), vo(qry))                  # W_vo: the output side in both


def test_rank_one_head_selects_one_direction():
    """W_qk of rank one (W_Q[h] = a p^T, W_K[h] = b p^T): one non-zero singular value, its pair is (a, b) up to
    sign and scale, and every query's top keys are the top or the bottom tokens of b (one direction)."""
    torch.manual_seed(1)
    d, dh, V = 16, 4, 200
    a, b, p = (torch.randn(n, dtype=torch.float64) for n in (d, d, dh))
    W_Q = torch.randn(2, d, dh, dtype=torch.float64)
    W_K = torch.randn(2, d, dh, dtype=torch.float64)
    W_Q[0], W_K[0] = torch.outer(a, p), torch.outer(b, p)
    W_V, W_O = torch.randn(2, d, dh, dtype=torch.float64), torch.randn(2, dh, d, dtype=torch.float64)
    E = torch.randn(V, d, dtype=torch.float64)
    qids = list(range(10))
    res = W.block_probe(W_Q, W_K, W_V, W_O, E, E.T, n_components=2, k=K, query_ids=qids, residual=E[qids])
    S = W.qk_factors(W_Q, W_K).svd().S
    assert S[0, 1].item() < 1e-10 * S[0, 0].item()
    dirs, ell = pd.DataFrame(res.directions), pd.DataFrame(res.ellipse)
    sb = E @ b
    sign = 1.0 if sb.max() >= -sb.min() else -1.0                    # the key side sets the sign
    key0 = dirs[(dirs.kind == "qk") & (dirs.side == "key") & (dirs["head"] == 0) & (dirs.component == 0)]
    qry0 = dirs[(dirs.kind == "qk") & (dirs.side == "query") & (dirs["head"] == 0) & (dirs.component == 0)]
    # W_qk = c a b^T with c = |p|^2 / sqrt(dh) > 0: the pair is (a, b) with one sign, set by b's side
    assert key0.sort_values("rank").token_id.tolist() == topk(sign * sb)
    assert qry0.sort_values("rank").token_id.tolist() == topk(sign * (E @ a))
    keys = ell[(ell.probe == "keys") & (ell["head"] == 0)]
    ends = {tuple(topk(sb)), tuple(topk(-sb))}
    for q, g in keys.groupby("query_id"):
        got = tuple(g.sort_values("rank").token_id)
        assert got in ends
        assert got == tuple(topk(sb if (E[q] @ a).item() > 0 else -sb))


# ----------------------------------------------------------------------------- the attention ellipse

def paper_ellipse(lm_model, parts, e, e_norm, qids, k: int = K):
    """common_nouns.py:63-101, row vectors: keys per head, values per head and for the layer sum."""
    queries = e_norm[qids]
    keys, values, norms, total = {}, {}, {}, 0
    ln_f = lm_model.transformer.ln_f
    for h in range(HEADS):
        w_qk = parts["wq"][h] @ parts["wk"][h].T / ((D / HEADS) ** 0.5)
        w_vo = parts["wv"][h] @ parts["wo"][h]
        keys[h] = [topk(s, k) for s in queries @ w_qk @ e_norm.T]
        u = queries @ w_vo + parts["bv"][h] @ parts["wo"][h]
        total = total + u
        values[h] = [topk(s, k) for s in ln(ln_f, e[qids] + u + parts["bo"]) @ e.T]
        norms[h] = torch.linalg.norm(u, dim=1)
    values["sum"] = [topk(s, k) for s in ln(ln_f, e[qids] + total + parts["bo"]) @ e.T]
    norms["sum"] = torch.linalg.norm(total, dim=1)
    return keys, values, norms, total


@pytest.mark.parametrize("layer", [0, 2])
def test_ellipse_readout_on_gpt2(gpt2, word_tokenizer, layer):
    p = gpt2_parts(gpt2, layer)
    e = gpt2.model.transformer.wte.weight.detach().double()
    e_norm = ln(p["ln_1"], e)
    nouns = X.noun_table(word_tokenizer, NOUNS)
    assert 3 <= len(nouns) < len(NOUNS)
    qids = nouns.token_id.tolist()
    keys, values, norms, total = paper_ellipse(gpt2.model, p, e, e_norm, qids)
    # the summed update is the block's own attention output on a one-token sequence (softmax weight 1)
    with torch.no_grad():
        own = p["block"].attn(e_norm[qids].float()[:, None])[0][:, 0].double()
    torch.testing.assert_close(total + p["bo"], own, rtol=1e-4, atol=1e-5)
    rows = MF.InputNormedRows(gpt2.desc)
    _, ell = X.layer_probe(gpt2.desc, layer, rows.for_layer(layer), nouns, word_tokenizer, n_components=2, k=K)
    assert set(ell.probe) == {"keys", "values", "values_sum"}
    for i, (noun, q) in enumerate(zip(nouns.noun, qids)):
        for h in range(HEADS):
            sel = lambda probe, hh: (ell[(ell.probe == probe) & (ell["head"] == hh) & (ell.noun == noun)]
                                     .sort_values("rank"))
            assert sel("keys", h).token_id.tolist() == keys[h][i]
            v = sel("values", h)
            assert v.token_id.tolist() == values[h][i] and v.query_id.tolist() == [q] * K
            assert v.update_norm.iloc[0] == pytest.approx(norms[h][i].item(), rel=1e-5)
        s = sel("values_sum", -1)
        assert s.token_id.tolist() == values["sum"][i]
        assert s.update_norm.iloc[0] == pytest.approx(norms["sum"][i].item(), rel=1e-5)
        assert sel("keys", h)["update_norm"].isna().all()


def test_ellipse_update_variant_and_heads_subset(gpt2, word_tokenizer):
    """The variant read-out is (x W_vo[h]) * gamma read against the unembedding, per head; with a subset of
    heads the paper's values_sum still sums every head."""
    p = gpt2_parts(gpt2, 1)
    e = gpt2.model.transformer.wte.weight.detach().double()
    e_norm = ln(p["ln_1"], e)
    nouns = X.noun_table(word_tokenizer, NOUNS)
    rows = MF.InputNormedRows(gpt2.desc)
    g = gpt2.model.transformer.ln_f.weight.detach().double()
    _, var = X.layer_probe(gpt2.desc, 1, rows.for_layer(1), nouns, word_tokenizer, 2, K, ellipse_heads=[1],
                           readout="update", readout_matrix="unembedding")
    assert set(var.probe) == {"keys", "update"} and set(var["head"]) == {1}
    for noun, q in zip(nouns.noun, nouns.token_id):
        want = topk(((e_norm[q] @ p["wv"][1] @ p["wo"][1]) * g) @ gpt2.desc.W_U.double())
        assert var[(var.probe == "update") & (var.noun == noun)].sort_values("rank").token_id.tolist() == want
    _, sub = X.layer_probe(gpt2.desc, 1, rows.for_layer(1), nouns, word_tokenizer, 2, K, ellipse_heads=[1])
    _, full = X.layer_probe(gpt2.desc, 1, rows.for_layer(1), nouns, word_tokenizer, 2, K)
    s = lambda d: d[d.probe == "values_sum"].reset_index(drop=True)
    pd.testing.assert_frame_equal(s(sub), s(full))
    assert set(sub["head"]) == {1, -1}


def test_nouns_bare_as_the_paper(word_tokenizer):
    """common_nouns.py:17-35: the noun encoded bare, kept iff it is one token; the " " prefix is the variant."""
    bare = X.noun_table(word_tokenizer, NOUNS)
    want = [n for n in NOUNS if len(word_tokenizer.encode(n, add_special_tokens=False)) == 1]
    assert bare.noun.tolist() == want
    assert bare.token_id.tolist() == [word_tokenizer.encode(n, add_special_tokens=False)[0] for n in want]
    spaced = X.noun_table(word_tokenizer, NOUNS, prefix=" ")
    assert spaced.noun.tolist() == [n for n in NOUNS if len(word_tokenizer.encode(" " + n)) == 1]
    assert X.load_common_nouns()[:3] == ["time", "year", "people"] and len(X.load_common_nouns()) == 100


# ----------------------------------------------------------------------------- the attention-bias probes

@pytest.mark.parametrize("layer", [0, 2])
def test_bias_probes_on_gpt2(gpt2, word_tokenizer, layer):
    p = gpt2_parts(gpt2, layer)
    e_norm = ln(p["ln_1"], gpt2.model.transformer.wte.weight.detach().double())
    t, why = X.bias_table(gpt2.desc, [layer], MF.InputNormedRows(gpt2.desc), word_tokenizer, K)
    assert why == "" and set(t.layer) == {layer}
    for h in range(HEADS):
        query_bias = (p["wq"][h] @ p["bk"][h].view(1, -1).T).T[0]       # svd_analysis.py:314
        key_bias = (p["bq"][h].view(1, -1) @ p["wk"][h].T)[0]           # svd_analysis.py:325
        for name, v in (("query", query_bias), ("key", key_bias)):
            for sign, x in (("+", v), ("-", -v)):                        # lines 315-333
                sel = t[(t["head"] == h) & (t.bias == name) & (t.sign == sign)].sort_values("rank")
                assert sel.token_id.tolist() == topk(e_norm @ x), (name, sign, h)
                np.testing.assert_allclose(sel.score, (e_norm @ x).sort(descending=True).values[:K], rtol=1e-4,
                                           atol=1e-5)


def test_bias_probe_key_term_is_the_score_bias():
    """The key-bias vector b_Q W_K^T is the part of the score that depends on the key alone: score(x, y) with
    biases minus without, minus the terms constant over keys, is y . (b_Q W_K^T)."""
    torch.manual_seed(2)
    d, dh = 12, 3
    W_Q, W_K = torch.randn(1, d, dh, dtype=torch.float64), torch.randn(1, d, dh, dtype=torch.float64)
    b_Q, b_K = torch.randn(1, dh, dtype=torch.float64), torch.randn(1, dh, dtype=torch.float64)
    x, Y = torch.randn(d, dtype=torch.float64), torch.randn(7, d, dtype=torch.float64)
    full = (x @ W_Q[0] + b_Q[0]) @ (Y @ W_K[0] + b_K[0]).T
    plain = (x @ W_Q[0]) @ (Y @ W_K[0]).T
    vec = W.bias_vectors(W_Q, W_K, b_Q, b_K)
    const = (x @ W_Q[0]) @ b_K[0] + b_Q[0] @ b_K[0]
    torch.testing.assert_close(full - plain - const, Y @ vec["key"][0])
    torch.testing.assert_close(x @ vec["query"][0], (x @ W_Q[0]) @ b_K[0])       # the term constant over keys


def test_no_biases_no_probe_with_a_note():
    desc = describe(_toy("llama-preln"))
    t, why = X.bias_table(desc, [0], MF.InputNormedRows(desc))
    assert t.empty and list(t.columns) == W.BIAS_COLUMNS and "no query or key biases" in why
    d, why = X.layernorm_distance_frame(desc)
    assert d.empty and "RMSNorm" in why


def _toy(name: str):
    from tg_utils.toy.model import ToyTransformer, preset
    torch.manual_seed(0)
    return ToyTransformer(preset(name, n_layer=2, d_model=D, n_head=HEADS, d_ff=64, vocab_size=80, context=32)).eval()


# ----------------------------------------------------------------------------- the toy Standard model

def test_paper_procedures_on_the_toy_standard_model():
    """The same re-derivations on the toy Standard model through its own modules (q/k/v/o nn.Linear with bias,
    LayerNorms with bias): the bias probes, the ellipse read-out (the summed update is the block's own
    attention output on one token) and the key-side sign rule."""
    m = toy_standard()
    desc = describe(m)
    assert MF.final_norm_kind(desc) == "layer" and desc.final_norm.bias is not None
    blk = m.blocks[1]
    at = blk.attn
    dh = D // HEADS
    e = m.embed.weight.detach().double()
    e_norm = ln(blk.attn_norm, e)
    split = lambda lin: [lin.weight.detach().double().T[:, h * dh:(h + 1) * dh] for h in range(HEADS)]
    bsplit = lambda lin: [lin.bias.detach().double()[h * dh:(h + 1) * dh] for h in range(HEADS)]
    wq, wk, wv = split(at.q_proj), split(at.k_proj), split(at.v_proj)
    bq, bk, bv = bsplit(at.q_proj), bsplit(at.k_proj), bsplit(at.v_proj)
    wo = [at.o_proj.weight.detach().double().T[h * dh:(h + 1) * dh] for h in range(HEADS)]
    bo = at.o_proj.bias.detach().double()
    rows = MF.InputNormedRows(desc)
    t, _ = X.bias_table(desc, [1], rows, None, K)
    for h in range(HEADS):
        for name, v in (("query", wq[h] @ bk[h]), ("key", bq[h] @ wk[h].T)):
            sel = t[(t["head"] == h) & (t.bias == name) & (t.sign == "-")].sort_values("rank")
            assert sel.token_id.tolist() == topk(-(e_norm @ v))
    qids = [3, 7, 11, 20]
    nouns = pd.DataFrame({"noun": [f"n{i}" for i in qids], "token_id": qids, "token": [str(i) for i in qids]})
    dirs, ell = X.layer_probe(desc, 1, rows.for_layer(1), nouns, None, n_components=3, k=K)
    total = 0
    for h in range(HEADS):
        total = total + e_norm[qids] @ wv[h] @ wo[h] + bv[h] @ wo[h]
        U, S, Vt = torch.linalg.svd(wq[h] @ wk[h].T / dh ** 0.5)
        left, right = paper_directions(U, S, Vt, e_norm, e_norm, 3)
        for comp in range(3):
            sel = dirs[(dirs.kind == "qk") & (dirs.side == "key") & (dirs["head"] == h) & (dirs.component == comp)]
            assert sel.sort_values("rank").token_id.tolist() == right[comp]
    with torch.no_grad():
        cos, sin = m.rotary(torch.zeros(len(qids), 1, dtype=torch.long))
        own = at(e_norm[qids].float()[:, None], cos, sin)[:, 0].double()
    torch.testing.assert_close(total + bo, own, rtol=1e-4, atol=1e-5)
    final = ln(m.final_norm, e[qids] + total + bo) @ e.T                   # untied: read against the embedding
    for i, q in enumerate(qids):
        sel = ell[(ell.probe == "values_sum") & (ell.query_id == q)].sort_values("rank")
        assert sel.token_id.tolist() == topk(final[i])


# ----------------------------------------------------------------------------- UMAP, end to end, notes

def test_umap_paper_choices(monkeypatch):
    """The paper's UMAP: the first n_fit rows (trajectory.py:212), Euclidean kNN (exact here), sklearn's
    SpectralEmbedding start (utils/umap_utils.py:14-24), extra points projected as they are."""
    torch.manual_seed(0)
    E = torch.randn(90, 6)
    ids = WU.fit_rows(E, 40, "first")
    assert ids.tolist() == list(range(40)) and len(WU.fit_rows(E, None, "first")) == 90
    assert len(WU.fit_rows(E, 40, "random", seed=1)) == 40
    D_ = WU._knn_sparse(E[:40], E[:40], 5, exclude_self=True, metric="euclidean").toarray()
    brute = torch.cdist(E[:40].double(), E[:40].double())
    brute.fill_diagonal_(float("inf"))
    for i in range(40):
        nz = np.flatnonzero(D_[i])
        assert set(nz) == set(brute[i].argsort()[:5].tolist())
        np.testing.assert_allclose(D_[i, nz], brute[i, nz].numpy(), rtol=1e-4)
    starts = []
    real = WU.spectral_init
    monkeypatch.setattr(WU, "spectral_init", lambda X_, seed=0: starts.append(X_.shape) or real(X_, seed))
    tr = WU.umap_trajectory(E, torch.randn(2, 3, 6), n_neighbors=5, n_fit=40, n_epochs=10, extra=torch.randn(4, 6))
    assert starts == [(40, 6)] and tr.fit_ids.tolist() == list(range(40))
    assert tr.coords.shape == (2, 3, 3) and tr.extra_coords.shape == (4, 3)


def test_gpt2_end_to_end_with_the_paper_defaults(gpt2, word_tokenizer, tmp_path, monkeypatch):
    """analyse_model on GPT-2 with the paper profile's choices (blocks given by index): every paper table
    exists, the trajectory holds the raw input points, and the figures draw."""
    import matplotlib
    matplotlib.use("Agg")
    from tg_utils.plots import attention as PA
    monkeypatch.setattr(WU, "umap_trajectory", fake_umap())
    nouns_file = tmp_path / "nouns.txt"
    nouns_file.write_text("\n".join(NOUNS) + "\n")
    P = params_class("07_attention_geometry").from_dict(dict(
        models=[gpt2.desc.source], out_dir=str(tmp_path), figures_dir=str(tmp_path / "fig"), blocks=[0, 2],
        nouns_path=str(nouns_file), n_components=3, umap_n_fit=50, show_nouns=["The", "in", "zebra"]))
    assert (P.top_k, P.sign_side, P.ellipse_readout, P.readout_matrix, P.noun_prefix, P.umap_metric,
            P.umap_rows, P.umap_init, P.ellipse_heads) == (5, "key", "paper", "embedding", "", "euclidean",
                                                          "first", "spectral", None)
    rep = X.analyse_model(gpt2, P, X.load_common_nouns(P.nouns_path))
    assert rep.layers == [0, 2]
    for name in X.TABLES:
        assert len(getattr(rep, name)), name
    assert not any("do not exist" in n or "not computed" in n for n in rep.notes)
    coords = rep.trajectory.coords
    assert list(coords.stage.unique()) == ["embedding", "embedding + position", "final-normed"]
    T = X.combine({rep.label: rep})
    for fn in (lambda: PA.plot_norm_scorings(T), lambda: PA.plot_ellipse(T, P.show_nouns, 0),
               lambda: PA.plot_trajectories({rep.label: rep})):
        fig, tidy = fn()
        assert len(tidy)
    lines = F.procedure_lines(P)
    assert all(v.startswith("paper") for v in lines.values())
    assert "variant" in F.procedure_lines(params_class("07_attention_geometry").from_dict(
        dict(models=[gpt2.desc.source], sign_side="query")))["directions"]
    text = C.findings_markdown({rep.label: rep})
    assert "||gamma e|| + beta.e puts" in text and "Trajectories on a sphere" in text
    with pytest.raises(ValueError, match="indices 0..2"):
        MF.blocks_to_probe(3, blocks=[0, 5])
