"""tg_utils.weights: per-head W_qk / W_vo against the toy model's own attention forward, SVD through
the factors, singular values, grouped-query head mapping, the sign rule, coverage, the vocabulary scan,
embedding-norm scorings, the single-token noun filter, the per-block probe (singular-direction tokens and
the ellipse probe) against direct computation, and the UMAP trajectory. No network."""
from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from tg_utils.toy import model as TM
from tg_utils import weights as W


# ----------------------------------------------------------------------------- helpers

def tiny_model(preset: str, seed: int = 0) -> TM.ToyTransformer:
    torch.manual_seed(seed)
    cfg = TM.preset(preset, n_layer=2, d_model=32, n_head=4, d_ff=64, vocab_size=60, context=16)
    model = TM.ToyTransformer(cfg).eval()
    with torch.no_grad():          # non-trivial norm gains (init is all ones), biases of Linear stay 0
        for blk in model.blocks:
            blk.attn_norm.weight.uniform_(0.5, 1.5)
            if getattr(blk.attn_norm, "bias", None) is not None:
                blk.attn_norm.bias.normal_(0, 0.1)
    return model


def head_weights(attn: TM.Attention):
    """The block's attention weights per head in the ModelDescription convention (q = x @ W_Q[h])."""
    H, dh = attn.n_head, attn.d_head
    d = H * dh
    W_Q = attn.q_proj.weight.detach().view(H, dh, d).transpose(1, 2)
    W_K = attn.k_proj.weight.detach().view(H, dh, d).transpose(1, 2)
    W_V = attn.v_proj.weight.detach().view(H, dh, d).transpose(1, 2)
    W_O = attn.o_proj.weight.detach().view(d, H, dh).permute(1, 2, 0)
    return W_Q, W_K, W_V, W_O


