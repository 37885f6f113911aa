"""Figures of the faces experiment made from its tidy records: the training curves over seeds.

(The image grids and the comparison figure are drawn from the image sets: evaluate.write_grids.)
"""

from __future__ import annotations

import pandas as pd

from ..common import InputError, plot_seeds, save_figure
from .settings import JOINT_RUN, TRAINED_RUN


def _one_per_seed(records: pd.DataFrame, columns, what: str) -> dict[int, pd.DataFrame]:
    """{seed: its curve} in the records' order; a seed with two curves (two protocols or sigma variants) is an
    InputError."""
    curves: dict[int, pd.DataFrame] = {}
    for key, curve in records.groupby(list(columns), sort=False):
        seed = int(key[0])
        if seed in curves:
            raise InputError(f"images curves: two {what} of seed {seed}; one per seed (one protocol, one sigma "
                             "variant)")
        curves[seed] = curve
    return curves


def training_curves(pretrain: pd.DataFrame, joint: pd.DataFrame, setting: str, path) -> None:
    """curves.png: -log q(z|x) of encoder pretraining and the ELBO of joint training against the iteration, each
    seed a thin line and their mean a thick one. `pretrain`, `joint`: the concatenated curve records, one curve
    per seed each, the same seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pre = _one_per_seed(pretrain, TRAINED_RUN, "pretraining curves")
    jo = _one_per_seed(joint, JOINT_RUN, "joint-training curves")
    if list(pre) != list(jo):
        raise InputError(f"images curves: pretraining curves of seeds {list(pre)} but joint-training curves of seeds "
                         f"{list(jo)}; one of each per seed, in the same seed order")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    plot_seeds(axes[0], [(c.step, c.loss) for c in pre.values()], "tab:blue", "-log q(z|x)")
    axes[0].set_title("encoder pretraining")
    axes[0].set_ylabel("nats per image (training batches)")
    plot_seeds(axes[1], [(c.step, c.elbo) for c in jo.values()], "tab:green", "ELBO")
    axes[1].set_title("joint training")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8)
    fig.suptitle(f"Faces experiment, {setting}")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
