"""Multi-token context sets for the context-perturbation analysis (notebook 06, issue 7).

Contexts are stored as text and bucketed per tokenizer at run time:

1. `context_candidates(texts)` (tokenizer-independent, written to data/contexts.json by
   `write_contexts()`): sentences (lines split after . ! ? before a capital) cut right after a word
   that is preceded by a space and not followed by a letter, digit, hyphen or apostrophe, with at
   least `min_words_before` words before it and at most `max_words` words in all. A word (ASCII,
   lower case or Capitalised, at least `min_len` letters) is kept if it ends at least `min_contexts`
   distinct such contexts; its contexts are the first `max_per_word` in sha1 order (deterministic, no
   matter the text order). To keep the file small, words of at least `keep_all_from` letters are all
   kept (multi-token words are long ones, under any tokenizer), shorter ones up to `per_length` per
   length (sha1 order). A *lexicon* (every such word seen at least `lexicon_min_count` times) is stored
   too (every such word, any count by default): the pool of swap partners.
2. `build_contexts(candidates, tokenizer, buckets=range(2, 7))` (per tokenizer, a second or two): the
   word's tokens `tok(" " + word)`; a context is kept only if its token ids end with exactly those
   ids (checked, not assumed); for each context a swapped variant replaces the last word with a
   lexicon word whose last token id is the same (a different word, same token count preferred,
   chosen by a seeded hash), kept only if its ids are the base ids with the word's tokens replaced by
   the partner's. Words with at least `min_contexts` such (base, swap) pairs are kept, each with at
   most `max_contexts` of them (default: exactly min_contexts = 5). A bucket with fewer than `min_words` words is reported (a warning and
   `ContextSet.report`), never padded. `ContextSet.key` (tokenizer hash, candidate hash, parameters)
   identifies the set, e.g. for the activation cache; nothing else is cached.

Use with the extractor (states of the last token of every prompt, then tg_utils.metrics.word_states):
    cs = build_contexts(load_contexts(), lm.tokenizer, add_bos=lm.desc.adds_bos)
    base, mask = cs.stack(extract_states(lm, cs.prompts(), layers, positions="last").stacked())
    swap, _ = cs.stack(extract_states(lm, cs.swap_prompts(), layers, positions="last").stacked())
    scores = perturbation_scores(base, None, swap, base_mask=mask)      # (n_words, n_layers) each
    perturbation_by_bucket(scores, cs.word_buckets())
"""
from __future__ import annotations

import json
import re
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..paths import resolve, write_text_atomic
from . import token_evolution as TE
from .words import _bos, _default_corpus, _encode, _hash_order, _sha, tokenizer_hash, word_token_ids

CONTEXTS_PATH = "data/contexts.json"
CONTEXTS_FORMAT = "tg-contexts-v1"

_SPACED_WORD = re.compile(r"(?<= )[^\W\d_]+(?![\w'’-])")       # preceded by a space, whole word
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])")


# ============================================================================ context candidates

def _is_plain_word(w: str, min_len: int) -> bool:
    """ASCII letters, lower case or Capitalised (no CamelCase / ALLCAPS artefacts), >= min_len."""
    return (len(w) >= min_len and w.isascii() and w.isalpha()
            and (w.islower() or (w[0].isupper() and w[1:].islower())))


def _sentences(text: str) -> Iterable[str]:
    for line in text.split("\n"):
        for s in _SENTENCE_END.split(line.strip()):
            if s:
                yield s


def _contexts_by_word(texts: Iterable[str], min_len: int, min_words_before: int, max_words: int):
    """word -> set of contexts (sentence prefixes ending with the word); word -> occurrences."""
    ctx: dict[str, set[str]] = defaultdict(set)
    seen: Counter[str] = Counter()
    for text in texts:
        for sent in _sentences(text):
            n_before = None
            for m in _SPACED_WORD.finditer(sent):
                w = m.group()
                if not _is_plain_word(w, min_len):
                    continue
                seen[w] += 1
                n_before = len(sent[:m.start()].split())
                if min_words_before <= n_before <= max_words - 1:
                    ctx[w].add(sent[:m.end()])
    return ctx, seen


