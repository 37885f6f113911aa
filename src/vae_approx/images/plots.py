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


def likelihood_figure(records: pd.DataFrame, setting: str, path) -> None:
    """likelihood.png: per trained protocol and sigma variant (one panel each), every seed's AIS estimates of
    log p(x) of the ground truth's held-out images against the schedule's length T: the ground truth's
    sandwich (forward and reverse AIS, shaded between) and the joint decoder's forward bound. Where the
    two meet the sandwich narrows; the joint decoder's line below the band is the drop claim (a) tests."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .results import protocol_name

    on_truth = records[(records.images == "truth") & records.estimate.isin(["ais_lower", "ais_upper"])]
    panels = list(on_truth.groupby(list(JOINT_RUN)[1:], sort=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (key, rows) in zip(axes[0], panels):
        identity = dict(zip(list(JOINT_RUN)[1:], key))
        for i, (seed, run) in enumerate(rows.groupby("seed", sort=True)):
            def line(decoder: str, estimate: str):
                r = run[(run.decoder == decoder) & (run.estimate == estimate)].sort_values("steps")
                return r.steps.to_numpy(), r.value.to_numpy()
            T, low = line("truth", "ais_lower")
            _, high = line("truth", "ais_upper")
            ax.fill_between(T, low, high, color="tab:blue", alpha=0.18, lw=0)
            ax.plot(T, low, "-o", color="tab:blue", lw=1, ms=3, label="ground truth: forward (lower)" if i == 0 else None)
            ax.plot(T, high, "--o", color="tab:blue", lw=1, ms=3, label="ground truth: reverse (upper)" if i == 0 else None)
            Tj, joint = line("joint", "ais_lower")
            ax.plot(Tj, joint, "-s", color="tab:red", lw=1, ms=3, label="joint decoder: forward (lower)" if i == 0 else None)
        ax.set_xscale("log")
        ax.set_xticks(sorted(rows.steps.unique()), [str(t) for t in sorted(rows.steps.unique())])
        ax.minorticks_off()
        ax.set_xlabel("T, AIS intermediate distributions (log scale)")
        ax.set_ylabel("log p(x), nats per image (higher: better fit)")
        sigma = ", sigma learned" if identity["sigma_variant"] != JOINT_RUN["sigma_variant"][0] else ""
        seeds = rows.seed.nunique()
        ax.set_title(f"{protocol_name(identity)} protocol{sigma}: one line per seed ({seeds})", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Faces likelihood of held-out ground-truth images, {setting}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
