"""Training throughput of the toy transformer presets on this machine.

    .venv/bin/python benchmarks/bench_train.py --d-model 192 --n-layer 6 --context 256 --batch 16

Times full optimizer steps (forward, backward, grad clip, AdamW) on random tokens after a warm-up and
prints tokens/s per preset, plus forward-only (evaluation) throughput. On a shared machine timings are
noisy: take the median of a few steps (done here) and compare presets within one invocation. On a busy
machine try --threads 1: OpenMP threads waiting on a loaded core can make 2 threads several times slower.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from tg_utils.toy.model import PRESETS, ToyTransformer, preset
from tg_utils.toy.train import TrainConfig, make_optimizer


def bench(name: str, args) -> dict:
    torch.manual_seed(0)
    cfg = preset(name, n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head,
                 d_ff=args.d_ff or 4 * args.d_model, vocab_size=args.vocab, context=args.context)
    model = ToyTransformer(cfg)
    opt = make_optimizer(model, TrainConfig())
    x = torch.randint(0, args.vocab, (args.batch, args.context))
    y = torch.randint(0, args.vocab, (args.batch, args.context))
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    model.eval()
    ftimes = []
    with torch.no_grad():
        for i in range(1 + max(2, args.steps // 2)):
            t0 = time.perf_counter()
            model(x)
            if i:
                ftimes.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tok = args.batch * args.context
    return dict(preset=name, params_M=model.n_params() / 1e6, non_emb_M=model.n_params(True) / 1e6,
                step_ms=1e3 * step_s, train_tok_s=tok / step_s, eval_tok_s=tok / statistics.median(ftimes))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=192)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--d-ff", type=int, default=0, help="GELU width (0 = 4 d_model); SwiGLU uses 2/3 of it")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per preset (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--plan-steps", type=int, default=0,
                    help="if > 0, also print the estimated minutes for that many steps per run")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; n_layer={args.n_layer} "
          f"d_model={args.d_model} n_head={args.n_head} d_ff={args.d_ff or 4 * args.d_model} "
          f"context={args.context} batch={args.batch} vocab={args.vocab}")
    print(f"{'preset':16s} {'params(M)':>9s} {'non-emb(M)':>10s} {'ms/step':>8s} {'train tok/s':>11s} "
          f"{'eval tok/s':>10s}" + ("  est. min/run" if args.plan_steps else ""))
    for name in args.presets:
        r = bench(name, args)
        line = (f"{r['preset']:16s} {r['params_M']:9.2f} {r['non_emb_M']:10.2f} {r['step_ms']:8.0f} "
                f"{r['train_tok_s']:11.0f} {r['eval_tok_s']:10.0f}")
        if args.plan_steps:
            line += f"  {args.plan_steps * r['step_ms'] / 6e4:12.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
