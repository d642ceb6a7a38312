"""The toy models' tokenizer: byte-level BPE trained with the `tokenizers` library, wrapped as a
`transformers.PreTrainedTokenizerFast` so that toy and pretrained models share one tokenizer API.

GPT-2 conventions: one special token "<|endoftext|>" (eos, also used as the pad token), no BOS added,
no prefix space. Training is deterministic: the same texts and vocab size give a byte-identical
tokenizer.json.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from ..paths import atomic_path

EOS = "<|endoftext|>"


def _wrap(tok):
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS,
                                   padding_side="right", add_bos_token=False)


def train_bpe_tokenizer(texts: Sequence[str] | Iterable[str], vocab_size: int = 8192,
                        path: str | os.PathLike | None = None, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer on `texts` (e.g. `corpus.texts("train")`) and return it as a
    PreTrainedTokenizerFast. `path` (a tokenizer.json file, or a folder to hold one) is written atomically.
    The vocabulary is the 256 byte symbols, <|endoftext|> and merges up to `vocab_size` entries (fewer if
    the texts run out of pairs seen `min_frequency` times)."""
    texts = list(texts)
    if not texts:
        raise ValueError("train_bpe_tokenizer: no texts to train on")
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if path is not None:
        save_tokenizer(tok, path)
    return _wrap(tok)


def _json_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / "tokenizer.json" if p.is_dir() or p.suffix != ".json" else p


def save_tokenizer(tokenizer, path: str | os.PathLike) -> Path:
    """Write tokenizer.json atomically (path: the file, or a folder to hold tokenizer.json)."""
    tok = getattr(tokenizer, "backend_tokenizer", tokenizer)
    final = _json_path(path)
    with atomic_path(final) as tmp:
        tok.save(str(tmp))
    return final


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer.json written by train_bpe_tokenizer (path: the file or its folder)."""
    p = _json_path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"no tokenizer at {p}; train it with notebook 01 (bash run_all.sh --only 01)")
    return _wrap(Tokenizer.from_file(str(p)))
