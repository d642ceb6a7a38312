"""Text corpora: articles by split (prompts cut from them: data/prompts.py).

Sources (`load_corpus(source, path)`):
  - "gensim-wiki" (default, offline): the English Wikipedia extract shipped inside the gensim wheel
    (106 articles, ~3 MB of clean text), cleaned with gensim's `filter_wiki` plus a light pass, split by
    article into train/validation/test deterministically (articles ordered by a hash of their title).
  - "wikitext": a WikiText-2 directory the user supplies: raw files (wiki.train.raw, wiki.valid.raw,
    wiki.test.raw) or parquet files named train-*/validation-*/test-*.parquet, read offline with
    `datasets`; its own splits are kept and articles are cut at the top-level " = Title = " headings.
  - "text": any plain text file; documents are separated by lines holding only <|endoftext|> or by
    two or more blank lines, then split like gensim-wiki.
  - "hf:<owner>/<name>[:<config>]": a data set by name from the Hugging Face hub (data/hub_data.py: the hub
    cache, fetched once when missing and the hub can be reached; `path`: a local copy of its files).
    WikiText configs (hf:Salesforce/wikitext:wikitext-2-raw-v1) are cut into articles as above; any other
    data set gives one article per row of each split, in row order (titles "<name>#<row>"), the text
    stripped (as token_geometry tokenises `sequence.strip()`, src/utils.py:22), empty rows kept so that an
    article's position is its row index (the indices of token_geometry's subset_indices.npy).
"""
from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..paths import resolve
from ..store import cache_key, verified_folder, write_folder
from . import hub_data as HD

SPLITS = ("train", "validation", "test")
GENSIM_WIKI = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


class CorpusError(ValueError):
    """The corpus cannot be read or does not hold what was asked of it."""


@dataclass(frozen=True)
class Article:
    title: str
    text: str


@dataclass(frozen=True)
class Corpus:
    name: str
    splits: dict[str, list[Article]]

    @property
    def train(self) -> list[Article]:
        return self.splits["train"]

    @property
    def validation(self) -> list[Article]:
        return self.splits["validation"]

    @property
    def test(self) -> list[Article]:
        return self.splits["test"]

    def split(self, name: str) -> list[Article]:
        if name not in self.splits:
            raise CorpusError(f"unknown split {name!r}; use one of {list(self.splits)}")
        return self.splits[name]

    def texts(self, split: str) -> list[str]:
        return [a.text for a in self.split(split)]

    def stats(self, tokenizer=None):
        """A tidy table: split, articles, MB (UTF-8), words (whitespace), tokens (if a tokenizer)."""
        rows = []
        for name, arts in self.splits.items():
            row = {"split": name, "articles": len(arts),
                   "MB": sum(len(a.text.encode()) for a in arts) / 1e6,
                   "words": sum(len(a.text.split()) for a in arts)}
            if tokenizer is not None:
                enc = tokenizer([a.text for a in arts], add_special_tokens=False)["input_ids"] if arts else []
                row["tokens"] = sum(len(e) for e in enc)
            rows.append(row)
        return pd.DataFrame(rows)


# ---------------------------------------------------------------- cleaning

_HEADING = re.compile(r"^\s*=+\s*(.*?)\s*=+\s*$", re.M)
_EMPTY_ITEM = re.compile(r"^[\s*#:;|]*$", re.M)


def clean_wiki_text(text: str) -> str:
    """Plain prose from wiki markup: gensim's filter_wiki, then bold/italic quotes, heading markers,
    empty list items and runs of blank lines removed, spaces before punctuation closed."""
    from gensim.corpora.wikicorpus import filter_wiki   # slow import; only when the corpus cache is built
    text = filter_wiki(text)
    text = text.replace("'''", "").replace("''", "")
    text = _HEADING.sub(r"\1", text)
    text = _EMPTY_ITEM.sub("", text)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" ([,.;:)])", r"\1", text)
    text = re.sub(r"\( ", "(", text)
    text = re.sub(r"\n\s*\n\s*(\n\s*)+", "\n\n", text)
    return "\n".join(line.strip() for line in text.strip().split("\n"))


