"""The architecture table: where every supported family keeps its embedding, blocks, norms, attention
weights and unembedding, and what is peculiar about it. ``describe`` (arch.py) reads only this table;
nothing else in the project branches on the architecture. To support a new family, add a row (and a
tiny model of it to tests/test_families.py); a family without a row still gets its states through the
generic fallback of arch.py, but no attention weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .spec import ModelSpecError

Config = Any
ConfigValue = Callable[[Config], Any]    # a per-model value read from the model's config


@dataclass(frozen=True)
class ArchSpec:
    """Where things live in one architecture. Paths are dotted module paths; model-level paths are
    relative to the base model found through ``prefixes`` (tried in order: ``model.`` inside
    ``LlamaForCausalLM``, nothing for ``LlamaModel``), except ``lm_head``, which is at the root;
    block-level paths are relative to one block (``layers[i]``). Values that depend on the checkpoint
    (e.g. OPT's norm placement) are functions of the model config."""
    name: str
    matches: tuple[str, ...]            # config.model_type values, or class names (toy)
    is_decoder: bool
    auto_class: str | None              # "causal" -> AutoModelForCausalLM, "base" -> AutoModel, None: not HF
    prefixes: tuple[str, ...]           # base-model prefixes inside the root module
    embed: str                          # module whose output (embed_hook "output") or first input
                                        # ("input") is state 0, the residual stream's first state
    embed_weight: str                   # parameter holding the token embedding [vocab, d_embed]
    layers: str                         # nn.ModuleList of blocks; block l's output is state l+1
    final_norm: str | None              # its output is state L+1 (None, or absent: no final norm)
    lm_head: str | None                 # at the root (no prefix); weight [vocab, d_embed]
    # inside one block
    q: str | None
    k: str | None
    v: str | None
    o: str
    attn: str = "self_attn"             # the attention module (its ``scaling`` is the score scale)
    qkv: str | None = None              # fused q/k/v projection
    qkv_layout: str = "heads"           # fused rows: "heads" [H, 3, d_head] (NeoX) | "blocks" [q | k | v]
    conv1d: bool = False                # weights stored [in, out] (GPT-2's Conv1D), not nn.Linear's [out, in]
    q_norm: str | None = None           # q/k norms (Gemma 3, Qwen 3: per head; OLMo 2: over all heads)
    k_norm: str | None = None
    attn_norm: str | None = None        # the norm on the attention input (pre-norm) or on the sum (post)
    attn_out_norm: str | None = None    # norm on the attention output before the residual add
    norm_placement: str | ConfigValue = "pre"   # "pre" | "post" | "post-sublayer" | "config:<attr>"
    norm_weight_offset: float = 0.0     # effective scale = weight + offset (Gemma RMSNorm: 1 + weight)
    norm_eps: float | None = None       # for norm modules that do not store their eps (OLMo's LayerNorm)
    embed_hook: str = "output"          # "input": no module outputs state 0 (OPT sums it inline)
    embed_proj: str | None = None       # projection after the token embedding (OPT project_in)
    unembed_proj: str | None = None     # projection before the lm_head (OPT project_out)
    pos_embed: str | None = None        # learned absolute position embedding module
    pos_row_offset: int | ConfigValue = 0        # its row of position 0 (OPT 2, RoBERTa pad + 1)
    position_ids_offset: int | ConfigValue = 0   # what the model expects as position_ids of position 0
    rotary: str | None = "rotary_emb"   # rotary embedding module (its attention_scaling scales q and k)
    parallel: bool | ConfigValue = False        # attention and MLP read the same input (GPT-J style)
    unscaled_scores: bool = False       # scores are q.k without 1/sqrt(d_head) (GPT-Neo)
    # config attribute names, tried in order
    cfg_layers: tuple[str, ...] = ("num_hidden_layers",)
    cfg_d_model: tuple[str, ...] = ("hidden_size",)
    cfg_heads: tuple[str, ...] = ("num_attention_heads",)
    cfg_kv_heads: tuple[str, ...] = ("num_key_value_heads",)
    cfg_d_head: tuple[str, ...] = ("head_dim",)
    cfg_context: tuple[str, ...] = ("max_position_embeddings",)
    cfg_vocab: tuple[str, ...] = ("vocab_size",)
    notes: str = ""


def config_value(value, config: Config):
    """A row value for one model: functions are called with the config, "config:<attr>" is read from it."""
    if callable(value):
        return value(config)
    if isinstance(value, str) and value.startswith("config:"):
        return getattr(config, value.split(":", 1)[1])
    return value


_LLAMA = dict(is_decoder=True, auto_class="causal", prefixes=("model.", ""), embed="embed_tokens",
              embed_weight="embed_tokens.weight", layers="layers", final_norm="norm", lm_head="lm_head",
              q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
              attn_norm="input_layernorm")
_GPT2 = dict(is_decoder=True, auto_class="causal", prefixes=("transformer.", ""), embed="drop",
             embed_weight="wte.weight", layers="h", final_norm="ln_f", lm_head="lm_head", attn_norm="ln_1",
             pos_embed="wpe", rotary=None)
_BERT = dict(is_decoder=False, auto_class="base", embed="embeddings", embed_weight="embeddings.word_embeddings.weight",
             layers="encoder.layer", final_norm=None, lm_head=None, q="attention.self.query",
             k="attention.self.key", v="attention.self.value", o="attention.output.dense",
             attn="attention.self", attn_norm="attention.output.LayerNorm", norm_placement="post",
             pos_embed="embeddings.position_embeddings", rotary=None)

ARCHITECTURES: dict[str, ArchSpec] = {
    "toy": ArchSpec(
        name="toy", matches=("ToyTransformer",), is_decoder=True, auto_class=None, prefixes=("",),
        embed="embed", embed_weight="embed.weight", layers="blocks", final_norm="final_norm",
        lm_head="lm_head", q="attn.q_proj", k="attn.k_proj", v="attn.v_proj", o="attn.o_proj", attn="attn",
        attn_norm="attn_norm", norm_placement="config:placement", rotary="rotary",
        cfg_layers=("n_layer",), cfg_d_model=("d_model",), cfg_heads=("n_head",), cfg_kv_heads=("n_head",),
        cfg_d_head=("d_head",), cfg_context=("context",),
        notes="RoPE, no learned positions; post-norm presets have final_norm = Identity"),
    "llama": ArchSpec(
        name="llama", matches=("llama", "mistral", "qwen2", "qwen3"), **_LLAMA,
        q_norm="self_attn.q_norm", k_norm="self_attn.k_norm",
        notes="RMSNorm pre-norm, RoPE, grouped-query attention (Mistral, Qwen 2: q/k/v biases; "
              "Qwen 3: per-head q/k RMSNorm)"),
    "olmo": ArchSpec(
        name="olmo", matches=("olmo",), **_LLAMA, norm_eps=1e-5,
        notes="OLMo 1: LayerNorm without weight or bias (non-parametric), RoPE; clip_qkv clamps q/k/v"),
    "olmo2": ArchSpec(
        name="olmo2", matches=("olmo2",), **{**_LLAMA, "attn_norm": None},
        q_norm="self_attn.q_norm", k_norm="self_attn.k_norm", attn_out_norm="post_attention_layernorm",
        norm_placement="post-sublayer",
        notes="OLMo 2: RMSNorm on the outputs of attention and MLP (x + norm(f(x))), not on their inputs; "
              "q/k RMSNorm over all heads together"),
    "gemma": ArchSpec(
        name="gemma", matches=("gemma",), **_LLAMA, norm_weight_offset=1.0,
        notes="Gemma 1: embedding output scaled by sqrt(d); RMSNorm scale is 1 + weight"),
    "gemma2": ArchSpec(
        name="gemma2", matches=("gemma2",), **_LLAMA, norm_weight_offset=1.0,
        attn_out_norm="post_attention_layernorm",
        notes="embedding output scaled by sqrt(d); RMSNorm scale is 1 + weight; sandwich norms; attention "
              "and final logits soft-capped; sliding-window layers"),
    "gemma3": ArchSpec(
        name="gemma3", matches=("gemma3_text",), **_LLAMA, norm_weight_offset=1.0,
        q_norm="self_attn.q_norm", k_norm="self_attn.k_norm", attn_out_norm="post_attention_layernorm",
        notes="embedding output scaled by sqrt(d); RMSNorm scale is 1 + weight; sandwich norms; "
              "per-head q/k norms; sliding-window layers"),
    "phi": ArchSpec(
        name="phi", matches=("phi",), **{**_LLAMA, "final_norm": "final_layernorm", "o": "self_attn.dense"},
        q_norm="self_attn.q_layernorm", k_norm="self_attn.k_layernorm", parallel=True,
        notes="Phi 1/2: LayerNorm, attention and MLP in parallel on one norm, partial rotary, biased lm_head"),
    "phi3": ArchSpec(
        name="phi3", matches=("phi3",), **{**_LLAMA, "q": None, "k": None, "v": None},
        qkv="self_attn.qkv_proj", qkv_layout="blocks",
        notes="Phi 3: fused qkv_proj laid out [q | k | v]; RMSNorm pre-norm; RoPE (longrope on long-context "
              "checkpoints)"),
    "gpt2": ArchSpec(
        name="gpt2", matches=("gpt2",), **_GPT2, q=None, k=None, v=None, o="attn.c_proj", attn="attn",
        qkv="attn.c_attn", qkv_layout="blocks", conv1d=True,
        notes="GPT-2: learned absolute positions (state 0 = token + position embedding), Conv1D weights, "
              "fused c_attn laid out [q | k | v], LayerNorm pre-norm, tied unembedding"),
    "gpt_neo": ArchSpec(
        name="gpt_neo", matches=("gpt_neo",), **_GPT2, q="attn.attention.q_proj", k="attn.attention.k_proj",
        v="attn.attention.v_proj", o="attn.attention.out_proj", attn="attn.attention", unscaled_scores=True,
        cfg_layers=("num_layers",), cfg_heads=("num_heads",),
        notes="GPT-Neo: learned absolute positions, scores not scaled by 1/sqrt(d_head), alternating global "
              "and local (windowed) attention layers"),
    "gpt_neox": ArchSpec(
        name="gpt_neox", matches=("gpt_neox",), is_decoder=True, auto_class="causal",
        prefixes=("gpt_neox.", ""), embed="embed_in", embed_weight="embed_in.weight", layers="layers",
        final_norm="final_layer_norm", lm_head="lm_head", q=None, k=None, v=None, o="attention.dense",
        attn="attention", qkv="attention.query_key_value", attn_norm="input_layernorm",
        parallel="config:use_parallel_residual",
        notes="Pythia: parallel attention + MLP residual, fused QKV laid out head by head, partial rotary"),
    "opt": ArchSpec(
        name="opt", matches=("opt",), is_decoder=True, auto_class="causal", prefixes=("model.decoder.", ""),
        embed="layers.0", embed_hook="input", embed_weight="embed_tokens.weight", layers="layers",
        final_norm="final_layer_norm", lm_head="lm_head", q="self_attn.q_proj", k="self_attn.k_proj",
        v="self_attn.v_proj", o="self_attn.out_proj", attn_norm="self_attn_layer_norm",
        norm_placement=lambda c: "pre" if c.do_layer_norm_before else "post",
        embed_proj="project_in", unembed_proj="project_out", pos_embed="embed_positions", pos_row_offset=2,
        rotary=None,
        notes="OPT: learned absolute positions (rows offset by 2), state 0 = token + position embedding "
              "summed inline (read as the first block's input); opt-350m: post-norm, project_in/out "
              "(folded into W_E and W_U), no final norm"),
    "bert": ArchSpec(
        name="bert", matches=("bert",), prefixes=("bert.", ""), **_BERT,
        notes="post-LN encoder: state 0 = word + position + token-type embeddings after LayerNorm"),
    "roberta": ArchSpec(
        name="roberta", matches=("roberta",), prefixes=("roberta.", ""), **_BERT,
        pos_row_offset=lambda c: c.pad_token_id + 1, position_ids_offset=lambda c: c.pad_token_id + 1,
        notes="post-LN encoder like BERT; position ids start at pad_token_id + 1"),
}


def find_row(model_or_config) -> ArchSpec | None:
    """The table row of a model (by ``config.model_type``, or class name for the toy) or of a config."""
    config = getattr(model_or_config, "config", model_or_config)
    keys = [getattr(config, "model_type", None), type(model_or_config).__name__]
    for row in ARCHITECTURES.values():
        if any(k in row.matches for k in keys if k):
            return row
    return None


def no_row_message(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    return (f"no row in tg_utils.models.ARCHITECTURES for {type(model_or_config).__name__} (model_type "
            f"{getattr(config, 'model_type', None)!r}); add one in tg_utils/models/table.py (module paths "
            f"of its embedding, blocks, norms and q/k/v/o projections) and a tiny model of it to "
            f"tests/test_families.py")


def arch_for(model: Any) -> ArchSpec:
    """The table row of a loaded model; ModelSpecError naming the table when it has none."""
    row = find_row(model)
    if row is None:
        raise ModelSpecError(no_row_message(model) + f"; supported: {[r.matches for r in ARCHITECTURES.values()]}")
    return row
