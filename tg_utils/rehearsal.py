"""The rehearsal: tiny random stand-ins of the paper's hub models, laid out as a local Hugging Face hub
cache, so that the paper profile's code paths (hub ids with revisions, BOS handling, device_map, bfloat16,
every notebook, the preflight's gated-model check) run offline on a CPU in minutes (params/rehearsal.yaml).

    python -m tg_utils.rehearsal --make <dir>          # <dir> is then a HF_HUB_CACHE
    HF_HUB_CACHE=<dir> HF_HUB_OFFLINE=1 python -c 'from tg_utils.models import load_model; \
        load_model("tg-rehearsal/tiny-pythia@step8")'

The runner does this for the rehearsal profile: it builds the cache once under <out>/rehearsal_hub (or
$TG_REHEARSAL_HUB) and runs every notebook with HF_HUB_CACHE pointing there and HF_HUB_OFFLINE=1.

Stand-ins (STAND_INS): the architecture, tokenizer conventions and stored dtype of each paper model, at
d=64, 4 blocks, a 1k-token byte-level BPE trained with `tokenizers` on data/frequent_words.txt: Llama-3 and
Mistral (grouped-query attention, a BOS added by the tokenizer, bfloat16 weights), Pythia (GPT-NeoX, no BOS,
float16, revisions step0 ... step8 whose weights move from the initialisation step by step; main = step8),
Llama-2 (multi-head attention), GPT-2 (tied embeddings, learned positions, Conv1D) and OLMo-2 (revisions
step0 ... step8, also named OLMo-style step<N>-tokens<M>M). Gated models are simulated by hubcache.ACCESS_MARKER: the Llama / Mistral
stand-ins are gated with access granted; tg-rehearsal/tiny-gated is gated, access denied, and cached without
its weights, so a profile naming it stops at the preflight (tests/test_rehearsal.py).

Data sets (DATA_STAND_INS), in the hub's layouts, read by the paper profile's code path (tg_utils.data.hub_data):
tg-rehearsal/pile-10k (NeelNanda/pile-10k: data/train-*.parquet, columns text and meta; 60 documents cut from
the offline corpus to lengths below, near and above the rehearsal's prompt lengths) and tg-rehearsal/wikitext
(Salesforce/wikitext: wikitext-2-raw-v1/{train,validation,test}-*.parquet of WikiText lines, " = Title = "
headings, from the offline corpus's splits).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

from .data.corpus import load_corpus
from .hubcache import ACCESS_MARKER, repo_folder, write_snapshot
from .paths import resolve, write_text_atomic

REHEARSAL_VERSION = 3             # bump when a stand-in changes: the runner rebuilds the cache
ORG = "tg-rehearsal"
STEPS = [0, 1, 2, 4, 8]
SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            max_position_embeddings=256)
STAND_INS = {          # repo -> (architecture, stands in for, options)
    f"{ORG}/tiny-llama-3": ("llama", "meta-llama/Meta-Llama-3-8B", dict(kv=2, bos=True, gated=True)),
    f"{ORG}/tiny-mistral": ("mistral", "mistralai/Mistral-7B-v0.1", dict(kv=2, bos=True, gated=True)),
    f"{ORG}/tiny-pythia": ("gpt_neox", "EleutherAI/pythia-*", dict(steps=STEPS, dtype=torch.float16)),
    f"{ORG}/tiny-llama-2": ("llama", "meta-llama/Llama-2-7b-hf", dict(kv=4, bos=True, gated=True)),
    f"{ORG}/tiny-gpt2": ("gpt2", "openai-community/gpt2", dict(dtype=torch.float32)),
    f"{ORG}/tiny-olmo2": ("olmo2", "allenai/OLMo-2-* (stepN-tokensM revisions)", dict(steps=STEPS, olmo=True,
                                                                                    dtype=torch.float32)),
    f"{ORG}/tiny-gated": ("llama", "a gated model without access", dict(kv=4, bos=True, gated=True,
                                                                          denied=True)),
}


DATA_STAND_INS = {f"{ORG}/pile-10k": "NeelNanda/pile-10k", f"{ORG}/wikitext": "Salesforce/wikitext"}
PILE_WORDS = (4, 8, 12, 16, 24, 400)     # words per stand-in document, in turn: below, near and above 16 / 32 tokens


def write_data_stand_ins(cache: Path) -> None:
    """The stand-in data sets (module docstring) as dataset snapshots of the hub cache `cache`."""
    corpus = load_corpus("gensim-wiki")
    arts = [a for s in corpus.splits for a in corpus.split(s)]
    docs = [" ".join(a.text.split()[:PILE_WORDS[i % len(PILE_WORDS)]]) for i, a in enumerate(arts[:60])]
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        (Path(tmp) / "data").mkdir()
        pd.DataFrame({"text": docs, "meta": [{"pile_set_name": "Wikipedia (en)"}] * len(docs)}).to_parquet(
            Path(tmp) / "data" / "train-00000-of-00001.parquet")
        write_snapshot(cache, f"{ORG}/pile-10k", ["main"], Path(tmp), repo_type="dataset")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        (Path(tmp) / "wikitext-2-raw-v1").mkdir()
        for split in corpus.splits:
            lines = [ln for a in corpus.split(split) for ln in
                     [f" = {a.title} = \n", " \n"] + [f" {p.strip()} \n" for p in a.text.split("\n") if p.strip()]]
            pd.DataFrame({"text": lines}).to_parquet(Path(tmp) / "wikitext-2-raw-v1" / f"{split}-00000-of-00001.parquet")
        write_snapshot(cache, f"{ORG}/wikitext", ["main"], Path(tmp), repo_type="dataset")


TE_STAND_INS = "data/rehearsal"      # Token Representation Evolution's two files in their formats (stand-ins)


def write_token_evolution_stand_ins(folder: str | Path = TE_STAND_INS, n_words: int = 2000,
                                    n_context_words: int = 300) -> list[Path]:
    """Stand-ins of words_list.json ({word: frequency}: the first n_words of data/frequent_words.txt, a
    made-up falling frequency) and multitoken_words_contexts.json ({word: {"sentences", "token_split",
    "replaced_sentences"}}: n_context_words words of data/contexts.json with 5 contexts, the first one's
    last word replaced by up to 5 lexicon words of the same last three letters), committed under
    data/rehearsal/ for the rehearsal profile (deterministic: tests/test_data_by_name.py rewrites them)."""
    folder = resolve(folder)
    words = [w for w in resolve("data/frequent_words.txt").read_text().split("\n") if w and not w.startswith("#")]
    cand = json.loads(resolve("data/contexts.json").read_text())
    long = sorted(w for w, c in cand["contexts"].items() if len(w) >= 9 and len(c) >= 5)
    chosen = long[::max(1, len(long) // n_context_words)][:n_context_words]
    by_end: dict[str, list[str]] = {}
    for w in cand["lexicon"]:
        by_end.setdefault(w[-3:], []).append(w)
    contexts = {}
    for w in chosen:
        sents = cand["contexts"][w][:5]
        others = [o for o in by_end.get(w[-3:], []) if o != w][:5]
        contexts[w] = {"sentences": sents, "token_split": 0,
                       "replaced_sentences": [sents[0][:-len(w)] + o for o in others]}
    out = [folder / "words_list.json", folder / "multitoken_words_contexts.json"]
    write_text_atomic(out[0], json.dumps({w: 10 * (n_words - i) for i, w in enumerate(words[:n_words])},
                                         indent=0) + "\n")
    write_text_atomic(out[1], json.dumps(contexts, indent=1, ensure_ascii=False) + "\n")
    for f in out:
        f.chmod(0o644)
    return out


def train_tokenizer(bos: bool) -> Tokenizer:
    """A 1k byte-level BPE on the word list (deterministic). bos: '<s>' is prepended to every encoding
    (Llama / Mistral); else GPT-NeoX conventions ('<|endoftext|>' only, nothing added)."""
    words = resolve("data/frequent_words.txt").read_text().split()
    texts = [" ".join(words[i:i + 40]) for i in range(0, len(words), 40)]
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<s>", "</s>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1024, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _hf_tokenizer(tok: Tokenizer, bos: bool):
    from transformers import PreTrainedTokenizerFast   # lazy: transformers is heavy; only --make needs it
    if bos:
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def _model(arch: str, vocab: int, kv: int, bos_id: int, eos_id: int, seed: int):
    import transformers as tf    # lazy: transformers is heavy; only --make needs it
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, bos_token_id=bos_id, eos_token_id=eos_id, tie_word_embeddings=False, **SIZE)
    if arch == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=kv, **common))
    if arch == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(num_key_value_heads=kv, sliding_window=128, **common))
    if arch == "gpt_neox":
        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(rotary_pct=0.25, use_parallel_residual=True, **common))
    if arch == "olmo2":
        return tf.Olmo2ForCausalLM(tf.Olmo2Config(num_key_value_heads=kv, **common))
    if arch == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_embd=SIZE["hidden_size"],
                                                n_layer=SIZE["num_hidden_layers"], n_head=SIZE["num_attention_heads"],
                                                n_positions=SIZE["max_position_embeddings"], bos_token_id=bos_id,
                                                eos_token_id=eos_id))
    if arch == "opt":              # word_embed_proj_dim < hidden: the project_in / project_out path
        return tf.OPTForCausalLM(tf.OPTConfig(vocab_size=vocab, hidden_size=64, word_embed_proj_dim=32, ffn_dim=128,
                                              num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
                                              bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id,
                                              do_layer_norm_before=True))
    raise KeyError(arch)


def _at_step(model, other, step: int, last: int):
    """The weights at a revision: the initialisation moved toward a second random draw by log2(1+step) /
    log2(1+last) (step 0 = the initialisation), so consecutive revisions differ a little, as checkpoints do."""
    t = math.log2(1 + step) / math.log2(1 + last)
    with torch.no_grad():
        for p, q in zip(model.parameters(), other.parameters()):
            p.mul_(1 - 0.5 * t).add_(q, alpha=0.5 * t)
    return model


def make(cache: str | Path, force: bool = False) -> Path:
    """Build the rehearsal hub cache in `cache` (a HF_HUB_CACHE folder); a complete cache of this
    REHEARSAL_VERSION is left as it is unless force. Returns the folder."""
    cache = Path(cache).resolve()
    stamp = cache / "tg_rehearsal.json"
    if not force and stamp.exists() and json.loads(stamp.read_text()).get("version") == REHEARSAL_VERSION:
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as tf_logging   # lazy: transformers is heavy; only make needs it
    tf_logging.disable_progress_bar()
    toks = {bos: train_tokenizer(bos) for bos in (True, False)}
    for seed, (repo, (arch, _, opt)) in enumerate(STAND_INS.items()):
        shutil.rmtree(repo_folder(cache, repo), ignore_errors=True)
        tok = _hf_tokenizer(toks[opt.get("bos", False)], opt.get("bos", False))
        vocab = len(tok)
        steps = opt.get("steps")
        for step in steps or [None]:
            model = _model(arch, vocab, opt.get("kv", 4), tok.bos_token_id, tok.eos_token_id, seed)
            if steps:
                _at_step(model, _model(arch, vocab, opt.get("kv", 4), tok.bos_token_id, tok.eos_token_id,
                                       seed + 100), step, steps[-1])
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                model.to(opt.get("dtype", torch.bfloat16)).save_pretrained(tmp)
                tok.save_pretrained(tmp)
                if opt.get("denied"):                            # cached without its weights
                    for f in Path(tmp).glob("*.safetensors"):
                        f.unlink()
                refs = ["main"] if step is None else [f"step{step}"] + (["main"] if step == steps[-1] else []) \
                    + ([f"step{step}-tokens{4 * step}M"] if opt.get("olmo") else [])
                write_snapshot(cache, repo, refs, Path(tmp))
        if opt.get("gated"):
            (repo_folder(cache, repo) / ACCESS_MARKER).write_text(
                json.dumps({"gated": True, "access": not opt.get("denied")}) + "\n")
    write_data_stand_ins(cache)
    write_text_atomic(stamp, json.dumps({"version": REHEARSAL_VERSION, "repos": sorted(STAND_INS),
                                         "datasets": sorted(DATA_STAND_INS)}) + "\n")
    return cache


LOCAL_MODEL = "data/tiny-models/opt-local"     # committed output of make_local (python -m tg_utils.rehearsal --local)


def make_local(folder: str | Path, steps=(0, 8), seed: int = 7) -> Path:
    """A tiny random OPT (2 blocks, d=64, embeddings projected from 32) saved as a plain local folder with one
    subfolder per revision (<folder>/step0, <folder>/step8), the way a researcher's own checkpoints lie on
    disk. The smoke profile names it by path (data/tiny-models/opt-local[@stepN]) in notebooks 02-07."""
    from transformers.utils import logging as tf_logging   # lazy: transformers is heavy; only make needs it
    tf_logging.disable_progress_bar()
    folder = Path(folder).resolve()
    tok = _hf_tokenizer(train_tokenizer(False), False)
    for step in steps:
        model = _model("opt", len(tok), 4, tok.bos_token_id, tok.eos_token_id, seed)
        _at_step(model, _model("opt", len(tok), 4, tok.bos_token_id, tok.eos_token_id, seed + 100), step, steps[-1])
        dest = folder / f"step{step}"
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:      # atomic: a finished folder or none
            model.to(torch.float32).save_pretrained(tmp)
            tok.save_pretrained(tmp)
            for f in Path(tmp).iterdir():
                f.chmod(0o644)                                     # not the temp folder's private modes
            Path(tmp).chmod(0o755)
            shutil.rmtree(dest, ignore_errors=True)
            Path(tmp).rename(dest)
            Path(tmp).mkdir()                                      # for TemporaryDirectory's clean-up
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tg_utils.rehearsal", description=__doc__.split("\n\n")[0])
    ap.add_argument("--make", metavar="DIR", help="build the stand-in hub cache in DIR")
    ap.add_argument("--force", action="store_true", help="rebuild even if DIR holds a complete cache")
    ap.add_argument("--local", metavar="DIR", help=f"write the tiny local-folder OPT (step0, step8) into DIR "
                                                   f"(committed as {LOCAL_MODEL})")
    a = ap.parse_args(argv)
    if not (a.make or a.local):
        ap.error("give --make DIR or --local DIR")
    if a.local:
        print(f"local model folder: {make_local(a.local)}")
        if not a.make:
            return 0
    path = make(a.make, a.force)
    print(f"rehearsal hub cache: {path}\n  " + "\n  ".join(f"{r}  ({v[1]})" for r, v in STAND_INS.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
