"""Word lists and token buckets for the training-trajectory analyses (notebook 06, issue 7).

Word list (token convergence)
-----------------------------
`frequent_words(texts, n, min_count)` counts *words*: maximal runs of letters between word boundaries
(`\\b[^\\W\\d_]+\\b`, so "abc123" and "al-Khwārizmī"'s non-ASCII half are not words) that are pure
ASCII and written entirely in lower case (sentence-initial "The" and proper nouns do not count), at
least `min_len` letters long. The n most frequent are kept, ties broken alphabetically, so the list
is deterministic. `write_word_list()` writes the default corpus' list (train split, every word seen
at least 3 times, most frequent first: ~8.6k words) to data/frequent_words.txt; the file holds words
only and is the same for every model. Under a tokenizer trained on the same corpus nearly all of the
2000 most frequent words are one token, so `select_by_bucket(words, tok, per_bucket=...)` takes the
most frequent words of each bucket from the whole list.

A word's bucket is the number of tokens it takes under a model's tokenizer: bare, as Token
Representation Evolution feeds it (`bucket_by_tokens(words, tok, prefix="")`; notebook 06's default,
with `sample_words` (a seeded sample of the list) and `buckets_with_min_words` (buckets of >= 10 words)),
or with a leading space as it appears inside a sentence (`prefix=" "`, our variant).

First-position effect: a word fed alone sits at position 0 (no BOS), where a causal LM's states are
atypical (attention sink, huge norms), and a one-token word is *only* that position.
`word_prompts(words, tok, prefix="The word is")` puts a fixed short prefix in front (its tokens,
then the word's tokens, tokenised separately and concatenated, so the word keeps exactly its bucket
tokens) and returns the position of the word's last token.

The multi-token context sets of the context-perturbation analysis are in `tg_utils.data.contexts`,
which shares the hashing and tokenising helpers below.
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..paths import resolve, write_text_atomic
from .corpus import load_corpus
from . import token_evolution as TE

WORD_LIST_PATH = "data/frequent_words.txt"
DEFAULT_PREFIX = "The word is"

_WORD = re.compile(r"\b[^\W\d_]+\b")


# ============================================================================ helpers

def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _hash_order(items: Iterable[str], seed: int | str = 0) -> list[str]:
    """Items sorted by sha1(seed:item): a deterministic shuffle that ignores the input order."""
    return sorted(items, key=lambda s: (_sha(f"{seed}:{s}"), s))


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens (one batched call; straight to the fast backend when
    there is one, which gives the same ids as `tokenizer(texts, add_special_tokens=False)` faster)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _bos(tokenizer, add_bos: bool) -> list[int]:
    """[BOS] (or [CLS] for an encoder) if add_bos (e.g. `lm.desc.adds_bos`), else []."""
    if not add_bos:
        return []
    bos = getattr(tokenizer, "bos_token_id", None)
    bos = getattr(tokenizer, "cls_token_id", None) if bos is None else bos
    if bos is None:
        raise ValueError("add_bos is set but the tokenizer has no BOS (or CLS) token; use add_bos=False")
    return [bos]


def tokenizer_hash(tokenizer) -> str:
    """A short content hash of a tokenizer (its tokenizer.json when it has a fast backend, else its
    vocabulary): the key under which per-tokenizer word buckets and contexts are identified."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return _sha(text)[:16]


def _default_corpus():
    return load_corpus()


# ============================================================================ word list

def frequent_words(corpus_texts: Iterable[str], n: int | None = 2000, min_len: int = 3,
                   min_count: int = 1) -> list[str]:
    """The `n` most frequent words of the texts (None: all) among those seen at least `min_count`
    times (see the module docstring for what counts as a word: ASCII letters, written in lower case,
    >= min_len letters), most frequent first, ties broken alphabetically. Returns fewer (with a
    warning) if the texts hold fewer such words."""
    counts: Counter[str] = Counter()
    for text in corpus_texts:
        counts.update(w for w in _WORD.findall(text) if len(w) >= min_len and w.isascii() and w.islower())
    ranked = sorted(((w, c) for w, c in counts.items() if c >= min_count), key=lambda kv: (-kv[1], kv[0]))
    if n is not None and len(ranked) < n:
        warnings.warn(f"frequent_words: the texts hold only {len(ranked)} distinct words of "
                      f">= {min_len} letters seen >= {min_count} times, fewer than n={n}; returning "
                      "them all", stacklevel=2)
    return [w for w, _ in ranked[:n]]


def select_by_bucket(words: Sequence[str], tokenizer, buckets: Iterable[int] | None = None,
                     per_bucket: int | None = None, prefix: str = " ") -> dict[str, int]:
    """The first `per_bucket` words (list order: the most frequent for a frequency-ranked list) of each
    bucket in `buckets` (None: every bucket; per_bucket None: all) -> {word: bucket}, in list order.
    With the toy tokenizer almost every one of the 2000 most frequent words is one token, so take
    the whole written list (about 8.6k words) and select per bucket."""
    wanted = None if buckets is None else set(int(b) for b in buckets)
    taken: Counter[int] = Counter()
    out = {}
    for w, b in bucket_by_tokens(words, tokenizer, prefix).items():
        if (wanted is None or b in wanted) and (per_bucket is None or taken[b] < per_bucket):
            out[w] = b
            taken[b] += 1
    return out


def sample_words(words: Sequence[str], n: int = 5000, seed: int = 0) -> list[str]:
    """A seeded random sample of `n` distinct words of the list (all of them if it holds fewer), in list
    order: Token Representation Evolution's sampling (token_convergence_analysis.py:216,
    random.sample(words, 5000), unseeded there)."""
    words = list(dict.fromkeys(words))
    if n >= len(words):
        return words
    pick = np.sort(np.random.default_rng(seed).choice(len(words), size=n, replace=False))
    return [words[i] for i in pick]


