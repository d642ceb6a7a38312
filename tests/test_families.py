"""Every Hugging Face family of the architecture table, verified on a tiny random model of it (built from
its transformers config class, saved with save_pretrained beside a small tokenizer, loaded by folder with
load_model): states equal output_hidden_states, batched equals one-by-one, the loss equals transformers'
own; the per-head attention split reproduces the model's own attention (value/output path on one token,
pre-softmax scores at position 0); W_U (+ b_U, soft-cap) gives the model's logits; norms, positions and
flags are the real ones. Plus the generic fallback for architectures without a row. No network."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import pytest
import torch

from tg_utils.extract import extract_states
from tg_utils.models import ARCHITECTURES, LoadedModel, NoArchitectureRow, load_model
from tg_utils.models.generic import describe_generic
from tg_utils.models.unembed import logits as unembed_logits

D, LAYERS, HEADS = 32, 2, 4
# family: (config class, model class, config kwargs beyond the common ones, expected description facts)
# facts: placement, final norm path, attention-input norm (in the block), norm kind, qk_exact, positions,
# parallel attention + MLP
FAMILIES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=D, n_layer=LAYERS, n_head=HEADS, n_positions=64),
             ("pre", "transformer.ln_f", "ln_1", "layer", True, "learned", False)),
    "gpt2-layerscale": ("GPT2Config", "GPT2LMHeadModel",
                        dict(n_embd=D, n_layer=LAYERS, n_head=HEADS, n_positions=64,
                             scale_attn_by_inverse_layer_idx=True),
                        ("pre", "transformer.ln_f", "ln_1", "layer", False, "learned", False)),
    "gpt_neo": ("GPTNeoConfig", "GPTNeoForCausalLM",
                dict(num_layers=LAYERS, num_heads=HEADS, attention_types=[[["global", "local"], 1]],
                     window_size=4, intermediate_size=64),
                ("pre", "transformer.ln_f", "ln_1", "layer", True, "learned", False)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(intermediate_size=64, attention_bias=True),
                 ("pre", "gpt_neox.final_layer_norm", "input_layernorm", "layer", True, "rotary", True)),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(ffn_dim=64, word_embed_proj_dim=D),
            ("pre", "model.decoder.final_layer_norm", "self_attn_layer_norm", "layer", True, "learned", False)),
    "opt-350m": ("OPTConfig", "OPTForCausalLM", dict(ffn_dim=64, word_embed_proj_dim=16, do_layer_norm_before=False),
                 ("post", None, "self_attn_layer_norm", "layer", True, "learned", False)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(intermediate_size=64, num_key_value_heads=2),
              ("pre", "model.norm", "input_layernorm", "rms", True, "rotary", False)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(intermediate_size=64, num_key_value_heads=2,
                                                             sliding_window=8),
                ("pre", "model.norm", "input_layernorm", "rms", True, "rotary", False)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(intermediate_size=64, num_key_value_heads=2),
              ("pre", "model.norm", "input_layernorm", "rms", True, "rotary", False)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(intermediate_size=64, num_key_value_heads=2, head_dim=8),
              ("pre", "model.norm", "input_layernorm", "rms", False, "rotary", False)),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", dict(intermediate_size=64, num_key_value_heads=2),
             ("pre", "model.norm", "input_layernorm", "layer", True, "rotary", False)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(intermediate_size=64, num_key_value_heads=2),
              ("post-sublayer", "model.norm", None, "rms", False, "rotary", False)),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(intermediate_size=64, num_key_value_heads=2,
                                                 partial_rotary_factor=0.5),
            ("pre", "model.final_layernorm", "input_layernorm", "layer", True, "rotary", True)),
    "phi-qk": ("PhiConfig", "PhiForCausalLM", dict(intermediate_size=64, num_key_value_heads=2,
                                                   partial_rotary_factor=0.5, qk_layernorm=True),
               ("pre", "model.final_layernorm", "input_layernorm", "layer", False, "rotary", True)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(intermediate_size=64, num_key_value_heads=2),
             ("pre", "model.norm", "input_layernorm", "rms", True, "rotary", False)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(intermediate_size=64, num_key_value_heads=1, head_dim=8),
              ("pre", "model.norm", "input_layernorm", "rms", True, "rotary", False)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(intermediate_size=64, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=16,
                    sliding_window=8, attn_logit_softcapping=0.5, final_logit_softcapping=2.0),
               ("pre", "model.norm", "input_layernorm", "rms", False, "rotary", False)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(intermediate_size=64, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                    sliding_window=8),
               ("pre", "model.norm", "input_layernorm", "rms", False, "rotary", False)),
    "bert": ("BertConfig", "BertModel", dict(intermediate_size=64),
             ("post", None, "attention.output.LayerNorm", "layer", True, "learned", False)),
    "roberta": ("RobertaConfig", "RobertaModel", dict(intermediate_size=64, max_position_embeddings=66),
                ("post", None, "attention.output.LayerNorm", "layer", True, "learned", False)),
}
# architectures without a row: the generic fallback (states and loss only)
UNKNOWN = {
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(n_layer=LAYERS, n_head=HEADS)),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", dict(intermediate_size=64, num_key_value_heads=2)),
}
IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=0)
LENGTHS = [6, 11, 1, 8]


@dataclass
class Family:
    name: str
    lm: LoadedModel
    facts: tuple | None


def build(name: str, cfg_cls: str, model_cls: str, kwargs: dict, folder, tokenizer, seed: int = 0):
    """A tiny random model of one family, weights perturbed so that biases and norm weights are not at
    their initial values, saved beside the tokenizer; returns the folder's load_model result."""
    import transformers
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  max_position_embeddings=64, **IDS)
    if name == "roberta":
        common["pad_token_id"] = 1                      # RoBERTa's positions count from pad + 1
    config = getattr(transformers, cfg_cls)(**{**common, **kwargs})
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_model(str(folder))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory, word_tokenizer, one_thread) -> Family:
    cfg_cls, model_cls, kwargs, facts = FAMILIES[request.param]
    lm = build(request.param, cfg_cls, model_cls, kwargs, tmp_path_factory.mktemp(request.param), word_tokenizer)
    return Family(request.param, lm, facts)