def context_candidates(corpus_texts: Iterable[str], min_contexts: int = 5, max_per_word: int = 6,
                       min_len: int = 3, min_words_before: int = 3, max_words: int = 24,
                       keep_all_from: int = 9, per_length: int = 100, lexicon_min_count: int = 1,
                       seed: int = 0) -> dict:
    """Tokenizer-independent context candidates (rules in the module docstring).

    Returns {"format", "params", "lexicon": [words, sorted], "contexts": {word: [contexts]}} where
    every context is a sentence prefix ending with " " + word, words in sorted order, at least
    `min_contexts` and at most `max_per_word` contexts each.
    """
    params = dict(min_contexts=min_contexts, max_per_word=max_per_word, min_len=min_len,
                  min_words_before=min_words_before, max_words=max_words,
                  keep_all_from=keep_all_from, per_length=per_length,
                  lexicon_min_count=lexicon_min_count, seed=seed)
    ctx, seen = _contexts_by_word(corpus_texts, min_len, min_words_before, max_words)
    eligible = [w for w, c in ctx.items() if len(c) >= min_contexts]
    by_len: dict[int, list[str]] = defaultdict(list)
    for w in eligible:
        by_len[len(w)].append(w)
    chosen = []
    for length, ws in by_len.items():
        chosen += ws if length >= keep_all_from else _hash_order(ws, seed)[:per_length]
    contexts = {w: _hash_order(ctx[w], f"{seed}:{w}")[:max_per_word] for w in sorted(chosen)}
    lexicon = sorted(w for w, c in seen.items() if c >= lexicon_min_count)
    return {"format": CONTEXTS_FORMAT, "params": params, "lexicon": lexicon, "contexts": contexts}


def write_contexts(path: str | Path = CONTEXTS_PATH, corpus=None, splits: Sequence[str] | None = None,
                   **kwargs) -> Path:
    """Write `context_candidates` of a corpus (default: the default corpus, all splits: contexts are
    inputs to read states from, not training text) to `path` as JSON (one context per line; atomic)."""
    corpus = corpus or _default_corpus()
    splits = list(splits or corpus.splits)
    cand = context_candidates([t for s in splits for t in corpus.texts(s)], **kwargs)
    cand = {"format": cand["format"], "source": {"corpus": corpus.name, "splits": splits},
            **{k: v for k, v in cand.items() if k != "format"}}
    path = resolve(path)
    write_text_atomic(path, json.dumps(cand, indent=0, ensure_ascii=False) + "\n")
    path.chmod(0o644)
    return path


def load_contexts(path: str | Path = CONTEXTS_PATH) -> dict:
    """The context candidates written by `write_contexts`, or Token Representation Evolution's
    multitoken_words_contexts.json read as candidates (tg_utils.data.token_evolution)."""
    p = resolve(path)
    if not p.exists():
        how = ("fetch it with `python -m tg_utils.data.token_evolution`" if TE.remote(p) else
               "write them with tg_utils.data.contexts.write_contexts()")
        raise FileNotFoundError(f"no contexts at {p}; {how}")
    cand = json.loads(p.read_text())
    if TE.is_token_evolution_contexts(cand):
        return TE.as_candidates(cand, p.name)
    if cand.get("format") != CONTEXTS_FORMAT:
        raise ValueError(f"{p} is not a context file of format {CONTEXTS_FORMAT}")
    return cand


# ============================================================================ per-tokenizer contexts

SWAP_COLUMNS = ["word", "k", "swap_word", "swap_text", "swap_ids", "swap_last_pos"]
CONTEXT_COLUMNS = ["word", "bucket", "context", "text", "ids", "last_pos", "last_token_id",
                   "swap_word", "swap_bucket", "swap_text", "swap_ids", "swap_last_pos"]


