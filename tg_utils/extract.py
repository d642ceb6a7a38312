"""Token states of every layer with nnsight, and the next-token loss per prompt.

    lm = load_model("smollm2-135m")
    st = extract_states(lm, prompts)                 # prompts: lists of token ids
    st.states[i]      # prompt i: [n_selected_layers, T_i, d] (positions="all") or [n_selected_layers, d] ("last")
    st.layers         # the state indices selected
    st.loss[i]        # mean next-token cross-entropy of prompt i (nats); NaN for encoders / 1-token prompts

State index convention (the same everywhere in the project, see ModelDescription):
    0            the residual stream's first state, the first block's input: the embedding output (Gemma:
                 already scaled by sqrt(d); GPT-2/OPT: token + learned position embedding; BERT: after the
                 embedding LayerNorm); read as the first block's input where no module outputs it (OPT)
    l = 1..L     the output of block l (the residual stream after it)
    L + 1        the final-normed output (only for models with a final norm; it is what the unembedding reads)
For the plain-transformers comparison: our states 0..L-1 equal ``output_hidden_states`` entries 0..L-1 and
our L+1 equals hidden_states[L] (transformers' last entry is post final norm; the raw output of the last
block, our L, is not among them). For BERT (no final norm) our 0..L equal hidden_states[0..L].

Batching: prompts are sorted by length, padded on the right with an attention mask and explicit position
ids 0..T-1 (RoBERTa: shifted by desc.position_ids_offset), so every real token sees exactly what it sees
alone; padded positions are dropped. Batched equals one-by-one to float32 rounding (tests check 1e-5).

Loss: the forward pass stops after the last module read (nnsight ``tracer.stop()``), so the lm_head never
materialises [B, T, vocab] logits; the loss is computed from the final-normed states through the
unembedding in chunks of at most ``loss_chunk_elems`` logits (Gemma's 262k vocabulary: 1024 tokens of
logits would be 1 GB).

Storage dtype: float16 overflows on real models (Gemma-3-270M's BOS state reaches |x| ~ 1e5 > 65504); a
cast that overflows raises. Use bfloat16 (same size, float32 range) or float32.

Scaling without new code:
- ``load_model(spec, device_map="auto")``: transformers/accelerate spread the layers over the GPUs (and CPU
  memory); needs accelerate and, to be useful, GPUs. Inputs go to the embedding's device; each layer's
  state is moved to the CPU before a prompt's layers are stacked (``gather_layers``: they come from
  different GPUs), and the last-token index follows each layer to its device.
- ``extract_states(lm, prompts, remote=True)``: runs the same trace on NDIF (https://ndif.us) through
  nnsight's ``TransformersModel``; needs a network, an NDIF API key (env NDIF_API_KEY or
  ``nnsight.CONFIG.set_default_api_key``), and a hub model NDIF hosts (load the spec with
  ``device="meta"`` so that no weights are downloaded). The loss is then computed inside the remote trace
  from the lm_head output. ``remote="local"`` runs nnsight's local simulation of that path (serialises the
  trace and runs it in-process) and is what the tests exercise.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .models import OFFLINE_SPECS, LoadedModel
from .models.load import torch_dtype
from .models.unembed import DEFAULT_LOSS_CHUNK_ELEMS, next_token_nll



class NonFiniteStateError(FloatingPointError):
    """NaN or inf in an extracted state."""


@dataclass
class States:
    """The result of extract_states: per-prompt state tensors and the loss per prompt."""
    spec: str
    layers: list[int]
    positions: str
    states: list[torch.Tensor]              # [n_layers_sel, T_i, d] or [n_layers_sel, d]
    loss: torch.Tensor                      # [n_prompts] float32, NaN where undefined
    lengths: list[int]
    layer_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.states)

    def layer_pos(self, layer: int) -> int:
        """Row of state index `layer` in each prompt's tensor."""
        try:
            return self.layers.index(layer)
        except ValueError:
            raise KeyError(f"state {layer} was not extracted; have {self.layers}") from None

    def at(self, layer: int) -> list[torch.Tensor] | torch.Tensor:
        """All prompts at one state index: a list of [T_i, d] ("all"), or [n_prompts, d] ("last")."""
        j = self.layer_pos(layer)
        if self.positions == "last":
            return torch.stack([s[j] for s in self.states])
        return [s[j] for s in self.states]

    def stacked(self) -> torch.Tensor:
        """positions="last" only: [n_prompts, n_layers_sel, d]."""
        if self.positions != "last":
            raise ValueError("stacked() needs positions='last' (prompts have different lengths)")
        return torch.stack(self.states)


