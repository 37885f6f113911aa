"""The semantic-hashing figure, drawn from the training histories (records with the run's identity columns)."""

from __future__ import annotations

import pandas as pd

from ..common import plot_seeds, save_figure


def plot_curves(histories: pd.DataFrame, path) -> None:
    """curves.png: test NELBO per epoch, one panel per (decoder depth, bits), one colour per encoder,
    a thin line per seed and their mean. `histories`: the rows of every run's history.csv."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted(histories.groupby(["depth", "bits"]).groups)
    fig, axes = plt.subplots(1, len(cells), figsize=(4 * len(cells), 3.2), squeeze=False, sharey=False)
    for ax, (depth, bits) in zip(axes[0], cells):
        cell = histories[(histories.depth == depth) & (histories.bits == bits)].sort_values(["encoder", "seed", "epoch"])
        for i, (encoder, runs) in enumerate(cell.groupby("encoder")):
            plot_seeds(ax, [(run.epoch, run.test_nelbo) for _, run in runs.groupby("seed")], f"C{i}", encoder)
        # the top at the lowest run's 90th percentile: the first epochs' high values would flatten the rest
        low, high = cell.test_nelbo.min(), cell.groupby(["encoder", "seed"]).test_nelbo.quantile(0.9).min()
        ax.set_ylim(low - 0.05 * (high - low + 1), high + 0.1 * (high - low + 1))
        ax.set_title(f"decoder depth {depth}, {bits} bits")
        ax.set_xlabel("epoch")
        ax.legend()
    axes[0][0].set_ylabel("test NELBO (nats per document)")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
