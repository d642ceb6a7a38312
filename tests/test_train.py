"""Training: schedule, data, perplexity, weight-decay groups, checkpoints and exact resume; the tokenizer."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from tg_utils.toy.checkpoints import (CKPT_FORMAT, LOG_COLUMNS, CheckpointError, checkpoint_steps,
                                      list_checkpoints, load_checkpoint, read_log, read_summary)
from tg_utils.toy.model import ToyTransformer, preset
from tg_utils.toy.tokenizer import EOS, load_tokenizer, train_bpe_tokenizer
from tg_utils.toy.train import (TrainConfig, encode_texts, eval_windows, evaluate_perplexity, lr_at,
                                random_batch, train_run, unigram_perplexity, weight_decay_groups)

from conftest import SAMPLE_TEXTS

pytestmark = pytest.mark.usefixtures("one_thread")


V = 40


def stream(n=6000, seed=0):
    """A learnable token stream: a noisy cycle through the vocabulary."""
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.choice([1, 2], size=n, p=[0.8, 0.2])) % V).astype(np.int32)


def tiny_cfg(name="llama-preln", **kw):
    return preset(name, **{**dict(n_layer=2, d_model=32, n_head=2, d_ff=64, vocab_size=V, context=16), **kw})


def tiny_train(**kw):
    return TrainConfig(**{**dict(max_steps=12, batch_size=4, warmup_steps=3, lr=1e-2, eval_every=4,
                                 save_every=3, eval_batch_size=8), **kw})


DATA = stream()
TRAIN, VAL, TEST = DATA[:4000], DATA[4000:5000], DATA[5000:]


# ----------------------------------------------------------------------------- schedule, data

def test_checkpoint_steps():
    assert checkpoint_steps(0) == [0]
    assert checkpoint_steps(1) == [0, 1]
    assert checkpoint_steps(8) == [0, 1, 2, 4, 8]
    assert checkpoint_steps(12) == [0, 1, 2, 4, 8, 12]
    s = checkpoint_steps(1000)
    assert s == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    with pytest.raises(ValueError):
        checkpoint_steps(-1)


def test_lr_schedule_values():
    c = TrainConfig(max_steps=110, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1)
    assert lr_at(4, c) == pytest.approx(0.5)
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55)          # halfway through the cosine: (1 + 0.1) / 2
    assert lr_at(110, c) == pytest.approx(0.1)
    assert lr_at(500, c) == pytest.approx(0.1)
    lrs = [lr_at(s, c) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    c0 = TrainConfig(max_steps=100, warmup_steps=0, lr=2.0)
    assert lr_at(0, c0) == pytest.approx(2.0)
    assert lr_at(50, c0) == pytest.approx(1.1)


def test_train_config_errors():
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(max_steps=10, warmup_steps=20)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"steps": 3})


def test_random_batch_is_seeded_and_shifted():
    ids = torch.arange(100)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x1, y1 = random_batch(ids, 5, 8, g1)
    x2, y2 = random_batch(ids, 5, 8, g2)
    assert x1.shape == y1.shape == (5, 8)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(y1[:, :-1], x1[:, 1:]) and torch.equal(y1[:, -1], x1[:, -1] + 1)
    with pytest.raises(ValueError, match="too short"):
        random_batch(torch.arange(5), 2, 8, g1)


def test_eval_windows_cover_every_target_once():
    for n, ctx in [(100, 16), (97, 16), (17, 16), (18, 16), (2, 4)]:
        wins = eval_windows(n, ctx)
        targets = [t for s, e in wins for t in range(s + 1, e)]
        assert targets == list(range(1, n))
        assert all(e - s <= ctx + 1 for s, e in wins)


# ----------------------------------------------------------------------------- perplexity

class Bigram(nn.Module):
    """Logits depend only on the current token: the CE of a stream is computable by hand."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.table[input_ids]


def test_perplexity_is_exp_of_token_weighted_ce():
    torch.manual_seed(0)
    table = torch.randn(7, 7)
    model = Bigram(table)
    ids = torch.randint(0, 7, (53,))
    logp = torch.log_softmax(table.double(), -1)
    hand = -np.mean([logp[ids[t], ids[t + 1]].item() for t in range(52)])
    # windows of 10 targets: 5 full windows + a tail of 2 targets; a mean of window means would differ
    out = evaluate_perplexity(model, ids, context=10, batch_size=2)
    assert out["tokens"] == 52
    assert out["loss"] == pytest.approx(hand, rel=1e-6)
    assert out["ppl"] == pytest.approx(math.exp(hand), rel=1e-6)
    win_means = [-np.mean([logp[ids[t], ids[t + 1]].item() for t in range(s, e - 1)])
                 for s, e in eval_windows(53, 10)]
    assert abs(np.mean(win_means) - hand) > 1e-4      # the test can tell the two apart
    # max_tokens uses a prefix
    out2 = evaluate_perplexity(model, ids, context=10, batch_size=2, max_tokens=21)
    assert out2["tokens"] == 20
    assert out2["loss"] == pytest.approx(-np.mean([logp[ids[t], ids[t + 1]].item() for t in range(20)]))


