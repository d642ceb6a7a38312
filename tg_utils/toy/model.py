"""The toy transformer family of the Token Geometry Analyzer, in one file (after nanoGPT's model.py).

Four presets differ in two switches:
  - norm + MLP:  "llama"    = RMSNorm (no bias) + SwiGLU, linear layers without bias
                 "standard" = LayerNorm (with bias) + GELU MLP, linear layers with bias
  - placement:   "pre"  : x = x + attn(attn_norm(x));  x = x + mlp(mlp_norm(x));  final_norm before lm_head
                 "post" : x = attn_norm(x + attn(x));  x = mlp_norm(x + mlp(x));  final_norm = Identity
                          (the stream is already normalised after every residual add)
All use causal self-attention with rotary position embeddings (RoPE) on q and k, no learned positions.

Module names mirror Hugging Face Llama so that extraction and the attention-geometry code can reach
everything by name:
    model.embed                      nn.Embedding(vocab, d)
    model.blocks[i]                  Block; its forward returns the residual stream after the block (B, T, d)
    model.blocks[i].attn_norm        norm (before attn for pre, after the attn residual add for post)
    model.blocks[i].attn.q_proj      nn.Linear(d, d), weight [out, in] = [d, d]; same for k_proj, v_proj, o_proj
    model.blocks[i].mlp_norm         norm (before mlp for pre, after the mlp residual add for post)
    model.blocks[i].mlp.gate_proj    SwiGLU only: nn.Linear(d, h)
    model.blocks[i].mlp.up_proj      nn.Linear(d, h)   (h = swiglu_hidden(d_ff) for SwiGLU, d_ff for GELU)
    model.blocks[i].mlp.down_proj    nn.Linear(h, d)
    model.final_norm                 norm (pre) or nn.Identity (post)
    model.lm_head                    nn.Linear(d, vocab, bias=False); its weight *is* embed.weight when tied
Heads: q_proj's output features are laid out head by head, head h owns rows [h*d_head, (h+1)*d_head).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("rms", "layer")
MLPS = ("swiglu", "gelu")
PLACEMENTS = ("pre", "post")


def swiglu_hidden(d_ff: int, multiple_of: int = 8) -> int:
    """SwiGLU hidden width for a GELU width d_ff: 2/3 of d_ff rounded up to a multiple of 8 (the LLaMA
    rule). SwiGLU has three d x h matrices, GELU two d x d_ff ones, so 3 h ~= 2 d_ff keeps the MLP
    parameter count within ~1 % of the GELU MLP's."""
    h = int(2 * d_ff / 3)
    return multiple_of * math.ceil(h / multiple_of)


