"""Notebook 06's paper procedures (issue 17), each against a re-derivation written here from the original
code's definitions on small fixed inputs: the Tracing paper's document sequences and capped PCA
(melodylizx/Tracing-the-representation-geometry-of-language-models, rankme_alpha_scripts/ and
utils/powerlaw.py), Token Representation Evolution's word sampling and P1 / P2 (Lielferber10/
Tranformers-Project, token_convergence_analysis.py and multitoken_context_perturbation.py); and the phase
rule's collapse, which starts at the last checkpoint before RankMe falls."""
from __future__ import annotations

import types
from collections import defaultdict

import numpy as np
import pytest
from sklearn.decomposition import PCA

from tg_utils import metrics as M
from tg_utils.data import words as W
from tg_utils.data.contexts import build_contexts
from tg_utils.data.sequences import document_sequences, split_documents
from tg_utils.experiments.nb06_findings import procedures
from tg_utils.experiments.nb06_inputs import trajectories, word_selection
from tg_utils.experiments.nb06_measures import layer_spectra
from tg_utils.metrics import trajectory as T
from tg_utils.metrics import word_states as WS
from tg_utils.params import ParameterError
from tg_utils.params.trajectory import PAPER_WORD_REVISIONS, TrajectoryParams


# ----------------------------------------------------------------------------- the Tracing paper: sequences

def _paper_prepare(docs, max_length=128, min_length=10, bos=None):
    """prepare_dataset as the original writes it: tokenise each document with truncation to max_length
    (special tokens counted), keep it if its length is > min_length."""
    out = []
    for d in docs:
        enc = ([] if bos is None else [bos]) + list(d)
        enc = enc[:max_length]
        if len(enc) > min_length:
            out.append(enc)
    return out


DOCS = [list(range(100, 100 + n)) for n in (0, 5, 10, 11, 12, 127, 128, 129, 300, 11)]


@pytest.mark.parametrize("bos", [None, 1])
def test_document_sequences_match_the_papers_prepare_dataset(bos):
    s = document_sequences(DOCS, 128, 10, bos)
    assert s.ids == _paper_prepare(DOCS, 128, 10, bos)
    assert s.procedure == "documents" and s.overlap == 0.0 and s.n_available == len(s.ids)
    # documents of exactly 10 tokens (11 with BOS: kept) are dropped, longer ones cut at 128
    assert [len(x) for x in s.ids] == ([11, 12, 127, 128, 128, 128, 11] if bos is None else
                                       [11, 12, 13, 128, 128, 128, 128, 12])
    # targets: the document's next token after the cut, -1 where the document ended inside
    for i, ids, t in zip(s.starts, s.ids, s.targets):
        n_doc = len(ids) - (bos is not None)
        assert t == (DOCS[i][n_doc] if n_doc < len(DOCS[i]) else -1)


def test_document_sequences_cap_is_a_seeded_subset_in_document_order():
    docs = [list(range(100 * i, 100 * i + 20 + i)) for i in range(50)]
    full = document_sequences(docs, 16, 10)
    a, b = document_sequences(docs, 16, 10, max_docs=14, seed=3), document_sequences(docs, 16, 10, max_docs=14, seed=3)
    c = document_sequences(docs, 16, 10, max_docs=14, seed=4)
    assert a.ids == b.ids and a.ids != c.ids and len(a.ids) == 14 and a.n_available == 50
    assert list(a.starts) == sorted(a.starts) and all(full.ids[i] == x for i, x in zip(a.starts, a.ids))
    with pytest.raises(ValueError, match="more than 10 tokens"):
        document_sequences([[1, 2, 3]], 16, 10)


def test_split_documents_are_the_non_empty_lines():
    assert split_documents(["a b\n\nc\n  \n", "d"]) == ["a b", "c", "d"]


# ----------------------------------------------------------------------------- the Tracing paper: PCA

def _paper_rankme(eig):
    """utils/powerlaw.py rankme: p = eig / sum|eig| + 1e-7, exp of the entropy."""
    p = eig / np.abs(eig).sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


def test_capped_eigenspectrum_is_sklearn_pca_explained_variance_ratio():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 40)) * np.linspace(3, 0.1, 40)
    for cap in (5, 40, 2048):
        k = min(cap, *X.shape)
        ref = PCA(n_components=k, svd_solver="full").fit(X - X.mean(0)).explained_variance_ratio_
        np.testing.assert_allclose(M.eigenspectrum(X, cap), ref, rtol=1e-8, atol=1e-14)
    assert M.eigenspectrum(X, 5).sum() < 1                      # fractions of the *total* variance
    with pytest.raises(ValueError, match="max_components"):
        M.eigenspectrum(X, 0)


def test_layer_spectra_keeps_at_most_max_components():
    rng = np.random.default_rng(1)
    S = rng.normal(size=(50, 2, 30)) * np.linspace(2, 0.1, 30)
    out = layer_spectra(S, max_components=20)
    assert out["eigs"].shape == (2, 20)
    for l in range(2):
        ref = PCA(n_components=20, svd_solver="full").fit(S[:, l] - S[:, l].mean(0)).explained_variance_ratio_
        assert out["rankme"][l] == pytest.approx(_paper_rankme(ref), rel=1e-9)
    assert layer_spectra(S)["eigs"].shape == (2, 30)           # default cap 2048 > min(N, d)


