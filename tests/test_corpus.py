import random

import pandas as pd
import pytest

from tg_utils.data.corpus import Article, CorpusError, clean_wiki_text, load_corpus, split_by_hash
from tg_utils.data.prompts import build_prompts, shuffle_blocks


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


def test_default_corpus_stats(corpus):
    st = corpus.stats().set_index("split")
    # the gensim extract: 106 articles once redirects are dropped, ~3.05 MB of clean text
    assert st["articles"].to_dict() == {"train": 85, "validation": 11, "test": 10}
    assert 2.9 < st["MB"].sum() < 3.2
    assert st.loc["train", "words"] > 350_000
    print(st)


def test_split_is_deterministic_and_disjoint(corpus):
    again = load_corpus()
    for s in ("train", "validation", "test"):
        assert [a.title for a in corpus.split(s)] == [a.title for a in again.split(s)]
    titles = [a.title for s in ("train", "validation", "test") for a in corpus.split(s)]
    assert len(titles) == len(set(titles)) == 106


def test_split_does_not_depend_on_input_order():
    arts = [Article(f"t{i}", "x" * 10) for i in range(50)]
    shuffled = arts[:]
    random.Random(1).shuffle(shuffled)
    a, b = split_by_hash(arts), split_by_hash(shuffled)
    assert {k: [x.title for x in v] for k, v in a.items()} == {k: [x.title for x in v] for k, v in b.items()}
    assert [len(v) for v in a.values()] == [40, 5, 5]
    with pytest.raises(CorpusError, match="summing to 1"):
        split_by_hash(arts, (0.5, 0.1, 0.1))


def test_cleaning_removes_markup():
    raw = "'''Bold''' and ''italic'' [[link|Target]] text.\n\n==Heading==\n*\n\n\n\nEnd ."
    clean = clean_wiki_text(raw)
    assert "'''" not in clean and "==" not in clean and "[[" not in clean
    assert "Bold and italic" in clean and "Heading" in clean and clean.endswith("End.")


def test_stats_counts_tokens(corpus, word_tokenizer):
    small = type(corpus)("t", {"train": corpus.train[:2], "validation": [], "test": corpus.test[:1]})
    st = small.stats(word_tokenizer).set_index("split")
    expect = sum(len(word_tokenizer(a.text, add_special_tokens=False)["input_ids"]) for a in corpus.train[:2])
    assert st.loc["train", "tokens"] == expect


def test_prompts_are_exact_prefixes(corpus, word_tokenizer):
    ps = build_prompts(corpus.test, word_tokenizer, n_tokens=256, n_prompts=3)
    assert len(ps) == 3 and all(len(p) == 256 for p in ps.ids)
    for ids, title in zip(ps.ids, ps.sources):
        art = next(a for a in corpus.test if a.title == title)
        assert ids == word_tokenizer(art.text, add_special_tokens=False)["input_ids"][:256]
    assert ps.hash() == build_prompts(corpus.test, word_tokenizer, 256, 3).hash()
    assert ps.hash() != build_prompts(corpus.test, word_tokenizer, 128, 3).hash()


def test_prompts_bos_windows_and_skips(word_tokenizer):
    arts = [Article("short", "tiny text"), Article("long", "word " * 500)]
    ps = build_prompts(arts, word_tokenizer, n_tokens=100, add_bos=True, per_article=3)
    assert ps.skipped == 1 and ps.skipped_titles == ["short"]
    assert len(ps) == 3 and all(len(p) == 101 and p[0] == word_tokenizer.bos_token_id for p in ps.ids)
    assert ps.sources == ["long#0", "long#1", "long#2"]


def test_prompt_errors(word_tokenizer):
    arts = [Article("a", "word " * 50)]
    with pytest.raises(CorpusError, match="longer than every article"):
        build_prompts(arts, word_tokenizer, n_tokens=10_000)
    with pytest.raises(CorpusError, match="only 1 articles are long enough"):
        build_prompts(arts, word_tokenizer, n_tokens=10, n_prompts=5)
    with pytest.raises(CorpusError, match="positive"):
        build_prompts(arts, word_tokenizer, n_tokens=0)