@dataclass(frozen=True)
class ContextSet:
    """Contexts of one tokenizer.

    table: one row per (word, context), grouped by word (words in bucket order, then sha1 order),
      `context` = 0..n_contexts-1; columns CONTEXT_COLUMNS: `ids` / `swap_ids` the token ids of the
      base / swapped sentence ([BOS] + text), `last_pos` / `swap_last_pos` the index of the last token
      (the state to read), `last_token_id` shared by both.
    report: one row per requested bucket: n_candidates (candidate words with that many tokens),
      n_words (kept), n_contexts (rows), enough (n_words >= min_words).
    key: hash of (tokenizer, candidates, parameters).
    """
    table: pd.DataFrame
    report: pd.DataFrame
    key: str
    params: dict = field(default_factory=dict)
    swaps: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SWAP_COLUMNS))

    @property
    def words(self) -> list[str]:
        return list(dict.fromkeys(self.table["word"]))

    @property
    def n_contexts(self) -> np.ndarray:
        """(n_words,) contexts of each word, in `words` order (min_contexts..max_contexts)."""
        return self.table.groupby("word", sort=False).size().to_numpy()

    def word_buckets(self) -> np.ndarray:
        """(n_words,) bucket of each word, in `words` order."""
        return self.table.groupby("word", sort=False)["bucket"].first().to_numpy()

    def prompts(self) -> list[list[int]]:
        """Token ids of the base sentences, in table order."""
        return list(self.table["ids"])

    def swap_prompts(self) -> list[list[int]]:
        """Token ids of the swapped sentences, in table order."""
        return list(self.table["swap_ids"])

    def first_swap_prompts(self) -> list[list[int]]:
        """Token ids of the swapped variants of each word's first context (`swaps`, in its order)."""
        return list(self.swaps["swap_ids"])

    def stack_first_swaps(self, states) -> tuple[np.ndarray, np.ndarray]:
        """Per-row states of `swaps` (n_swap_rows, ...) -> (stacked (n_words, K, ...), mask (n_words, K)),
        K = the most swaps of a word, words in `words` order; missing slots zeros with mask False."""
        a = _numpy(states)
        if a.shape[0] != len(self.swaps):
            raise ValueError(f"got {a.shape[0]} states for {len(self.swaps)} swapped first contexts")
        row = {w: i for i, w in enumerate(self.words)}
        k = self.swaps["k"].to_numpy()
        K = int(k.max()) + 1 if len(k) else 0
        out = np.zeros((len(row), K, *a.shape[1:]), dtype=a.dtype)
        idx = np.array([row[w] for w in self.swaps["word"]], dtype=np.int64)
        out[idx, k] = a
        mask = np.zeros((len(row), K), bool)
        mask[idx, k] = True
        return out, mask

    def stack(self, states) -> tuple[np.ndarray, np.ndarray]:
        """Per-row states (n_rows, ...) in table order -> (stacked (n_words, C, ...), mask (n_words, C))
        with C = the most contexts of a word; missing slots are zeros with mask False (pass the mask
        as `base_mask` to `trajectory.perturbation_scores`). With the default max_contexts =
        min_contexts every word has C contexts and the mask is all True."""
        a = _numpy(states)
        if a.shape[0] != len(self.table):
            raise ValueError(f"got {a.shape[0]} states for {len(self.table)} contexts")
        n = self.n_contexts
        out = np.zeros((len(n), int(n.max(initial=0)), *a.shape[1:]), dtype=a.dtype)
        word_idx = np.repeat(np.arange(len(n)), n)
        out[word_idx, self.table["context"].to_numpy()] = a
        mask = np.arange(out.shape[1])[None, :] < n[:, None]
        return out, mask


def _numpy(states) -> np.ndarray:
    """States as a numpy array (a torch tensor of any device and dtype is brought to the CPU)."""
    if hasattr(states, "detach"):
        states = states.detach().cpu()
        states = states.float() if str(states.dtype) == "torch.bfloat16" else states
        states = states.numpy()
    return np.asarray(states)