def test_evaluate_restores_training_mode():
    m = ToyTransformer(tiny_cfg())
    m.train()
    evaluate_perplexity(m, TEST, 16, 8)
    assert m.training


def test_unigram_perplexity_hand_case():
    train = [0, 0, 1, 2]                     # counts+1 over V=4: 3, 2, 2, 1 -> total 8
    ev = [3, 0, 1]                           # targets 0, 1 -> probs 3/8, 2/8
    want = math.exp(-(math.log(3 / 8) + math.log(2 / 8)) / 2)
    assert unigram_perplexity(train, ev, 4) == pytest.approx(want)


# ----------------------------------------------------------------------------- optimizer groups

@pytest.mark.parametrize("name,tie", [("llama-preln", False), ("standard-postln", False), ("llama-postln", True)])
def test_weight_decay_groups(name, tie):
    m = ToyTransformer(tiny_cfg(name, tie_embeddings=tie))
    decay, no_decay = weight_decay_groups(m)
    assert set(decay).isdisjoint(no_decay)
    params = dict(m.named_parameters())
    assert set(decay) | set(no_decay) == set(params)
    assert "embed.weight" in no_decay
    assert all(params[n].ndim == 2 for n in decay)
    assert "blocks.0.attn.q_proj.weight" in decay and "blocks.1.mlp.down_proj.weight" in decay
    assert ("lm_head.weight" in decay) == (not tie)
    assert not any("norm" in n or n.endswith(".bias") for n in decay)
    if name.startswith("standard"):
        assert "blocks.0.attn.q_proj.bias" in no_decay and "blocks.0.attn_norm.bias" in no_decay


# ----------------------------------------------------------------------------- training and checkpoints

def test_loss_falls_and_beats_unigram(tmp_path):
    df = train_run(tmp_path / "r", tiny_cfg("standard-preln"), tiny_train(max_steps=40, eval_every=10),
                   TRAIN, VAL, TEST, progress=False)
    assert list(df.columns) == LOG_COLUMNS
    assert df.step.tolist() == list(range(41))
    val = df.dropna(subset=["val_loss"])
    assert val.step.tolist() == [0, 10, 20, 30, 40]
    assert val.val_loss.iloc[-1] < val.val_loss.iloc[0] - 1.0
    assert df.train_loss.iloc[-5:].mean() < df.train_loss.iloc[1:6].mean() - 1.0
    np.testing.assert_allclose(val.val_ppl, np.exp(val.val_loss))
    s = read_summary(tmp_path / "r")
    assert s["val_ppl"] < 0.5 * s["unigram_val_ppl"] and s["test_ppl"] < 0.5 * s["unigram_test_ppl"]
    assert df.test_ppl.iloc[-1] == pytest.approx(s["test_ppl"])
    assert (df.tokens_seen == df.step * 4 * 16).all()
    pd.testing.assert_frame_equal(read_log(tmp_path / "r"), df, check_dtype=False)


def _weights(run_dir, step):
    m, _, meta = load_checkpoint(run_dir, step)
    return m.state_dict(), meta


@pytest.mark.parametrize("name", ["llama-postln", "standard-preln"])
def test_resume_equals_uninterrupted(tmp_path, name):
    cfg, tc = tiny_cfg(name, dropout=0.1), tiny_train(grad_accum=2)
    straight = train_run(tmp_path / "a", cfg, tc, TRAIN, VAL, TEST, progress=False)
    half = train_run(tmp_path / "b", cfg, tc, TRAIN, VAL, TEST, progress=False, stop_at=6)
    assert half.step.max() == 6 and (tmp_path / "b" / "last.pt").exists()
    assert not (tmp_path / "b" / "summary.json").exists()
    resumed = train_run(tmp_path / "b", cfg, tc, TRAIN, VAL, TEST, progress=False)
    assert not (tmp_path / "b" / "last.pt").exists()
    assert list_checkpoints(tmp_path / "a") == list_checkpoints(tmp_path / "b") == checkpoint_steps(12)
    wa, _ = _weights(tmp_path / "a", 12)
    wb, _ = _weights(tmp_path / "b", 12)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)
    cols = ["step", "lr", "train_loss", "val_loss", "test_ppl", "tokens_seen"]
    pd.testing.assert_frame_equal(straight[cols], resumed[cols], atol=1e-6, rtol=0)