def test_source_errors(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        load_corpus("text", tmp_path / "missing.txt")
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / "wiki.train.raw").write_text("x")
    with pytest.raises(CorpusError, match="wiki.valid.raw"):
        load_corpus("wikitext", tmp_path / "wt")
    with pytest.raises(CorpusError, match="needs a path"):
        load_corpus("wikitext")
    with pytest.raises(CorpusError, match="unknown corpus source"):
        load_corpus("nope", tmp_path)


def _wikitext_lines(n_articles, tag):
    out = []
    for i in range(n_articles):
        out += [" \n", f" = {tag} article {i} = \n", " \n", f" Body of {tag} {i} . It is long enough . \n",
                " = = Section = = \n", f" More text {i} . \n"]
    return out


def test_wikitext_raw_and_parquet(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    names = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
    for split, fname in names.items():
        (raw / fname).write_text("".join(_wikitext_lines(3, split)))
    c = load_corpus("wikitext", raw)
    assert [a.title for a in c.train] == ["train article 0", "train article 1", "train article 2"]
    assert "= = Section = =" in c.train[0].text and "More text 0" in c.train[0].text
    pq = tmp_path / "pq" / "wikitext-2-raw-v1"
    pq.mkdir(parents=True)
    for split in names:
        pd.DataFrame({"text": _wikitext_lines(2, split)}).to_parquet(pq / f"{split}-00000-of-00001.parquet")
    c2 = load_corpus("wikitext", tmp_path / "pq")
    assert [a.title for a in c2.test] == ["test article 0", "test article 1"]


def test_text_file_source(tmp_path):
    p = tmp_path / "my.txt"
    p.write_text("\n<|endoftext|>\n".join(f"Document {i}. " + "words " * 60 for i in range(20)))
    c = load_corpus("text", p)
    assert sum(len(v) for v in c.splits.values()) == 20
    assert c.name == "text:my.txt"


def test_shuffle_blocks():
    ids = list(range(1024))
    assert shuffle_blocks(ids, 0, seed=3) == ids
    for s in range(1, 6):
        out = shuffle_blocks(ids, s, seed=3)
        assert sorted(out) == ids                      # the token multiset is kept
        assert out == shuffle_blocks(ids, s, seed=3)   # seeded
        k = 4 ** s
        blocks = [tuple(out[i:i + 1024 // k]) for i in range(0, 1024, 1024 // k)]
        # every block is an original contiguous block, in some order
        assert sorted(blocks) == [tuple(range(j, j + 1024 // k)) for j in range(0, 1024, 1024 // k)]
    assert shuffle_blocks(ids, 5, seed=3) != ids
    assert shuffle_blocks([7] + ids, 2, seed=1, keep_first=1)[0] == 7
    with pytest.raises(CorpusError, match="divisible"):
        shuffle_blocks(list(range(1000)), 5, seed=0)


def test_damaged_corpus_cache_is_reported_and_rebuilt(tmp_path, monkeypatch, capsys):
    """The parsed Wikipedia extract is cached as a verified folder: an edited cache is not read."""
    from tg_utils.data import corpus as C
    monkeypatch.setattr(C, "resolve", lambda p: tmp_path / p)
    first = C._read_gensim_wiki(200)
    folder = next((tmp_path / "outputs" / "corpus").iterdir())
    f = folder / "articles.json"
    f.write_text(f.read_text().replace("Anarchism", "Anarchysm", 1))
    capsys.readouterr()
    again = C._read_gensim_wiki(200)
    assert "articles.json does not match its manifest" in capsys.readouterr().out
    assert again == first and "Anarchysm" not in f.read_text()
