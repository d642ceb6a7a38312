"""The suffix-array n-gram index and the ∞-gram probability against brute-force counts on small streams."""
import itertools
import math

import numpy as np
import pytest

from tg_utils.metrics.ngram import SuffixIndex, brute_count, continuation_logprob_original, suffix_array


def _naive_sa(t):
    t = list(t)
    return sorted(range(len(t)), key=lambda i: t[i:])


def _brute_infgram(t, ctx, w):
    """P∞ by the definition: the longest suffix s of ctx with an occurrence followed by a token, then
    (occurrences of s + w) / (occurrences of s followed by a token); counted by scanning."""
    t = list(t)
    n = len(t)
    for L in range(len(ctx), -1, -1):
        s = list(ctx[len(ctx) - L:])
        starts = [i for i in range(n - L) if t[i:i + L] == s]     # followed by a token: i + L < n
        if starts:
            return sum(t[i + L] == w for i in starts) / len(starts), L
    return 0.0, 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_suffix_array_matches_naive_sort(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 3, size=60)
    t[20:30] = t[40:50]                              # a long repeat needs several doubling rounds
    assert suffix_array(t).tolist() == _naive_sa(t)
    assert suffix_array(np.array([4, 4, 4, 4])).tolist() == [3, 2, 1, 0]


def test_count_matches_brute_force_for_seen_and_unseen_ngrams():
    rng = np.random.default_rng(3)
    t = rng.integers(0, 4, size=200)
    idx = SuffixIndex.build(t)
    seen = unseen = 0
    for m in (1, 2, 3, 5):
        for g in itertools.islice(itertools.product(range(5), repeat=m), 120):   # token 4 never occurs
            c = brute_count(t, g)
            assert idx.count(list(g)) == c, g
            seen += c > 0
            unseen += c == 0
    assert seen > 50 and unseen > 50
    assert idx.count([]) == len(t)
    assert idx.count(t[150:200].tolist()) >= 1                  # a long span that ends the stream


def test_infgram_prob_backs_off_to_the_longest_occurring_suffix():
    t = np.array([1, 2, 3, 1, 2, 4, 1, 2, 3, 5, 9, 2, 3])
    idx = SuffixIndex.build(t)
    # context [9, 1, 2]: [9, 1, 2] never occurs; [1, 2] does (3 times, each followed by a token):
    # followed by 3 twice, by 4 once
    assert idx.infgram_prob([9, 1, 2], 3) == (pytest.approx(2 / 3), 2)
    assert idx.infgram_prob([9, 1, 2], 4) == (pytest.approx(1 / 3), 2)
    assert idx.infgram_prob([9, 1, 2], 7) == (0.0, 2)                  # suffix occurs, never followed by 7
    # the whole context occurs: [2, 3, 1] once, followed by 2
    assert idx.infgram_prob([2, 3, 1], 2) == (1.0, 3)
    # [2, 3] ends the stream: that occurrence is no context; the other two are followed by 1 and 5
    assert idx.infgram_prob([2, 3], 1) == (pytest.approx(1 / 2), 2)
    # a context token never seen: backoff to the empty suffix (the unigram frequency: 2 is 4 of 13 tokens)
    assert idx.infgram_prob([8], 2) == (pytest.approx(4 / 13), 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_infgram_prob_matches_the_definition_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 3, size=80)
    idx = SuffixIndex.build(t)
    for _ in range(200):
        ctx = rng.integers(0, 4, size=int(rng.integers(0, 7))).tolist()
        w = int(rng.integers(0, 4))
        p, L = idx.infgram_prob(ctx, w)
        bp, bL = _brute_infgram(t, ctx, w)
        assert L == bL and p == pytest.approx(bp), (ctx, w)


def test_continuation_logprob_chains_the_continuation_into_the_context():
    t = np.array([1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 6])
    idx = SuffixIndex.build(t)
    lp, lens = idx.continuation_logprob([1, 2], [3, 4])
    # P(3 | 1 2) = 2/3 (suffix 2); P(4 | 1 2 3) = 1/2 (suffix 3: "1 2 3" twice, once followed by 4)
    assert np.allclose(np.exp(lp), [2 / 3, 1 / 2]) and lens.tolist() == [2, 3]
    # unseen prefix: the empty suffix; then 6, which occurs only at the end (no context): empty again
    lp, lens = idx.continuation_logprob([7, 7], [6, 1])
    assert lens.tolist() == [0, 0] and np.allclose(lp, np.log([1 / 11, 3 / 11]))
    lp, _ = idx.continuation_logprob([5], [1, 2, 9])          # "5 1 2" occurs, never followed by 9
    assert lp[-1] == -math.inf


def test_original_sum_leaves_zero_probability_tokens_out():
    assert continuation_logprob_original([-1.0, -math.inf, -2.0]) == -3.0
    assert math.isnan(continuation_logprob_original([-math.inf, -math.inf]))


def test_bad_tokens_are_refused():
    with pytest.raises(ValueError, match="1-D int"):
        suffix_array(np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="1-D int"):
        suffix_array(np.array([0.5, 1.0]))
