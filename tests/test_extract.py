"""State extraction with nnsight (tg_utils.extract): equality with plain transformers'
output_hidden_states, batched == one-by-one, last-token positions under padding, the loss, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tg_utils.extract import NonFiniteStateError, extract_states, next_token_nll, resolve_layers
from tg_utils.models import LoadedModel, describe

from test_models import as_loaded, tiny_hf, tiny_toy

KINDS = ["llama", "gemma3", "bert", "neox", "toy-pre", "toy-post"]


def make(kind: str) -> LoadedModel:
    if kind.startswith("toy"):
        return as_loaded(tiny_toy("llama-preln" if kind == "toy-pre" else "standard-postln"), spec=kind)
    return as_loaded(tiny_hf(kind), spec=kind)


def prompts_of(lengths, vocab=120, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


LENGTHS = [7, 19, 1, 12, 30, 4]


def close(a, b, tol=1e-5):
    """|a - b| <= tol * max|b| + tol: float32 rounding, relative to the layer's scale (real models carry
    massive activations of 1e4)."""
    return bool((a - b).abs().max() <= tol * b.abs().max() + tol)


def reference_states(lm: LoadedModel, ids: list[int]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """All states of one unpadded prompt, by our index convention, from plain transformers'
    output_hidden_states (toy: a hand-written forward), and the logits."""
    m, d = lm.model, lm.desc
    x = torch.tensor([ids])
    with torch.no_grad():
        if d.arch == "toy":
            T = x.shape[1]
            cos, sin = m.rotary(torch.arange(T)[None])
            h = m.embed(x)
            states = [h]
            for b in m.blocks:
                h = b(h, cos, sin, None)
                states.append(h)
            states.append(m.final_norm(h))
            return [s[0] for s in states], m.lm_head(states[-1])[0]
        out = m(x, output_hidden_states=True)
        hs = [h[0] for h in out.hidden_states]
        if d.final_norm_path is None:               # BERT: our 0..L == hidden_states[0..L]
            return hs, None
        # ours 0..L-1 == hs[0..L-1]; ours L (raw last block) is not in hs; ours L+1 == hs[L]
        raw_last = m.get_submodule(d.layer_paths[-1])
        cap = {}
        hook = raw_last.register_forward_hook(lambda mod, i, o: cap.setdefault("h", o))
        m(x)
        hook.remove()
        return hs[:-1] + [cap["h"][0], hs[-1]], out.logits[0]


@pytest.mark.parametrize("kind", KINDS)
def test_states_equal_plain_forward_batched_and_one_by_one(kind):
    lm = make(kind)
    prompts = prompts_of(LENGTHS)
    batched = extract_states(lm, prompts, batch_size=4, progress=False)
    single = extract_states(lm, prompts, batch_size=1, progress=False)
    last = extract_states(lm, prompts, positions="last", batch_size=3, progress=False)
    assert batched.layers == list(range(lm.desc.n_states))
    for i, p in enumerate(prompts):
        ref, logits = reference_states(lm, p)
        got = batched.states[i]
        assert got.shape == (lm.desc.n_states, len(p), 32) and got.dtype == torch.float32
        for l in range(lm.desc.n_states):
            assert close(got[l], ref[l]), (kind, i, l)
            assert close(single.states[i][l], ref[l]), (kind, i, l)
        assert close(got, single.states[i])
        # the last real token, under right padding (prompt lengths differ within a batch)
        assert last.states[i].shape == (lm.desc.n_states, 32)
        assert close(last.states[i], got[:, -1])
        if logits is not None and len(p) > 1:
            ref_loss = F.cross_entropy(logits[:-1], torch.tensor(p[1:]))
            assert abs(float(ref_loss) - float(batched.loss[i])) < 1e-5 * float(ref_loss) + 1e-6
            assert abs(float(batched.loss[i]) - float(last.loss[i])) < 1e-5
        else:
            assert torch.isnan(batched.loss[i])       # encoder, or nothing to predict


def test_layer_subset_dtype_and_accessors():
    lm = make("llama")
    prompts = prompts_of([5, 9, 3])
    full = extract_states(lm, prompts, progress=False)
    sub = extract_states(lm, prompts, layers=[-1, 0, 2, 2], dtype="float16", progress=False)
    assert sub.layers == [0, 2, lm.desc.n_states - 1]
    assert sub.layer_names == ["embed", "block2", "final_norm"]
    assert sub.states[1].dtype == torch.float16 and sub.states[1].shape == (3, 9, 32)
    torch.testing.assert_close(sub.states[1].float(), full.states[1][sub.layers], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(sub.loss, full.loss)          # loss does not depend on the layers kept
    assert [x.shape for x in sub.at(2)] == [(5, 32), (9, 32), (3, 32)]
    last = extract_states(lm, prompts, layers=[1], positions="last", progress=False)
    assert last.stacked().shape == (3, 1, 32) and last.at(1).shape == (3, 32)
    with pytest.raises(KeyError):
        last.at(3)
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers(lm, [lm.desc.n_states])


def test_loss_in_chunks_equals_unchunked():
    lm = make("gemma3")
    prompts = prompts_of([25, 11])
    a = extract_states(lm, prompts, progress=False)
    b = extract_states(lm, prompts, loss_chunk_elems=120 * 3, progress=False)     # 3 tokens per chunk
    torch.testing.assert_close(a.loss, b.loss)
    h = torch.randn(10, 32)
    t = torch.randint(0, 120, (10,))
    W = torch.randn(32, 120)
    ref = F.cross_entropy(h @ W, t, reduction="none")
    torch.testing.assert_close(next_token_nll(h, t, W, chunk_elems=250), ref)
    capped = next_token_nll(h, t, W, softcap=5.0)
    torch.testing.assert_close(capped, F.cross_entropy(torch.tanh(h @ W / 5) * 5, t, reduction="none"))


def test_bad_prompts_are_refused_with_numbers():
    lm = make("llama")                       # context 48, vocab 120
    with pytest.raises(ValueError, match=r"prompt 1 has 49 tokens.*48 positions"):
        extract_states(lm, [[5] * 10, [5] * 49], progress=False)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        extract_states(lm, [[]], progress=False)
    with pytest.raises(ValueError, match=r"token id 500.*\[0, 120\)"):
        extract_states(lm, [[1, 2], [500]], progress=False)
    with pytest.raises(TypeError, match="token ids"):
        extract_states(lm, ["a string"], progress=False)
    with pytest.raises(ValueError, match="positions"):
        extract_states(lm, [[1, 2]], positions="first", progress=False)


def test_nan_in_states_names_model_layer_and_prompt():
    lm = make("llama")
    with torch.no_grad():
        lm.model.model.embed_tokens.weight[77] = float("nan")     # token 77 only in prompt 2
    prompts = [[5, 6, 7], [8, 9], [10, 77, 11], [12, 13]]
    with pytest.raises(NonFiniteStateError, match=r"llama: NaN/inf in state 0 \(embed\) of prompt 2 at position 1"):
        extract_states(lm, prompts, batch_size=4, progress=False)
    with pytest.raises(NonFiniteStateError, match=r"state 2 \(block2\) of prompt 2"):
        extract_states(lm, prompts, layers=[2, 3], positions="last", progress=False)


def test_float16_overflow_is_refused():
    lm = make("llama")
    with torch.no_grad():
        lm.model.model.embed_tokens.weight[50] = 1e5                 # a "massive activation"
    prompts = [[1, 2, 3], [4, 50, 6]]
    with pytest.raises(NonFiniteStateError, match=r"state 0 \(embed\) of prompt 1 overflows .*float16.*bfloat16"):
        extract_states(lm, prompts, layers=[0], dtype="float16", progress=False)
    st = extract_states(lm, prompts, layers=[0], dtype="bfloat16", progress=False)
    assert torch.isfinite(st.states[1]).all()


def test_remote_plumbing():
    """remote="local" runs nnsight's serialise-and-run simulation of the NDIF path and must agree with the
    local trace (loss computed inside the trace from the lm_head output); remote=True refuses local
    models and asks for an API key."""
    from tokenizers import Tokenizer, models

    from transformers import PreTrainedTokenizerFast

    m = tiny_hf("llama")
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                  eos_token="<unk>")
    lm = LoadedModel(m, tok, describe(m, tok, spec="tiny"))
    prompts = prompts_of([6, 13, 2])
    local = extract_states(lm, prompts, progress=False)
    sim = extract_states(lm, prompts, remote="local", batch_size=2, progress=False)
    for a, b in zip(local.states, sim.states):
        assert close(a, b)
    torch.testing.assert_close(local.loss, sim.loss, rtol=1e-5, atol=1e-5)
    simlast = extract_states(lm, prompts, positions="last", remote="local", progress=False)
    for a, b in zip(local.states, simlast.states):
        assert close(a[:, -1], b)
    with pytest.raises(ValueError, match="local model"):
        extract_states(lm, prompts, remote=True, progress=False)


def test_remote_needs_api_key(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    m = tiny_hf("llama")
    lm = LoadedModel(m, None, describe(m, None, spec="someone/hosted-model", source="someone/hosted-model"))
    with pytest.raises(RuntimeError, match="API key"):
        extract_states(lm, [[1, 2, 3]], remote=True, progress=False)