def buckets_with_min_words(word_buckets: Mapping[str, int], min_words: int = 10) -> dict[str, int]:
    """{word: bucket} without the buckets that hold fewer than `min_words` words (Token Representation
    Evolution keeps buckets of >= 10 words: token_convergence_analysis.py:51-52)."""
    counts = Counter(word_buckets.values())
    return {w: b for w, b in word_buckets.items() if counts[b] >= min_words}


def write_word_list(path: str | Path = WORD_LIST_PATH, n: int | None = None, min_len: int = 3,
                    min_count: int = 3, corpus=None, split: str = "train") -> Path:
    """Write the frequent words of a corpus split (default: the default corpus, train split, the text
    the toy models learn from; every word seen >= `min_count` times, at most `n`) to `path`, most
    frequent first, one word per line after '#' comment lines that say how it was made. The head of
    the list (the first 2000) are the most frequent words; the tail supplies multi-token words, which
    a tokenizer trained on the same corpus makes rare among the frequent ones. Deterministic; atomic."""
    corpus = corpus or _default_corpus()
    words = frequent_words(corpus.texts(split), n=n, min_len=min_len, min_count=min_count)
    header = (f"# {len(words)} most frequent words of corpus {corpus.name!r} (split {split}): lower-case "
              f"ASCII words of >= {min_len} letters seen >= {min_count} times, most frequent first, "
              "ties broken alphabetically\n"
              "# written by tg_utils.data.words.write_word_list(); one word per line; tokenizer-independent\n")
    path = resolve(path)
    write_text_atomic(path, header + "\n".join(words) + "\n")
    path.chmod(0o644)
    return path


def read_word_list(path: str | Path = WORD_LIST_PATH) -> list[str]:
    """The words of a word-list file (lines starting with '#' and blank lines skipped), or of a JSON word
    list (Token Representation Evolution's words_list.json, {word: frequency}: tg_utils.data.token_evolution)."""
    p = resolve(path)
    if not p.exists():
        how = ("fetch it with `python -m tg_utils.data.token_evolution`" if TE.remote(p) else
               "write it with tg_utils.data.words.write_word_list()")
        raise FileNotFoundError(f"no word list at {p}; {how}")
    if p.suffix == ".json":
        return TE.read_words_json(p)
    return [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


# ============================================================================ buckets

def word_token_ids(words: Sequence[str], tokenizer, prefix: str = " ") -> list[list[int]]:
    """Token ids of `prefix + word` for each word (no special tokens)."""
    return _encode(tokenizer, [prefix + w for w in words])


def bucket_by_tokens(words: Sequence[str], tokenizer, prefix: str = " ") -> dict[str, int]:
    """word -> number of tokens of `prefix + word` under the tokenizer (the word's bucket); the
    default prefix " " is how a word appears inside a sentence. Dict in the order of `words`."""
    return {w: len(ids) for w, ids in zip(words, word_token_ids(words, tokenizer, prefix))}


def bucket_table(word_buckets: Mapping[str, int], n_examples: int = 8) -> pd.DataFrame:
    """Tidy bucket table: one row per bucket (n_tokens) with n_words, the share of the words and the
    first `n_examples` words (in list order)."""
    groups: dict[int, list[str]] = defaultdict(list)
    for w, b in word_buckets.items():
        groups[b].append(w)
    total = max(1, len(word_buckets))
    rows = [{"n_tokens": b, "n_words": len(ws), "share": len(ws) / total,
             "examples": " ".join(ws[:n_examples])} for b, ws in sorted(groups.items())]
    return pd.DataFrame(rows, columns=["n_tokens", "n_words", "share", "examples"])


@dataclass(frozen=True)
class WordPrompts:
    """Token-id prompts, one per word. ids[i]: [BOS] + prefix tokens + the word's tokens;
    last_pos[i]: index of the word's last token in ids[i] (= len(ids[i]) - 1);
    word_start[i]: index of its first token; n_tokens[i]: the word's bucket."""
    words: list[str]
    ids: list[list[int]]
    last_pos: np.ndarray
    word_start: np.ndarray
    n_tokens: np.ndarray
    prefix: str | None

    def __len__(self) -> int:
        return len(self.ids)

    def hash(self) -> str:
        """A short hash of the token ids: the key of cached states."""
        return _sha(json.dumps(self.ids))[:16]


def word_prompts(words: Sequence[str], tokenizer, prefix: str | None = None, word_prefix: str = " ",
                 add_bos: bool = False) -> WordPrompts:
    """Prompts that feed each word alone (`prefix=None`) or after a fixed short prefix (e.g.
    `DEFAULT_PREFIX` = "The word is"). The word is tokenised as `word_prefix + word` (its bucket
    tokens, as in `bucket_by_tokens`) and the prefix on its own; the prompt is their concatenation
    (with the tokenizer's BOS in front if `add_bos`), so the state read at `last_pos` is always that of
    the word's last token. Without prefix or BOS a one-token word sits at position 0 (see the module
    docstring on the first-position effect)."""
    words = list(words)
    head = _bos(tokenizer, add_bos) + (_encode(tokenizer, [prefix])[0] if prefix else [])
    wids = word_token_ids(words, tokenizer, word_prefix)
    if any(len(x) == 0 for x in wids):
        bad = [w for w, x in zip(words, wids) if not x][:5]
        raise ValueError(f"words tokenise to nothing: {bad}")
    ids = [head + x for x in wids]
    n_tok = np.array([len(x) for x in wids], dtype=np.int64)
    last = np.array([len(x) - 1 for x in ids], dtype=np.int64)
    return WordPrompts(words, ids, last, last - n_tok + 1, n_tok, prefix)
