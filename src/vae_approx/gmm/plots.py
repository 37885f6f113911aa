"""Figures of the Gaussian-mixture experiment, made from saved models and metrics records."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on a cluster node
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import ListedColormap

from ..common import plot_seeds, save_figure
from .results import check_metrics, common_seeds

COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red"]


@torch.no_grad()
def plot_regions(x: torch.Tensor, pretrained: tuple, joint: tuple, true_centres: torch.Tensor, name: str,
                 path) -> None:
    """One run's data, ground-truth and learned centres, and the encoder's most probable code,
    after encoder pretraining and after joint training (each an (encoder, decoder) pair)."""
    models = {"after encoder pretraining": pretrained, "after joint training": joint}
    lo, hi = x.min(0).values - 0.5, x.max(0).values + 0.5
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], 300), torch.linspace(lo[1], hi[1], 300), indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], dim=1)  # [G, 2]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 5), sharex=True, sharey=True)
    for ax, (title, (encoder, decoder)) in zip(np.atleast_1d(axes), models.items()):
        encoder.eval()
        region = encoder.log_q(grid).argmax(1).reshape(gx.shape)
        ax.contourf(gx, gy, region, levels=np.arange(-0.5, 4.5), cmap=ListedColormap(COLOURS), alpha=0.25)
        ax.scatter(x[:, 0], x[:, 1], s=1, c="0.4", alpha=0.3, rasterized=True)
        ax.scatter(*true_centres.T, marker="x", s=120, c="k", label="ground-truth centres")
        learned = decoder.centres.detach()
        ax.scatter(*learned.T, marker="o", s=80, facecolors="none", edgecolors=COLOURS, linewidths=2,
                   label="decoder centres")
        for t, l in zip(true_centres, learned):
            ax.annotate("", xy=tuple(l.tolist()), xytext=tuple(t.tolist()), arrowprops={"arrowstyle": "->"})
        ax.set_title(f"{name}, {title}")
        ax.set_xlabel("x1")
        ax.set_aspect("equal")
    np.atleast_1d(axes)[0].set_ylabel("x2")
    np.atleast_1d(axes)[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_curves(pretrain: pd.DataFrame, joint: pd.DataFrame, encoder_name: str, path) -> None:
    """ELBO, true log-likelihood and centre drift over both phases (the joint phase's steps follow
    on), one thin line per seed and the mean. `pretrain`, `joint`: the phases' metrics records of
    one encoder family (a seed column), grouped by seed in the records' order."""
    check_metrics(pretrain, "pretrain", encoder_name)
    check_metrics(joint, "joint", encoder_name)
    seeds = common_seeds({"pretraining metrics": pretrain, "joint metrics": joint})
    runs = [pd.concat([pretrain[pretrain.seed == seed], joint[joint.seed == seed]], ignore_index=True)
            for seed in seeds]
    offset = max(run.step[run.phase == "pretrain"].max() for run in runs)
    curves = {}
    for run in runs:
        step = np.where(run.phase == "joint", run.step + offset, run.step)
        for column in ("elbo", "log_likelihood", "mean_centre_distance"):
            curves.setdefault(column, []).append((step, run[column].to_numpy()))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    plot_seeds(axes[0], curves["elbo"], "tab:blue", "ELBO")
    plot_seeds(axes[0], curves["log_likelihood"], "tab:orange", "log-likelihood")
    axes[0].set_ylabel("nats per point")
    plot_seeds(axes[1], curves["mean_centre_distance"], "tab:red", "mean centre drift")
    axes[1].set_ylabel("mean centre drift (data units)")
    for ax in axes:
        ax.axvline(offset, c="0.5", ls="--", lw=1)
        ax.set_xlabel("step (pretraining, then joint training after the dashed line)")
        ax.legend(fontsize=8)
    # The pretraining's first steps span a range that hides the joint phase's change.
    tail = np.concatenate([y[len(y) // 5:] for _, y in curves["elbo"] + curves["log_likelihood"]])
    axes[0].set_ylim(tail.min() - 0.02, tail.max() + 0.02)
    fig.suptitle(f"Gaussian mixture, {encoder_name} encoder")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