@pytest.fixture(scope="module", params=sorted(UNKNOWN))
def unknown(request, tmp_path_factory, word_tokenizer, one_thread) -> Family:
    cfg_cls, model_cls, kwargs = UNKNOWN[request.param]
    lm = build(request.param, cfg_cls, model_cls, kwargs, tmp_path_factory.mktemp(request.param), word_tokenizer)
    return Family(request.param, lm, None)


def prompts_of(vocab: int, lengths=LENGTHS, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def close(a, b, tol=1e-5) -> bool:
    return bool((a - b).abs().max() <= tol * b.abs().max() + tol)


def reference(lm: LoadedModel, ids: list[int]):
    """(states by our index convention, logits, loss) of one unpadded prompt from plain transformers."""
    m, d = lm.model, lm.desc
    x = torch.tensor([ids])
    cap = {}
    last = m.get_submodule(d.layer_paths[-1])
    hook = last.register_forward_hook(lambda mod, i, o: cap.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        out = m(x, output_hidden_states=True, **({"labels": x} if d.is_decoder else {}))
    hook.remove()
    hs = [h[0] for h in out.hidden_states]
    L = d.n_layers
    states = hs[:L] + [cap["h"][0]] + ([hs[L]] if d.final_norm_path is not None else [])
    return states, getattr(out, "logits", None), getattr(out, "loss", None)


def check_states_and_loss(lm: LoadedModel):
    d = lm.desc
    prompts = prompts_of(d.vocab_size)
    batched = extract_states(lm, prompts, batch_size=4, progress=False)
    single = extract_states(lm, prompts, batch_size=1, progress=False)
    for i, p in enumerate(prompts):
        ref, _, loss = reference(lm, p)
        assert len(ref) == d.n_states
        for l in range(d.n_states):
            assert close(batched.states[i][l], ref[l]), (d.arch, i, l)
        assert close(single.states[i], batched.states[i]), (d.arch, i)
        if d.is_decoder and len(p) > 1:
            assert abs(float(loss) - float(batched.loss[i])) < 1e-5 * float(loss) + 1e-6, (d.arch, i)
        else:
            assert torch.isnan(batched.loss[i])
    return batched, prompts


def test_every_hugging_face_row_has_a_tiny_model():
    import transformers
    verified = {getattr(transformers, c).model_type for c, *_ in FAMILIES.values()}
    for row in ARCHITECTURES.values():
        if row.auto_class is not None:
            assert set(row.matches) <= verified, (row.name, set(row.matches) - verified)
    unknown = {getattr(transformers, c).model_type for c, *_ in UNKNOWN.values()}
    assert not any(set(r.matches) & unknown for r in ARCHITECTURES.values())


# ============================================================================ states, loss, logits

def test_states_batched_and_loss_equal_transformers(family):
    check_states_and_loss(family.lm)


def test_final_state_through_unembedding_gives_the_models_logits(family):
    lm, d = family.lm, family.lm.desc
    if not d.is_decoder:
        assert d.W_U is None and d.lm_head_path is None
        return
    ids = prompts_of(d.vocab_size, [9])[0]
    st = extract_states(lm, [ids], layers=[-1], progress=False)
    with torch.no_grad():
        ref = lm.model(torch.tensor([ids])).logits[0]
    z = unembed_logits(st.states[0][0], d.W_U, d.b_U, d.logit_softcap)
    assert z.shape == ref.shape and close(z, ref), family.name
    if family.name == "gemma2":                      # the soft-cap matters at this scale
        assert not close(unembed_logits(st.states[0][0], d.W_U, d.b_U), ref)


def test_state0_is_token_embedding_plus_position(family):
    """State 0 of a decoder at position p = W_E[t] * embed_scale + W_pos[p] (W_pos: learned positions)."""
    lm, d = family.lm, family.lm.desc
    if not d.is_decoder:
        return
    ids = prompts_of(d.vocab_size, [7])[0]
    s0 = extract_states(lm, [ids], layers=[0], progress=False).states[0][0]
    ref = d.W_E[ids] * d.embed_scale + (d.W_pos[:len(ids)] if d.W_pos is not None else 0)
    assert close(s0, ref), family.name


# ============================================================================ the description

def apply_norm(info, x):
    """A norm from its description alone (kind, eps, effective scale, bias)."""
    if info.kind == "layer":
        x = x - x.mean(-1, keepdim=True)
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + info.eps)
    y = y if info.scale is None else y * info.scale
    return y if info.bias is None else y + info.bias


def test_description_is_the_models_own(family):
    lm, d, m = family.lm, family.lm.desc, family.lm.model
    placement, final_path, attn_norm, kind, qk_exact, positions, parallel = family.facts
    row = ARCHITECTURES[d.arch]
    assert d.norm_placement == placement and d.qk_exact == qk_exact and d.positions == positions
    assert d.parallel_attn_mlp == parallel and d.has_attention and d.model_type == m.config.model_type
    assert (d.qk_caveats == ()) == qk_exact and all(f"W_qk leaves out: {c}" in d.notes for c in d.qk_caveats)
    assert (d.W_pos is not None) == (positions == "learned")
    assert d.final_norm_path == final_path
    x = torch.randn(5, D)
    if final_path is not None:
        assert d.final_norm.module is m.get_submodule(final_path) and d.final_norm.kind == kind
        assert close(apply_norm(d.final_norm, x), d.final_norm.module(x))
    for l in range(d.n_layers):
        n = d.attn_norms[l]
        if attn_norm is None:
            assert n is None
            continue
        assert n.module is m.get_submodule(f"{d.layer_paths[l]}.{attn_norm}") and n.path.endswith(attn_norm)
        assert n.kind == kind and close(apply_norm(n, x), n.module(x))
        assert (n.bias is not None) == isinstance(getattr(n.module, "bias", None), torch.Tensor)
    if d.W_U is not None:
        assert d.W_U.shape == (D, d.vocab_size) and d.W_E.shape == (d.vocab_size, D)
    H, Hkv = d.n_heads, d.n_kv_heads
    assert d.kv_head_map.tolist() == [h // (H // Hkv) for h in range(H)]
    if family.name == "olmo":                          # non-parametric LayerNorm
        assert d.final_norm.weight is None and d.final_norm.bias is None and d.final_norm.eps == 1e-5
    if family.name in ("gemma", "gemma2", "gemma3"):
        assert d.final_norm.weight_offset == 1.0 and abs(d.embed_scale - D ** 0.5) < 1e-4
    if family.name in ("gemma2", "gemma3", "olmo2"):
        assert all(o is not None and o.module is m.get_submodule(f"{p}.post_attention_layernorm")
                   for o, p in zip(d.attn_out_norms, d.layer_paths))
    else:
        assert all(o is None for o in d.attn_out_norms)
    if family.name == "gemma2":
        assert d.attn_softcap == 0.5 and d.logit_softcap == 2.0
    if family.name == "olmo2":
        assert d.attn[0].qk_norm_over == "all heads"
    if family.name == "gpt2-layerscale":
        assert [a.scale for a in d.attn] == [8 ** -0.5, 8 ** -0.5 / 2] and d.attn_scale == 8 ** -0.5
    if family.name in ("qwen3", "gemma3", "phi-qk"):
        assert d.attn[0].qk_norm_over == "head"
    if family.name in ("phi", "phi-qk", "gpt_neox"):
        assert d.rotary_dim == (2 if family.name == "gpt_neox" else 4)
    if family.name == "gpt_neo":
        assert d.attn_scale == 1.0
    if family.name in ("phi", "phi-qk"):
        assert d.b_U is not None
    if family.name == "opt":
        assert d.embed_hook == "input" and d.embed_path == "model.decoder.layers.0"
    assert row.name == d.arch


# ============================================================================ the attention split

def _capture_scores(monkeypatch, attn_cls, store: list):
    """Record the model's own pre-softmax scores [B, H, Tq, Tk] (after soft-capping, before the mask)
    from the eager attention of its modeling module (GPT-Neo: its _attn method)."""
    mod = sys.modules[attn_cls.__module__]
    if hasattr(mod, "eager_attention_forward"):
        orig = mod.eager_attention_forward

        def eager(module, query, key, value, attention_mask, *args, scaling=None, softcap=None, **kw):
            k = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
            s = query @ k.transpose(-1, -2) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
            if softcap is not None:
                s = torch.tanh(s / softcap) * softcap
            store.append(s.detach().float())
            if softcap is not None:
                kw["softcap"] = softcap
            return orig(module, query, key, value, attention_mask, *args, scaling=scaling, **kw)
        monkeypatch.setattr(mod, "eager_attention_forward", eager)
    else:
        orig = attn_cls._attn

        def _attn(self, query, key, value, attention_mask=None):
            store.append((query.float() @ key.float().transpose(-1, -2)).detach())
            return orig(self, query, key, value, attention_mask)
        monkeypatch.setattr(attn_cls, "_attn", _attn)


def test_attention_split_reproduces_the_models_attention(family, monkeypatch):
    """One token per sequence: the attention sublayer's output (the o projection's output) equals
    sum_h (x W_V[kv h] + b_V) W_O[h] + b_O, x the attention input; the pre-softmax score of position 0 with
    itself equals (x W_Q + b_Q).(x W_K + b_K) * scale (RoPE is the identity there), soft-capped where
    attn_softcap is set, and with the description's q/k norms where qk_exact is False."""
    lm, d, m = family.lm, family.lm.desc, family.lm.model
    row = ARCHITECTURES[d.arch]
    toks = torch.tensor([[5], [17], [42]])
    B, H, Hkv, dh = 3, d.n_heads, d.n_kv_heads, d.d_head
    scores, outs, handles = [], [], []
    attn_cls = type(m.get_submodule(f"{d.layer_paths[0]}.{row.attn}"))
    _capture_scores(monkeypatch, attn_cls, scores)
    for p in d.layer_paths:
        handles.append(m.get_submodule(f"{p}.{row.o}").register_forward_hook(
            lambda mod, i, o: outs.append(o.detach())))
    impl = m.config._attn_implementation
    m.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            hs = m(toks, output_hidden_states=True).hidden_states
    finally:
        m.set_attn_implementation(impl)
        for h in handles:
            h.remove()
    assert len(scores) == len(outs) == d.n_layers
    kv = d.kv_head_map
    for l, a in enumerate(d.attn):
        x = hs[l][:, 0]
        if d.norm_placement == "pre":
            x = d.attn_norms[l].module(x)
        proj = lambda W, b: torch.einsum("bd,hde->hbe", x, W) + (b[:, None] if b is not None else 0)  # noqa: E731
        q, k, v = proj(a.W_Q, a.b_Q), proj(a.W_K, a.b_K), proj(a.W_V, a.b_V)
        out = torch.einsum("hbe,hed->bd", v[kv], a.W_O) + (a.b_O if a.b_O is not None else 0)
        assert close(out, outs[l][:, 0]), (family.name, l)
        if a.qk_norm_over == "head":
            q, k = a.q_norm.module(q), a.k_norm.module(k)
        elif a.qk_norm_over == "all heads":
            q = a.q_norm.module(q.permute(1, 0, 2).reshape(B, H * dh)).view(B, H, dh).permute(1, 0, 2)
            k = a.k_norm.module(k.permute(1, 0, 2).reshape(B, Hkv * dh)).view(B, Hkv, dh).permute(1, 0, 2)
        s = (q * k[kv]).sum(-1).T * a.scale                                 # [B, H]
        if d.attn_softcap:
            s = torch.tanh(s / d.attn_softcap) * d.attn_softcap
        assert close(s, scores[l][:, :, 0, 0], 1e-4), (family.name, l)
        if d.qk_exact:                       # the formula alone, no norms, no soft-cap
            assert a.qk_norm_over is None and not d.attn_softcap


def test_rope_attention_scaling_is_folded_into_the_score_scale(tmp_path, word_tokenizer, monkeypatch):
    """YaRN's attention_scaling multiplies cos and sin, so q.k by its square: attn[l].scale includes it."""
    lm = build("llama", "LlamaConfig", "LlamaForCausalLM",
               dict(intermediate_size=64, num_key_value_heads=2, max_position_embeddings=64,
                    rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                     "original_max_position_embeddings": 16}), tmp_path, word_tokenizer)
    s = lm.model.model.rotary_emb.attention_scaling
    assert s != 1.0 and math.isclose(lm.desc.attn_scale, 8 ** -0.5 * s * s, rel_tol=1e-12)
    fam = Family("llama", lm, FAMILIES["llama"][3])
    test_attention_split_reproduces_the_models_attention(fam, monkeypatch)


# ============================================================================ the generic fallback

def test_unknown_architecture_gets_states_through_the_fallback(unknown):
    lm, d = unknown.lm, unknown.lm.desc
    assert d.arch == "generic" and not d.has_attention and not d.qk_exact and d.embed_hook == "input"
    assert d.final_norm_path is not None and d.W_U is not None
    check_states_and_loss(lm)
    with pytest.raises(NoArchitectureRow, match=r"no row in tg_utils.models.ARCHITECTURES.*table.py"):
        d.attn
    msg = None
    try:
        d.attn
    except NoArchitectureRow as e:
        msg = str(e)
    assert "\n" not in msg and unknown.name in msg.lower()


@pytest.mark.parametrize("name", ["gpt2", "opt", "gemma2", "phi"])
def test_fallback_agrees_with_the_rows(name, tmp_path, word_tokenizer):
    """The fallback's states on families that have a row equal the row's (OPT registers its final norm
    before the blocks: the fallback finds none and stops at the last block)."""
    cfg_cls, model_cls, kwargs, _ = FAMILIES[name]
    lm = build(name, cfg_cls, model_cls, kwargs, tmp_path, word_tokenizer)
    gen = LoadedModel(lm.model, lm.tokenizer, describe_generic(lm.model, lm.tokenizer, spec=name))
    prompts = prompts_of(lm.desc.vocab_size)
    a = extract_states(lm, prompts, progress=False)
    b = extract_states(gen, prompts, progress=False)
    n = gen.desc.n_states
    assert n == (lm.desc.n_states if name != "opt" else lm.desc.n_states - 1)
    for x, y in zip(a.states, b.states):
        assert close(y, x[:n])
    if gen.desc.W_U is not None:
        torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-6, equal_nan=True)
    else:
        assert torch.isnan(b.loss).all()
