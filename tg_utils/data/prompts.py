"""Prompt sets of fixed length for one model (its own tokenizer), and their block shuffles (the
shuffle index S of token_geometry): pure data logic, no metrics and no tables. `build_prompts`: the first
N tokens of whole articles (no BOS unless asked), shorter articles skipped and counted.

    ps = model_prompts(lm, corpus, "test", n_tokens=256, n_prompts=10, bos=False)
    sp = build_shuffle_prompts(lm, corpus, "test", 1024, 3, bos=True, shuffle_indices=range(6), seed=0)
    sp.at(2)                                   # every prompt cut into 16 blocks, the blocks permuted
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .corpus import Article, CorpusError


@dataclass
class PromptSet:
    """Prompts of exactly `n_tokens` tokens each (plus a BOS in front when `bos` is set)."""
    ids: list[list[int]]
    sources: list[str]
    n_tokens: int
    bos: bool = False
    skipped: int = 0
    skipped_titles: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def as_array(self) -> np.ndarray:
        return np.asarray(self.ids, dtype=np.int64)

    def hash(self) -> str:
        """A short hash of the token ids: the key of cached states."""
        return hashlib.sha1(self.as_array().tobytes()).hexdigest()[:16]


def build_prompts(articles: Sequence[Article], tokenizer, n_tokens: int, n_prompts: int | None = None,
                  add_bos: bool = False, per_article: int = 1) -> PromptSet:
    """The first `n_tokens` tokens of each article (up to `per_article` consecutive, non-overlapping
    windows of one article), in corpus order, skipping and counting articles that are too short.
    With add_bos the tokenizer's BOS is put in front (so a prompt has n_tokens + 1 ids)."""
    if n_tokens < 1 or per_article < 1 or (n_prompts is not None and n_prompts < 1):
        raise CorpusError(f"n_tokens, n_prompts and per_article must be positive "
                          f"(got {n_tokens}, {n_prompts}, {per_article})")
    bos = []
    if add_bos:
        if tokenizer.bos_token_id is None:
            raise CorpusError("add_bos is set but the tokenizer has no BOS token; use add_bos=False")
        bos = [tokenizer.bos_token_id]
    ids, sources, skipped, longest = [], [], [], 0
    need = n_tokens * per_article
    for art in articles:
        # tokenise a prefix long enough for the windows (BPE effects at the cut are local: keep a margin)
        n_chars = need * 12 + 200
        toks = tokenizer(art.text[:n_chars], add_special_tokens=False)["input_ids"]
        if len(toks) < need + 16 and len(art.text) > n_chars:
            toks = tokenizer(art.text, add_special_tokens=False)["input_ids"]
        if len(art.text) > n_chars:
            toks = toks[:len(toks) - 16]  # drop tokens that the cut could have changed
        longest = max(longest, len(toks))
        windows = min(per_article, len(toks) // n_tokens)
        if windows == 0:
            skipped.append(art.title)
            continue
        for w in range(windows):
            ids.append(bos + list(toks[w * n_tokens:(w + 1) * n_tokens]))
            sources.append(art.title if per_article == 1 else f"{art.title}#{w}")
        if n_prompts is not None and len(ids) >= n_prompts:
            ids, sources = ids[:n_prompts], sources[:n_prompts]
            break
    if not ids:
        raise CorpusError(f"n_tokens={n_tokens} is longer than every article (the longest has "
                          f"{longest} tokens); use a smaller n_tokens or a larger corpus")
    if n_prompts is not None and len(ids) < n_prompts:
        raise CorpusError(f"asked for {n_prompts} prompts of {n_tokens} tokens but only {len(ids)} "
                          f"articles are long enough ({len(skipped)} shorter ones skipped); lower "
                          f"n_prompts to {len(ids)}, lower n_tokens, or raise per_article")
    return PromptSet(ids, sources, n_tokens, bool(bos), len(skipped), skipped)


def shuffle_blocks(ids: Sequence[int], shuffle_index: int, seed: int, keep_first: int = 0) -> list[int]:
    """The shuffle index S of token_geometry: split the tokens (after the first `keep_first`, e.g. a
    BOS) into K = 4**S equal blocks and permute the blocks with a seeded generator. S = 0 is the
    identity; S = log4(N) permutes every token. N must be divisible by K."""
    head, body = list(ids[:keep_first]), np.asarray(ids[keep_first:])
    k = 4 ** shuffle_index
    if shuffle_index < 0 or len(body) % k:
        raise CorpusError(f"shuffle index S={shuffle_index} needs a prompt length divisible by 4**S={k}, "
                          f"got {len(body)} tokens; choose n_tokens a multiple of {k} (e.g. 1024)")
    if k == 1:
        return head + body.tolist()
    order = np.random.default_rng(seed).permutation(k)
    return head + body.reshape(k, -1)[order].reshape(-1).tolist()


def model_prompts(lm, corpus, split: str, n_tokens: int, n_prompts: int, bos: bool = False,
                  per_article: int = 1):
    """The prompt set of one model: the first n_tokens tokens (its own tokenizer) of the split's
    articles; with `bos` the model's BOS/CLS id in front (one more position, dropped from the clouds
    by geometry_table(skip_first=1)). Refuses prompts longer than the model's context."""
    ps = build_prompts(corpus.split(split), lm.tokenizer, n_tokens, n_prompts, per_article=per_article)
    if bos:
        bos_id = lm.desc.bos_token_id
        if bos_id is None:
            raise ValueError(f"{lm.spec} has no BOS/CLS token: remove it from bos_models")
        ps = dataclasses.replace(ps, ids=[[bos_id] + p for p in ps.ids], bos=True)
    if len(ps.ids[0]) > lm.desc.context:
        raise ValueError(f"{lm.spec}: prompts of {len(ps.ids[0])} positions exceed its context of "
                         f"{lm.desc.context}; lower n_tokens")
    return ps


# ---------------------------------------------------------------- shuffles

def prompt_length(context: int, n_tokens: int, n_special: int = 0) -> int:
    """N for a model: n_tokens if n_tokens + n_special positions fit its context (0 = no limit), else
    the largest power of 4 that fits (so that every S up to log4 N divides it)."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    avail = (context - n_special) if context else n_tokens
    if n_tokens <= avail:
        return n_tokens
    if avail < 1:
        raise ValueError(f"a context of {context} positions leaves no room for a prompt")
    n = 1
    while n * 4 <= avail:
        n *= 4
    return n


def usable_shuffle_indices(n_tokens: int, shuffle_indices: Sequence[int]) -> list[int]:
    """The S of `shuffle_indices` whose 4**S divides n_tokens, sorted."""
    return sorted(s for s in set(int(s) for s in shuffle_indices) if s >= 0 and n_tokens % 4 ** s == 0)


def shuffle_seed(seed: int, prompt_id: int, shuffle_index: int) -> int:
    """The seed of one prompt's permutation at one S: independent streams per (seed, prompt, S)."""
    return int(np.random.SeedSequence([int(seed), int(prompt_id), int(shuffle_index)]).generate_state(1)[0])


def shuffled_prompts(prompts: Sequence[Sequence[int]], shuffle_index: int, seed: int, keep_first: int = 0,
                     prompt_ids: Sequence[int] | None = None) -> list[list[int]]:
    """Every prompt with its tokens (after the first `keep_first`, e.g. a BOS) cut into 4**S blocks and
    the blocks permuted; prompt i uses shuffle_seed(seed, prompt_ids[i], S). S = 0 returns copies."""
    ids = range(len(prompts)) if prompt_ids is None else prompt_ids
    return [shuffle_blocks(p, shuffle_index, shuffle_seed(seed, pid, shuffle_index), keep_first=keep_first)
            for pid, p in zip(ids, prompts)]


@dataclass(frozen=True)
class ShufflePrompts:
    """One model's structured prompts and the shuffle indices it is run at."""
    spec: str
    n_tokens: int                     # N: tokens per prompt (BOS not counted)
    bos: bool                         # a BOS in front of every prompt (kept first, left out of the clouds)
    ids: list[list[int]]              # the structured prompts (S = 0), BOS included when bos
    sources: list[str]
    per_article: int
    shuffle_indices: list[int]
    seed: int
    model: str = ""                   # the (model, revision) keys of its rows in the long tables
    revision: str = ""
    _shuffled: dict = field(default_factory=dict, repr=False, compare=False)   # S -> prompts, memo of at()

    @property
    def keep_first(self) -> int:
        return 1 if self.bos else 0

    @property
    def prompt_ids(self) -> list[int]:
        return list(range(len(self.ids)))

    def __len__(self) -> int:
        return len(self.ids)

    def at(self, shuffle_index: int) -> list[list[int]]:
        """The prompts at shuffle index S (seeded, so the same on every call)."""
        if shuffle_index not in self._shuffled:
            self._shuffled[shuffle_index] = shuffled_prompts(self.ids, shuffle_index, self.seed, self.keep_first,
                                                             self.prompt_ids)
        return self._shuffled[shuffle_index]

    def info(self) -> dict:
        return {"model": self.model, "revision": self.revision, "spec": self.spec, "n_tokens": self.n_tokens,
                "positions": self.n_tokens + self.keep_first, "bos": self.bos, "n_prompts": len(self),
                "per_article": self.per_article, "shuffle_indices": " ".join(map(str, self.shuffle_indices)),
                "articles": len({s.split("#")[0] for s in self.sources}), "sources": "; ".join(self.sources)}


def build_shuffle_prompts(lm, corpus, split: str, n_tokens: int, n_prompts: int, bos: bool,
                          shuffle_indices: Sequence[int], seed: int, max_per_article: int = 16) -> ShufflePrompts:
    """n_prompts prompts of N = prompt_length(context, n_tokens) tokens: the first N tokens of the
    split's articles, and further consecutive windows of each article (build_prompts' per_article,
    the smallest value that gives n_prompts) when the split has too few long articles."""
    n = prompt_length(lm.desc.context, n_tokens, 1 if bos else 0)
    usable = usable_shuffle_indices(n, shuffle_indices)
    if 0 not in usable:
        raise ValueError("shuffle_indices must contain 0")
    err = None
    for per_article in range(1, max_per_article + 1):
        try:
            ps = model_prompts(lm, corpus, split, n, n_prompts, bos=bos, per_article=per_article)
        except CorpusError as e:
            err = e
            continue
        return ShufflePrompts(lm.spec, n, bool(ps.bos), ps.ids, ps.sources, per_article, usable, seed)
    raise ValueError(f"{lm.spec}: not {n_prompts} prompts of {n} tokens in split {split!r} even with "
                     f"{max_per_article} windows per article ({err}); lower n_prompts")