@dataclass
class ToyConfig:
    n_layer: int = 6
    d_model: int = 192
    n_head: int = 6
    d_ff: int = 768            # GELU hidden width; SwiGLU uses swiglu_hidden(d_ff)
    vocab_size: int = 8192
    context: int = 256         # longest sequence trained on (RoPE itself has no hard limit)
    norm: str = "rms"          # "rms" | "layer"
    mlp: str = "swiglu"        # "swiglu" | "gelu"
    placement: str = "pre"     # "pre" | "post"
    bias: bool = False         # bias in every nn.Linear except lm_head, and in LayerNorm
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    dropout: float = 0.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.mlp not in MLPS:
            raise ValueError(f"mlp must be one of {MLPS}, got {self.mlp!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.d_head % 2:
            raise ValueError(f"RoPE needs an even head width, got d_head={self.d_head}")
        for name in ("n_layer", "d_model", "n_head", "d_ff", "vocab_size", "context"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return swiglu_hidden(self.d_ff) if self.mlp == "swiglu" else self.d_ff

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ToyConfig":
        return dataclass_from_dict(cls, d)


def dataclass_from_dict(cls, d: dict):
    """cls(**d), with a clear error naming any unknown field (configs read back from checkpoints)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
    return cls(**d)


# The four architectures of the Token Geometry Analyzer; sizes come from ToyConfig's defaults or overrides.
PRESETS: dict[str, dict] = {
    "llama-preln": dict(norm="rms", mlp="swiglu", placement="pre", bias=False),
    "llama-postln": dict(norm="rms", mlp="swiglu", placement="post", bias=False),
    "standard-preln": dict(norm="layer", mlp="gelu", placement="pre", bias=True),
    "standard-postln": dict(norm="layer", mlp="gelu", placement="post", bias=True),
}


def preset(name: str, **overrides) -> ToyConfig:
    """The ToyConfig of a named preset, with any field overridden (sizes, or even the architecture)."""
    if name not in PRESETS:
        raise ValueError(f"unknown toy-model preset {name!r}; presets: {list(PRESETS)}")
    return ToyConfig(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------- layers

def make_norm(cfg: ToyConfig) -> nn.Module:
    if cfg.norm == "rms":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions (B, T) -> (B, 1, T, d_head), HF Llama layout (halves rotated)."""

    def __init__(self, d_head: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor):
        freqs = position_ids[..., None].float() * self.inv_freq          # (B, T, d_head/2)
        emb = torch.cat((freqs, freqs), dim=-1)                          # (B, T, d_head)
        return emb.cos()[:, None], emb.sin()[:, None]                    # (B, 1, T, d_head) each


class Attention(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        d = cfg.d_model
        self.n_head, self.d_head = cfg.n_head, cfg.d_head
        self.q_proj = nn.Linear(d, d, bias=cfg.bias)
        self.k_proj = nn.Linear(d, d, bias=cfg.bias)
        self.v_proj = nn.Linear(d, d, bias=cfg.bias)
        self.o_proj = nn.Linear(d, d, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, mask=None):
        B, T, d = x.shape
        # (B, T, d) -> (B, n_head, T, d_head)
        q = self.q_proj(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # causal attention; scale 1/sqrt(d_head) (SDPA's default); mask: (B, 1, T, T) bool, True = attend
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None,
            dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, d)                           # (B, T, d)
        return self.resid_dropout(self.o_proj(y))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        h = cfg.mlp_hidden
        self.gate_proj = nn.Linear(cfg.d_model, h, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.d_model, h, bias=cfg.bias)
        self.down_proj = nn.Linear(h, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class GeluMLP(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(F.gelu(self.up_proj(x))))


class Block(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.placement = cfg.placement
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg)
        self.mlp = SwiGLU(cfg) if cfg.mlp == "swiglu" else GeluMLP(cfg)

    def forward(self, x, cos, sin, mask=None):
        """x: (B, T, d) residual stream in; returns the residual stream after the block, (B, T, d)."""
        if self.placement == "pre":
            x = x + self.attn(self.attn_norm(x), cos, sin, mask)
            x = x + self.mlp(self.mlp_norm(x))
        else:
            x = self.attn_norm(x + self.attn(x, cos, sin, mask))
            x = self.mlp_norm(x + self.mlp(x))
        return x


# ----------------------------------------------------------------------------------------- model

class ToyTransformer(nn.Module):
    """Decoder-only LM. Initialisation (nanoGPT): every Linear and the embedding ~ N(0, 0.02), biases 0,
    norms 1 (LayerNorm bias 0), residual projections (o_proj, down_proj) ~ N(0, 0.02/sqrt(2 n_layer)).
    It draws from torch's global RNG: seed with torch.manual_seed before constructing."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.rotary = RotaryEmbedding(cfg.d_head, cfg.rope_theta)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.final_norm = make_norm(cfg) if cfg.placement == "pre" else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.apply(self._init_weights)
        resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=resid_std)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def n_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied matrix counted once); non_embedding drops embed (and an untied
        lm_head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        """input_ids (B, T) -> logits (B, T, V). attention_mask (B, T), 1 = real token, 0 = padding
        (right padding): padded keys are masked out. position_ids (B, T) default arange(T)."""
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        cos, sin = self.rotary(position_ids)                             # (B, 1, T, d_head)
        cos, sin = cos.to(self.embed.weight.dtype), sin.to(self.embed.weight.dtype)
        mask = None
        if attention_mask is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
            mask = causal & attention_mask.bool()[:, None, None, :]     # (B, 1, T, T)
            # a query with no visible key (left padding) would give NaN: let it see itself
            mask = mask | torch.eye(T, dtype=torch.bool, device=input_ids.device)
        x = self.drop(self.embed(input_ids))                             # (B, T, d)
        for block in self.blocks:
            x = block(x, cos, sin, mask)                                 # (B, T, d)
        return self.lm_head(self.final_norm(x))                          # (B, T, V)
