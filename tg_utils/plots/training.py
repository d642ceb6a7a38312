"""Figures of the toy-model training (notebook 01), drawn from the tidy tables of
tg_utils.experiments.nb01_train_toy_models; each returns the figure and the table it draws."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd


def plot_training_curves(curves: pd.DataFrame, smooth: int):
    """Training loss (running mean over `smooth` steps), validation loss and validation perplexity per
    run, from nb01.loss_curves_data (columns run, step, metric, value)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run, g in curves.groupby("run", sort=False):
        tr = g[g.metric == "train_loss_smoothed"]
        axes[0].plot(tr.step, tr.value, label=run)
        for ax, metric in ((axes[1], "val_loss"), (axes[2], "val_ppl")):
            ev = g[g.metric == metric]
            ax.plot(ev.step, ev.value, marker=".", label=run)
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