# ============================================================================ inputs

def _as_id_lists(prompts) -> list[list[int]]:
    out = []
    for i, p in enumerate(prompts):
        if torch.is_tensor(p):
            p = p.reshape(-1).tolist()
        elif hasattr(p, "tolist"):
            p = p.tolist()
        elif isinstance(p, str):
            raise TypeError(f"prompt {i} is a string; extract_states takes token ids (lists of ints): "
                            f"tokenize it first (lm.encode(text))")
        out.append([int(t) for t in p])
    return out


def check_prompts(lm: LoadedModel, prompts: list[list[int]]) -> None:
    """Refuse empty prompts, out-of-vocabulary ids and prompts longer than the model's context."""
    desc = lm.desc
    if not prompts:
        raise ValueError("no prompts")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        if desc.context and len(p) > desc.context:
            raise ValueError(f"prompt {i} has {len(p)} tokens, more than the {desc.context} positions "
                             f"{desc.spec} takes (its context length); shorten or split it")
        lo, hi = min(p), max(p)
        if lo < 0 or hi >= desc.vocab_size:
            raise ValueError(f"prompt {i} holds token id {hi if hi >= desc.vocab_size else lo}, outside "
                             f"{desc.spec}'s vocabulary [0, {desc.vocab_size})")


def resolve_layers(lm: LoadedModel, layers) -> list[int]:
    """Sorted unique state indices; None = all (0..n_states-1); negative indices count from the end."""
    n = lm.desc.n_states
    if layers is None:
        return list(range(n))
    if isinstance(layers, int):
        layers = [layers]
    out = set()
    for l in layers:
        l = int(l)
        if not -n <= l < n:
            raise ValueError(f"state index {l} out of range for {lm.desc.spec}: 0..{n - 1} "
                             f"(0 = embedding, 1..{lm.desc.n_layers} = blocks"
                             f"{', ' + str(n - 1) + ' = final norm' if lm.desc.final_norm_path else ''})")
        out.add(l % n)
    return sorted(out)


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def _pad(prompts: list[list[int]], idx: list[int], pad_id: int, device, pos_offset: int = 0) -> dict:
    T = max(len(prompts[i]) for i in idx)
    ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), T), dtype=torch.long)
    for r, i in enumerate(idx):
        ids[r, :len(prompts[i])] = torch.tensor(prompts[i], dtype=torch.long)
        mask[r, :len(prompts[i])] = 1
    pos = (torch.arange(T) + pos_offset).expand(len(idx), T).contiguous()   # RoBERTa counts from pad + 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": pos.to(device)}


def gather_layers(parts: Sequence[torch.Tensor], device="cpu") -> torch.Tensor:
    """Stack one prompt's layer states [T, d] (or [d]) into [n_layers, ...] on `device`. With
    device_map="auto" the blocks sit on different GPUs, so their outputs do too: each is moved to `device`
    first (a no-op for states already there), dtype unchanged."""
    return torch.stack([p.to(device) for p in parts])


# ============================================================================ nnsight

def _envoy(root, path: str):
    e = root
    for part in path.split(".") if path else []:
        e = e[int(part)] if part.isdigit() else getattr(e, part)
    return e


