"""``describe``: the ModelDescription of a loaded model, built from its row in the architecture table
(table.py), or, for a model whose architecture has no row, by a generic fallback that finds the
embedding, the block list and the final norm in the config and the module tree (states only: its
description has no attention weights, and ``desc.attn`` says which row to add).

Everything else in the project reads module paths and weights from the ModelDescription and never
branches on the architecture.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .description import AttentionWeights, ModelDescription, NoArchitectureRow, NormInfo
from .generic import describe_generic
from .parts import adds_bos, bias, cfg, embed_scale, module, norm_info
from .spec import ModelSpecError
from .table import ARCHITECTURES, ArchSpec, arch_for, config_value, find_row

__all__ = ["ARCHITECTURES", "ArchSpec", "AttentionWeights", "ModelDescription", "NoArchitectureRow", "NormInfo",
           "arch_for", "describe", "find_row"]


def _in_out(lin: nn.Module, conv1d: bool) -> torch.Tensor:
    """The weight as [in, out] (a view): nn.Linear stores [out, in], GPT-2's Conv1D [in, out]."""
    w = lin.weight.detach()
    return w if conv1d else w.T


def _heads(w: torch.Tensor, n: int, dh: int) -> torch.Tensor:
    """[d, n * dh] -> [n, d, dh] (a view)."""
    return w.view(w.shape[0], n, dh).permute(1, 0, 2)


def _attention(block: nn.Module, row: ArchSpec, H: int, Hkv: int, dh: int, d: int, scale: float
               ) -> AttentionWeights:
    if row.qkv is not None:
        lin = block.get_submodule(row.qkv)
        w, b = _in_out(lin, row.conv1d), bias(lin)
        if row.qkv_layout == "heads":                                   # [H, 3, d_head] along the output
            w4 = w.view(d, H, 3, dh)
            wq, wk, wv = (w4[:, :, i].permute(1, 0, 2) for i in range(3))
            bq, bk, bv = (None,) * 3 if b is None else (b.view(H, 3, dh)[:, i] for i in range(3))
        else:                                                           # [q | k | v] along the output
            sizes = [H * dh, Hkv * dh, Hkv * dh]
            wq, wk, wv = (_heads(x, n, dh) for x, n in zip(w.split(sizes, 1), (H, Hkv, Hkv)))
            bq, bk, bv = (None,) * 3 if b is None else (x.view(-1, dh) for x in b.split(sizes))
    else:
        lq, lk, lv = (block.get_submodule(p) for p in (row.q, row.k, row.v))
        wq, wk, wv = (_heads(_in_out(m, row.conv1d), n, dh) for m, n in ((lq, H), (lk, Hkv), (lv, Hkv)))
        bq, bk, bv = (None if b is None else b.view(-1, dh) for b in map(bias, (lq, lk, lv)))
    lo = block.get_submodule(row.o)
    wo = _in_out(lo, row.conv1d).view(H, dh, d)                        # [H, d_head, d]
    qn = norm_info(block, row.q_norm, row.norm_weight_offset, row.norm_eps) if row.q_norm else None
    kn = norm_info(block, row.k_norm, row.norm_weight_offset, row.norm_eps) if row.k_norm else None
    over = None
    if qn is not None or kn is not None:
        w = (qn or kn).weight
        over = "head" if w is None or w.numel() == dh else "all heads"
    return AttentionWeights(W_Q=wq, W_K=wk, W_V=wv, W_O=wo, b_Q=bq, b_K=bk, b_V=bv, b_O=bias(lo),
                            q_norm=qn, k_norm=kn, qk_norm_over=over, scale=scale)


