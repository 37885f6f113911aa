"""What each Gaussian-mixture stage reads of the config's `gmm` section, the experiment's labels,
and where its files live.

Torch-free (the standard library only): the workflow imports it while it builds the DAG. The
defaults of every key are in config.yaml, their allowed values in ALLOWED; the rule hands a
stage exactly the keys STAGE_KEYS names (--settings), so a change to any other key re-runs
nothing of that stage, and the run's identity (its wildcards) as --run.
"""

from __future__ import annotations

from dataclasses import dataclass

EXPERIMENT = "gmm"

# The encoder families: factorized (MLP, two independent bits) and consistent (linear + softmax
# over the four codes), in the schema's order.
ENCODERS = ("factorized", "consistent")

# Each key of the `gmm` section the schema restricts to an enum (a list-valued key: its items' values).
ALLOWED = {"encoders": ENCODERS}

# phase -> its stage label in the tables (the published tables' wording)
PHASES = {
    "pretrain": "encoder pretrained (decoder frozen)",
    "joint": "joint training",
}
ML_STAGE = "maximum-likelihood fit (control)"  # the control's stage label
# encoder -> the setting named in the tables, the claims and the published numbers
SETTINGS = {"factorized": "factorized encoder", "consistent": "consistent encoder"}

# stage -> the keys of the `gmm` section it reads (a subsection whole: pretrain or joint)
STAGE_KEYS = {
    "sample": ("n_per_component", "variance"),
    "pretrain": ("hidden", "pretrain", "eval_every", "checkpoint_every"),
    "joint": ("hidden", "joint", "eval_every", "checkpoint_every"),
    "fit-ml": (),  # EM on the sample; the variance comes with the data file
}

# A run's identity, {column: int or allowed values}: the wildcards of its rule, and the first
# columns of every CSV its stage writes.
SEED_RUN = {"seed": int}                          # sample, fit-ml
TRAINING_RUN = {"seed": int, "encoder": ENCODERS}  # train (both phases), regions
FAMILY_RUN = {"encoder": ENCODERS}                # over seeds: curves, tabulate

# Where each file lives below results/<run>/gmm/; the wildcards are named as the identity columns.
PATHS = {
    "data": "seed{seed}/data.npz",
    "ml_fit": "seed{seed}/ml_fit.csv",
    "pretrained": "seed{seed}/{encoder}/pretrained.pt",
    "pretrain_metrics": "seed{seed}/{encoder}/pretrain_metrics.csv",
    "joint": "seed{seed}/{encoder}/joint.pt",
    "joint_metrics": "seed{seed}/{encoder}/joint_metrics.csv",
    "regions": "seed{seed}/{encoder}/regions.png",
    "curves": "{encoder}/curves.png",
    "table_csv": "{encoder}/table.csv",
    "table_md": "{encoder}/table.md",
    "table_html": "{encoder}/table.html",  # the table as the report shows it, written beside table.md
    "table_per_seed": "{encoder}/table_per_seed.csv",
    "claims": "{encoder}/claims.csv",
}


@dataclass(frozen=True)
class TrainSettings:
    """One training phase's settings; asdict() is the config a resume checkpoint must match."""

    phase: str             # "pretrain": encoder only, decoder frozen; "joint": both
    steps: int             # full-batch Adam steps (gmm.<phase>.steps)
    lr: float              # Adam learning rate (gmm.<phase>.lr)
    eval_every: int        # steps between rows of the metrics table
    checkpoint_every: int  # steps between resume checkpoints
    seed: int              # the run's replicate (its identity, not a config key)

    @classmethod
    def from_section(cls, phase: str, section: dict, seed: int) -> "TrainSettings":
        """`section`: the keys STAGE_KEYS[phase] names, as stage_section returns them."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase '{phase}'; expected one of {sorted(PHASES)}")
        return cls(phase, int(section[phase]["steps"]), float(section[phase]["lr"]), int(section["eval_every"]),
                   int(section["checkpoint_every"]), int(seed))


# ---------------------------------------------------------------- file lists of the rules


def path(results: str, name: str) -> str:
    """The template of file `name` (a key of PATHS) below `results` (results/<run>), wildcards kept."""
    return f"{results}/{EXPERIMENT}/{PATHS[name]}"


def every_seed(section: dict, results: str, name: str) -> list[str]:
    """File `name` of every seed of `section` (the config's `gmm`), in its order; {encoder} stays a
    wildcard. The stages over seeds keep this order in their tables."""
    return [path(results, name).format(seed=seed, encoder="{encoder}") for seed in section["seeds"]]


def targets(section: dict, results: str) -> list[str]:
    """The experiment's final products: per encoder family its table and curves, per seed and
    family its regions plot."""
    families = [path(results, name).format(encoder=encoder)
                for encoder in section["encoders"] for name in ("table_csv", "table_md", "table_html", "curves")]
    regions = [path(results, "regions").format(seed=seed, encoder=encoder)
               for seed in section["seeds"] for encoder in section["encoders"]]
    return families + regions


def claims_files(section: dict, results: str) -> list[str]:
    """One claims file per encoder family, in the config's order."""
    return [path(results, "claims").format(encoder=encoder) for encoder in section["encoders"]]