def _first_context_swaps(first: Mapping[str, dict], wids: Mapping[str, list], pools, tokenizer, prefix: str,
                         bos: list, n_swaps: int, seed: int) -> pd.DataFrame:
    """Up to `n_swaps` swapped variants of each word's first kept context: its own swap (k = 0), then
    other partners from the same last-token pool in seeded hash order, each kept only if its ids are the
    base ids with the word's tokens replaced by the partner's (as build_contexts checks). Token
    Representation Evolution compares its base sentence with up to 5 such "replaced_sentences"
    (multitoken_context_perturbation.py:147-149; multitoken_words_contexts.json)."""
    rows, tries = [], []
    for w, r in first.items():
        rows.append(dict(word=w, k=0, swap_word=r["swap_word"], swap_text=r["swap_text"], swap_ids=r["swap_ids"],
                         swap_last_pos=r["swap_last_pos"]))
        cands = [p for p in _partners(w, len(wids[w]), pools.get(wids[w][-1], ())) if p != r["swap_word"]]
        for p in _hash_order(cands, f"{seed}:{w}:swaps")[:3 * n_swaps]:
            tries.append((w, p, r["text"][:-len(w)] + p))
    if n_swaps > 1 and tries:
        sids = _encode(tokenizer, [t[2] for t in tries])
        pids = dict(zip(sorted({t[1] for t in tries}), word_token_ids(sorted({t[1] for t in tries}), tokenizer, prefix)))
        count = Counter(w for w in first)
        for (w, p, stext), sid in zip(tries, sids):
            b, k, kp = first[w]["ids"][len(bos):], len(wids[w]), len(pids[p])
            if count[w] < n_swaps and sid[-kp:] == pids[p] and sid[:-kp] == b[:-k] and sid[-1] == b[-1]:
                rows.append(dict(word=w, k=count[w], swap_word=p, swap_text=stext, swap_ids=bos + sid,
                                 swap_last_pos=len(bos) + len(sid) - 1))
                count[w] += 1
    order = {w: i for i, w in enumerate(first)}
    df = pd.DataFrame(rows, columns=SWAP_COLUMNS)
    return df.sort_values(["word", "k"], key=lambda c: c.map(order) if c.name == "word" else c,
                          kind="stable").reset_index(drop=True)


def _swap_pools(lexicon: Sequence[str], tokenizer, prefix: str):
    """last token id -> list of (word, n_tokens) of the lexicon, sorted by word."""
    pools: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for w, ids in zip(lexicon, word_token_ids(lexicon, tokenizer, prefix)):
        if ids:
            pools[ids[-1]].append((w, len(ids)))
    return pools


def _partners(word: str, n_tok: int, pool: Sequence[tuple[str, int]]) -> list[str]:
    """The words of the pool other than `word` (any case), those with the same token count if any."""
    others = [p for p in pool if p[0].lower() != word.lower()]
    same = [p[0] for p in others if p[1] == n_tok]
    return same or [p[0] for p in others]


def _pick(cands: Sequence[str], salt: str) -> str:
    """One of `cands`, chosen by a seeded hash of `salt` (deterministic, order of calls irrelevant)."""
    return cands[int(_sha(salt)[:12], 16) % len(cands)]


