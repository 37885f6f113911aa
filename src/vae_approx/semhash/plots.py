"""The semantic-hashing figures: the training curves, from the histories (records with the run's identity
columns), and the split of the approximation error, from the gaps table."""

from __future__ import annotations

import pandas as pd

from ..common import plot_seeds, save_figure
from .results import numbers
from .settings import ML_ENCODER


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


def plot_gaps(table: pd.DataFrame, path) -> None:
    """gaps.png from gaps_table's test rows: one panel per (decoder depth, bits) where log p(x) is
    exact, one bar per encoder stacked as -log p(x), the approximation gap and the amortization gap
    (so its top is the exact NELBO), error bars the std over seeds of each; the likelihood
    control's -log p(x) as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = numbers(table, [c for c in table.columns if c not in ("set", "encoder")])
    test = table[(table["set"] == "test") & table.nll.notna()]
    cells = list(dict.fromkeys(zip(test.depth, test.bits)))
    fig, axes = plt.subplots(1, max(1, len(cells)), figsize=(4 * max(1, len(cells)), 3.4), squeeze=False)
    parts = (("nll", "-log p(x)", "0.7"), ("approximation_gap", "approximation gap", "C1"),
             ("amortization_gap", "amortization gap", "C0"))
    for ax, (depth, bits) in zip(axes[0], cells):
        cell = test[(test.depth == depth) & (test.bits == bits)]
        bars = cell[cell.encoder != ML_ENCODER]
        bottom = [0.0] * len(bars)
        for value, label, colour in parts:
            ax.bar(bars.encoder, bars[value], bottom=bottom, color=colour, label=label,
                   yerr=bars.get(f"{value} std"), capsize=3)
            bottom = [b + v for b, v in zip(bottom, bars[value])]
        control = cell[cell.encoder == ML_ENCODER]
        if len(control):
            ax.axhline(control.nll.iloc[0], color="k", ls="--", lw=1, label="likelihood control -log p(x)")
        low = min([*bars.nll, *control.nll])
        ax.set_ylim(low - 0.1 * (max(bottom) - low + 1), max(bottom) + 0.15 * (max(bottom) - low + 1))
        ax.set_title(f"decoder depth {depth}, {bits} bits")
    axes[0][0].set_ylabel("test, nats per document")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
