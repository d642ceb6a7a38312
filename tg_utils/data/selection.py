"""Which documents a prompt set reads when every model must read the same ones: The Geometry of Tokens'
rule on Pile-10K (documents with at least n_tokens tokens under the tokenizer of every model compared, no
special tokens; token_geometry README "Dataset", src/extract.py:60-63: 2,244 documents for Llama-3-8B,
Mistral-7B and Pythia-6.9B at 1,024 tokens), then the first n of them, a seeded draw, or given indices.

    counts = {name: token_counts(articles, tok, 1024) for name, tok in tokenizers.items()}
    keep = qualifying(counts, 1024)
    order = document_order(keep, 50, "random", seed=42)     # the drawn 50 first (sorted), then reserves
"""
from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..paths import resolve, write_text_atomic
from ..store import cache_key
from .corpus import Article, CorpusError
from .words import _sha, tokenizer_hash

MARGIN = 16          # tokens a cut in the middle of a text may change at its end (as build_prompts)
_BATCH = 64


def _n_chars(n_tokens: int) -> int:
    return n_tokens * 12 + 200          # a prefix long enough for n_tokens + MARGIN tokens of any text


def token_counts(articles: Sequence[Article], tokenizer, n_tokens: int, progress: bool = True,
                 cache_dir: str | None = "outputs/corpus") -> np.ndarray:
    """min(tokens, n_tokens) of each article's text under `tokenizer`, no special tokens (token_geometry
    tokenises `sequence.strip()` with add_special_tokens=False, src/utils.py:22): exact below n_tokens,
    n_tokens meaning "at least". A long text is tokenised by a prefix of _n_chars(n_tokens) characters
    and counts as long enough when the prefix gives n_tokens + MARGIN tokens; else in full. Cached under
    `cache_dir` by (tokenizer, texts, n_tokens) as JSON, written atomically (None: no cache)."""
    key = cache_key(tokenizer_hash(tokenizer), _sha("\x00".join(a.text for a in articles)), n_tokens, length=16)
    path = resolve(cache_dir) / f"token-counts-{key}.json" if cache_dir else None
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key and len(saved["counts"]) == len(articles):
            return np.asarray(saved["counts"], dtype=np.int64)
    n_chars, out = _n_chars(n_tokens), []
    bar = tqdm(range(0, len(articles), _BATCH), desc="token counts", unit="batch", disable=not progress,
               leave=False)
    for i in bar:
        chunk = [a.text for a in articles[i:i + _BATCH]]
        ids = tokenizer([t[:n_chars] for t in chunk], add_special_tokens=False)["input_ids"] if chunk else []
        for text, toks in zip(chunk, ids):
            n = len(toks)
            if len(text) > n_chars and n - MARGIN < n_tokens:     # not settled by the prefix: the whole text
                n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            elif len(text) > n_chars:
                n = n_tokens
            out.append(min(n, n_tokens))
    counts = np.asarray(out, dtype=np.int64)
    if path is not None:
        write_text_atomic(path, json.dumps({"key": key, "n_tokens": n_tokens, "counts": counts.tolist()}))
    return counts


def qualifying(counts: Mapping[str, np.ndarray], n_tokens: int) -> np.ndarray:
    """Indices (ascending) of the documents with at least n_tokens tokens under every tokenizer."""
    if not counts:
        raise CorpusError("the selection rule needs at least one tokenizer")
    lengths = {len(c) for c in counts.values()}
    if len(lengths) != 1:
        raise CorpusError(f"token counts of different corpora ({sorted(lengths)} documents)")
    ok = np.logical_and.reduce([np.asarray(c) >= n_tokens for c in counts.values()])
    return np.flatnonzero(ok)


def draw(indices: Sequence[int], n: int, seed: int) -> list[int]:
    """n of `indices` drawn at random without replacement, sorted: token_geometry's draw of the shuffle
    prompts (src/extract.py:94-98: np.random.seed(42), np.random.choice(indices, 50, replace=False),
    sorted), with numpy's legacy generator seeded by `seed`."""
    if n > len(indices):
        raise CorpusError(f"cannot draw {n} documents from {len(indices)} qualifying ones; lower n_prompts")
    return sorted(int(i) for i in np.random.RandomState(seed).choice(np.asarray(indices), n, replace=False))


def document_order(keep: Sequence[int], n: int, how: str = "first", seed: int = 0,
                   indices: Sequence[int] = ()) -> list[int]:
    """The documents in the order prompts take them: `indices` when given (e.g. the original's own), else
    the first n qualifying ones ("first") or a seeded draw of n ("random", sorted); then the other
    qualifying documents in corpus order as reserves (taken only where a model's tokenizer makes a chosen
    document too short for it: the prompt set counts it as skipped)."""
    if indices:
        chosen = [int(i) for i in indices]
    elif how == "first":
        chosen = [int(i) for i in keep[:n]]
    elif how == "random":
        chosen = draw(keep, n, seed)
    else:
        raise CorpusError(f"unknown draw {how!r}; use 'first' or 'random'")
    picked = set(chosen)
    return chosen + [int(i) for i in keep if int(i) not in picked]
