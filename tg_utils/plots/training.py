"""Figures of the toy-model training (notebook 01), drawn from the tidy tables of
tg_utils.experiments.nb01_train_toy_models; each returns the figure and the table it draws."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd


def plot_training_curves(curves: pd.DataFrame, smooth: int):
    """Training loss (running mean over `smooth` steps), validation loss and validation perplexity per
    run, from nb01.loss_curves_data (columns run, step, metric, value; with value_min / value_max, the
    min-max over a run's seeds is shaded and its legend names the number of seeds)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run, g in curves.groupby("run", sort=False):
        n = int(g.n_seeds.max()) if "n_seeds" in g else 1
        label = run if n == 1 else f"{run} (mean of {n} seeds)"
        for ax, metric, marker in ((axes[0], "train_loss_smoothed", None), (axes[1], "val_loss", "."),
                                   (axes[2], "val_ppl", ".")):
            d = g[g.metric == metric]
            line, = ax.plot(d.step, d.value, marker=marker, label=label)
            if n > 1:
                ax.fill_between(d.step, d.value_min, d.value_max, color=line.get_color(), alpha=0.2, lw=0)
    axes[0].set(title=f"training loss (mean of {smooth} steps)", xlabel="step", ylabel="cross-entropy (nats)")
    axes[1].set(title="validation loss", xlabel="step", ylabel="cross-entropy (nats)")
    axes[2].set(title="validation perplexity", xlabel="step", ylabel="perplexity", yscale="log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig, curves


def plot_lr_schedule(schedule: pd.DataFrame):
    """The learning rate of every update, one line per run, from nb01.lr_schedule_data (run, step, lr)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for run, g in schedule.groupby("run", sort=False):
        ax.plot(g.step, g.lr, label=run)
    ax.set(title="learning-rate schedule", xlabel="step", ylabel="learning rate")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, schedule