# ----------------------------------------------------------------------------- Token Representation Evolution: words

def test_sample_words_is_seeded_and_in_list_order():
    words = [f"w{i}" for i in range(100)]
    a = W.sample_words(words, 30, seed=0)
    assert a == W.sample_words(words, 30, seed=0) and a != W.sample_words(words, 30, seed=1)
    assert len(set(a)) == 30 and set(a) <= set(words) and a == sorted(a, key=words.index)
    assert W.sample_words(words, 500) == words


def _paper_buckets(words, tokenizer, min_size=10):
    """bucket_words_by_token_count: len(tokenizer.tokenize(w)) of the bare word, buckets of >= min_size."""
    b = defaultdict(list)
    for w in words:
        b[len(tokenizer.tokenize(w))].append(w)
    return {k: v for k, v in b.items() if len(v) >= min_size}


def test_word_selection_sample_mode_matches_the_papers_buckets(word_tokenizer):
    words = [w for w in "the quick brown fox jumps over lazy dog morning evening river mountain forest "
             "valley ocean island desert garden window kitchen library museum theatre station harbour "
             "cathedral parliament university hospital".split()]
    P = TrajectoryParams(n_sampled_words=25, min_bucket_words=3, word_buckets=list(range(1, 20)), seed=2)
    sel, counts = word_selection(P, word_tokenizer, words)
    sample = W.sample_words(words, 25, seed=2)
    ref = _paper_buckets(sample, word_tokenizer, 3)
    assert {w: b for b, ws in ref.items() for w in ws} == sel
    assert counts == {b: len(v) for b, v in _paper_buckets(sample, word_tokenizer, 1).items()}
    # the bare form differs from the spaced one (" word") under a byte-level BPE
    assert any(W.bucket_by_tokens([w], word_tokenizer, "")[w] != W.bucket_by_tokens([w], word_tokenizer, " ")[w]
               for w in words)
    top, _ = word_selection(TrajectoryParams(word_sampling="top", word_form="spaced", words_per_bucket=2,
                                             word_buckets=[1, 2, 3]), word_tokenizer, words)
    assert top == W.select_by_bucket(words, word_tokenizer, [1, 2, 3], 2, prefix=" ")


# ----------------------------------------------------------------------------- Token Representation Evolution: P1 / P2

def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_first_base_scores_match_the_papers_loops():
    rng = np.random.default_rng(0)
    Wn, B, K, L, d = 4, 5, 5, 3, 6
    base, swaps = rng.normal(size=(Wn, B, L, d)), rng.normal(size=(Wn, K, L, d))
    bmask = np.ones((Wn, B), bool)
    bmask[1, 3:] = False                                   # a word with 3 sentences
    smask = np.ones((Wn, K), bool)
    smask[2, 4] = False                                    # a word with 4 replaced sentences
    sc = WS.first_base_scores(base, swaps, bmask, smask)
    for w in range(Wn):
        others = [j for j in range(1, B) if bmask[w, j]]
        variants = [k for k in range(K) if smask[w, k]]
        for l in range(L):                                 # avg_similarity: mean over the comparison sentences
            assert sc.p1[w, l] == pytest.approx(np.mean([_cos(base[w, 0, l], base[w, j, l]) for j in others]))
            assert sc.p2[w, l] == pytest.approx(np.mean([_cos(base[w, 0, l], swaps[w, k, l]) for k in variants]))
    with pytest.raises(ValueError, match="do not match"):
        WS.first_base_scores(base, swaps[:, :, :2])


def test_build_contexts_keeps_swapped_variants_of_the_first_context(word_tokenizer):
    texts = ["Every day my dog runs. He saw a dog. Look at this dog. We fed our dog. They love that dog. "
             "There is a frog. I hear the frog. Kiss a frog. See my frog. Catch a frog. Paint the frog. "
             "A big log. I cut the log. Burn the log. A fog. In the fog. Lost in fog. The hog. A hog."]
    cs = build_contexts(texts, word_tokenizer, buckets=range(1, 10), min_contexts=5, min_words=1, warn=False,
                        n_swaps=3)
    assert len(cs.words) >= 1
    t, sw = cs.table, cs.swaps
    for w in cs.words:
        first = t[(t.word == w) & (t.context == 0)].iloc[0]
        rows = sw[sw.word == w].sort_values("k")
        assert 1 <= len(rows) <= 3 and rows.k.tolist() == list(range(len(rows)))
        assert rows.swap_ids.iloc[0] == first.swap_ids                       # k = 0: the context's own swap
        assert rows.swap_word.nunique() == len(rows) and w not in set(rows.swap_word)
        n_w = len(W.word_token_ids([w], word_tokenizer)[0])
        for r in rows.itertuples():                                          # same sentence, last word replaced
            n_p = len(W.word_token_ids([r.swap_word], word_tokenizer)[0])
            assert r.swap_ids[:-n_p] == first.ids[:-n_w] and r.swap_ids[-1] == first.ids[-1]
    st, mask = cs.stack_first_swaps(np.arange(len(sw)))
    assert st[mask].tolist() == list(range(len(sw)))
    assert len(build_contexts(texts, word_tokenizer, buckets=range(1, 10), min_contexts=5, min_words=1,
                              warn=False).swaps) == len(cs.words)           # n_swaps=1: the own swap only