def block_input(model: TM.ToyTransformer, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream entering block `layer` (real RoPE in the earlier blocks)."""
    B, T = ids.shape
    cos, sin = model.rotary(torch.arange(T).expand(B, T))
    x = model.embed(ids)
    for blk in model.blocks[:layer]:
        x = blk(x, cos, sin)
    return x


# ----------------------------------------------------------------------------- W_qk, W_vo vs the model

@pytest.mark.parametrize("preset", ["llama-preln", "standard-preln"])
def test_qk_scores_equal_attention_forward(preset, monkeypatch):
    model = tiny_model(preset)
    layer, T = 1, 7
    ids = torch.randint(0, 60, (2, T), generator=torch.Generator().manual_seed(1))
    captured = {}
    real_sdpa = TM.F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        captured.update(q=q, k=k)
        # the attention weights with the model's own scale and mask: values = one-hot positions
        eye = torch.eye(q.shape[-2], dtype=q.dtype).expand(*q.shape[:-1], q.shape[-2])
        captured["weights"] = real_sdpa(q, k, eye, *args, **kwargs)
        return real_sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(TM.F, "scaled_dot_product_attention", spy)
    blk = model.blocks[layer]
    with torch.no_grad():
        x = blk.attn_norm(block_input(model, ids, layer))                    # the normed input (B, T, d)
        # RoPE neutralised: Attention.forward takes the rotation tables as arguments, and cos = 1,
        # sin = 0 make q * cos + rotate_half(q) * sin = q at every position (the identity rotation),
        # so the q, k reaching SDPA are exactly x W_q, x W_k per head.
        dh = model.config.d_head
        ones, zeros = torch.ones(1, 1, T, dh), torch.zeros(1, 1, T, dh)
        blk.attn(x, ones, zeros)
    W_Q, W_K, W_V, W_O = head_weights(blk.attn)
    W_qk = W.qk_matrices(W_Q, W_K)                                            # [H, d, d] float64
    xd = x.double()
    ours = torch.einsum("bid,hde,bje->bhij", xd, W_qk, xd)                    # x W_qk x'^T per head
    q, k = captured["q"].double(), captured["k"].double()
    direct = q @ k.mT / math.sqrt(dh)                                         # q_h . k_h / sqrt(d_head)
    torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-6)
    # and the softmax the model computed (its own scale, causal mask) is the softmax of x W_qk x'^T
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    ref = torch.softmax(ours.masked_fill(~causal, float("-inf")), dim=-1)
    torch.testing.assert_close(captured["weights"].double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("preset", ["llama-preln", "standard-preln"])
def test_vo_equals_single_token_attention_output(preset):
    model = tiny_model(preset)
    blk = model.blocks[0]
    with torch.no_grad():
        x = blk.attn_norm(torch.randn(3, 1, model.config.d_model))          # 3 one-token sequences
        cos, sin = model.rotary(torch.zeros(3, 1, dtype=torch.long))         # position 0 (RoPE: identity)
        out = blk.attn(x, cos, sin)[:, 0]                                    # softmax weight 1 on itself
    W_Q, W_K, W_V, W_O = head_weights(blk.attn)
    W_vo = W.vo_matrices(W_V, W_O)                                            # [H, d, d]
    ours = x[:, 0].double() @ W_vo.sum(0)
    if blk.attn.o_proj.bias is not None:
        ours = ours + blk.attn.o_proj.bias.double()
    torch.testing.assert_close(ours, out.double(), rtol=1e-5, atol=1e-6)
    # per head: the update of head h alone is x W_vo[h]
    for h in range(model.config.n_head):
        v_h = x[:, 0] @ W_V[h]
        torch.testing.assert_close(x[:, 0].double() @ W_vo[h], (v_h @ W_O[h]).double(), rtol=1e-5, atol=1e-7)


def test_description_convention():
    from tg_utils import models
    model = tiny_model("llama-preln")
    desc = models.describe(model)
    W_Q, W_K, W_V, W_O = head_weights(model.blocks[1].attn)
    a = desc.attn[1]
    for ours, theirs in ((W_Q, a.W_Q), (W_K, a.W_K), (W_V, a.W_V), (W_O, a.W_O)):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(W.kv_head_map(desc.n_heads, desc.n_kv_heads), desc.kv_head_map)


# ----------------------------------------------------------------------------- GQA

def test_kv_head_map_gqa():
    assert W.kv_head_map(8, 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert W.kv_head_map(6, 6).tolist() == list(range(6))
    assert W.kv_head_map(9, 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError):
        W.kv_head_map(8, 3)


def test_gqa_matrices_use_the_shared_kv_head():
    g = torch.Generator().manual_seed(0)
    H, Hkv, d, dh = 8, 2, 12, 3
    W_Q, W_O = torch.randn(H, d, dh, generator=g), torch.randn(H, dh, d, generator=g)
    W_K, W_V = torch.randn(Hkv, d, dh, generator=g), torch.randn(Hkv, d, dh, generator=g)
    qk, vo = W.qk_matrices(W_Q, W_K), W.vo_matrices(W_V, W_O)
    assert qk.shape == vo.shape == (H, d, d) and qk.dtype == torch.float64
    W_Q, W_K, W_V, W_O = (w.double() for w in (W_Q, W_K, W_V, W_O))
    for h in range(H):
        g_ = 0 if h < 4 else 1
        torch.testing.assert_close(qk[h], W_Q[h] @ W_K[g_].T / math.sqrt(dh))
        torch.testing.assert_close(vo[h], W_V[g_] @ W_O[h])
    # an explicit map and an explicit scale
    m = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])
    qk2 = W.qk_matrices(W_Q, W_K, kv_map=m, scale=0.5)
    torch.testing.assert_close(qk2[0], W_Q[0] @ W_K[1].T * 0.5)
    with pytest.raises(ValueError):
        W.qk_factors(W_Q, W_K, kv_map=torch.tensor([0, 2, 0, 0, 0, 0, 0, 0]))


def test_gqa_scores_and_updates_equal_a_hf_llama_forward():
    """Grouped-query attention in a real transformers model: a tiny Llama with 4 query heads on 2 key/value
    heads. With every position id 0 RoPE is the identity rotation, so the eager attention weights of block 0
    are softmax over the causal mask of x W_qk[h] x'^T (x: the block's input-normed embeddings), with W_qk
    built from the model description's per-head weights and kv map; and a one-token input's attention output
    (softmax weight 1 on itself) is x sum_h W_vo[h]."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tg_utils import models

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    cfg._attn_implementation = "eager"
    m = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        m.model.layers[0].input_layernorm.weight.uniform_(0.5, 1.5)
    desc = models.describe(m)
    assert desc.kv_head_map.tolist() == [0, 0, 1, 1]
    a = desc.attn[0]
    T = 6
    ids = torch.randint(0, 50, (1, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = m(ids, position_ids=torch.zeros(1, T, dtype=torch.long), output_attentions=True)
        x = m.model.layers[0].input_layernorm(m.model.embed_tokens(ids))[0].double()
    W_qk = W.qk_matrices(a.W_Q, a.W_K, desc.kv_head_map, desc.attn_scale)
    scores = torch.einsum("id,hde,je->hij", x, W_qk, x)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    ref = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    torch.testing.assert_close(out.attentions[0][0].double(), ref, rtol=1e-4, atol=1e-5)
    # a wrong map (query head h reading kv head h % 2) does not reproduce the model
    wrong = W.qk_matrices(a.W_Q, a.W_K, torch.tensor([0, 1, 0, 1]), desc.attn_scale)
    s2 = torch.softmax(torch.einsum("id,hde,je->hij", x, wrong, x).masked_fill(~causal, float("-inf")), -1)
    assert not torch.allclose(out.attentions[0][0].double(), s2, atol=1e-3)
    # W_vo: one token attends only to itself
    attn = m.model.layers[0].self_attn
    x1 = torch.randn(3, 1, 32)
    with torch.no_grad():
        cos, sin = m.model.rotary_emb(x1, torch.zeros(3, 1, dtype=torch.long))
        y = attn(x1, position_embeddings=(cos, sin), attention_mask=None)[0][:, 0]
    W_vo = W.vo_matrices(a.W_V, a.W_O, desc.kv_head_map)
    torch.testing.assert_close(x1[:, 0].double() @ W_vo.sum(0), y.double(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- SVD through factors

@pytest.mark.parametrize("m,r,n", [(40, 6, 30), (10, 4, 10), (5, 8, 4)])
def test_factored_svd_equals_dense(m, r, n):
    g = torch.Generator().manual_seed(m + r + n)
    Af, Bf = torch.randn(3, m, r, generator=g, dtype=torch.float64), torch.randn(3, r, n, generator=g,
                                                                                   dtype=torch.float64)
    fm = W.FactoredMatrix(Af, Bf)
    assert fm.shape == (3, m, n)
    svd = fm.svd()
    kk = min(m, n, r)
    assert svd.U.shape == (3, m, kk) and svd.S.shape == (3, kk) and svd.V.shape == (3, n, kk)
    M = Af @ Bf
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    torch.testing.assert_close(svd.S, S[:, :kk], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(svd.matrix(), M, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(svd.U.mT @ svd.U, torch.eye(kk, dtype=torch.float64).expand(3, kk, kk))
    # the same singular vectors up to a joint sign (distinct singular values on random matrices)
    cu = (svd.U * U[..., :kk]).sum(-2)
    cv = (svd.V * Vh.mT[..., :kk]).sum(-2)
    torch.testing.assert_close(cu.abs(), torch.ones_like(cu), rtol=0, atol=1e-8)
    torch.testing.assert_close(cu, cv, rtol=0, atol=1e-8)
    # after the sign rule both are identical
    ref = torch.randn(50, m, generator=g, dtype=torch.float64)
    a = W.sign_align(svd, ref, "left")
    b = W.sign_align(W.SVD(U[..., :kk], S[:, :kk], Vh.mT[..., :kk]), ref, "left")
    torch.testing.assert_close(a.U, b.U, rtol=0, atol=1e-8)
    torch.testing.assert_close(a.V, b.V, rtol=0, atol=1e-8)


def test_sign_rule():
    # two directions in R^2; reference rows chosen so that the dot products are known
    U = torch.eye(2, dtype=torch.float64)
    V = torch.tensor([[0.6, 0.8], [0.8, -0.6]], dtype=torch.float64)
    S = torch.tensor([2.0, 1.0], dtype=torch.float64)
    ref = torch.tensor([[1.0, 2.0], [-3.0, -1.0], [0.5, 1.0]], dtype=torch.float64)
    # u_0: s = [1, -3, 0.5]: max 1 < |min| 3 -> flip;  u_1: s = [2, -1, 1]: max 2 > 1 -> keep
    svd = W.sign_align(W.SVD(U, S, V), ref, "left")
    torch.testing.assert_close(svd.U, torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(svd.V[:, 0], -V[:, 0])                      # the pair flips together
    torch.testing.assert_close(svd.V[:, 1], V[:, 1])
    torch.testing.assert_close(svd.matrix(), W.SVD(U, S, V).matrix())     # M unchanged
    for i in range(2):
        s = ref @ svd.U[:, i]
        assert s.max() >= -s.min()
    # side="right" looks at V
    svd_r = W.sign_align(W.SVD(U, S, V), ref, "right")
    for i in range(2):
        s = ref @ svd_r.V[:, i]
        assert s.max() >= -s.min()
    # a tie (max == |min|) is not flipped
    tie = W.sign_align(W.SVD(U, S, V), torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64))
    torch.testing.assert_close(tie.U, U)
    # the reference goes through the norm: a norm that negates the rows reverses every decision
    neg = W.sign_align(W.SVD(U, S, V), ref, "left", norm=lambda x: -x)
    torch.testing.assert_close(neg.U, -svd.U)


def test_coverage_and_rank():
    S = torch.tensor([[3.0, 2.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    c = W.singular_value_coverage(S)
    torch.testing.assert_close(c[0], torch.tensor([9 / 14, 13 / 14, 1.0, 1.0], dtype=torch.float64))
    assert W.rank_at_coverage(S, 0.99).tolist() == [3, 1, 0]
    assert W.rank_at_coverage(S[0], 0.9).item() == 2
    assert W.rank_at_coverage(S[0], 0.5).item() == 1
    assert W.rank_at_coverage(S[0], 13 / 14).item() == 2                # reached exactly
    t = W.coverage_table(S, "qk")
    assert t["rank_at_level"].tolist() == [3, 1, 0] and t["head"].tolist() == [0, 1, 2]
    curve = pd.DataFrame(W.coverage_curve(S, "qk"))
    assert len(curve) == 12 and curve["rank"].tolist()[:4] == [1, 2, 3, 4]
    # the paper's coverage (utils/plot_utils.py:123-128): of sigma, the first index strictly above the level
    sig = W.singular_value_coverage(S, of="sigma")
    torch.testing.assert_close(sig[0], torch.tensor([3 / 6, 5 / 6, 1.0, 1.0], dtype=torch.float64))
    for level in (0.5, 0.8, 5 / 6, 0.99):
        paper = int(np.argmax(np.cumsum(S[0].numpy()) / S[0].sum().item() > level)) + 1
        assert W.rank_at_coverage(S[0], level, of="sigma").item() == paper, level
    assert W.rank_at_coverage(S[0], 0.5, of="sigma").item() == 2                # 1/2 is not above 1/2
    t = W.coverage_table(S, "qk", 0.99, of="sigma")
    assert t["rank_at_level"].tolist() == [3, 1, 0] and t["coverage_of"].tolist() == ["sigma"] * 3
    np.testing.assert_allclose(t["percent_of_features"][:2], [100 * 2 / 3, 0.0])  # np.linspace(0, 1, k)[r - 1]
    with pytest.raises(ValueError):
        W.singular_value_coverage(S, of="sigma3")


# ----------------------------------------------------------------------------- embedding norms

def test_embedding_norm_scores_by_hand():
    W_E = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0], [-2.0, 0.0]])
    g, b = torch.tensor([2.0, 1.0]), torch.tensor([1.0, -1.0])
    sc = W.embedding_norm_scores(W_E, g, b)
    np.testing.assert_allclose(sc.norm, [5, 1, 1, 2])
    np.testing.assert_allclose(sc.scaled_norm, [math.sqrt(52), 1, 2, 4])
    np.testing.assert_allclose(sc.bias_term, [-1, -1, 1, -2])                 # b . e
    np.testing.assert_allclose(sc.bias, [5 - 1, 1 - 1, 1 + 1, 2 - 2])          # the paper: ||e|| + b . e
    np.testing.assert_allclose(sc.both, [math.sqrt(52) - 1, 0, 3, 2])           # the paper: ||g e|| + b . e
    np.testing.assert_allclose(sc.max_logit, math.sqrt(2) * sc.scaled_norm + sc.bias_term)   # variant
    assert sc.radius == pytest.approx(math.sqrt(2)) and sc.note == ""
    assert list(sc.as_dict()) == ["norm", "scaled_norm", "bias", "both", "bias_term", "max_logit"]
    assert list(sc.as_dict(variants=False)) == ["norm", "scaled_norm", "bias", "both"]
    # the variant max_logit is the largest logit over normalised states of norm sqrt(d): check it numerically
    ang = torch.linspace(0, 2 * math.pi, 20001, dtype=torch.float64)
    xs = math.sqrt(2) * torch.stack([ang.cos(), ang.sin()], 1)
    logits = (xs * g.double() + b.double()) @ W_E.double().T
    np.testing.assert_allclose(logits.max(0).values.numpy(), sc.max_logit, rtol=1e-6)
    # RMSNorm: no bias -> the scorings with the bias do not exist
    rms = W.embedding_norm_scores(W_E, g)
    assert rms.bias is None and rms.both is None and rms.bias_term is None and rms.max_logit is None
    assert "no bias" in rms.note
    assert list(rms.as_dict()) == ["norm", "scaled_norm"]
    plain = W.embedding_norm_scores(W_E)
    np.testing.assert_allclose(plain.scaled_norm, plain.norm)
    with pytest.raises(ValueError):
        W.embedding_norm_scores(W_E, torch.ones(3))


def test_top_bottom_tokens_table(word_tokenizer):
    W_E = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0], [-2.0, 0.0]])
    df = pd.DataFrame(W.top_bottom_tokens(W.embedding_norm_scores(W_E, torch.tensor([2.0, 1.0])), word_tokenizer,
                                          k=2))
    assert list(df.columns) == ["scoring", "rank", "side", "token_id", "token", "token_raw", "score"]
    assert set(df["scoring"]) == {"norm", "scaled_norm"} and len(df) == 8
    top = df[(df.scoring == "norm") & (df.side == "top")]
    assert top["token_id"].tolist() == [0, 3] and top["rank"].tolist() == [1, 2]
    bottom = df[(df.scoring == "norm") & (df.side == "bottom")]
    assert bottom["token_id"].tolist() == [1, 2]                           # tie: lower id first
    assert df["token"].iloc[0] == word_tokenizer.decode([0])
    # a mapping with a missing scoring and NaN scores
    df2 = pd.DataFrame(W.top_bottom_tokens({"a": np.array([1.0, np.nan, 3.0]), "b": None}, None, k=5))
    assert set(df2["scoring"]) == {"a"} and len(df2) == 4 and 1 not in df2["token_id"].tolist()
    assert df2["token"].tolist()[0] == "2"


# ----------------------------------------------------------------------------- norms

def test_norm_handling():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, generator=g, dtype=torch.float64)
    w, b = torch.rand(8, generator=g, dtype=torch.float64) + 0.5, torch.randn(8, generator=g, dtype=torch.float64)
    rms = torch.nn.RMSNorm(8, eps=1e-6).double()
    ln = torch.nn.LayerNorm(8, eps=1e-5).double()
    with torch.no_grad():
        rms.weight.copy_(w)
        ln.weight.copy_(w)
        ln.bias.copy_(b)
    torch.testing.assert_close(W.rms_norm(x, w, eps=1e-6), rms(x).detach())
    torch.testing.assert_close(W.layer_norm(x, w, b, eps=1e-5), ln(x).detach())
    torch.testing.assert_close(W.as_norm(rms)(x), rms(x).detach())
    torch.testing.assert_close(W.as_norm(SimpleNamespace(module=ln))(x), ln(x).detach())   # a NormInfo
    assert W.as_norm(None)(x) is x
    # Gemma's (1 + w) scale
    torch.testing.assert_close(W.rms_norm(x, w - 1, eps=1e-6, weight_offset=1.0), rms(x).detach())
    # a float32 module on float64 input comes back float64
    assert W.as_norm(torch.nn.RMSNorm(8))(x).dtype == torch.float64


# ----------------------------------------------------------------------------- singular-direction tokens

@pytest.mark.parametrize("sign_side", ["key", "query"])
def test_block_probe_direction_tokens(word_tokenizer, sign_side):
    """The directions table of the per-block probe: the top-k tokens of every head's first singular pairs of
    W_qk and W_vo after the sign rule (W_qk on the key side against norm(W_E), the paper's, or on the query
    side, the variant; W_vo on the output side against W_U.T), as ``sign_align`` aligns them on its own."""
    g = torch.Generator().manual_seed(3)
    H, Hkv, d, dh, V = 4, 2, 16, 4, 40
    W_Q, W_O = torch.randn(H, d, dh, generator=g), torch.randn(H, dh, d, generator=g)
    W_K, W_V = torch.randn(Hkv, d, dh, generator=g), torch.randn(Hkv, d, dh, generator=g)
    W_E, W_U = torch.randn(V, d, generator=g), torch.randn(d, V, generator=g)
    w = torch.rand(d, generator=g) + 0.5
    norm = partial(W.rms_norm, weight=w, eps=1e-6)
    res = W.block_probe(W_Q, W_K, W_V, W_O, W_E, W_U, norm=norm, n_components=2, k=3, tokenizer=word_tokenizer,
                        layer=5, chunk=7, sign_side=sign_side)              # chunked vocabulary scans
    assert res.ellipse is None                                              # no query tokens
    df = pd.DataFrame(res.directions)
    assert list(df.columns) == W.DIRECTION_COLUMNS and set(df["layer"]) == {5}
    assert len(df) == 2 * 2 * H * 2 * 3                                     # kinds x sides x heads x comps x k
    qk = W.sign_align(W.qk_factors(W_Q, W_K).svd(), W_E, "right" if sign_side == "key" else "left", norm, chunk=7)
    vo = W.sign_align(W.vo_factors(W_V, W_O).svd(), W_U.T, "right", chunk=7)
    torch.testing.assert_close(qk.matrix(), W.qk_matrices(W_Q, W_K))      # the flips leave M unchanged
    torch.testing.assert_close(vo.matrix(), W.vo_matrices(W_V, W_O))
    En = norm(W_E.double())
    s_q = torch.einsum("vd,hdk->hvk", En, qk.V if sign_side == "key" else qk.U)   # the side vs normed E
    assert (s_q.amax(1) >= -s_q.amin(1) - 1e-12).all()
    s_o = torch.einsum("vd,hdk->hvk", W_U.T.double(), vo.V)               # output side vs unembedding
    assert (s_o.amax(1) >= -s_o.amin(1) - 1e-12).all()
    for kind, svd, sides in (("qk", qk, (("query", "U", En), ("key", "V", En))),
                             ("vo", vo, (("input", "U", En), ("output", "V", W_U.T.double())))):
        for side, attr, ref in sides:
            for h in range(H):
                for c in range(2):
                    sel = df[(df.kind == kind) & (df.side == side) & (df["head"] == h) & (df.component == c)]
                    scores = ref @ getattr(svd, attr)[h, :, c]
                    assert sel["token_id"].tolist() == scores.argsort(descending=True)[:3].tolist()
                    assert sel["rank"].tolist() == [1, 2, 3]
                    np.testing.assert_allclose(sel["score"], scores.sort(descending=True).values[:3].numpy(),
                                               rtol=1e-5)
                    assert sel["sigma"].iloc[0] == pytest.approx(svd.S[h, c].item())
    assert df["token"].tolist() == [word_tokenizer.decode([i]) for i in df["token_id"]]


# ----------------------------------------------------------------------------- nouns

def _bpe_tokenizer():
    """A hand-made byte-level BPE: " cat", " dog", " sun" are one token; " house" is not; without the
    leading space "cat" is three tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    letters = sorted(set("catdogsunhouse"))
    vocab = {c: i for i, c in enumerate(["Ġ", *letters])}
    merges = [("Ġ", "c"), ("Ġc", "a"), ("Ġca", "t"), ("Ġ", "d"), ("Ġd", "o"), ("Ġdo", "g"),
              ("Ġ", "s"), ("Ġs", "u"), ("Ġsu", "n"), ("Ġ", "h"), ("Ġh", "o")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def test_single_token_nouns_filter():
    from transformers import PreTrainedTokenizerFast
    raw = _bpe_tokenizer()
    fast = PreTrainedTokenizerFast(tokenizer_object=raw)
    nouns = ["cat", "house", "dog", "cat", "sun", " "]
    for tok in (fast, raw):
        df = pd.DataFrame(W.single_token_nouns(tok, nouns, prefix=" "))   # the variant: " noun"
        assert df["noun"].tolist() == ["cat", "dog", "sun"]                 # " house" is 2 tokens; dup once
        assert df["token_id"].tolist() == [raw.token_to_id(t) for t in ("Ġcat", "Ġdog", "Ġsun")]
        assert df["token"].tolist() == [" cat", " dog", " sun"]
    assert len(W.single_token_nouns(fast, nouns)["noun"]) == 0             # the paper's bare "cat" is c|a|t


# ----------------------------------------------------------------------------- ellipse probe

def test_block_probe_ellipse_against_direct_computation():
    g = torch.Generator().manual_seed(5)
    H, Hkv, d, dh, V = 4, 2, 16, 4, 50
    W_Q, W_O = torch.randn(H, d, dh, generator=g), torch.randn(H, dh, d, generator=g)
    W_K, W_V = torch.randn(Hkv, d, dh, generator=g), torch.randn(Hkv, d, dh, generator=g)
    W_E, W_U = torch.randn(V, d, generator=g), torch.randn(d, V, generator=g)
    gain = torch.rand(d, generator=g) + 0.5
    rms = torch.nn.RMSNorm(d, eps=1e-6)
    with torch.no_grad():
        rms.weight.uniform_(0.5, 1.5, generator=g)
    q_ids = [3, 17, 42]
    res = W.block_probe(W_Q, W_K, W_V, W_O, W_E, W_U, norm=rms, query_ids=q_ids, labels=["a", "b", "c"],
                        final_norm_weight=gain, k=5, layer=2, chunk=8, readout="update")
    df = pd.DataFrame(res.ellipse)
    assert list(df.columns) == ["layer", "noun", "query_id", "head", "probe", "rank", "token_id", "token",
                                "token_raw", "score", "update_norm"]
    assert len(df) == 2 * H * 3 * 5
    En = W.rms_norm(W_E.double(), rms.weight.detach().double(), eps=1e-6)
    Wqk, Wvo = W.qk_matrices(W_Q, W_K), W.vo_matrices(W_V, W_O)
    for h in (0, 3):
        for label, t in zip("abc", q_ids):
            keys = En[t] @ Wqk[h] @ En.T
            sel = df[(df.probe == "keys") & (df["head"] == h) & (df.noun == label)]
            assert sel["token_id"].tolist() == keys.argsort(descending=True)[:5].tolist()
            np.testing.assert_allclose(sel["score"], keys.sort(descending=True).values[:5].numpy(), rtol=1e-4)
            logits = ((En[t] @ Wvo[h]) * gain.double()) @ W_U.double()
            sel = df[(df.probe == "update") & (df["head"] == h) & (df.noun == label)]
            assert sel["token_id"].tolist() == logits.argsort(descending=True)[:5].tolist()
    # heads subset; tied embeddings (W_U = W_E.T); labels default to the decoded tokens
    df2 = pd.DataFrame(W.block_probe(W_Q, W_K, W_V, W_O, W_E, W_E.T, norm=rms, query_ids=q_ids[:1], heads=[1],
                                     k=2, readout="update").ellipse)
    assert df2["noun"].tolist() == ["3"] * 4
    assert set(df2["head"]) == {1} and len(df2) == 4
    logits = (En[3] @ Wvo[1]) @ W_E.double().T
    assert df2[df2.probe == "update"]["token_id"].tolist() == logits.argsort(descending=True)[:2].tolist()
    # the paper's read-out needs the residual embeddings; bad options are refused
    with pytest.raises(ValueError, match="residual"):
        W.block_probe(W_Q, W_K, W_V, W_O, W_E, W_U, norm=rms, query_ids=q_ids)
    for bad in (dict(sign_side="left"), dict(readout="logits")):
        with pytest.raises(ValueError):
            W.block_probe(W_Q, W_K, W_V, W_O, W_E, W_U, norm=rms, **bad)


# ----------------------------------------------------------------------------- UMAP trajectory

def test_umap_trajectory_shapes_and_determinism():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 16, generator=g)
    W_E = centres[torch.randint(0, 6, (300,), generator=g)] + 0.3 * torch.randn(300, 16, generator=g)
    W_E[7] = 0.0                                                              # a zero row is never fitted
    states = torch.randn(4, 5, 16, generator=g) * torch.arange(1, 5).view(4, 1, 1)
    norm = partial(W.rms_norm, eps=1e-6)
    kw = dict(n_neighbors=8, seed=0, n_fit=200, n_epochs=30, norm=norm, rows="random", metric="cosine",
              init="umap")                                                  # the variant's choices
    import os

    import numba
    try:
        numba.threading_layer()
        launched_before = True
    except ValueError:
        launched_before = False
    a = W.umap_trajectory(W_E, states, **kw)
    # numba's OpenMP layer beside torch's made later torch LAPACK calls 20-30x slower: workqueue is chosen
    if not launched_before and "NUMBA_THREADING_LAYER" not in os.environ:
        assert numba.threading_layer() == "workqueue"
    if not launched_before:      # (numba.get_num_threads() itself launches the layer: only asked afterwards)
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS    # the thread cap is undone
    b = W.umap_trajectory(W_E, states, **kw)
    assert a.coords.shape == (4, 5, 3) and a.embedding_coords.shape == (200, 3)
    assert a.norms.shape == (4, 5) and a.normed_norms.shape == (4, 5)
    assert 7 not in a.fit_ids.tolist() and len(set(a.fit_ids.tolist())) == 200
    np.testing.assert_allclose(a.norms, torch.linalg.vector_norm(states.double(), dim=-1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(a.normed_norms, 4.0, rtol=1e-5)               # RMSNorm: norm sqrt(d) = 4
    assert np.isfinite(a.coords).all()
    np.testing.assert_array_equal(a.coords, b.coords)                         # seeded: identical
    np.testing.assert_array_equal(a.embedding_coords, b.embedding_coords)
    np.testing.assert_array_equal(a.fit_ids, b.fit_ids)
    with pytest.raises(ValueError):
        W.umap_trajectory(W_E, states[0], **kw)
    # the paper's choices: the first n_fit rows (zero rows included), Euclidean, spectral start; deterministic
    p = dict(n_neighbors=8, seed=0, n_fit=120, n_epochs=30, norm=norm)
    c, e = W.umap_trajectory(W_E, states, **p), W.umap_trajectory(W_E, states, **p)
    assert c.fit_ids.tolist() == list(range(120)) and np.isfinite(c.coords).all()
    np.testing.assert_array_equal(c.coords, e.coords)


def test_sign_align_first_components_only():
    g = torch.Generator().manual_seed(9)
    M = W.FactoredMatrix(torch.randn(2, 10, 4, generator=g), torch.randn(2, 4, 10, generator=g))
    svd = M.svd()
    ref = torch.randn(30, 10, generator=g, dtype=torch.float64)
    full = W.sign_align(svd, ref, "left")
    part = W.sign_align(svd, ref, "left", components=2)
    torch.testing.assert_close(part.U[..., :2], full.U[..., :2])
    torch.testing.assert_close(part.U[..., 2:], svd.U[..., 2:])             # the rest untouched
    torch.testing.assert_close(part.matrix(), svd.matrix())


def test_singular_values_match_factored_svd():
    g = torch.Generator().manual_seed(0)
    Af = torch.randn(3, 40, 6, generator=g, dtype=torch.float64)
    Bf = torch.randn(3, 6, 30, generator=g, dtype=torch.float64)
    Af[1, :, 2:] = 0                                   # a rank-deficient head: the QR fallback
    fm = W.FactoredMatrix(Af, Bf)
    S = W.singular_values(fm)
    ref = W.factored_svd(Af, Bf).S
    torch.testing.assert_close(S, ref, rtol=1e-10, atol=1e-10)
    dense = torch.linalg.svdvals(Af @ Bf)[:, :6]
    torch.testing.assert_close(S, dense, rtol=1e-10, atol=1e-10)


def test_vocab_extremes_one_pass_for_two_groups():
    """bottom=n: the first n vectors get both ends, the rest only the top, in one pass; the same extremes as
    the direct sort, and as scanning each group on its own."""
    g = torch.Generator().manual_seed(4)
    rows, both, top = (torch.randn(70, 8, generator=g), torch.randn(5, 8, generator=g, dtype=torch.float64),
                       torch.randn(3, 8, generator=g, dtype=torch.float64))
    norm = partial(W.rms_norm, eps=1e-6)
    ext = W.vocab_extremes(torch.cat([both, top]), rows, k=4, norm=norm, chunk=9, bottom=5)
    assert ext.top_ids.shape == (8, 4) and ext.bottom_ids.shape == (5, 4)
    scores = torch.cat([both, top]).float() @ norm(rows).T
    assert ext.top_ids.tolist() == scores.argsort(1, descending=True)[:, :4].tolist()
    assert ext.bottom_ids.tolist() == scores[:5].argsort(1)[:, :4].tolist()
    torch.testing.assert_close(ext.top_values, scores.sort(1, descending=True).values[:, :4])
    alone = W.vocab_extremes(both, rows, k=4, norm=norm, chunk=9)
    assert alone.top_ids.tolist() == ext.top_ids[:5].tolist()
    assert alone.bottom_ids.tolist() == ext.bottom_ids.tolist()
    none = W.vocab_extremes(top, rows, k=4, norm=norm, bottom=False)
    assert none.bottom_ids.numel() == 0 and none.top_ids.tolist() == ext.top_ids[5:].tolist()


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_standardised_rows_then_affine_is_the_norm(kind):
    g = torch.Generator().manual_seed(6)
    E = torch.randn(50, 12, generator=g)
    w, b = torch.rand(12, generator=g) + 0.5, torch.randn(12, generator=g)
    rows = W.standardised_rows(E, kind, 1e-5, chunk=7)
    if kind == "rms":
        ref = W.rms_norm(E, w, eps=1e-5)
        got = W.affine(w, None)(rows)
    else:
        ref = W.layer_norm(E, w, b, eps=1e-5)
        got = W.affine(w, b)(rows)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert W.affine(None, None) is None