def _rope_scales(rot: nn.Module | None, config, L: int) -> list[float]:
    """Per layer, the rotary embedding's attention_scaling (cos and sin are multiplied by it, so q.k by
    its square; 1 for the default RoPE; Gemma 3 keeps one per layer type)."""
    types = getattr(config, "layer_types", None) or [None] * L
    out = []
    for t in types[:L]:
        s = getattr(rot, f"{t}_attention_scaling", None) if (rot is not None and t) else None
        s = getattr(rot, "attention_scaling", 1.0) if s is None else s
        out.append(float(s) if isinstance(s, (int, float)) else 1.0)
    return out + [1.0] * (L - len(out))


def _score_scale(attn_mod: nn.Module | None, row: ArchSpec, config, dh: int) -> float:
    if row.unscaled_scores:
        return 1.0
    s = getattr(attn_mod, "scaling", None)
    if not isinstance(s, (int, float)):
        scalar = getattr(config, "query_pre_attn_scalar", None)
        s = (scalar if scalar is not None else dh) ** -0.5
    return float(s)


def _rotary_dim(attn_mod: nn.Module | None, config, dh: int) -> int:
    n = getattr(attn_mod, "rotary_ndims", None)
    if isinstance(n, int):
        return n
    rp = getattr(config, "rope_parameters", None)
    f = rp.get("partial_rotary_factor") if isinstance(rp, dict) else None
    f = f if f is not None else getattr(config, "partial_rotary_factor", 1.0)
    return int(dh * f)


