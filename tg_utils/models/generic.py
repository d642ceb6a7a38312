"""The generic fallback of ``describe`` for a Hugging Face model whose architecture has no row in the
table: the blocks are the one nn.ModuleList holding config.num_hidden_layers modules, the embedding is
``get_input_embeddings()``, the final norm the first norm module registered after the blocks, the
unembedding ``get_output_embeddings()``. State 0 is read as the first block's input (whatever the model
adds to the embedding before it). Enough for states and the loss; no attention weights (``desc.attn``
raises NoArchitectureRow naming the row to add).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .description import ModelDescription
from .parts import adds_bos, bias, cfg, embed_scale, norm_info
from .spec import ModelSpecError
from .table import no_row_message


def _path_of(model: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    return next((name for name, m in model.named_modules() if m is target), None)


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(m).__name__.lower()


def _final_norm_path(model: nn.Module, layers_path: str) -> str | None:
    """The first norm module registered after the block list in the same parent (model.norm, ln_f, ...)."""
    parent_path, _, attr = layers_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    names = list(parent._modules)
    for n in names[names.index(attr) + 1:]:
        m = parent._modules[n]
        if m is not None and _is_norm(m):
            return f"{parent_path}.{n}" if parent_path else n
    return None


def describe_generic(model: nn.Module, tokenizer=None, spec: str = "", revision: str | None = None,
                     source: str = "", quantized_from: str | None = None) -> ModelDescription:
    """A ModelDescription without attention weights, found from the config and the module tree."""
    config = getattr(model, "config", None)
    L = cfg(config, ("num_hidden_layers", "n_layer", "num_layers")) if config is not None else None
    if not isinstance(L, int):
        raise ModelSpecError(no_row_message(model) + "; the generic fallback needs a Hugging Face config "
                             "with num_hidden_layers")
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == L]
    if len(lists) != 1:
        raise ModelSpecError(no_row_message(model) + f"; the generic fallback looks for one block list of "
                             f"{L} modules and found {len(lists)}: {[n for n, _ in lists]}")
    layers_path = lists[0][0]
    emb = model.get_input_embeddings()
    W_E = emb.weight.detach()
    d = int(cfg(config, ("hidden_size", "n_embd", "d_model"), W_E.shape[1]))
    H = int(cfg(config, ("num_attention_heads", "n_head", "num_heads"), 1))
    Hkv = int(cfg(config, ("num_key_value_heads",), H))
    dh = int(cfg(config, ("head_dim",), d // H))
    final_path = _final_norm_path(model, layers_path)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    usable = head is not None and final_path is not None and head.weight.shape[-1] == d
    caveat = "no row in ARCHITECTURES: no attention weights (states and loss through the generic fallback)"
    adds, bos, pad = adds_bos(tokenizer)
    return ModelDescription(
        spec=spec or type(model).__name__, revision=revision, arch="generic", arch_class=type(model).__name__,
        source=source, n_layers=L, d_model=d, n_heads=H, n_kv_heads=Hkv, d_head=dh,
        vocab_size=int(cfg(config, ("vocab_size",), W_E.shape[0])),
        context=int(cfg(config, ("max_position_embeddings", "n_positions"), 0)), is_decoder=head is not None,
        adds_bos=adds, bos_token_id=bos, pad_token_id=pad, dtype=W_E.dtype, embed_path=f"{layers_path}.0",
        layer_paths=[f"{layers_path}.{i}" for i in range(L)], final_norm_path=final_path,
        lm_head_path=_path_of(model, head) if usable else None, W_E=W_E,
        W_U=head.weight.detach().T if usable else None, b_U=bias(head) if usable else None,
        embed_scale=embed_scale(emb), attention=None, kv_head_map=torch.arange(H) // max(1, H // Hkv),
        attn_norms=[], norm_placement="unknown", final_norm=norm_info(model, final_path, 0.0),
        attn_scale=float(dh ** -0.5), logit_softcap=getattr(config, "final_logit_softcapping", None),
        quantized_from=quantized_from, embed_hook="input", positions="unknown", qk_exact=False,
        qk_caveats=(caveat,), model_type=getattr(config, "model_type", None),
        notes=f"generic fallback ({caveat}): state 0 is the first block's input; the final norm is "
              f"{final_path!r} (the first norm after the blocks), its scale taken as its weight; the "
              f"unembedding is get_output_embeddings() (logit scalings it leaves out are not known)")