def _wrapper(lm: LoadedModel, remote):
    """The nnsight wrapper of a loaded model, built once per (model, mode)."""
    cache = lm.__dict__.setdefault("_nnsight", {})
    key = "local" if not remote else str(remote)
    if key in cache:
        return cache[key]
    lm.model.requires_grad_(False)           # nnsight may run the forward outside this thread's no_grad
    # nnsight is imported on first use, on purpose: it is heavy, and the rest of this module (prompt
    # checks, layer lists) serves callers that never trace
    if not remote:
        from nnsight import NNsight
        with warnings.catch_warnings():      # BERT has submodules named "output": nnsight renames them
            warnings.filterwarnings("ignore", message=".*has a submodule named 'output'.*")
            w = NNsight(lm.model)
    else:
        from nnsight.modeling.transformers import TransformersModel
        if not lm.desc.is_decoder:
            raise ValueError("remote extraction is wired for decoder language models only")
        if remote == "local":          # nnsight's serialise-and-run-locally simulation of the remote path
            w = TransformersModel(lm.model, tokenizer=lm.tokenizer, task="text-generation")
        else:
            from nnsight import CONFIG
            spec = lm.desc.spec
            if spec.startswith("toy:") or spec in OFFLINE_SPECS or Path(lm.desc.source).exists():
                raise ValueError(f"remote=True runs a model hosted by NDIF, named by its hub id; {spec!r} is "
                                 f"a local model (use remote=False, or remote='local' to simulate)")
            if not CONFIG.API.APIKEY:
                raise RuntimeError("remote=True runs on NDIF and needs an API key: set NDIF_API_KEY or call "
                                   "nnsight.CONFIG.set_default_api_key(key) (keys from https://login.ndif.us)")
            w = TransformersModel(lm.desc.source, revision=lm.desc.revision, tokenizer=lm.tokenizer)
    cache[key] = w
    return w


def _trace(wrapper, inputs: dict, paths: list[str], last_idx, remote, keep_full: int | None = None,
           nll_spec=None, hooks: list[str] | None = None):
    """Run one batch through the nnsight wrapper. Returns (outs, full, nll): the outputs of the modules at
    `paths` (in execution order; the first input instead where `hooks` says "input"; the first element
    of a tuple output), each [B, T, d] or, with last_idx, [B, d] at those positions; `full`, the
    all-positions output of paths[keep_full] (for the loss); and, with nll_spec (the remote path), the
    per-token NLL [B, T-1] computed inside the trace from the lm_head output."""
    import nnsight

    envoys = [_envoy(wrapper, p) for p in paths]
    rows = None if last_idx is None else torch.arange(len(last_idx))
    with torch.no_grad():
        tr_ctx = wrapper.trace(**inputs, remote=remote) if remote else wrapper.trace(**inputs)
        with tr_ctx as tr:
            res = []
            full = None
            for j, env in enumerate(envoys):
                h = env.input if hooks is not None and hooks[j] == "input" else env.output
                if isinstance(h, tuple):         # blocks that return (hidden_states, attn_weights): GPT-Neo
                    h = h[0]
                if j == keep_full:
                    full = h
                if last_idx is not None:      # device_map: each layer's output on its own GPU
                    h = h[rows.to(h.device), last_idx.to(h.device)]
                res.append(h)
            nll = None
            if nll_spec is not None:
                head, targets, softcap = nll_spec
                logits = head.output[:, :-1].float()
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            res = nnsight.save([res, full, nll])
            if nll_spec is None:
                tr.stop()
    return res


# ============================================================================ the extractor

def _raise_nonfinite(lm, x: torch.Tensor, layers: list[int], prompt: int, positions: str):
    bad = ~torch.isfinite(x)
    j = int(bad.reshape(bad.shape[0], -1).any(1).nonzero()[0])
    where = ""
    if positions == "all":
        t = int(bad[j].any(-1).nonzero()[0])
        where = f" at position {t}"
    raise NonFiniteStateError(
        f"{lm.desc.spec}: NaN/inf in state {layers[j]} ({lm.desc.state_name(layers[j])}) of prompt {prompt}"
        f"{where}")


