"""The toy transformer family: preset structure, attention (causal, padding, RoPE), config round trip."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from tg_utils.toy.model import (PRESETS, Block, GeluMLP, SwiGLU, ToyConfig, ToyTransformer, preset,
                                swiglu_hidden)

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(n_layer=2, d_model=32, n_head=4, d_ff=96, vocab_size=61, context=24)


def tiny(name="llama-preln", **kw):
    torch.manual_seed(0)
    return ToyTransformer(preset(name, **{**TINY, **kw})).eval()


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_structure(name):
    m = tiny(name)
    cfg = m.config
    llama = name.startswith("llama")
    pre = name.endswith("-preln")
    assert isinstance(cfg, ToyConfig)
    assert (cfg.norm, cfg.mlp, cfg.placement) == (("rms", "swiglu") if llama else ("layer", "gelu")) + (
        "pre" if pre else "post",)
    assert isinstance(m.embed, nn.Embedding) and m.embed.weight.shape == (61, 32)
    assert isinstance(m.blocks, nn.ModuleList) and len(m.blocks) == 2
    norm_type = nn.RMSNorm if llama else nn.LayerNorm
    for b in m.blocks:
        assert isinstance(b, Block)
        assert isinstance(b.attn_norm, norm_type) and isinstance(b.mlp_norm, norm_type)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            lin = getattr(b.attn, proj)
            assert isinstance(lin, nn.Linear) and lin.weight.shape == (32, 32)
            assert (lin.bias is not None) == (not llama)
        if llama:
            assert isinstance(b.mlp, SwiGLU)
            h = swiglu_hidden(96)
            assert b.mlp.gate_proj.weight.shape == (h, 32) and b.mlp.up_proj.weight.shape == (h, 32)
            assert b.mlp.down_proj.weight.shape == (32, h)
        else:
            assert isinstance(b.mlp, GeluMLP) and not hasattr(b.mlp, "gate_proj")
            assert b.mlp.up_proj.weight.shape == (96, 32) and b.mlp.down_proj.weight.shape == (32, 96)
            assert b.attn_norm.bias is not None          # LayerNorm with bias
    if pre:
        assert isinstance(m.final_norm, norm_type)
    else:
        assert isinstance(m.final_norm, nn.Identity)
    assert m.lm_head.weight.shape == (61, 32) and m.lm_head.bias is None


@pytest.mark.parametrize("name", list(PRESETS))
def test_block_placement_of_norms(name):
    """Pre: x + attn(attn_norm(x)), then + mlp(mlp_norm(.)). Post: attn_norm(x + attn(x)), mlp_norm(. + mlp(.))."""
    m = tiny(name)
    b = m.blocks[0]
    x = torch.randn(2, 7, 32)
    cos, sin = m.rotary(torch.arange(7).expand(2, 7))
    with torch.no_grad():
        out = b(x, cos, sin)
        if name.endswith("-preln"):
            h = x + b.attn(b.attn_norm(x), cos, sin)
            want = h + b.mlp(b.mlp_norm(h))
        else:
            h = b.attn_norm(x + b.attn(x, cos, sin))
            want = b.mlp_norm(h + b.mlp(h))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7, 32)
    torch.testing.assert_close(out, want)
    if name.endswith("-postln") and name.startswith("llama"):   # post-norm output is RMS-normalised
        rms = out.pow(2).mean(-1).sqrt() / b.mlp_norm.weight.abs().mean()
        torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-3, rtol=1e-3)


def test_swiglu_width_keeps_mlp_params_comparable():
    assert swiglu_hidden(768) == 512 and swiglu_hidden(1536) == 1024 and swiglu_hidden(96) % 8 == 0
    for d, d_ff in [(128, 512), (192, 768), (384, 1536)]:
        sw = sum(p.numel() for p in SwiGLU(preset("llama-preln", d_model=d, n_head=4, d_ff=d_ff)).parameters())
        ge = sum(p.numel() for p in GeluMLP(preset("llama-preln", d_model=d, n_head=4, d_ff=d_ff,
                                                   mlp="gelu")).parameters())
        assert abs(sw - ge) / ge < 0.02
    big = {n: ToyTransformer(preset(n, d_model=128, n_head=4, d_ff=512, vocab_size=100)).n_params()
           for n in PRESETS}
    assert max(big.values()) / min(big.values()) < 1.02


def test_forward_shapes_and_seeded_init():
    m1, m2 = tiny(), tiny()
    ids = torch.randint(0, 61, (3, 11))
    out = m1(ids)
    assert out.shape == (3, 11, 61)
    assert torch.equal(out, m2(ids))
    std_resid = m1.blocks[0].attn.o_proj.weight.std().item()
    assert std_resid == pytest.approx(0.02 / math.sqrt(2 * 2), rel=0.2)
    assert m1.blocks[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.2)


@pytest.mark.parametrize("name", list(PRESETS))
def test_causal_masking(name):
    m = tiny(name)
    ids = torch.randint(0, 61, (2, 16))
    changed = ids.clone()
    changed[:, 9:] = (changed[:, 9:] + 7) % 61
    with torch.no_grad():
        a, b = m(ids), m(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9], atol=1e-6, rtol=0)
    assert (a[:, 9:] - b[:, 9:]).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["llama-preln", "standard-postln"])
def test_right_padding_mask_matches_unpadded(name):
    m = tiny(name)
    lengths = [13, 6, 9]
    rows = [torch.randint(0, 61, (n,)) for n in lengths]
    T = max(lengths)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        ids[i, len(r):] = 5          # junk pad id: must not matter
        mask[i, :len(r)] = 1
    with torch.no_grad():
        batched = m(ids, attention_mask=mask)
        for i, r in enumerate(rows):
            alone = m(r[None])[0]
            torch.testing.assert_close(batched[i, :len(r)], alone, atol=1e-5, rtol=1e-5)
    # an all-ones mask equals no mask
    with torch.no_grad():
        torch.testing.assert_close(m(ids, attention_mask=torch.ones_like(ids)), m(ids), atol=1e-5, rtol=1e-5)


def test_rope_positions():
    m = tiny()
    ids = torch.randint(0, 61, (2, 10))
    with torch.no_grad():
        base = m(ids)
        explicit = m(ids, position_ids=torch.arange(10).expand(2, 10))
        shifted = m(ids, position_ids=torch.arange(10).expand(2, 10) + 17)   # RoPE is relative
        scrambled = m(ids, position_ids=torch.arange(10).flip(0).expand(2, 10))
    torch.testing.assert_close(base, explicit)
    torch.testing.assert_close(base, shifted, atol=1e-4, rtol=1e-4)
    assert (base - scrambled).abs().max() > 1e-4


def test_attention_is_scaled_dot_product_with_rope():
    """The attention module equals softmax(q k^T / sqrt(d_head) + causal) v with rotated q, k, then o_proj."""
    m = tiny("standard-preln")
    attn = m.blocks[0].attn
    B, T, d, H = 2, 6, 32, 4
    dh = d // H
    x = torch.randn(B, T, d)
    cos, sin = m.rotary(torch.arange(T).expand(B, T))

    def rot(t):
        t = t.view(B, T, H, dh).transpose(1, 2)
        t1, t2 = t[..., :dh // 2], t[..., dh // 2:]
        return t * cos + torch.cat((-t2, t1), -1) * sin

    with torch.no_grad():
        q, k = rot(attn.q_proj(x)), rot(attn.k_proj(x))
        v = attn.v_proj(x).view(B, T, H, dh).transpose(1, 2)
        s = q @ k.transpose(-1, -2) / math.sqrt(dh)
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, d)
        torch.testing.assert_close(attn(x, cos, sin), attn.o_proj(y), atol=1e-5, rtol=1e-5)


def test_tied_embeddings():
    m = tiny(tie_embeddings=True)
    assert m.lm_head.weight is m.embed.weight
    untied = tiny()
    assert untied.n_params() - m.n_params() == 61 * 32
    assert m.n_params(non_embedding=True) == untied.n_params(non_embedding=True)


def test_config_round_trip_and_errors():
    cfg = preset("standard-postln", d_model=64, n_head=2)
    assert ToyConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown toy-model preset 'gpt'.*llama-preln"):
        preset("gpt")
    with pytest.raises(ValueError, match="unknown ToyConfig fields"):
        ToyConfig.from_dict({**cfg.to_dict(), "n_embd": 3})
    with pytest.raises(ValueError, match="divisible"):
        preset("llama-preln", d_model=30, n_head=4)
    with pytest.raises(ValueError, match="norm"):
        ToyConfig(norm="batch")
    with pytest.raises(ValueError, match="placement"):
        ToyConfig(placement="sandwich")
