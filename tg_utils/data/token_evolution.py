"""Token Representation Evolution's two input files (Lielferber10/Tranformers-Project), the paper profile's
word list and contexts for notebook 06: fetched once into data/token_evolution/ by a documented step,
checked by sha256, and read in their own formats.

    python -m tg_utils.data.token_evolution          # fetch both (or: python -m tg_utils.preflight
                                                     #  --profile paper --download)

- words_list.json: {word: frequency}, most frequent first (derived from word_freq_32k.json, the
  repository's README); the study takes `list(data.keys())` (token_convergence_analysis.py:209-214).
- multitoken_words_contexts.json: {word: {"sentences": [...], "token_split": n, "replaced_sentences":
  [...]}}: sentences ending with the word (WikiText-103, token_reserach_get_data.py:11-13), and the
  first sentence with its last word replaced by words that end in the same token
  (multitoken_context_perturbation.py:147-149). Read as this project's context candidates
  (tg_utils.data.contexts, format tg-contexts-v1): the sentences are the contexts, and the words plus
  their replacements are the lexicon the swaps are drawn from (per tokenizer, the same rule).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..paths import resolve, write_text_atomic

REPO = "Lielferber10/Tranformers-Project"
COMMIT = "fac25711485756ead3ad14d040e98fcee96974b9"      # the repository's head when this was written
FOLDER = "data/token_evolution"
CONTEXTS_FORMAT = "tg-contexts-v1"


@dataclass(frozen=True)
class RemoteFile:
    name: str              # the file's name in the repository and in FOLDER
    sha256: str
    size: int              # bytes
    what: str

    @property
    def path(self) -> str:
        return f"{FOLDER}/{self.name}"

    def url(self, base: str | None = None) -> str:
        return f"{base or f'https://raw.githubusercontent.com/{REPO}/{COMMIT}'}/{self.name}"


FILES = {f.path: f for f in (
    RemoteFile("words_list.json", "4fd6eb78ba95db6f944c206f5c398aa0e53ea7c9a23c4972520832030d2505a8", 609_409,
               "Token Representation Evolution's word list: 32,641 words by frequency"),
    RemoteFile("multitoken_words_contexts.json",
               "46a657728e2f29b0eea460d1b676817bf19aa3c48bd488d97fffaacbf21dfbe5", 1_715_478,
               "Token Representation Evolution's contexts: 1,738 multi-token words, 5 sentences each"),
)}


def remote(path: str | Path | None) -> RemoteFile | None:
    """The known remote file behind a parameter's path (words_path, contexts_path), else None."""
    if not path:
        return None
    for key, f in FILES.items():
        if resolve(path) == resolve(key):
            return f
    return None


def fetch(path: str, base: str | None = None) -> Path:
    """Download one known file into FOLDER (atomically), checked against its sha256. `base`: another
    location of the repository's files (a URL or file:// folder: the tests)."""
    f = FILES[path]
    with urllib.request.urlopen(f.url(base), timeout=60) as r:
        data = r.read()
    got = hashlib.sha256(data).hexdigest()
    if got != f.sha256:
        raise ValueError(f"{f.url(base)}: sha256 {got[:12]}... is not the expected {f.sha256[:12]}...: the "
                         f"file changed upstream; leave {path} absent and report it")
    out = resolve(path)
    write_text_atomic(out, data.decode("utf-8"))
    return out


def read_words_json(path: str | Path) -> list[str]:
    """The words of a words_list.json ({word: frequency} in file order, or a list of words)."""
    data = json.loads(resolve(path).read_text(encoding="utf-8"))
    words = list(data) if isinstance(data, (dict, list)) else None
    if not words or not all(isinstance(w, str) for w in words):
        raise ValueError(f"{path} is not a word list: expected {{word: frequency}} or [words]")
    return words


def is_token_evolution_contexts(data) -> bool:
    return (isinstance(data, dict) and "format" not in data and bool(data)
            and all(isinstance(v, dict) and "sentences" in v for v in data.values()))


def as_candidates(data: dict, source: str = "") -> dict:
    """multitoken_words_contexts.json as context candidates of format tg-contexts-v1."""
    if not is_token_evolution_contexts(data):
        raise ValueError("not a Token Representation Evolution context file: expected {word: {'sentences': "
                         "[...], 'replaced_sentences': [...]}}")
    contexts = {w: [s for s in v["sentences"] if s.endswith(" " + w)] for w, v in data.items()}
    swaps = {s.rsplit(" ", 1)[-1] for v in data.values() for s in v.get("replaced_sentences", [])}
    return {"format": CONTEXTS_FORMAT, "source": {"file": source or "multitoken_words_contexts.json",
                                                  "repository": REPO, "commit": COMMIT},
            "params": {}, "lexicon": sorted(set(contexts) | swaps),
            "contexts": {w: c for w, c in sorted(contexts.items()) if c}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tg_utils.data.token_evolution",
                                 description="fetch Token Representation Evolution's word list and contexts")
    ap.add_argument("--base", help="another location of the repository's files (URL)")
    a = ap.parse_args(argv)
    for path, f in FILES.items():
        if resolve(path).is_file():
            print(f"ok       {path}")
            continue
        print(f"fetching {path} ({f.size / 1e3:.0f} kB) from {f.url(a.base)}")
        fetch(path, a.base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
