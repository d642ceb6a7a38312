"""Reading a model's module tree: config values, submodules by path, norms and biases as tensors, the
embedding scale and whether the tokenizer prepends BOS/CLS. Shared by the table-driven description and
the generic fallback."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .description import NormInfo


def cfg(config: Any, names: tuple[str, ...], default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def module(root: nn.Module, path: str) -> nn.Module | None:
    try:
        m = root.get_submodule(path) if path else root
    except AttributeError:
        return None
    return m if isinstance(m, nn.Module) else None


def norm_info(root: nn.Module, path: str | None, offset: float, eps: float | None = None) -> NormInfo | None:
    m = module(root, path) if path is not None else None
    if m is None:
        return None
    name = type(m).__name__.lower()
    kind = "identity" if isinstance(m, nn.Identity) else ("rms" if "rms" in name else "layer")
    w = getattr(m, "weight", None)
    b = getattr(m, "bias", None)
    eps = cfg(m, ("eps", "variance_epsilon"), eps)
    return NormInfo(path=path, module=m, kind=kind, weight=None if w is None else w.detach(),
                    bias=None if b is None else b.detach(), weight_offset=offset if w is not None else 0.0,
                    eps=None if eps is None else float(eps))


def bias(lin: nn.Module | None):
    b = getattr(lin, "bias", None) if lin is not None else None
    return None if b is None else b.detach()


def adds_bos(tokenizer) -> tuple[bool, int | None, int | None]:
    if tokenizer is None:
        return False, None, None
    bos = getattr(tokenizer, "bos_token_id", None)
    cls = getattr(tokenizer, "cls_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    try:
        ids = tokenizer("hello world")["input_ids"]
    except Exception:
        return False, bos, pad
    first = ids[0] if len(ids) else None
    adds = first is not None and first in {i for i in (bos, cls) if i is not None}
    return adds, (bos if bos is not None else cls), pad


def embed_scale(emb: nn.Module) -> float:
    scale = getattr(emb, "embed_scale", 1.0)
    return float(scale.item() if torch.is_tensor(scale) else scale)
