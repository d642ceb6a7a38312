"""The uniform description of a loaded model (``ModelDescription``), the same for every architecture:
module paths of its states, its embedding and unembedding, its norms and its attention split per head,
and, in words and flags, what the per-head matrices leave out. Built by ``describe`` (arch.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .spec import ModelSpecError


class NoArchitectureRow(ModelSpecError):
    """A model described by the generic fallback has no attention weights (no row in ARCHITECTURES)."""


@dataclass
class NormInfo:
    """One normalisation layer: the module, its path, raw weight and bias, and the effective scale
    (``weight + weight_offset``: Gemma's RMSNorm multiplies by 1 + weight). A LayerNorm without weight
    and bias (OLMo 1) has kind "layer" and weight = bias = None."""
    path: str
    module: nn.Module = field(repr=False)
    kind: str = "rms"               # "rms" | "layer" | "identity"
    weight: torch.Tensor | None = field(default=None, repr=False)
    bias: torch.Tensor | None = field(default=None, repr=False)
    weight_offset: float = 0.0
    eps: float | None = None

    @property
    def scale(self) -> torch.Tensor | None:
        return None if self.weight is None else self.weight + self.weight_offset


@dataclass(repr=False)
class AttentionWeights:
    """One layer's attention, split per head (views of the model's weights where the layout allows):
    W_Q [n_heads, d, d_head], W_K and W_V [n_kv_heads, d, d_head], W_O [n_heads, d_head, d];
    q = x @ W_Q[h] + b_Q[h]; the layer's output = sum_h z_h @ W_O[h] + b_O.
    Query head h reads key/value head ``kv_head_map[h]``. ``scale``: this layer's score scale (the
    model's own, times the square of its rotary embedding's attention_scaling where that is not 1).
    q_norm/k_norm, where present, normalise q and k before the scores: per head (``qk_norm_over``
    "head": Gemma 3, Qwen 3) or over all heads together ("all heads": OLMo 2)."""
    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    b_Q: torch.Tensor | None = None
    b_K: torch.Tensor | None = None
    b_V: torch.Tensor | None = None
    b_O: torch.Tensor | None = None
    q_norm: NormInfo | None = None
    k_norm: NormInfo | None = None
    qk_norm_over: str | None = None
    scale: float | None = None

    def __repr__(self) -> str:
        return (f"AttentionWeights(W_Q {tuple(self.W_Q.shape)}, W_K {tuple(self.W_K.shape)}, "
                f"W_V {tuple(self.W_V.shape)}, W_O {tuple(self.W_O.shape)}, "
                f"biases {self.b_Q is not None}, qk-norms {self.qk_norm_over})")


@dataclass(repr=False)
class ModelDescription:
    """What every analysis needs to know about a model, the same for all architectures.

    State index convention (used by extraction and the cache): 0 = the residual stream's first state
    (the embedding output, with learned positions added and Gemma's sqrt(d) scale applied: the first
    block's input), l = output of block l (1..n_layers), n_layers + 1 = the final-normed output (only when
    ``final_norm_path`` is set; for post-norm toy models the final norm is Identity, so state L+1 equals
    state L). Compared with ``output_hidden_states`` of plain transformers: our 0..L-1 equal
    hidden_states[0..L-1] and our L+1 equals hidden_states[L] (HF's last entry is post final norm); without
    a final norm our 0..L equal hidden_states[0..L] (encoders; OPT-350m's last entry is after project_out).

    State 0 is the output of ``embed_path``, or its first input when ``embed_hook`` is "input" (OPT and the
    generic fallback, where no module outputs it). At position p of a token t it is
    ``W_E[t] * embed_scale + W_pos[p]`` for decoders (W_pos None: no learned positions); encoders add
    token types and a LayerNorm.

    Scores: for query and key at the same position (RoPE is a rotation there, the identity at 0), the
    pre-softmax score is ``(x W_Q[h] + b_Q[h]) . (x W_K[kv[h]] + b_K[kv[h]]) * attn[l].scale``, x the
    attention input (``attn_norms[l]`` applied for "pre"; the raw stream for "post" and "post-sublayer"),
    when ``qk_exact``; otherwise ``qk_caveats`` says what that formula leaves out (q/k norms, soft-capping,
    clipping). ``attn_softcap``: scores pass through tanh(s / c) c (Gemma 2)."""
    spec: str
    revision: str | None
    arch: str                         # table row name, or "generic" (fallback: no row)
    arch_class: str
    source: str                       # folder, hub id or checkpoint file the weights came from
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    vocab_size: int
    context: int                      # maximum positions
    is_decoder: bool
    adds_bos: bool                    # whether the tokenizer prepends a BOS/CLS token
    bos_token_id: int | None
    pad_token_id: int | None
    dtype: torch.dtype
    embed_path: str
    layer_paths: list[str]
    final_norm_path: str | None
    lm_head_path: str | None
    W_E: torch.Tensor                 # [vocab, d] (OPT with project_in: the projected embedding)
    W_U: torch.Tensor | None          # [d, vocab]; None for encoders (OPT with project_out: folded in)
    b_U: torch.Tensor | None
    embed_scale: float                # state 0 = W_E[ids] * embed_scale (+ W_pos) (Gemma: sqrt(d))
    attention: list[AttentionWeights] | None   # None: generic fallback (read through .attn)
    kv_head_map: torch.Tensor         # [n_heads] query head -> key/value head
    attn_norms: list[NormInfo | None]
    norm_placement: str               # "pre" x + f(norm(x)) | "post" norm(x + f(x)) |
                                      # "post-sublayer" x + norm(f(x)) (OLMo 2) | "unknown" (fallback)
    final_norm: NormInfo | None
    attn_scale: float                 # scores = q.k * attn_scale (layer 0's; see attn[l].scale)
    logit_softcap: float | None
    quantized_from: str | None = None  # e.g. "GGUF Q4_1": states are those of the dequantised model
    notes: str = ""
    embed_hook: str = "output"        # "output" | "input": how state 0 is read from embed_path
    W_pos: torch.Tensor | None = None  # [positions, d] learned absolute positions (row p = position p)
    position_ids_offset: int = 0      # position_ids the model expects = arange + this (RoBERTa: pad + 1)
    positions: str = "rotary"         # "rotary" | "learned" | "unknown"
    rotary_dim: int | None = None     # dims per head that rotate (partial rotary: Phi, Pythia)
    parallel_attn_mlp: bool = False   # attention and MLP read the same input and add together
    attn_out_norms: list[NormInfo | None] = field(default_factory=list)  # on the attention output
    attn_softcap: float | None = None  # scores soft-capped: tanh(s / c) c (Gemma 2)
    qk_exact: bool = True             # scores are exactly the formula above (see the class docstring)
    qk_caveats: tuple[str, ...] = ()  # what W_qk leaves out, in words (empty when qk_exact)
    model_type: str | None = None     # config.model_type (None: not a Hugging Face model)

    @property
    def n_states(self) -> int:
        """Number of state indices: L + 2 with a final norm, L + 1 without."""
        return self.n_layers + (2 if self.final_norm_path is not None else 1)

    @property
    def state_paths(self) -> list[str]:
        """The module whose output (for state 0: see ``embed_hook``) is each state index."""
        paths = [self.embed_path, *self.layer_paths]
        return paths + ([self.final_norm_path] if self.final_norm_path is not None else [])

    @property
    def state_hooks(self) -> list[str]:
        """For each state index, "output" or "input" of its module in ``state_paths``."""
        return [self.embed_hook] + ["output"] * (self.n_states - 1)

    @property
    def has_attention(self) -> bool:
        return self.attention is not None

    @property
    def attn(self) -> list[AttentionWeights]:
        """Per-layer attention weights; raises NoArchitectureRow for a model described by the fallback."""
        if self.attention is None:
            raise NoArchitectureRow(
                f"{self.spec}: no attention weights: {self.arch_class} (model_type {self.model_type!r}) "
                f"has no row in tg_utils.models.ARCHITECTURES (states only, through the generic fallback); "
                f"add a row in tg_utils/models/table.py naming its q/k/v/o projections and norms")
        return self.attention

    def state_name(self, index: int) -> str:
        if index == 0:
            return "embed"
        if index <= self.n_layers:
            return f"block{index}"
        return "final_norm"

    def __repr__(self) -> str:
        return f"ModelDescription({self.summary()})"

    def summary(self) -> str:
        q = f", dequantised from {self.quantized_from}" if self.quantized_from else ""
        return (f"{self.spec} [{self.arch}/{self.arch_class}]: {self.n_layers} layers, d={self.d_model}, "
                f"{self.n_heads} heads ({self.n_kv_heads} kv) x {self.d_head}, vocab {self.vocab_size}, "
                f"context {self.context}, {'decoder' if self.is_decoder else 'encoder'}, "
                f"adds BOS: {self.adds_bos}, {str(self.dtype).replace('torch.', '')}{q}")
