"""The activation cache (tg_utils.cache): round trip, resume after an interruption without redoing done
chunks, corrupted / truncated shards rebuilt and never read, keys, footprint."""
from __future__ import annotations

import json

import pytest
import torch

import tg_utils.cache as cache_mod
from tg_utils.cache import StateCache, cache_footprint, cached_states, format_footprint, prompts_hash
from tg_utils.extract import extract_states

from test_models import as_loaded, tiny_hf, train_toy_run

N_PROMPTS, CHUNK = 10, 3          # 4 chunks: 3 + 3 + 3 + 1


def prompts_of(n=N_PROMPTS, seed=2):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 25, (n,), generator=g).tolist()
    return [torch.randint(0, 120, (k,), generator=g).tolist() for k in lengths]


@pytest.fixture
def lm():
    return as_loaded(tiny_hf("llama"), spec="tiny-llama")


class Counter:
    """Counts forward passes of the model (one per extraction batch) and, optionally, interrupts."""

    def __init__(self, monkeypatch, interrupt_after: int | None = None):
        self.calls = 0
        self.chunks = 0

        def counting(*a, **k):
            if interrupt_after is not None and self.chunks >= interrupt_after:
                raise KeyboardInterrupt("stopped half-way")
            self.chunks += 1
            return extract_states(*a, **k)
        monkeypatch.setattr(cache_mod, "extract_states", counting)

    def hook(self, model):
        model.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return self


def same(a, b):
    assert a.layers == b.layers and a.lengths == b.lengths and a.positions == b.positions
    for x, y in zip(a.states, b.states):
        assert x.dtype == y.dtype and torch.equal(x, y)
    assert torch.equal(a.loss.nan_to_num(-1), b.loss.nan_to_num(-1))


@pytest.mark.parametrize("positions,dtype", [("all", "float32"), ("last", "bfloat16")])
def test_round_trip_equals_direct_extraction(tmp_path, lm, positions, dtype):
    prompts = prompts_of()
    direct = extract_states(lm, prompts, layers=[0, 2, 4], positions=positions, dtype=dtype, progress=False)
    first = cached_states(lm, prompts, layers=[0, 2, 4], positions=positions, dtype=dtype, out_dir=tmp_path,
                          chunk_size=CHUNK, progress=False)
    again = cached_states(lm, prompts, layers=[0, 2, 4], positions=positions, dtype=dtype, out_dir=tmp_path,
                          chunk_size=CHUNK, progress=False)
    for st in (first, again):
        assert st.layers == direct.layers
        for x, y in zip(st.states, direct.states):
            assert x.dtype == y.dtype and torch.allclose(x.float(), y.float(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(st.loss, direct.loss, equal_nan=True)
    same(first, again)


def test_resume_after_interruption_computes_only_the_rest(tmp_path, lm, monkeypatch):
    prompts = prompts_of()
    c = Counter(monkeypatch, interrupt_after=2).hook(lm.model)
    with pytest.raises(KeyboardInterrupt):
        cached_states(lm, prompts, out_dir=tmp_path, chunk_size=CHUNK, batch_size=2, progress=False)
    assert c.chunks == 2
    cache = StateCache.open("tiny-llama", prompts, out_dir=tmp_path, chunk_size=CHUNK)
    manifest, missing = cache.status()
    assert missing == [2, 3] and sorted(manifest["chunks"]) == ["0", "1"]
    assert not list(cache.path.glob(".*.tmp"))                 # no half-written file left behind

    c2 = Counter(monkeypatch).hook(lm.model)
    st = cached_states(lm, prompts, out_dir=tmp_path, chunk_size=CHUNK, batch_size=2, progress=False)
    assert c2.chunks == 2                                      # chunks 2 and 3 only
    assert c2.calls == 3                                       # 3 prompts -> 2 batches, 1 prompt -> 1
    c3 = Counter(monkeypatch).hook(lm.model)
    again = cached_states(lm, prompts, out_dir=tmp_path, chunk_size=CHUNK, progress=False)
    assert c3.chunks == 0 and c3.calls == 0
    same(st, again)
    ref = extract_states(lm, prompts, progress=False)
    for x, y in zip(st.states, ref.states):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-5)


def test_cache_without_loss_is_not_served_to_a_caller_wanting_it(tmp_path, lm):
    prompts = prompts_of()
    no_loss = cached_states(lm, prompts, out_dir=tmp_path, chunk_size=CHUNK, progress=False, compute_loss=False)
    assert torch.isnan(no_loss.loss).all()
    with_loss = cached_states(lm, prompts, out_dir=tmp_path, chunk_size=CHUNK, progress=False)
    ref = extract_states(lm, prompts, progress=False).loss
    torch.testing.assert_close(with_loss.loss, ref, equal_nan=True)
    defined = torch.tensor([len(p) > 1 for p in prompts])       # a 1-token prompt has no next-token loss
    assert defined.any() and not torch.isnan(with_loss.loss[defined]).any()


def test_complete_cache_does_not_load_the_model(tmp_path, monkeypatch, word_tokenizer):
    """With a spec string the model is loaded only when a chunk is missing."""
    m = tiny_hf("llama", vocab=len(word_tokenizer))
    folder = tmp_path / "tiny"
    m.save_pretrained(folder)
    word_tokenizer.save_pretrained(folder)
    prompts = prompts_of()
    st = cached_states(str(folder), prompts, positions="last", out_dir=tmp_path, chunk_size=CHUNK,
                       progress=False)

    def refuse(*a, **k):
        raise AssertionError("the model was loaded although every chunk is cached")
    monkeypatch.setattr(cache_mod, "load_model", refuse)
    again = cached_states(str(folder), prompts, positions="last", out_dir=tmp_path, chunk_size=CHUNK,
                          progress=False)
    same(st, again)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "extend"])
