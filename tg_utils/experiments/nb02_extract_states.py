"""Notebook 02 (extract states): every model's structured prompt set through the activation cache,
its extraction summary and its mean state norm per layer. The loading and prompt helpers here are
shared by notebooks 03 and 05, which read the same cache entries."""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..cache import cache_footprint, format_footprint
from ..data.corpus import load_corpus
from ..data.prompts import model_prompts
from ..geometry import mean_norms, profile_states
from ..models import ModelSpec, load_model
from .documents import select_documents

NB = "02_extract_states"


def toy_specs(runs: Sequence[str], random: bool = True) -> list[str]:
    """Model specs of toy runs: the random initialisation (step 0) when asked, then the trained model."""
    return [s for r in runs for s in ([f"toy:{r}@0"] if random else []) + [f"toy:{r}"]]


def model_specs(P) -> list[str]:
    """The specs a notebook with toy_runs / toy_random / models runs, in table order: toys, then models."""
    return toy_specs(P.toy_runs, P.toy_random) + list(P.models)


def load_kwargs(spec: str, device: str = "cpu", device_map: str | None = None) -> dict:
    """load_model's placement for one spec: device_map (e.g. "auto") for hub ids and local folders,
    which from_pretrained spreads over the devices; toy and wheel models load on `device`."""
    if device_map is not None and ModelSpec.parse(spec).kind in ("hub", "local"):
        return {"device_map": device_map}
    return {"device": device}


def load(spec: str, P):
    """Load one model of a notebook's parameters: P.model_dtype, placed by P.device / P.device_map."""
    return load_model(spec, dtype=P.model_dtype, out_dir=P.out_dir, **load_kwargs(spec, P.device, P.device_map))


def free_memory() -> None:
    """After a model's last reference is dropped: collect it now and hand its GPU memory back, so the next
    model loads into an empty device (notebooks 02-05 load one model at a time)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def prompt_corpus(P, specs: Sequence[str], progress: bool = True):
    """The corpus of P, its prompt split reordered by P.documents (experiments/documents.py: "common", the
    same documents for every model of `specs`, The Geometry of Tokens' rule; "per_model": unchanged)."""
    return select_documents(P, load_corpus(P.corpus, P.corpus_path), list(specs), progress).corpus


def prompts_for(spec: str, lm, P, corpus):
    """The structured prompt set of one model (PromptParams fields of P; a BOS for P.bos_models)."""
    return model_prompts(lm, corpus, P.prompt_split, P.n_tokens, P.n_prompts, bos=spec in P.bos_models)


def run_model(spec: str, P, corpus, progress: bool = True):
    """Load one model, build its prompt set and fill the activation cache. Returns (lm, prompts, states)."""
    lm = load(spec, P)
    prompts = prompts_for(spec, lm, P, corpus)
    st = profile_states(lm, prompts.ids, P.out_dir, P.batch_size, progress,
                        **({"remote": True} if getattr(P, "remote", False) else {}))
    return lm, prompts, st


def norm_rows(spec: str, st, skip_first: int, out_dir="outputs") -> pd.DataFrame:
    """Mean state norm per layer of one model, as tidy rows with relative depth."""
    model, rev = ModelSpec.parse(spec).table_key(out_dir)
    norms = mean_norms(st, skip_first)
    L = len(norms) - 1
    return pd.DataFrame({"model": model, "revision": rev, "layer": np.arange(L + 1),
                         "relative_depth": np.arange(L + 1) / L, "mean_norm": norms})


@dataclass(frozen=True)
class Extraction:
    summary: pd.DataFrame          # one row per model: spec, description, prompts, positions, layers, loss, seconds
    norms: pd.DataFrame            # mean state norm per (model, revision, layer)


def run(P, progress: bool = True) -> Extraction:
    """Notebook 02: every model of P (toys first) through the activation cache, one model in memory at a time."""
    torch.manual_seed(P.seed)
    corpus = prompt_corpus(P, model_specs(P), progress)
    rows, norms = [], []
    for spec in model_specs(P):
        t0 = time.perf_counter()
        lm, prompts, st = run_model(spec, P, corpus, progress)
        norms.append(norm_rows(spec, st, 1 if prompts.bos else 0, P.out_dir))
        rows.append({"spec": spec, "model": lm.desc.summary(), "prompts": len(prompts),
                     "positions": len(prompts.ids[0]), "layers": len(st.layers),
                     "mean_loss": float(st.loss.nanmean()) if lm.desc.is_decoder else float("nan"),
                     "seconds": round(time.perf_counter() - t0, 1)})
        del lm, st
        free_memory()
        print(f"{spec}: {rows[-1]['seconds']} s")
    return Extraction(pd.DataFrame(rows), pd.concat(norms, ignore_index=True))


def cache_report(P) -> str:
    """The activation cache's footprint on disk, per model."""
    return format_footprint(cache_footprint(P.out_dir))