def describe(model: nn.Module, tokenizer=None, spec: str = "", revision: str | None = None,
             source: str = "", quantized_from: str | None = None) -> ModelDescription:
    """The ModelDescription of a loaded model: from its row in ARCHITECTURES, or the generic fallback
    (states only) for a Hugging Face model without one."""
    row = find_row(model)
    if row is None:
        return describe_generic(model, tokenizer, spec, revision, source, quantized_from)
    prefix = next((p for p in row.prefixes if module(model, p + row.embed_weight.rsplit(".", 1)[0])
                   is not None), None)
    if prefix is None:
        raise ModelSpecError(f"{type(model).__name__}: none of the prefixes {row.prefixes} leads to "
                             f"the embedding {row.embed_weight!r} (row {row.name!r})")
    config = model.config
    L = int(cfg(config, row.cfg_layers))
    d = int(cfg(config, row.cfg_d_model))
    H = int(cfg(config, row.cfg_heads))
    Hkv = int(cfg(config, row.cfg_kv_heads, H))
    dh = int(cfg(config, row.cfg_d_head, d // H))
    ctx = int(cfg(config, row.cfg_context, 0))
    emb_mod = model.get_submodule(prefix + row.embed_weight.rsplit(".", 1)[0])
    W_E = emb_mod.weight.detach()
    vocab = int(cfg(config, row.cfg_vocab, W_E.shape[0]))
    proj_in = module(model, prefix + row.embed_proj) if row.embed_proj else None
    if proj_in is not None:                                  # OPT project_in: W_E = E @ P^T, [vocab, d]
        W_E = W_E @ proj_in.weight.detach().T
    layers = model.get_submodule(prefix + row.layers)
    if len(layers) != L:
        raise ModelSpecError(f"{type(model).__name__}: config says {L} layers, {prefix + row.layers} "
                             f"holds {len(layers)}")
    layer_paths = [f"{prefix}{row.layers}.{i}" for i in range(L)]
    final_path = prefix + row.final_norm if row.final_norm else None
    if final_path is not None and module(model, final_path) is None:
        final_path = None
    head = module(model, row.lm_head) if row.lm_head else None
    W_U = head.weight.detach().T if head is not None else None
    proj_out = module(model, prefix + row.unembed_proj) if row.unembed_proj else None
    if head is not None and proj_out is not None:           # OPT project_out: W_U = (U @ P)^T, [d, vocab]
        W_U = (head.weight.detach() @ proj_out.weight.detach()).T
    placement = config_value(row.norm_placement, config)
    attn_mods = [module(layers[i], row.attn) for i in range(L)]
    rot = module(model, prefix + row.rotary) if row.rotary else None
    rope = _rope_scales(rot, config, L)
    rotary_dim = _rotary_dim(attn_mods[0], config, dh) if rot is not None else None
    caveats = []
    if any(s != 1.0 for s in rope) and rotary_dim is not None and rotary_dim < dh:
        caveats.append(f"the rotary attention_scaling {sorted(set(rope))} scales only the {rotary_dim} rotary "
                       f"dims of each head: not a single score scale")
    scales = [_score_scale(attn_mods[i], row, config, dh) * rope[i] ** 2 for i in range(L)]
    attn = [_attention(layers[i], row, H, Hkv, dh, d, scales[i]) for i in range(L)]
    attn_norms = [norm_info(layers[i], row.attn_norm, row.norm_weight_offset, row.norm_eps)
                  if row.attn_norm else None for i in range(L)]
    for n, p in zip(attn_norms, layer_paths):
        if n is not None:
            n.path = f"{p}.{n.path}"
    out_norms = [norm_info(layers[i], row.attn_out_norm, row.norm_weight_offset, row.norm_eps)
                 if row.attn_out_norm else None for i in range(L)]
    final = norm_info(model, final_path, row.norm_weight_offset, row.norm_eps) if final_path else None
    pos_mod = module(model, prefix + row.pos_embed) if row.pos_embed else None
    W_pos = pos_mod.weight.detach()[int(config_value(row.pos_row_offset, config)):] if pos_mod is not None else None
    if attn[0].qk_norm_over is not None:
        caveats.append(f"q/k norms ({'per head' if attn[0].qk_norm_over == 'head' else 'over all heads'}) "
                       f"act between W_Q/W_K and the score: W_qk is the bilinear map before them")
    attn_softcap = getattr(config, "attn_logit_softcapping", None)
    if attn_softcap:
        caveats.append(f"scores are soft-capped, tanh(s / {attn_softcap:g}) * {attn_softcap:g}: W_qk gives s")
    clip = getattr(config, "clip_qkv", None)
    if clip:
        caveats.append(f"q, k and v are clamped to +-{clip:g} (clip_qkv)")
    if len(set(scales)) > 1:
        caveats.append("the score scale differs by layer (attn[l].scale); attn_scale is layer 0's")
    adds, bos, pad = adds_bos(tokenizer)
    notes = "; ".join([row.notes] + [f"W_qk leaves out: {c}" for c in caveats])
    return ModelDescription(
        spec=spec or type(model).__name__, revision=revision, arch=row.name, arch_class=type(model).__name__,
        source=source, n_layers=L, d_model=d, n_heads=H, n_kv_heads=Hkv, d_head=dh, vocab_size=vocab,
        context=ctx, is_decoder=row.is_decoder, adds_bos=adds, bos_token_id=bos, pad_token_id=pad,
        dtype=W_E.dtype, embed_path=prefix + row.embed, layer_paths=layer_paths, final_norm_path=final_path,
        lm_head_path=row.lm_head if head is not None else None, W_E=W_E, W_U=W_U, b_U=bias(head),
        embed_scale=embed_scale(emb_mod), attention=attn, kv_head_map=torch.arange(H) // (H // Hkv),
        attn_norms=attn_norms, norm_placement=placement, final_norm=final, attn_scale=scales[0],
        logit_softcap=getattr(config, "final_logit_softcapping", None), quantized_from=quantized_from,
        notes=notes, embed_hook=row.embed_hook, W_pos=W_pos,
        position_ids_offset=int(config_value(row.position_ids_offset, config)),
        positions="learned" if W_pos is not None else ("rotary" if rot is not None else "none"),
        rotary_dim=rotary_dim, parallel_attn_mlp=bool(config_value(row.parallel, config)),
        attn_out_norms=out_norms, attn_softcap=attn_softcap or None, qk_exact=not caveats,
        qk_caveats=tuple(caveats), model_type=getattr(config, "model_type", None))
