"""Data sets by name (tg_utils.data.hub_data), offline: small local data sets in the hub's layouts, put in a
hub cache the way huggingface_hub lays one out; the Pile-10K selection rule of The Geometry of Tokens
(tg_utils.data.selection) under two tokenizers; Token Representation Evolution's two files (formats and
the fetch step, tg_utils.data.token_evolution) on stand-ins of their formats."""
import dataclasses
import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from tg_utils import preflight
from tg_utils.data import hub_data as HD
from tg_utils.data import selection as S
from tg_utils.data import token_evolution as TE
from tg_utils.data.contexts import build_contexts, load_contexts
from tg_utils.data.corpus import Article, CorpusError, load_corpus
from tg_utils.data.words import read_word_list
from tg_utils.experiments import documents as D
from tg_utils.hubcache import write_snapshot
from tg_utils.params import ParameterError, params_class


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _pile_files(folder, texts):
    (folder / "data").mkdir(parents=True)
    pd.DataFrame({"text": texts, "meta": [{"pile_set_name": "Pile-CC"}] * len(texts)}).to_parquet(
        folder / "data" / "train-00000-of-00001-4746b8785c874cc7.parquet")
    return folder


def _wikitext_files(folder):
    (folder / "wikitext-2-raw-v1").mkdir(parents=True)
    for split in ("train", "validation", "test"):
        lines = []
        for i in range(2):
            lines += [f" = {split} article {i} = \n", " \n", f" First line of {split} {i} . \n",
                      f" = = Section = = \n", f" Second line of {split} {i} . \n"]
        pd.DataFrame({"text": lines}).to_parquet(folder / "wikitext-2-raw-v1" / f"{split}-00000-of-00001.parquet")
    return folder


def test_pile_by_name_from_the_hub_cache_and_from_a_local_folder(tmp_path, offline_cache):
    texts = ["  first document \n", "", "third\n\ndocument"]
    with pytest.raises(CorpusError, match=r"not in the hub cache .*HF_HUB_OFFLINE=1.*--download.*corpus_path"):
        load_corpus("hf:NeelNanda/pile-10k")
    files = _pile_files(tmp_path / "files", texts)
    write_snapshot(offline_cache, "NeelNanda/pile-10k", ["main"], files, repo_type="dataset")
    for c in (load_corpus("hf:NeelNanda/pile-10k"), load_corpus("hf:NeelNanda/pile-10k", files)):
        assert c.name == "hf:NeelNanda/pile-10k" and list(c.splits) == ["train"]
        # one article per row, in row order (a position is a row index), stripped, empty rows kept
        assert [(a.title, a.text) for a in c.train] == [("pile-10k#0", "first document"), ("pile-10k#1", ""),
                                                        ("pile-10k#2", "third\n\ndocument")]
    with pytest.raises(CorpusError, match="corpus_path .* is not a folder"):
        load_corpus("hf:NeelNanda/pile-10k", tmp_path / "nowhere")


def test_wikitext_by_name_equals_the_local_wikitext_folder(tmp_path, offline_cache):
    files = _wikitext_files(tmp_path / "files")
    write_snapshot(offline_cache, "Salesforce/wikitext", ["main"], files, repo_type="dataset")
    by_name = load_corpus("hf:wikitext:wikitext-2-raw-v1")             # the legacy id is an alias
    assert by_name.name == "hf:Salesforce/wikitext:wikitext-2-raw-v1"
    on_disk = load_corpus("wikitext", files / "wikitext-2-raw-v1")        # the local folder still works
    for split in ("train", "validation", "test"):
        assert by_name.split(split) == on_disk.split(split)
        assert [a.title for a in by_name.split(split)] == [f"{split} article 0", f"{split} article 1"]
    assert "= Section =" in by_name.test[0].text and by_name.test[0].text.endswith(f"Second line of test 0 .")
    with pytest.raises(CorpusError, match="hf:Salesforce/wikitext:wikitext-103-raw-v1 is not in the hub cache"):
        load_corpus("hf:Salesforce/wikitext:wikitext-103-raw-v1")       # another config: not fetched


