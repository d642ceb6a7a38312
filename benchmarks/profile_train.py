"""Where notebook 01's training time goes: one toy run's phases timed on this machine.

    .venv/bin/python benchmarks/profile_train.py [--preset llama-preln] [--steps 12] [--val-tokens N --test-tokens N]

Times, at notebook 01's default sizes (TrainToyParams), the phases of training steps on random tokens (drawing
the batch, forward to the logits, the loss, backward, gradient clipping, the AdamW step), one periodic
evaluation (eval_tokens), one full-split evaluation, one weights-only trajectory checkpoint and one resumable
checkpoint (with the optimizer), then scales them to a whole run as train_run does it: max_steps steps,
an evaluation at step 0 and every eval_every steps, the full validation and test splits at the end, a
checkpoint at every checkpoint_steps(max_steps) and last.pt every save_every steps. Medians of the timed
steps; on a shared machine compare the shares, not the seconds.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tg_utils.params.notebooks import TrainToyParams
from tg_utils.toy.checkpoints import checkpoint_steps, make_checkpoint, save_checkpoint
from tg_utils.toy.model import ToyTransformer, preset
from tg_utils.toy.train import evaluate_perplexity, make_optimizer, random_batch
from tg_utils.toy.runs import train_config


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def profile(args) -> list[tuple[str, float, int]]:
    """(phase, seconds per call, calls per run) for one run of the default profile."""
    P = TrainToyParams()
    torch.manual_seed(0)
    cfg = preset(args.preset, n_layer=P.n_layer, d_model=P.d_model, n_head=P.n_head, d_ff=P.d_ff,
                 context=P.context, vocab_size=P.vocab_size)
    tc = train_config(P, args.preset)
    model = ToyTransformer(cfg)
    opt = make_optimizer(model, tc)
    gen = torch.Generator().manual_seed(1)
    stream = torch.randint(0, P.vocab_size, (200_000,), generator=gen)
    phases = {k: [] for k in ("batch", "forward", "loss", "backward", "clip", "optimizer")}
    for i in range(args.warmup + args.steps):
        (x, y), t_b = _timed(lambda: random_batch(stream, P.batch_size, P.context, gen))
        logits, t_f = _timed(lambda: model(x))
        loss, t_l = _timed(lambda: F.cross_entropy(logits.float().flatten(0, 1), y.flatten()))
        _, t_bw = _timed(loss.backward)
        _, t_c = _timed(lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip).item())

        def step():
            opt.step()
            opt.zero_grad(set_to_none=True)
        _, t_o = _timed(step)
        if i >= args.warmup:
            for k, t in zip(phases, (t_b, t_f, t_l, t_bw, t_c, t_o)):
                phases[k].append(t)
    n_steps, n_evals = tc.max_steps, tc.max_steps // tc.eval_every + 1 + int(tc.max_steps % tc.eval_every > 0)
    rows = [(f"step: {k}", statistics.median(v), n_steps) for k, v in phases.items()]
    _, t_e = _timed(lambda: evaluate_perplexity(model, stream, P.context, tc.eval_batch_size, tc.eval_tokens))
    rows.append((f"eval {tc.eval_tokens} tokens", t_e, n_evals))
    for split, n in (("validation", args.val_tokens), ("test", args.test_tokens)):
        _, t = _timed(lambda: evaluate_perplexity(model, stream[:n], P.context, tc.eval_batch_size))
        rows.append((f"eval full {split} ({n} tokens)", t, 1))
    config = {"model_config": cfg.to_dict(), "train_config": tc.to_dict()}
    with tempfile.TemporaryDirectory() as d:
        for name, o, calls in (("checkpoint, weights only", None, len(checkpoint_steps(tc.max_steps))),
                               ("checkpoint with optimizer (last.pt)", opt, (tc.max_steps - 1) // tc.save_every)):
            ck = make_checkpoint(0, config, model, o, gen, None, 0, 0.0, [])
            _, t = _timed(lambda: save_checkpoint(Path(d) / "ck.pt", ck))
            rows.append((name, t, calls))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="llama-preln")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--val-tokens", type=int, default=45_000, help="tokens of the validation split")
    ap.add_argument("--test-tokens", type=int, default=60_000, help="tokens of the test split")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = profile(args)
    total = sum(t * n for _, t, n in rows)
    print(f"{args.preset}, default sizes, {torch.get_num_threads()} threads: one run ~ {total:.0f} s")
    print(f"{'phase':40s} {'s/call':>8s} {'calls':>6s} {'s/run':>7s} {'share':>6s}")
    for name, t, n in rows:
        print(f"{name:40s} {t:8.4f} {n:6d} {t * n:7.1f} {100 * t * n / total:5.1f}%")


if __name__ == "__main__":
    main()