def extract_states(lm: LoadedModel, prompts: Sequence[Sequence[int]], layers=None, positions: str = "all",
                   dtype="float32", batch_size: int = 8, remote: bool | str = False, progress: bool = True,
                   compute_loss: bool = True, check_finite: bool = True,
                   loss_chunk_elems: int = DEFAULT_LOSS_CHUNK_ELEMS) -> States:
    """States of `prompts` (lists of token ids) at the state indices `layers` (None = all; see the module
    docstring for the convention), at all positions or the last real token only, stored as `dtype`
    (on the CPU), with the mean next-token loss per prompt.

    batch_size: prompts per forward pass (sorted by length to limit padding).
    remote: False (local), True (NDIF: needs an API key and a hosted hub model), "local" (nnsight's local
      simulation of the remote path), or an NDIF host URL.
    Raises ValueError for empty / too long / out-of-vocabulary prompts and NonFiniteStateError (naming the
    model, the state and the prompt) for NaN or inf in a state.
    """


    if positions not in ("all", "last"):
        raise ValueError(f"positions must be 'all' or 'last', got {positions!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    out_dtype = torch_dtype(dtype)
    desc = lm.desc
    prompts = _as_id_lists(prompts)
    check_prompts(lm, prompts)
    sel = resolve_layers(lm, layers)
    want_loss = compute_loss and desc.is_decoder and desc.W_U is not None
    final_idx = desc.n_states - 1
    capture = sorted(set(sel) | ({final_idx} if want_loss and not remote else set()))
    paths = [desc.state_paths[i] for i in capture]
    hooks = [desc.state_hooks[i] for i in capture]
    sel_rows = [capture.index(i) for i in sel]
    wrapper = _wrapper(lm, remote)
    device = desc.W_E.device if desc.W_E.device.type != "meta" else torch.device("cpu")
    pad_id = desc.pad_token_id if desc.pad_token_id is not None else 0

    lengths = [len(p) for p in prompts]
    states: list[torch.Tensor | None] = [None] * len(prompts)
    loss = torch.full((len(prompts),), float("nan"), dtype=torch.float32)
    batches = _batches(lengths, batch_size)
    bar = tqdm(total=sum(lengths), unit="tok", desc=f"extract {desc.spec}", disable=not progress,
               leave=False)
    keep_full = capture.index(final_idx) if want_loss and not remote else None
    for idx in batches:
        inputs = _pad(prompts, idx, pad_id, device, desc.position_ids_offset)
        n = inputs["attention_mask"].sum(1)
        last_idx = (n - 1) if positions == "last" else None
        nll_spec = None
        if want_loss and remote:
            nll_spec = (_envoy(wrapper, desc.lm_head_path), inputs["input_ids"][:, 1:], desc.logit_softcap)
        hs, full, tok_nll = _trace(wrapper, inputs, paths, last_idx, remote, keep_full, nll_spec, hooks)
        if want_loss:
            mask = inputs["attention_mask"][:, 1:].bool()
            if tok_nll is None:          # local: from the final-normed states, real positions only
                targets = inputs["input_ids"][:, 1:][mask]
                h = full[:, :-1][mask.to(full.device)]
                nll_real = next_token_nll(h, targets.to(h.device), desc.W_U, desc.b_U, desc.logit_softcap,
                                          loss_chunk_elems).cpu()
                tok_nll = torch.zeros(mask.shape, dtype=torch.float32)
                tok_nll[mask.cpu()] = nll_real
            m = mask.cpu()
            per = torch.where(m, tok_nll.float().cpu(), 0.0).sum(1) / m.sum(1)  # NaN for 1-token prompts
            for r, i in enumerate(idx):
                loss[i] = per[r]
        del full
        for r, i in enumerate(idx):
            T_i = int(n[r])
            if positions == "all":
                x = gather_layers([hs[j][r, :T_i] for j in sel_rows])
            else:
                x = gather_layers([hs[j][r] for j in sel_rows])
            if check_finite and not torch.isfinite(x).all():
                _raise_nonfinite(lm, x, sel, i, positions)
            y = x.to(device="cpu", dtype=out_dtype)
            if check_finite and out_dtype != x.dtype and not torch.isfinite(y).all():
                j = int((~torch.isfinite(y)).reshape(len(sel), -1).any(1).nonzero()[0])
                raise NonFiniteStateError(
                    f"{desc.spec}: state {sel[j]} ({desc.state_name(sel[j])}) of prompt {i} overflows the "
                    f"storage dtype {str(out_dtype).replace('torch.', '')} (max |x| = "
                    f"{float(x[j].abs().max()):.4g}; float16 ends at 65504): store bfloat16 or float32")
            states[i] = y
        del hs
        bar.update(int(n.sum()))
    bar.close()
    names = [desc.state_name(l) for l in sel]
    return States(spec=desc.spec, layers=sel, positions=positions, states=states, loss=loss,
                  lengths=lengths, layer_names=names)
