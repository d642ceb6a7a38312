"""Extraction benchmark: overhead of tg_utils.extract over a bare forward pass, tokens/s, peak memory and
the cache footprint, per model, on this machine.

    .venv/bin/python benchmarks/bench_extract.py                 # all models, default sizes
    .venv/bin/python benchmarks/bench_extract.py --models smollm2-135m --prompts 8 --tokens 128

Each model runs in its own subprocess so that its peak RSS is its own. Per model:
  bare      model(input_ids, attention_mask) under no_grad: the full forward with logits, same batches
  +loss     the same plus the mean next-token loss per prompt from the logits (decoders)
  hidden    output_hidden_states=True (+ the loss for decoders): plain transformers' way to get states
  extract   extract_states(all layers, all positions, float32, with the loss per prompt)
overhead = extract / baseline - 1 (target <= 5 %), baseline = +loss for decoders (extract computes the loss
too), bare for encoders; from medians of interleaved repeats, in wall-clock and in process CPU time.
Timings on a shared machine are noisy: compare medians, and use --threads 1 for the CPU-time overhead.
The toy model is the latest checkpoint of the first run under outputs/checkpoints if there is one, else a
randomly initialised default-size toy transformer (ToyConfig defaults) labelled "toy(random)".
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_MODELS = ["toy", "smollm2-135m", "gemma3-270m", "minilm-l6"]
TEXT = ("The history of the city begins with a small settlement on the river, where traders exchanged grain, "
        "salt and cloth. Over the centuries the town grew into a regional centre of commerce and learning; "
        "its university, founded in the fourteenth century, attracted scholars from across the continent. "
        "In mathematics, an algorithm is a finite sequence of rigorous instructions, typically used to solve "
        "a class of specific problems or to perform a computation. ")


def toy_model():
    import torch

    from tg_utils.models import LoadedModel, describe, load_model
    from tg_utils.toy.checkpoints import list_checkpoints
    ck = ROOT / "outputs" / "checkpoints"
    runs = sorted(p.name for p in ck.iterdir() if p.is_dir() and list_checkpoints(p)) if ck.is_dir() else []
    if runs:
        return load_model(f"toy:{runs[0]}")
    from tg_utils.toy.model import ToyConfig, ToyTransformer
    torch.manual_seed(0)
    m = ToyTransformer(ToyConfig()).eval().requires_grad_(False)
    return LoadedModel(m, None, describe(m, None, spec="toy(random)"))


def make_prompts(lm, n: int, T: int) -> list[list[int]]:
    import torch
    T = min(T, lm.desc.context or T)
    if lm.tokenizer is not None:
        ids = lm.encode(TEXT * (1 + 4 * T // len(TEXT.split())))
        return [ids[i: i + T] for i in range(0, n * 7, 7)][:n]
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, lm.desc.vocab_size, (T,), generator=g).tolist() for _ in range(n)]


def run_one(spec: str, n: int, T: int, batch_size: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from tg_utils.cache import cached_states
    from tg_utils.extract import _pad, extract_states
    from tg_utils.models import load_model

    t0 = time.perf_counter()
    lm = toy_model() if spec == "toy" else load_model(spec)
    t_load = time.perf_counter() - t0
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    prompts = make_prompts(lm, n, T)
    n_tok = sum(map(len, prompts))
    batches = [list(range(s, min(n, s + batch_size))) for s in range(0, n, batch_size)]
    pad = lm.desc.pad_token_id or 0
    inputs = [_pad(prompts, b, pad, "cpu") for b in batches]

    def bare(hidden=False, loss=False):
        with torch.no_grad():
            for x in inputs:
                out = lm.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                               **({"output_hidden_states": True} if hidden else {}))
                if loss:                      # what a plain user does to get the loss per prompt
                    logits = out if torch.is_tensor(out) else out.logits
                    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), x["input_ids"][:, 1:],
                                          reduction="none")
                    (nll * x["attention_mask"][:, 1:]).sum(1) / x["attention_mask"][:, 1:].sum(1)

    def extract():
        return extract_states(lm, prompts, batch_size=batch_size, progress=False)

    decoder = lm.desc.is_decoder
    variants = {"bare": bare, "extract": extract}
    if lm.desc.arch != "toy":
        variants["hidden"] = lambda: bare(hidden=True, loss=decoder)
    if decoder:
        variants["bare_loss"] = lambda: bare(loss=True)
    extract()                                                # warm-up; the peak so far is load + extract
    peak_extract = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for fn in variants.values():                             # warm-up (allocator) of the baselines
        fn()
    times = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for _ in range(repeats):                                 # interleaved, so load drifts hit all alike
        for name, fn in variants.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    med = {k: statistics.median(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    base = "bare_loss" if decoder else "bare"
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cached_states(lm, prompts, out_dir=tmp, dtype="bfloat16", batch_size=batch_size, progress=False,
                      chunk_size=max(1, n // 2), load=False)
        t_cache = time.perf_counter() - t
        t = time.perf_counter()
        cached_states(lm, prompts, out_dir=tmp, dtype="bfloat16", progress=False, chunk_size=max(1, n // 2))
        t_read = time.perf_counter() - t
        from tg_utils.cache import cache_footprint
        fp = cache_footprint(tmp, include_models=False)["states_bytes"]
    d = lm.desc
    return {
        "model": d.spec, "layers": d.n_layers, "d": d.d_model, "vocab": d.vocab_size, "prompts": n,
        "tokens": n_tok, "load_s": t_load, "baseline": base, "bare_s": med["bare"],
        "bare_loss_s": med.get("bare_loss"), "hidden_s": med.get("hidden"), "extract_s": med["extract"],
        "overhead_pct": 100 * (med["extract"] / med[base] - 1),
        "overhead_cpu_pct": 100 * (cmed["extract"] / cmed[base] - 1),
        "overhead_vs_bare_pct": 100 * (med["extract"] / med["bare"] - 1),
        "tok_per_s": n_tok / med["extract"], "bare_tok_per_s": n_tok / med["bare"], "cpu_s": cmed,
        "all_runs": times, "all_cpu": cpu, "rss_after_load_mb": rss_loaded, "peak_extract_mb": peak_extract,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cache_bf16_bytes": fp, "cache_bytes_per_token": fp / n_tok, "cache_write_s": t_cache,
        "cache_read_s": t_read,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128, help="tokens per prompt")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args()
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    if a.one:
        print("RESULT " + json.dumps(run_one(a.one, a.prompts, a.tokens, a.batch_size, a.repeats)))
        return
    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"{a.prompts} prompts x {a.tokens} tokens, batch {a.batch_size}, median of {a.repeats}; "
          f"load average {os.getloadavg()[0]:.1f} (shared machine: timings are noisy)")
    rows = []
    for spec in a.models:
        cmd = [sys.executable, __file__, "--one", spec, "--prompts", str(a.prompts), "--tokens", str(a.tokens),
               "--batch-size", str(a.batch_size), "--repeats", str(a.repeats), "--threads", str(a.threads)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(f"{spec}: failed\n{p.stderr[-2000:]}")
            continue
        rows.append(json.loads(line[7:]))
    hdr = (f"{'model':22s} {'L':>3s} {'d':>4s} {'tokens':>6s} {'load s':>6s} {'bare s':>6s} {'+loss s':>7s} "
           f"{'hid s':>6s} {'extr s':>6s} {'ovh %':>6s} {'cpu ovh%':>8s} {'tok/s':>6s} {'peak MB':>7s} {'all MB':>7s} "
           f"{'cache B/tok':>11s}")
    print(hdr)
    f = lambda v, w=6: f"{v:{w}.2f}" if v is not None else f"{'-':>{w}s}"
    for r in rows:
        print(f"{r['model'][:22]:22s} {r['layers']:3d} {r['d']:4d} {r['tokens']:6d} {f(r['load_s'])} "
              f"{f(r['bare_s'])} {f(r['bare_loss_s'], 7)} {f(r['hidden_s'])} {f(r['extract_s'])} "
              f"{r['overhead_pct']:6.1f} {r['overhead_cpu_pct']:8.1f} {r['tok_per_s']:6.0f} "
              f"{r['peak_extract_mb']:7.0f} {r['peak_rss_mb']:7.0f} {r['cache_bytes_per_token']:11.0f}")
    print("bare: model(ids, mask) with logits; +loss: the same plus the per-prompt loss from the logits;\n"
          "hid: output_hidden_states=True (+ loss for decoders); extr: extract_states (every state, all "
          "positions, float32, loss per prompt).\novh = extr / (+loss for decoders, bare for encoders) - 1, "
          "from wall-clock medians; cpu ovh: the same from process CPU time\n(robust to other processes with "
          "--threads 1). peak MB: peak RSS of load + extraction; all MB: after the baselines too (bare+loss\n"
          "materialises the full logits). cache B/tok: bfloat16 states of every layer, all positions.")
    from tg_utils.cache import cache_footprint, format_footprint
    print("\ncache footprint under outputs/:\n" + format_footprint(cache_footprint("outputs")))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