def split_by_hash(articles: Sequence[Article], fractions=(0.8, 0.1, 0.1)) -> dict[str, list[Article]]:
    """Deterministic split: articles ordered by sha1(title), then cut by count. The same titles
    always land in the same split, whatever order they came in."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise CorpusError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    ordered = sorted(articles, key=lambda a: hashlib.sha1(a.title.encode()).hexdigest())
    n = len(ordered)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    return {"train": ordered[:n_train], "validation": ordered[n_train:n_train + n_val],
            "test": ordered[n_train + n_val:]}


# ---------------------------------------------------------------- sources

def gensim_wiki_path() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the default corpus ships inside the gensim wheel, which is not installed: "
                          "set up the environment with `bash run_tests.sh` (or pip install gensim), "
                          "or pass corpus='text' with a path to your own text file")
    path = Path(list(spec.submodule_search_locations)[0]) / GENSIM_WIKI
    if not path.exists():
        raise CorpusError(f"gensim is installed but its Wikipedia extract is missing ({path}); "
                          "reinstall gensim (pip install --force-reinstall gensim) or pass corpus='text'")
    return path


_CLEAN_VERSION = 1  # bump when clean_wiki_text changes: invalidates the on-disk cache


def _read_gensim_wiki(min_chars: int) -> list[Article]:
    """Parse and clean the extract (~9 s), cached as a verified folder under outputs/corpus/ (~0.1 s; a
    damaged cache is reported and rebuilt)."""
    src = gensim_wiki_path()
    key = cache_key("gensim-wiki", src.stat().st_size, _CLEAN_VERSION, min_chars, length=12)
    folder = resolve(f"outputs/corpus/gensim-wiki-{key}")
    if verified_folder(folder, key) is not None:
        return [Article(t, x) for t, x in json.loads((folder / "articles.json").read_text())]
    arts = _parse_gensim_wiki(src, min_chars)
    write_folder(folder, key, lambda tmp: (tmp / "articles.json").write_text(
        json.dumps([[a.title, a.text] for a in arts])))
    return arts


def _parse_gensim_wiki(src: Path, min_chars: int) -> list[Article]:
    from gensim.corpora.wikicorpus import extract_pages   # slow import; only when the corpus cache is built
    with bz2.open(src) as f:
        pages = list(extract_pages(f))
    arts = []
    for title, text, _pageid in pages:
        if ":" in title or text.lstrip()[:9].upper() == "#REDIRECT":
            continue  # redirects and other namespaces
        clean = clean_wiki_text(text)
        if len(clean) >= min_chars:
            arts.append(Article(title, clean))
    return arts


_WIKITEXT_RAW = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
_WT_TITLE = re.compile(r"^ = ([^=].*?) = $")


def _wikitext_articles(lines: Sequence[str]) -> list[Article]:
    """Cut WikiText lines into articles at top-level headings ' = Title = '."""
    arts, title, buf = [], None, []
    for line in lines:
        m = _WT_TITLE.match(line.rstrip("\n"))
        if m:
            if title is not None and "".join(buf).strip():
                arts.append(Article(title, "".join(buf).strip()))
            title, buf = m.group(1), []
        else:
            buf.append(line if line.endswith("\n") else line + "\n")
    if title is not None and "".join(buf).strip():
        arts.append(Article(title, "".join(buf).strip()))
    return arts


def _read_wikitext(path: Path) -> dict[str, list[Article]]:
    if not path.is_dir():
        raise CorpusError(f"WikiText directory not found: {path}")
    raw = {s: path / f for s, f in _WIKITEXT_RAW.items()}
    parquet = {s: sorted(path.rglob(f"{s}-*.parquet")) for s in SPLITS}
    if all(p.exists() for p in raw.values()):
        files, kind = {s: [str(p)] for s, p in raw.items()}, "text"
    elif all(parquet.values()):
        files, kind = {s: [str(p) for p in ps] for s, ps in parquet.items()}, "parquet"
    else:
        raise CorpusError(
            f"{path} is not a WikiText-2 directory: expected wiki.train.raw, wiki.valid.raw and "
            "wiki.test.raw, or train-*.parquet, validation-*.parquet and test-*.parquet (the layout "
            "of wikitext-2-raw-v1); found: " + (", ".join(sorted(p.name for p in path.iterdir())) or "nothing"))
    import datasets            # heavy optional dependency: only for a user-supplied WikiText corpus
    ds = datasets.load_dataset(kind, data_files=files, keep_linebreaks=True) if kind == "text" \
        else datasets.load_dataset(kind, data_files=files)
    return {s: _wikitext_articles(ds[s]["text"]) for s in SPLITS}


def check_text_file(path: Path) -> None:
    """Raise CorpusError unless `path` is a UTF-8 text file (a binary file would be read as noise)."""
    if not path.is_file():
        raise CorpusError(f"corpus text file not found: {path}")
    head = path.read_bytes()[:1 << 16]
    try:
        bad = b"\x00" in head or head.decode("utf-8", errors="strict") is None
    except UnicodeDecodeError as e:
        bad = e.start < len(head) - 4              # a multi-byte character cut at the end is fine
    if bad:
        raise CorpusError(f"{path} is not a UTF-8 text file (binary content); give a plain-text file "
                          f"(corpus: text) or a WikiText folder (corpus: wikitext)")


def _read_text_file(path: Path, min_chars: int) -> list[Article]:
    check_text_file(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    docs = re.split(r"^<\|endoftext\|>$|\n\s*\n\s*\n", text, flags=re.M)
    docs = [d.strip() for d in docs if len(d.strip()) >= min_chars]
    if not docs:
        raise CorpusError(f"{path} holds no document of at least {min_chars} characters")
    return [Article(f"{path.stem}#{i}", d) for i, d in enumerate(docs)]


def load_corpus(source: str = "gensim-wiki", path: str | Path | None = None,
                fractions=(0.8, 0.1, 0.1), min_chars: int = 200) -> Corpus:
    """Load a corpus split into train/validation/test (see the module docstring for the sources)."""
    if HD.is_hub_name(source):
        return load_hub_corpus(source, path)
    if source == "gensim-wiki":
        return Corpus(source, split_by_hash(_read_gensim_wiki(min_chars), fractions))
    if path is None:
        raise CorpusError(f"corpus source {source!r} needs a path (corpus_path parameter)")
    path = resolve(path)
    if source == "wikitext":
        return Corpus(f"wikitext:{path.name}", _read_wikitext(path))
    if source == "text":
        return Corpus(f"text:{path.name}", split_by_hash(_read_text_file(path, min_chars), fractions))
    raise CorpusError(f"unknown corpus source {source!r}; use 'gensim-wiki', 'wikitext', 'text' or a hub data "
                      f"set hf:<owner>/<name>[:<config>]")


def load_hub_corpus(name: str, path: str | Path | None = None) -> Corpus:
    """A hub data set by name (module docstring); `path`: a folder holding a copy of its files."""
    try:
        hd = HD.HubData.parse(name)
        texts = HD.load_texts(hd, None if path is None else resolve(path))
    except HD.HubDataError as e:
        raise CorpusError(str(e)) from None
    if hd.is_wikitext:
        return Corpus(hd.name, {s: _wikitext_articles(lines) for s, lines in texts.items()})
    short = hd.repo.split("/")[-1]
    return Corpus(hd.name, {s: [Article(f"{short}#{i}", (t or "").strip()) for i, t in enumerate(rows)]
                            for s, rows in texts.items()})