def build_contexts(source, tokenizer, buckets: Iterable[int] = range(2, 7), min_contexts: int = 5,
                   max_contexts: int | None = None, min_words: int = 20, max_words: int | None = None,
                   max_len: int = 64, prefix: str = " ", add_bos: bool = False, seed: int = 0,
                   warn: bool = True, n_swaps: int = 1) -> ContextSet:
    """Contexts of multi-token words under one tokenizer, with their swapped variants.

    source: the candidates (`load_contexts()` / `context_candidates(...)`), or corpus texts (a
      sequence of str; candidates are made from them with default settings and min_contexts).
    tokenizer: any transformers tokenizer (toy or hub); prefix: written before a word to tokenise it
      alone (" ": as inside a sentence); add_bos: put the tokenizer's BOS in front of every sentence.
    buckets: the token counts wanted; min_contexts: (base, swap) pairs a word needs; max_contexts:
      pairs kept per word (default min_contexts, so every word has the same number and
      `ContextSet.stack` has no gaps); max_words: cap on words per bucket (sha1 order), None = all;
      max_len: most tokens in a sentence (without BOS); min_words: below it a bucket is reported
      short (a warning if `warn`; `report.enough` in any case), never padded. Rules: module docstring.
    n_swaps: swapped variants of each word's first context kept in `ContextSet.swaps` (its own swap
      first, then other partners ending in the same token; fewer where the lexicon has fewer).
    """
    if n_swaps < 1:
        raise ValueError(f"n_swaps must be at least 1, got {n_swaps}")
    if isinstance(source, Mapping):
        cand = source
    else:
        cand = context_candidates(list(source), min_contexts=min_contexts)
    max_contexts = max_contexts or min_contexts
    if max_contexts < min_contexts:
        raise ValueError(f"max_contexts ({max_contexts}) must be >= min_contexts ({min_contexts})")
    buckets = sorted(set(int(b) for b in buckets))
    params = dict(buckets=buckets, min_contexts=min_contexts, max_contexts=max_contexts,
                  min_words=min_words, max_words=max_words, max_len=max_len, prefix=prefix,
                  add_bos=add_bos, seed=seed, n_swaps=n_swaps)
    bos = _bos(tokenizer, add_bos)
    words = list(cand["contexts"])
    wids = dict(zip(words, word_token_ids(words, tokenizer, prefix)))
    wanted = [w for w in words if len(wids[w]) in buckets]
    pools = _swap_pools(cand["lexicon"], tokenizer, prefix)

    # base and swapped sentences of every candidate context of the wanted words (batched tokenisation)
    rows = []
    for w in wanted:
        cands = _partners(w, len(wids[w]), pools.get(wids[w][-1], ()))
        for text in cand["contexts"][w]:
            if cands and text.endswith(" " + w):
                partner = _pick(cands, f"{seed}:{w}:{text}")
                rows.append((w, text, partner, text[:-len(w)] + partner))
    base_ids = _encode(tokenizer, [r[1] for r in rows])
    swap_ids = _encode(tokenizer, [r[3] for r in rows])
    partners = sorted({r[2] for r in rows})
    pids = dict(zip(partners, word_token_ids(partners, tokenizer, prefix)))

    kept: dict[str, list[dict]] = defaultdict(list)
    for (w, text, p, stext), b, s in zip(rows, base_ids, swap_ids):
        k, kp = len(wids[w]), len(pids[p])
        ok = (len(b) <= max_len and b[-k:] == wids[w] and s[-kp:] == pids[p]
              and b[:-k] == s[:-kp] and s[-1] == b[-1] and len(b) > k)
        if ok:
            kept[w].append(dict(word=w, bucket=k, text=text, ids=bos + b, last_pos=len(bos) + len(b) - 1,
                                last_token_id=b[-1], swap_word=p, swap_bucket=kp, swap_text=stext,
                                swap_ids=bos + s, swap_last_pos=len(bos) + len(s) - 1))
    out, report, first = [], [], {}
    for bucket in buckets:
        in_bucket = [w for w in wanted if len(wids[w]) == bucket]
        good = [w for w in _hash_order(in_bucket, seed) if len(kept[w]) >= min_contexts]
        if max_words is not None:
            good = good[:max_words]
        for w in good:
            first[w] = kept[w][0]
            for j, r in enumerate(kept[w][:max_contexts]):
                out.append({**r, "context": j})
        report.append({"bucket": bucket, "n_candidates": len(in_bucket), "n_words": len(good),
                       "n_contexts": sum(min(len(kept[w]), max_contexts) for w in good),
                       "enough": len(good) >= min_words})
    table = pd.DataFrame(out, columns=CONTEXT_COLUMNS)
    report = pd.DataFrame(report)
    short = report[~report["enough"]]
    if warn and len(short):
        warnings.warn("build_contexts: too few words with >= {} contexts in bucket(s) {} (min_words={}): "
                      "the corpus gives {}; returning what it has".format(
                          min_contexts, short["bucket"].tolist(), min_words, short["n_words"].tolist()),
                      stacklevel=2)
    key = _sha(json.dumps([tokenizer_hash(tokenizer), _sha(json.dumps(cand["contexts"], sort_keys=True)),
                           _sha(json.dumps(cand["lexicon"])), params], sort_keys=True))[:16]
    swaps = _first_context_swaps(first, wids, pools, tokenizer, prefix, bos, n_swaps, seed)
    return ContextSet(table, report, key, params, swaps)
