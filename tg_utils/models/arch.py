"""The architecture table and the uniform description of a loaded model.

``ARCHITECTURES`` is the one table that maps an architecture to its module paths and attribute names
(toy, Llama family, Gemma 2/3, BERT, GPT-NeoX/Pythia). Everything else in the project reads module paths
and weights from the ``ModelDescription`` that ``describe`` builds from that table and never branches on
the architecture. To support a new architecture, add a row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .spec import ModelSpecError


# ============================================================================ the architecture table

@dataclass(frozen=True)
class ArchSpec:
    """Where things live in one architecture. Paths are dotted module paths; block-level paths are
    relative to one block (``layers[i]``). ``prefixes`` are tried in order to find the base model inside
    the loaded root module (e.g. ``model.`` inside ``LlamaForCausalLM``, nothing for ``LlamaModel``)."""
    name: str
    matches: tuple[str, ...]            # config.model_type values, or class names (toy)
    is_decoder: bool
    auto_class: str | None              # "causal" -> AutoModelForCausalLM, "base" -> AutoModel, None: not HF
    prefixes: tuple[str, ...]           # base-model prefixes inside the root module
    embed: str                          # module whose output is state 0 (the embedding output)
    embed_weight: str                   # parameter holding W_E [vocab, d]
    layers: str                         # nn.ModuleList of blocks; block l's output is state l+1
    final_norm: str | None              # its output is state L+1 (None: encoders without one)
    lm_head: str | None                 # at the root (no prefix); weight [vocab, d] -> W_U = weight.T
    # inside one block
    q: str | None
    k: str | None
    v: str | None
    o: str
    qkv: str | None = None              # fused q/k/v Linear, laid out head by head as [H, 3, d_head]
    q_norm: str | None = None           # per-head query/key norms (Gemma 3, Qwen 3), optional
    k_norm: str | None = None
    attn_norm: str | None = None        # the norm attached to the attention sublayer
    norm_placement: str = "pre"         # "pre" | "post" | "config:<attr>" (read from the model config)
    norm_weight_offset: float = 0.0     # effective scale = weight + offset (Gemma RMSNorm: 1 + weight)
    # config attribute names, tried in order
    cfg_layers: tuple[str, ...] = ("num_hidden_layers",)
    cfg_d_model: tuple[str, ...] = ("hidden_size",)
    cfg_heads: tuple[str, ...] = ("num_attention_heads",)
    cfg_kv_heads: tuple[str, ...] = ("num_key_value_heads",)
    cfg_d_head: tuple[str, ...] = ("head_dim",)
    cfg_context: tuple[str, ...] = ("max_position_embeddings",)
    cfg_vocab: tuple[str, ...] = ("vocab_size",)
    notes: str = ""


_LLAMA_BLOCK = dict(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
                    q_norm="self_attn.q_norm", k_norm="self_attn.k_norm", attn_norm="input_layernorm")

ARCHITECTURES: dict[str, ArchSpec] = {
    "toy": ArchSpec(
        name="toy", matches=("ToyTransformer",), is_decoder=True, auto_class=None, prefixes=("",),
        embed="embed", embed_weight="embed.weight", layers="blocks", final_norm="final_norm",
        lm_head="lm_head", q="attn.q_proj", k="attn.k_proj", v="attn.v_proj", o="attn.o_proj",
        attn_norm="attn_norm", norm_placement="config:placement",
        cfg_layers=("n_layer",), cfg_d_model=("d_model",), cfg_heads=("n_head",), cfg_kv_heads=("n_head",),
        cfg_d_head=("d_head",), cfg_context=("context",),
        notes="RoPE, no learned positions; post-norm presets have final_norm = Identity"),
    "llama": ArchSpec(
        name="llama", matches=("llama", "mistral", "qwen2", "qwen3", "olmo2"), is_decoder=True,
        auto_class="causal", prefixes=("model.", ""), embed="embed_tokens", embed_weight="embed_tokens.weight",
        layers="layers", final_norm="norm", lm_head="lm_head", **_LLAMA_BLOCK,
        notes="RMSNorm pre-norm, RoPE, grouped-query attention"),
    "gemma3": ArchSpec(
        name="gemma3", matches=("gemma3_text", "gemma2", "gemma"), is_decoder=True, auto_class="causal",
        prefixes=("model.", ""), embed="embed_tokens", embed_weight="embed_tokens.weight", layers="layers",
        final_norm="norm", lm_head="lm_head", **_LLAMA_BLOCK, norm_weight_offset=1.0,
        notes="embedding output scaled by sqrt(d); RMSNorm scale is 1 + weight; sandwich norms; "
              "per-head q/k norms; sliding-window layers"),
    "bert": ArchSpec(
        name="bert", matches=("bert",), is_decoder=False, auto_class="base", prefixes=("bert.", ""),
        embed="embeddings", embed_weight="embeddings.word_embeddings.weight", layers="encoder.layer",
        final_norm=None, lm_head=None, q="attention.self.query", k="attention.self.key",
        v="attention.self.value", o="attention.output.dense", attn_norm="attention.output.LayerNorm",
        norm_placement="post",
        notes="post-LN encoder: state 0 = word + position + token-type embeddings after LayerNorm"),
    "gpt_neox": ArchSpec(
        name="gpt_neox", matches=("gpt_neox",), is_decoder=True, auto_class="causal",
        prefixes=("gpt_neox.", ""), embed="embed_in", embed_weight="embed_in.weight", layers="layers",
        final_norm="final_layer_norm", lm_head="lm_head", q=None, k=None, v=None, o="attention.dense",
        qkv="attention.query_key_value", attn_norm="input_layernorm",
        notes="Pythia: parallel attention + MLP residual, fused QKV, partial rotary"),
}

def arch_for(model: nn.Module) -> ArchSpec:
    """The table row of a loaded model: by ``config.model_type`` (Hugging Face) or class name (toy)."""
    keys = [getattr(getattr(model, "config", None), "model_type", None), type(model).__name__]
    for row in ARCHITECTURES.values():
        if any(k in row.matches for k in keys if k):
            return row
    raise ModelSpecError(
        f"no row in tg_utils.models.ARCHITECTURES for {type(model).__name__} (model_type {keys[0]!r}); "
        f"supported: {[r.matches for r in ARCHITECTURES.values()]}; add a row to the table")


# ============================================================================ the description

@dataclass
class NormInfo:
    """One normalisation layer: the module, its path, raw weight and bias, and the effective scale
    (``weight + weight_offset``: Gemma's RMSNorm multiplies by 1 + weight)."""
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
    """One layer's attention, split per head (views of the model's weights, no copies):
    W_Q [n_heads, d, d_head], W_K and W_V [n_kv_heads, d, d_head], W_O [n_heads, d_head, d];
    q = x @ W_Q[h] + b_Q[h]; the layer's output = sum_h z_h @ W_O[h] + b_O.
    Query head h reads key/value head ``kv_head_map[h]``."""
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

    def __repr__(self) -> str:
        return (f"AttentionWeights(W_Q {tuple(self.W_Q.shape)}, W_K {tuple(self.W_K.shape)}, "
                f"W_V {tuple(self.W_V.shape)}, W_O {tuple(self.W_O.shape)}, "
                f"biases {self.b_Q is not None}, qk-norms {self.q_norm is not None})")


@dataclass(repr=False)
class ModelDescription:
    """What every analysis needs to know about a model, the same for all architectures.

    State index convention (used by extraction and the cache): 0 = embedding output, l = output of
    block l (1..n_layers), n_layers + 1 = the final-normed output (only when ``final_norm_path`` is set;
    for post-norm toy models the final norm is Identity, so state L+1 equals state L). Compared with
    ``output_hidden_states`` of plain transformers: our 0..L-1 equal hidden_states[0..L-1] and our L+1
    equals hidden_states[L] (HF's last entry is post final norm); for encoders without a final norm our
    0..L equal hidden_states[0..L]."""
    spec: str
    revision: str | None
    arch: str
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
    W_E: torch.Tensor                 # [vocab, d]
    W_U: torch.Tensor | None          # [d, vocab]; None for encoders
    b_U: torch.Tensor | None
    embed_scale: float                # state 0 = W_E[ids] * embed_scale (Gemma: sqrt(d)) for decoders
    attn: list[AttentionWeights]
    kv_head_map: torch.Tensor         # [n_heads] query head -> key/value head
    attn_norms: list[NormInfo | None]
    norm_placement: str               # "pre" | "post"
    final_norm: NormInfo | None
    attn_scale: float                 # scores = q.k * attn_scale
    logit_softcap: float | None
    quantized_from: str | None = None  # e.g. "GGUF Q4_1": states are those of the dequantised model
    notes: str = ""

    @property
    def n_states(self) -> int:
        """Number of state indices: L + 2 with a final norm, L + 1 without."""
        return self.n_layers + (2 if self.final_norm_path is not None else 1)

    @property
    def state_paths(self) -> list[str]:
        """The module whose output is each state index."""
        paths = [self.embed_path, *self.layer_paths]
        return paths + ([self.final_norm_path] if self.final_norm_path is not None else [])

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


def _cfg(config: Any, names: tuple[str, ...], default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def _module(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path) if path else root
    except AttributeError:
        return None


def _norm_info(root: nn.Module, path: str | None, offset: float) -> NormInfo | None:
    if path is None:
        return None
    m = _module(root, path)
    if m is None:
        return None
    name = type(m).__name__.lower()
    kind = "identity" if isinstance(m, nn.Identity) else ("rms" if "rms" in name else "layer")
    w = getattr(m, "weight", None)
    b = getattr(m, "bias", None)
    eps = _cfg(m, ("eps", "variance_epsilon"))
    return NormInfo(path=path, module=m, kind=kind, weight=None if w is None else w.detach(),
                    bias=None if b is None else b.detach(), weight_offset=offset if w is not None else 0.0,
                    eps=None if eps is None else float(eps))


def _bias(lin: nn.Module | None):
    b = getattr(lin, "bias", None) if lin is not None else None
    return None if b is None else b.detach()


def _attention(block: nn.Module, row: ArchSpec, H: int, Hkv: int, dh: int, d: int, prefix: str
               ) -> AttentionWeights:
    if row.qkv is not None:
        lin = block.get_submodule(row.qkv)
        w = lin.weight.detach().view(H, 3, dh, d)                       # rows laid out [H, 3, d_head]
        wq, wk, wv = (w[:, i].transpose(1, 2) for i in range(3))        # [H, d, d_head]
        b = _bias(lin)
        bq = bk = bv = None
        if b is not None:
            b = b.view(H, 3, dh)
            bq, bk, bv = b[:, 0], b[:, 1], b[:, 2]
    else:
        lq, lk, lv = (block.get_submodule(p) for p in (row.q, row.k, row.v))
        wq = lq.weight.detach().view(H, dh, d).transpose(1, 2)
        wk = lk.weight.detach().view(Hkv, dh, d).transpose(1, 2)
        wv = lv.weight.detach().view(Hkv, dh, d).transpose(1, 2)
        bq, bk, bv = (None if b is None else b.view(-1, dh) for b in map(_bias, (lq, lk, lv)))
    lo = block.get_submodule(row.o)
    wo = lo.weight.detach().view(d, H, dh).permute(1, 2, 0)             # [H, d_head, d]
    qn = _norm_info(block, row.q_norm, row.norm_weight_offset) if row.q_norm else None
    kn = _norm_info(block, row.k_norm, row.norm_weight_offset) if row.k_norm else None
    return AttentionWeights(W_Q=wq, W_K=wk, W_V=wv, W_O=wo, b_Q=bq, b_K=bk, b_V=bv, b_O=_bias(lo),
                            q_norm=qn, k_norm=kn)


def _adds_bos(tokenizer) -> tuple[bool, int | None, int | None]:
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


def describe(model: nn.Module, tokenizer=None, spec: str = "", revision: str | None = None,
             source: str = "", quantized_from: str | None = None) -> ModelDescription:
    """The ModelDescription of a loaded model whose architecture has a row in ARCHITECTURES."""
    row = arch_for(model)
    prefix = next((p for p in row.prefixes if _module(model, p + row.embed) is not None), None)
    if prefix is None:
        raise ModelSpecError(f"{type(model).__name__}: none of the prefixes {row.prefixes} leads to "
                             f"the embedding module {row.embed!r} (row {row.name!r})")
    config = model.config
    L = int(_cfg(config, row.cfg_layers))
    d = int(_cfg(config, row.cfg_d_model))
    H = int(_cfg(config, row.cfg_heads))
    Hkv = int(_cfg(config, row.cfg_kv_heads, H))
    dh = int(_cfg(config, row.cfg_d_head, d // H))
    ctx = int(_cfg(config, row.cfg_context, 0))
    W_E = model.get_submodule(prefix + row.embed_weight.rsplit(".", 1)[0]).weight.detach()
    vocab = int(_cfg(config, row.cfg_vocab, W_E.shape[0]))
    emb_mod = model.get_submodule(prefix + row.embed_weight.rsplit(".", 1)[0])
    scale = getattr(emb_mod, "embed_scale", 1.0)
    scale = float(scale.item() if torch.is_tensor(scale) else scale)
    layers = model.get_submodule(prefix + row.layers)
    if len(layers) != L:
        raise ModelSpecError(f"{type(model).__name__}: config says {L} layers, {prefix + row.layers} "
                             f"holds {len(layers)}")
    layer_paths = [f"{prefix}{row.layers}.{i}" for i in range(L)]
    final_path = prefix + row.final_norm if row.final_norm else None
    if final_path is not None and _module(model, final_path) is None:
        final_path = None
    head = _module(model, row.lm_head) if row.lm_head else None
    W_U = head.weight.detach().T if head is not None else None
    placement = row.norm_placement
    if placement.startswith("config:"):
        placement = getattr(config, placement.split(":", 1)[1])
    attn = [_attention(layers[i], row, H, Hkv, dh, d, prefix) for i in range(L)]
    attn_norms = [_norm_info(model, f"{layer_paths[i]}.{row.attn_norm}", row.norm_weight_offset)
                  if row.attn_norm else None for i in range(L)]
    final = _norm_info(model, final_path, row.norm_weight_offset) if final_path else None
    adds, bos, pad = _adds_bos(tokenizer)
    scalar = getattr(config, "query_pre_attn_scalar", None)
    return ModelDescription(
        spec=spec or type(model).__name__, revision=revision, arch=row.name, arch_class=type(model).__name__,
        source=source, n_layers=L, d_model=d, n_heads=H, n_kv_heads=Hkv, d_head=dh, vocab_size=vocab,
        context=ctx, is_decoder=row.is_decoder, adds_bos=adds, bos_token_id=bos, pad_token_id=pad,
        dtype=W_E.dtype, embed_path=prefix + row.embed, layer_paths=layer_paths, final_norm_path=final_path,
        lm_head_path=row.lm_head if head is not None else None, W_E=W_E, W_U=W_U, b_U=_bias(head),
        embed_scale=scale, attn=attn, kv_head_map=torch.arange(H) // (H // Hkv), attn_norms=attn_norms,
        norm_placement=placement, final_norm=final,
        attn_scale=float((scalar if scalar is not None else dh) ** -0.5),
        logit_softcap=getattr(config, "final_logit_softcapping", None),
        quantized_from=quantized_from, notes=row.notes)