def test_hub_names_are_parsed_and_checked():
    assert HD.HubData.parse("hf:NeelNanda/pile-10k") == HD.HubData("NeelNanda/pile-10k", None)
    assert HD.HubData.parse("hf:wikitext:wikitext-103-raw-v1").known.rows["train"] == 1_801_350
    assert HD.HubData.parse("hf:NeelNanda/pile-10k").known.rows == {"train": 10_000}
    for bad in ("hf:pile-10k", "hf:a/b:c d", "hf:"):
        with pytest.raises(HD.HubDataError, match="hf:<owner>/<name>"):
            HD.HubData.parse(bad)
    cls = params_class("04_shuffle_experiment")
    with pytest.raises(ParameterError, match="parameter 'corpus'.*hf:<owner>/<name>"):
        cls.from_dict({"corpus": "hf:pile-10k"})
    with pytest.raises(ParameterError, match="apply to documents: common"):
        cls.from_dict({"document_indices": [1, 2]})
    with pytest.raises(ParameterError, match="document_indices"):
        cls.from_dict({"documents": "common", "document_indices": [3, 3]})


class _SplitTokenizer:
    """A tokenizer counting pieces: "word" splits on white space and '_', "chunk" on white space only (so
    a_b is one token); with special tokens (the default, as Hugging Face's) a BOS id in front."""

    def __init__(self, unit):
        self.unit, self.calls = unit, 0

    def _ids(self, text, special):
        pieces = text.split() if self.unit == "chunk" else text.replace("_", " ").split()
        return ([0] if special else []) + [1 + len(p) for p in pieces]

    def __call__(self, texts, add_special_tokens=True):
        self.calls += 1
        one = isinstance(texts, str)
        ids = [self._ids(t, add_special_tokens) for t in ([texts] if one else texts)]
        return {"input_ids": ids[0] if one else ids}

    def get_vocab(self):
        return {self.unit: 0}