# ----------------------------------------------------------------------------- the phase rule

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 160]


def test_collapse_starts_at_the_last_checkpoint_before_rankme_falls():
    rk = [90.0, 90.2, 89.9, 90.1, 89.8, 60.0, 20.0, 8.0, 6.0, 5.5]        # flat to step 8, then it falls
    al = np.linspace(0.8, 2.0, 10)
    ph = T.mark_phases(STEPS, rk, al, smooth=1)
    assert ph[0].phase == T.WARMUP and ph[0].start_step == 8 and ph[0].start_index == 4
    assert ph[0].rankme_start == 89.8
    iv = T.phase_intervals(STEPS, rk, al, smooth=1)
    assert all(lab != T.WARMUP for lab in iv.raw_label[:4])                # no collapse on the flat segment


def test_no_collapse_on_a_leading_flat_segment():
    """The committed standard-postln case: RankMe flat through most of the 16-step warmup, one falling
    interval (8 -> 16) at its end, the real fall after it: no warmup collapse (the rule before issue 17
    counted the leading flat intervals in: 'warmup collapse, steps 0-16')."""
    rk = [89.9, 89.7, 89.5, 89.3, 89.0, 80.0, 7.2, 5.0, 12.0, 17.9]
    al = [0.73, 0.73, 0.72, 0.72, 0.72, 0.71, 0.80, 0.81, 0.85, 0.87]
    for smooth in (1, 3):
        iv = T.phase_intervals(STEPS, rk, al, smooth=smooth, warmup_until=16)
        assert list(iv.rankme_sign[:4]) == [0, 0, 0, 0] and iv.rankme_sign[4] < 0
        assert iv.raw_label[:5] == (None, None, None, None, T.WARMUP)        # the collapse: 8 -> 16 only
        for ph in (T.mark_phases(STEPS, rk, al, smooth=smooth, warmup_until=16),     # shorter than min_len
                   T.mark_phases(STEPS, np.full(10, 40.0), al, smooth=smooth)):       # flat throughout
            assert T.WARMUP not in {p.phase for p in ph}


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("kw, match", [
    (dict(spectra_sequences="stream"), "spectra_sequences"), (dict(word_form="plain"), "word_form"),
    (dict(word_sampling="all"), "word_sampling"), (dict(perturbation="p"), "perturbation"),
    (dict(max_docs=5), "max_docs"), (dict(max_components=0), "max_components"), (dict(n_swaps=0), "n_swaps"),
    (dict(min_doc_tokens=-1), "min_doc_tokens"), (dict(word_models=["a/b"]), "word_revisions"),
    (dict(n_seqs=10, spectra_sequences="windows"), "n_seqs")])
def test_procedure_parameter_checks(kw, match):
    with pytest.raises(ParameterError, match=match):
        TrajectoryParams(**kw).check()


def test_defaults_are_the_papers_procedures_and_name_them():
    P = TrajectoryParams()
    P.check()
    assert (P.spectra_sequences, P.seq_len, P.min_doc_tokens, P.max_docs, P.max_components) == \
        ("documents", 128, 10, None, 2048)
    assert (P.word_form, P.word_sampling, P.n_sampled_words, P.min_bucket_words) == ("bare", "sample", 5000, 10)
    assert (P.perturbation, P.n_swaps) == ("first_base", 5)
    text = procedures(P)
    assert "Tracing paper's documents" in text["spectra"] and "2048" in text["spectra"]
    assert "our rule" in text["phases"] and "bare word" in text["words"] and "first sentence" in text["perturbation"]
    ours = procedures(TrajectoryParams(spectra_sequences="windows", word_form="spaced", word_sampling="top",
                                       perturbation="leave_one_out"))
    assert all("our" in v for v in ours.values())


def test_word_models_are_read_for_the_word_analyses_only():
    P = types.SimpleNamespace(toy_runs=[], models=["EleutherAI/pythia-160m"], revisions=["step0", "step1000"],
                              model_warmup_steps=1430, word_models=["EleutherAI/pythia-1b-deduped"],
                              word_revisions=PAPER_WORD_REVISIONS, out_dir="outputs")
    t = trajectories(P)
    assert [(x.name, x.spectra) for x in t] == [("EleutherAI/pythia-160m", True),
                                                 ("EleutherAI/pythia-1b-deduped", False)]
    assert t[1].steps == [64, 256, 1000, 3000, 18000, 48000, 78000, 108000, 143000]
