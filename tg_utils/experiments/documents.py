"""The documents notebooks 02-05 read when P.documents is "common" (The Geometry of Tokens' rule,
tg_utils.data.selection): the prompt split reordered so that every model's prompt set takes the same
documents first, and a table of the counts (printed, with the paper's count beside ours)."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..data import selection as S
from ..data.corpus import Corpus
from ..models.load import load_tokenizer


@dataclass(frozen=True)
class Selection:
    corpus: Corpus                  # the prompt split holds the chosen documents first, then the reserves
    counts: pd.DataFrame            # one row per tokenizer, then "every tokenizer": documents with >= n_tokens
    chosen: list[int]               # row indices of the chosen documents (the first n_prompts of the order;
                                    # empty for "per_model": each model takes its own)
    not_qualifying: list[int]       # given indices (document_indices) that fail the rule here


def select_documents(P, corpus: Corpus, specs: list[str], progress: bool = True) -> Selection:
    """P.documents "common": the documents of P.prompt_split with >= P.n_tokens tokens under the tokenizer of
    every model of P.selection_models (empty: `specs`), ordered by P.document_indices / P.document_draw;
    "per_model": the corpus unchanged."""
    if P.documents == "per_model":
        return Selection(corpus, pd.DataFrame(), [], [])
    arts = corpus.split(P.prompt_split)
    names = list(dict.fromkeys(P.selection_models or specs))
    counts = {s: S.token_counts(arts, load_tokenizer(s, P.out_dir), P.n_tokens, progress) for s in names}
    keep = S.qualifying(counts, P.n_tokens)
    rows = [{"tokenizer": s, "documents": len(arts), "qualifying": int((c >= P.n_tokens).sum())}
            for s, c in counts.items()]
    rows.append({"tokenizer": "every tokenizer", "documents": len(arts), "qualifying": len(keep),
                 "paper": P.expected_documents})
    bad = [i for i in P.document_indices if i >= len(arts) or i not in set(keep.tolist())]
    order = [i for i in S.document_order(keep, P.n_prompts, P.document_draw, P.seed, P.document_indices)
             if i < len(arts)]
    split = [arts[i] for i in order]
    sel = Selection(Corpus(corpus.name, {**corpus.splits, P.prompt_split: split}), pd.DataFrame(rows),
                    order[:P.n_prompts], bad)
    print(describe(P, corpus, sel, names))
    return sel


def describe(P, corpus: Corpus, sel: Selection, names: list[str]) -> str:
    """One paragraph: the count under every tokenizer (and the paper's), which documents were chosen."""
    n = int(sel.counts["qualifying"].iloc[-1])
    total = int(sel.counts["documents"].iloc[-1])
    text = (f"{n} of {total} documents of {corpus.name} ({P.prompt_split}) have >= {P.n_tokens} tokens under "
            f"every tokenizer of {', '.join(names)}")
    if P.expected_documents:
        text += f" (the paper: {P.expected_documents}, {'the same' if n == P.expected_documents else 'differs'})"
    how = ("the given document_indices" if P.document_indices else
           f"a seeded draw (seed {P.seed})" if P.document_draw == "random" else "the first in corpus order")
    text += f"; prompts from {how}: rows {', '.join(map(str, sel.chosen[:8]))}{' ...' if len(sel.chosen) > 8 else ''}"
    if sel.not_qualifying:
        text += (f"; {len(sel.not_qualifying)} given document(s) fail the rule here (rows "
                 f"{', '.join(map(str, sel.not_qualifying[:8]))}): a model too short on one skips to the reserves")
    return text