def _documents(n=1024):
    words = lambda k, w="word": " ".join([w] * k)                     # noqa: E731
    return [Article("below", words(n - 1)),                              # 1023 under both: out
            Article("at", words(n)),                                     # exactly 1024 under both: in
            Article("split", words(6 * n // 10) + " " + words(3 * n // 10, "a_b")),  # 1.2 n words, 0.9 n chunks
            Article("long", words(3000)),                                # long: settled by its prefix
            Article("late", "x" * 13_000 + " " + words(n)),              # prefix short, whole text long: in
            Article("empty", "")]


def test_pile_selection_rule_under_two_tokenizers(tmp_path, offline_cache):
    # the documents as a small data set in Pile-10K's format and layout, read by name from the hub cache
    files = _pile_files(tmp_path / "files", [a.text for a in _documents()])
    write_snapshot(offline_cache, "NeelNanda/pile-10k", ["main"], files, repo_type="dataset")
    docs = load_corpus("hf:NeelNanda/pile-10k").train
    assert [a.text for a in docs] == [a.text for a in _documents()]
    toks = {"A": _SplitTokenizer("word"), "B": _SplitTokenizer("chunk")}
    counts = {k: S.token_counts(docs, t, 1024, progress=False, cache_dir=str(tmp_path)) for k, t in toks.items()}
    assert counts["A"].tolist() == [1023, 1024, 1024, 1024, 1024, 0]     # min(tokens, 1024), no BOS counted
    assert counts["B"].tolist() == [1023, 1024, 614 + 307, 1024, 1024, 0]
    assert S.qualifying(counts, 1024).tolist() == [1, 3, 4]
    assert S.qualifying({"A": counts["A"]}, 1024).tolist() == [1, 2, 3, 4]
    calls = toks["A"].calls                                              # the counts are cached
    assert S.token_counts(docs, toks["A"], 1024, progress=False, cache_dir=str(tmp_path)).tolist() == \
        counts["A"].tolist() and toks["A"].calls == calls
    with pytest.raises(CorpusError, match="different corpora"):
        S.qualifying({"A": counts["A"], "B": counts["B"][:3]}, 1024)


def test_document_order_draw_indices_and_reserves():
    keep = np.array([0, 19, 22, 28, 29, 40, 42, 45, 51, 53])
    # the original's draw (src/extract.py:94-98): seed the legacy generator, choose without replacement, sort
    np.random.seed(42)
    original = sorted(np.random.choice(keep, 4, replace=False).tolist())
    assert S.draw(keep, 4, 42) == original
    order = S.document_order(keep, 4, "random", 42)
    assert order[:4] == original and sorted(order) == keep.tolist()     # then the reserves, in corpus order
    assert S.document_order(keep, 3, "first") == keep.tolist()
    assert S.document_order(keep, 2, "random", 0, indices=[45, 7])[:2] == [45, 7]
    with pytest.raises(CorpusError, match="lower n_prompts"):
        S.draw(keep, 11, 0)


def test_select_documents_gives_every_model_the_same_documents(tmp_path, monkeypatch, capsys):
    toks = {"m/a": _SplitTokenizer("word"), "m/b": _SplitTokenizer("chunk")}
    monkeypatch.setattr(D, "load_tokenizer", lambda spec, out_dir: toks[spec])
    monkeypatch.chdir(tmp_path)
    from tg_utils.data.corpus import Corpus
    corpus = Corpus("toy", {"train": _documents(64), "validation": [], "test": []})
    P = params_class("02_extract_states").from_dict(
        {"models": ["m/a", "m/b"], "documents": "common", "prompt_split": "train", "n_tokens": 64, "n_prompts": 2,
         "expected_documents": 3, "out_dir": str(tmp_path)})
    monkeypatch.setattr(S, "token_counts", lambda arts, tok, n, progress: np.array(
        [min(len(tok(a.text, add_special_tokens=False)["input_ids"]), n) for a in arts]))
    sel = D.select_documents(P, corpus, P.models, progress=False)
    assert [a.title for a in sel.corpus.train] == ["at", "long", "late"] and sel.chosen == [1, 3]
    assert sel.counts["qualifying"].tolist() == [4, 3, 3]
    out = capsys.readouterr().out
    assert "3 of 6 documents of toy (train) have >= 64 tokens under every tokenizer of m/a, m/b" in out
    assert "(the paper: 3, the same)" in out
    sel2 = D.select_documents(dataclasses.replace(P, document_indices=[0, 4]), corpus, P.models, progress=False)
    assert sel2.chosen == [0, 4] and sel2.not_qualifying == [0]         # "below" fails the rule: reported
    assert [a.title for a in sel2.corpus.train] == ["below", "late", "at", "long"]   # then the reserves
    assert "1 given document(s) fail the rule here (rows 0)" in capsys.readouterr().out


def test_token_evolution_files_formats_and_fetch(tmp_path, monkeypatch, word_tokenizer):
    words = {"the": 9, "sunflower": 5, "lighthouse": 4}
    contexts = {"lighthouse": {"sentences": [f"we walked {k} miles to the lighthouse" for k in range(6)],
                               "token_split": 3,
                               "replaced_sentences": ["we walked 0 miles to the greenhouse"]},
                "sunflower": {"sentences": ["she grew a sunflower", "not ending with it"], "token_split": 2,
                              "replaced_sentences": []}}
    src = tmp_path / "repo"
    src.mkdir()
    (src / "words_list.json").write_text(json.dumps(words))
    (src / "multitoken_words_contexts.json").write_text(json.dumps(contexts))
    assert read_word_list(src / "words_list.json") == ["the", "sunflower", "lighthouse"]   # file order
    cand = load_contexts(src / "multitoken_words_contexts.json")
    assert cand["format"] == "tg-contexts-v1" and cand["lexicon"] == ["greenhouse", "lighthouse", "sunflower"]
    assert cand["contexts"]["sunflower"] == ["she grew a sunflower"]    # a sentence must end with its word
    cs = build_contexts(cand, word_tokenizer, buckets=range(1, 8), min_contexts=2, warn=False)
    assert set(cs.table["word"]) <= {"lighthouse", "sunflower"}
    # the fetch step: checked against the sha256, written into the folder; a changed file is refused
    monkeypatch.setattr(TE, "FOLDER", str(tmp_path / "data"))
    f = TE.RemoteFile("words_list.json", hashlib.sha256((src / "words_list.json").read_bytes()).hexdigest(),
                      60, "stand-in")
    monkeypatch.setattr(TE, "FILES", {f.path: f})
    assert TE.remote(f.path) == f and TE.remote("data/frequent_words.txt") is None
    with pytest.raises(FileNotFoundError, match="fetch it with `python -m tg_utils.data.token_evolution`"):
        read_word_list(f.path)
    out = TE.fetch(f.path, base=src.as_uri())
    assert json.loads(out.read_text()) == words
    (src / "words_list.json").write_text(json.dumps({"changed": 1}))
    with pytest.raises(ValueError, match="sha256 .* is not the expected"):
        TE.fetch(f.path, base=src.as_uri())


def test_paper_check_lists_the_data_sets_by_name_with_sizes(tmp_path, offline_cache):
    r = preflight.check("paper", only=["02", "04", "06"], out=tmp_path / "out", gpu_memory=140)
    data = "\n".join(r.lines["data"])
    assert "MISSING     hf:NeelNanda/pile-10k: 10,000 rows (train 10,000), ~33.3 MB; not in the hub cache" in data
    assert "hf:Salesforce/wikitext:wikitext-2-raw-v1: 44,836 rows (train 36,718, validation 3,760, test 4,358)" in data
    assert "words_path data/token_evolution/words_list.json (609 kB" in data
    assert any(p.startswith("data set hf:NeelNanda/pile-10k: not in the hub cache; --download fetches it (~33.3 MB)")
               for p in r.problems)
    assert ("dataset", HD.HubData("NeelNanda/pile-10k")) in r.fetch
    est = {e.notebook: e for e in r.estimates}
    assert est["04_shuffle_experiment"].download_gb == 0               # Pile-10K counted once, in 02
    files = _pile_files(tmp_path / "files", ["x"])
    write_snapshot(offline_cache, "NeelNanda/pile-10k", ["main"], files, repo_type="dataset")
    r2 = preflight.check("paper", only=["04"], out=tmp_path / "out", gpu_memory=140)
    assert "ok          hf:NeelNanda/pile-10k: 10,000 rows (train 10,000), ~33.3 MB; in the hub cache" in \
        "\n".join(r2.lines["data"])


def test_token_counts_by_prefix_equal_the_whole_texts_counts(word_tokenizer, tmp_path):
    # a re-derivation: min(tokens of the whole text, n) for texts below, near and far above n tokens
    corpus = load_corpus()
    texts = [a.text[:k] for a in corpus.test for k in (200, 360, 400, 440, 600, 20000)]
    arts = [Article(str(i), t) for i, t in enumerate(texts)]
    whole = [min(len(word_tokenizer(t, add_special_tokens=False)["input_ids"]), 256) for t in texts]
    got = S.token_counts(arts, word_tokenizer, 256, progress=False, cache_dir=str(tmp_path))
    assert got.tolist() == whole
    assert 0 < (got < 256).sum() < len(texts)                            # both sides of the threshold occur


def test_rehearsal_stand_ins_of_the_token_evolution_files_are_current_and_read(tmp_path):
    from tg_utils.rehearsal import TE_STAND_INS, write_token_evolution_stand_ins
    from tg_utils.paths import resolve
    for new in write_token_evolution_stand_ins(tmp_path):              # the committed files are the function's
        assert new.read_bytes() == (resolve(TE_STAND_INS) / new.name).read_bytes(), new.name
    words = read_word_list(f"{TE_STAND_INS}/words_list.json")
    assert len(words) == 2000 and words[:3] == ["the", "and", "that"]
    cand = load_contexts(f"{TE_STAND_INS}/multitoken_words_contexts.json")
    assert len(cand["contexts"]) == 300 and all(len(c) == 5 for c in cand["contexts"].values())
    assert set(cand["contexts"]) < set(cand["lexicon"])                 # swap partners beyond the words
