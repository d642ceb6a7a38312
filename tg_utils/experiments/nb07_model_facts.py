"""What notebook 07 reads from a ModelDescription besides the weights: the probed blocks, whether the
embeddings are tied, the final norm's kind, notes on what the probes leave out, and each block's
input-normed embedding rows (standardised once per model)."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..weights.norms import affine, standardised_rows
from ..weights.vocab import CHUNK


def probe_layers(n_layers: int, depths: Sequence[float] = (0.0, 0.5, 1.0)) -> list[int]:
    """0-based block indices at relative depths in [0, 1]: floor(depth * (L - 1) + 0.5), unique, sorted.
    The default gives the first, the middle ((L - 1) / 2 rounded half up: block 16 of 30, 10 of 18, 4 of 6,
    counting from 1) and the last block."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be positive, got {n_layers}")
    out = set()
    for x in depths:
        if not 0.0 <= float(x) <= 1.0:
            raise ValueError(f"relative depth {x} is outside [0, 1]")
        out.add(int(math.floor(float(x) * (n_layers - 1) + 0.5)))
    return sorted(out)


def blocks_to_probe(n_layers: int, depths: Sequence[float] = (0.0, 0.5, 1.0),
                    blocks: Sequence[int] | None = None) -> list[int]:
    """The probed blocks: ``blocks`` (0-based indices, as the paper's 0, 5, 11 of GPT-2: svd_analysis.py:357-359,
    common_nouns.py:137-145; unique, sorted) when given, else ``probe_layers(n_layers, depths)``."""
    if blocks is None:
        return probe_layers(n_layers, depths)
    bad = [b for b in blocks if not 0 <= int(b) < n_layers]
    if bad or not blocks:
        raise ValueError(f"blocks {list(blocks)}: a model with {n_layers} blocks has indices 0..{n_layers - 1}")
    return sorted({int(b) for b in blocks})


def is_tied(desc) -> bool:
    """Whether the unembedding is the embedding matrix (same storage, or equal values)."""
    if desc.W_U is None:
        return True
    W_E, W_U = desc.W_E, desc.W_U
    if W_U.shape != W_E.T.shape:
        return False
    if W_E.untyped_storage().data_ptr() == W_U.untyped_storage().data_ptr():
        return True
    return bool(torch.equal(W_E, W_U.T))


def final_norm_kind(desc) -> str:
    """'rms' | 'layer' | 'none' (no final norm, or an identity)."""
    fn = desc.final_norm
    if fn is None or fn.kind == "identity":
        return "none"
    return fn.kind


def model_notes(desc) -> list[str]:
    """What the probes leave out or what differs for this model, in words (printed by the notebook)."""
    notes = []
    fn = desc.final_norm
    kind = final_norm_kind(desc)
    if kind == "rms":
        notes.append("final norm is an RMSNorm without bias: of the paper's four embedding scorings only "
                     "norm and scaled_norm exist ('bias' and 'both' need the bias beta, as do the variants)"
                     + ("; its scale is 1 + weight" if fn.weight_offset else ""))
    elif kind == "layer":
        notes.append("final norm is a LayerNorm" + (" with bias: the paper's four embedding scorings exist"
                                                     if fn.bias is not None else
                                                     " without bias: only norm and scaled_norm exist"))
    else:
        notes.append("no final norm: scaled_norm equals norm and there is no bias score")
    notes.append("W_qk is positionless: rotary / learned position terms are left out (the score of two "
                 "tokens at the same position); the ellipse keys and the singular directions leave out the "
                 "attention biases (as the paper); the bias terms are probed on their own")
    if desc.attn and desc.attn[0].q_norm is not None:
        notes.append("per-head q/k norms (RMSNorm on q and k, Gemma 3 style) are left out: W_qk is the "
                     "bilinear map before them, so key rankings are approximate")
    if desc.arch == "gemma3":
        notes.append("the sandwich norm on the attention output (post_attention_layernorm) is left out of "
                     "the ellipse value read-out; embeddings enter the stream scaled by sqrt(d) (the residual "
                     "of the value read-out is W_E[t] * sqrt(d); the input norms make the scale irrelevant "
                     "to the other probes)")
    if desc.n_kv_heads != desc.n_heads:
        notes.append(f"grouped-query attention: {desc.n_heads} query heads share {desc.n_kv_heads} key/value "
                     f"heads (query head -> kv head: {desc.kv_head_map.tolist()})")
    if desc.norm_placement == "post":
        notes.append("post-norm blocks read the un-normalised stream: the QK probe uses the raw embeddings")
    notes.append("embeddings tied (W_U = W_E^T)" if is_tied(desc) else
                 "embeddings untied: the norm scorings are given for the embedding (the paper's wte) and the "
                 "unembedding rows; the paper reads the W_vo output directions and the ellipse values against "
                 "the embedding (readout_matrix 'embedding'), the logit reading would use the unembedding")
    if desc.quantized_from:
        notes.append(f"weights dequantised from {desc.quantized_from}: the quantised model's geometry")
    return notes


class InputNormedRows:
    """``norm_l(W_E)`` for the attention-input norm of every block, as (rows, norm) for the scans of
    ``tg_utils.weights``: rows are the embedding rows standardised once per (norm kind, eps)
    (``weights.norms.standardised_rows``), norm the block's affine part (``weights.norms.affine``: times the
    effective weight, plus the bias). norm(rows) equals the block's module on W_E up to float32 rounding,
    without re-normalising the whole vocabulary for every block (Gemma: 262k rows). Norm modules it does not
    know (not an nn.LayerNorm or an *RMSNorm class, or no eps) fall back to (W_E, the module); no norm
    (post-norm blocks, or none): (W_E, None)."""

    def __init__(self, desc, chunk: int = CHUNK):
        self.desc = desc
        self.chunk = chunk
        self._std: dict[tuple[str, float], torch.Tensor] = {}

    def _standardised(self, kind: str, eps: float) -> torch.Tensor:
        key = (kind, float(eps))
        if key not in self._std:
            self._std[key] = standardised_rows(self.desc.W_E, kind, eps, self.chunk)
        return self._std[key]

    def for_layer(self, layer: int):
        desc = self.desc
        info = desc.attn_norms[layer] if desc.attn_norms else None
        if info is None or desc.norm_placement == "post" or info.kind == "identity":
            return desc.W_E, None
        m = info.module
        known = ((info.kind == "layer" and isinstance(m, torch.nn.LayerNorm))
                 or (info.kind == "rms" and "rmsnorm" in type(m).__name__.lower()))
        if known and info.eps is not None:
            return self._standardised(info.kind, info.eps), affine(info.scale, info.bias)
        return desc.W_E, m