def test_resume_skips_corrupt_last_checkpoint(tmp_path):
    cfg, tc = tiny_cfg(), tiny_train()
    train_run(tmp_path / "a", cfg, tc, TRAIN, VAL, progress=False)
    train_run(tmp_path / "b", cfg, tc, TRAIN, VAL, progress=False, stop_at=7)   # last.pt at 7, step_4 kept
    last = tmp_path / "b" / "last.pt"
    last.write_bytes(last.read_bytes()[: len(last.read_bytes()) // 2])          # truncated write
    with pytest.warns(UserWarning, match="skipping last.pt"):
        train_run(tmp_path / "b", cfg, tc, TRAIN, VAL, progress=False)
    wa, _ = _weights(tmp_path / "a", 12)
    wb, _ = _weights(tmp_path / "b", 12)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


def test_checkpoint_contents_and_finished_run(tmp_path):
    tok = train_bpe_tokenizer(SAMPLE_TEXTS, vocab_size=V + 256 + 1)
    ids = encode_texts(tok, SAMPLE_TEXTS)
    cfg = tiny_cfg(vocab_size=len(tok))
    tc = tiny_train(max_steps=5, trajectory_optimizer=False)
    run = tmp_path / "run"
    df = train_run(run, cfg, tc, ids, ids[:300], tokenizer=tok, progress=False)
    assert list_checkpoints(run) == [0, 1, 2, 4, 5]
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json", "step_000000.pt", "step_000001.pt", "step_000002.pt", "step_000004.pt",
        "step_000005.pt", "summary.json", "tokenizer.json", "train_log.csv"]
    ck = torch.load(run / "step_000004.pt", weights_only=True)
    assert ck["format"] == CKPT_FORMAT and ck["step"] == 4 and ck["tokenizer"] == "tokenizer.json"
    assert ck["optimizer_state"] is None and ck["tokens_seen"] == 4 * 4 * 16
    assert {"model_state", "data_rng_state", "torch_rng_state", "train_config", "model_config", "log"} <= set(ck)
    model, tok2, meta = load_checkpoint(run)
    assert meta["step"] == 5 and not model.training and model.config == cfg
    assert tok2(SAMPLE_TEXTS[0])["input_ids"] == tok(SAMPLE_TEXTS[0])["input_ids"]
    assert len(meta["log"]) == 6
    m0, _, _ = load_checkpoint(run, 0)
    torch.manual_seed(tc.seed)
    torch.testing.assert_close(m0.state_dict(), ToyTransformer(cfg).state_dict())   # step 0 = seeded init
    # a finished run returns at once, touching nothing
    mtimes = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    again = train_run(run, cfg, tc, ids, ids[:300], tokenizer=tok, progress=False)
    pd.testing.assert_frame_equal(again, df, check_dtype=False)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == mtimes
    # a different tokenizer or config in the same folder is refused
    other = train_bpe_tokenizer(SAMPLE_TEXTS[:2], vocab_size=V + 256 + 1)
    with pytest.raises(CheckpointError, match="different tokenizer"):
        train_run(run, cfg, tc, ids, ids[:300], tokenizer=other, progress=False)
    with pytest.raises(CheckpointError, match="different configuration"):
        train_run(run, cfg, tiny_train(max_steps=6), ids, ids[:300], progress=False)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints in .*run_all.sh --only 01"):
        load_checkpoint(tmp_path / "nothing")
    run = tmp_path / "run"
    train_run(run, tiny_cfg(), tiny_train(max_steps=2, warmup_steps=1), TRAIN, VAL, progress=False)
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 3 .*\[0, 1, 2\]"):
        load_checkpoint(run, 3)
    p = run / "step_000002.pt"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(run, 2)
    with pytest.raises(FileNotFoundError, match="summary.json"):
        read_summary(tmp_path / "nothing")
    with pytest.raises(ValueError, match="vocab_size"):
        train_run(tmp_path / "bad", tiny_cfg(vocab_size=10), tiny_train(), TRAIN, VAL, progress=False)


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_is_deterministic_and_round_trips(tmp_path):
    a = train_bpe_tokenizer(SAMPLE_TEXTS, vocab_size=400, path=tmp_path / "a.json")
    train_bpe_tokenizer(SAMPLE_TEXTS, vocab_size=400, path=tmp_path / "b")        # a folder
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert a.eos_token == EOS and a.pad_token == EOS and a.bos_token is None
    assert a.convert_tokens_to_ids(EOS) == a.eos_token_id
    text = "The quick brown fox jumps over an algorithm."
    ids = a(text)["input_ids"]
    assert a.decode(ids) == text                                   # byte-level: lossless, no BOS added
    assert ids == a(text, add_special_tokens=False)["input_ids"]
    b = load_tokenizer(tmp_path / "b")
    assert b(text)["input_ids"] == ids and len(b) == len(a) <= 400
    batch = b(["The fox", "The quick brown fox"], padding=True)
    assert batch["attention_mask"][0][-1] == 0                     # right padding
    stream_ids = encode_texts(a, ["The fox", "a dog"])
    assert stream_ids[-1] == a.eos_token_id and (stream_ids == a.eos_token_id).sum() == 2
    with pytest.raises(FileNotFoundError, match="notebook 01"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(ValueError):
        train_bpe_tokenizer([], 300)