def test_damaged_shard_is_rebuilt_never_read(tmp_path, lm, monkeypatch, damage):
    prompts = prompts_of()
    good = cached_states(lm, prompts, out_dir=tmp_path, chunk_size=CHUNK, progress=False)
    cache = StateCache.open("tiny-llama", prompts, out_dir=tmp_path, chunk_size=CHUNK)
    shard = cache.shard_path(1)
    raw = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":                       # same size, header intact: only the sha256 can tell
        b = bytearray(raw)
        b[-5] ^= 0xFF
        shard.write_bytes(bytes(b))
    elif damage == "delete":
        shard.unlink()
    else:
        shard.write_bytes(raw + b"\0" * 16)
    c = Counter(monkeypatch)
    st = cached_states(lm, prompts, out_dir=tmp_path, chunk_size=CHUNK, progress=False)
    assert c.chunks == 1                                       # only chunk 1 recomputed
    same(st, good)
    assert cache.status()[1] == []                             # rebuilt and valid again


def test_damage_detected_without_hash_by_size_and_header(tmp_path, lm, monkeypatch):
    prompts = prompts_of()
    cached_states(lm, prompts, out_dir=tmp_path, chunk_size=CHUNK, progress=False, verify="size")
    cache = StateCache.open("tiny-llama", prompts, out_dir=tmp_path, chunk_size=CHUNK, verify="size")
    shard = cache.shard_path(0)
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-8])
    assert cache.status()[1] == [0]
    with pytest.raises(RuntimeError, match="missing or invalid"):
        cache.load()                                           # never read a bad shard


def test_bad_manifest_rebuilds_everything(tmp_path, lm, monkeypatch):
    prompts = prompts_of()
    cached_states(lm, prompts, out_dir=tmp_path, chunk_size=CHUNK, progress=False)
    cache = StateCache.open("tiny-llama", prompts, out_dir=tmp_path, chunk_size=CHUNK)
    cache.manifest_path.write_text("{not json")
    c = Counter(monkeypatch)
    cached_states(lm, prompts, out_dir=tmp_path, chunk_size=CHUNK, progress=False)
    assert c.chunks == 4
    m = json.loads(cache.manifest_path.read_text())
    m["key"]["spec"] = "someone-else"                          # a manifest for another key
    cache.manifest_path.write_text(json.dumps(m))
    c = Counter(monkeypatch)
    cached_states(lm, prompts, out_dir=tmp_path, chunk_size=CHUNK, progress=False)
    assert c.chunks == 4


def test_key_separates_prompt_sets_layers_positions_dtypes_loss(tmp_path):
    p = prompts_of()
    base = StateCache.open("m", p, out_dir=tmp_path)
    others = [StateCache.open("m", p[:-1], out_dir=tmp_path),
              StateCache.open("m", p, layers=[1], out_dir=tmp_path),
              StateCache.open("m", p, positions="last", out_dir=tmp_path),
              StateCache.open("m", p, dtype="float16", out_dir=tmp_path),
              StateCache.open("m", p, revision="step1000", out_dir=tmp_path),
              StateCache.open("m", p, model_dtype="bfloat16", out_dir=tmp_path),
              StateCache.open("m", p, compute_loss=False, out_dir=tmp_path),
              StateCache.open("other", p, out_dir=tmp_path)]
    paths = {c.path for c in others} | {base.path}
    assert len(paths) == len(others) + 1
    assert StateCache.open("m", [list(x) for x in p], out_dir=tmp_path).path == base.path
    assert prompts_hash([[1, 2], [3]]) != prompts_hash([[1], [2, 3]])


def test_toy_spec_resolves_to_its_step(tmp_path):
    train_toy_run(tmp_path, "llama-preln")
    prompts = [[1, 2, 3, 4], [5, 6]]
    c = StateCache.open("toy:llama-preln", prompts, out_dir=tmp_path)
    assert c.key["spec"] == "toy:llama-preln@2" and c.key["source"][0] == "step_000002.pt"
    st = cached_states("toy:llama-preln", prompts, out_dir=tmp_path, progress=False)
    assert st.spec == "toy:llama-preln@2" and len(st.states) == 2
    assert c.path.exists()


def test_footprint(tmp_path, lm):
    assert cache_footprint(tmp_path, include_models=False)["states_bytes"] == 0
    prompts = prompts_of()
    cached_states(lm, prompts, out_dir=tmp_path, chunk_size=CHUNK, progress=False)
    cached_states(lm, prompts, positions="last", out_dir=tmp_path, chunk_size=CHUNK, progress=False)
    fp = cache_footprint(tmp_path, include_models=False)
    assert len(fp["entries"]) == 2
    assert fp["states_bytes"] == sum(e["bytes"] for e in fp["entries"]) > 0
    full = next(e for e in fp["entries"] if e["positions"] == "all")
    n_tokens = sum(len(p) for p in prompts)
    assert full["bytes"] >= n_tokens * 5 * 32 * 4 and full["chunks_done"] == full["n_chunks"] == 4
    text = format_footprint(fp)
    assert "tiny-llama" in text and "MB" in text and len(text.splitlines()) == 3   # header, model, total
    assert len(format_footprint(fp, by="entry").splitlines()) == 4
