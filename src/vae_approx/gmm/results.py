"""Tables and claims of the Gaussian-mixture experiment, from its records.

The records of one encoder family are its per-run CSV files concatenated, each row carrying its
run's identity: the training phases' metrics (pretrain_metrics.csv, joint_metrics.csv; columns
seed, encoder, then one row per evaluation) and the control's fit (ml_fit.csv; seed, one row).
Pure functions: no paths, no file I/O. Seeds keep the order of the records (the config's).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..common import InputError
from ..tables import Shown, mean_std, published_columns, seeds_claim, with_published
from .model import TRUE_CENTRES
from .settings import EXPERIMENT, ML_STAGE, PHASES, SETTINGS

CENTRE_COLUMNS = [f"centre_{k}_distance" for k in range(len(TRUE_CENTRES))]
# the split of log p(x) - ELBO (evaluate.gap_split): approximation_gap + amortization_gap
GAP_COLUMNS = ["best_factorized_elbo", "approximation_gap", "amortization_gap"]
METRIC_COLUMNS = ["seed", "encoder", "phase", "step", "elbo", "log_likelihood", "kl_to_posterior",
                  "kl_to_true_posterior", *GAP_COLUMNS, *CENTRE_COLUMNS, "mean_centre_distance"]
ML_COLUMNS = ["seed", "log_likelihood", "ground_truth_log_likelihood", *CENTRE_COLUMNS, "mean_centre_distance"]
# the per-seed table's numbers, averaged over seeds in the summary
NUMERIC = ["elbo", "log_likelihood", "kl_to_posterior", "kl_to_true_posterior", "mean_centre_distance",
           "max_centre_distance", *GAP_COLUMNS]
ML_CONTROL = "maximum-likelihood fit on the same sample (EM, no encoder)"
# the unit of each number of the table and the claims
UNITS = {"elbo": "nats/point", "log_likelihood": "nats/point", "mean_centre_distance": "data units"}


@dataclass(frozen=True)
class Finals:
    """One encoder family's end points, each frame indexed by seed in the records' order: the last
    metrics row of pretraining and of joint training, and the control's fit."""

    encoder: str
    pretrain: pd.DataFrame
    joint: pd.DataFrame
    ml: pd.DataFrame

    @property
    def seeds(self) -> list[int]:
        return list(self.pretrain.index)


def check_columns(records: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in records.columns]
    if missing or records.empty:
        raise InputError(f"GMM {what}: expected rows with columns {', '.join(columns)}"
                         + (f"; missing {', '.join(missing)}" if missing else "; no rows"))


def check_metrics(records: pd.DataFrame, phase: str, encoder: str) -> None:
    """Metrics records of one phase and one encoder family, at most one row per seed and step."""
    what = f"{phase} metrics"
    check_columns(records, METRIC_COLUMNS, what)
    if set(records.phase) != {phase}:
        raise InputError(f"GMM {what}: expected rows of phase '{phase}', got {sorted(set(records.phase))}")
    if set(records.encoder) != {encoder}:
        raise InputError(f"GMM {what}: expected rows of encoder '{encoder}', got {sorted(set(records.encoder))}")
    twice = records[records.duplicated(["seed", "step"])]
    if len(twice):
        raise InputError(f"GMM {what}: two rows for seed {twice.seed.iloc[0]} at step {twice.step.iloc[0]}")


def phase_finals(records: pd.DataFrame, phase: str, encoder: str) -> pd.DataFrame:
    """Each seed's last evaluation (its largest step) of one training phase's metrics records."""
    check_metrics(records, phase, encoder)
    records = records.reset_index(drop=True)
    last = records.loc[records.groupby("seed", sort=False).step.idxmax()]
    return last.set_index("seed")


def common_seeds(records: dict[str, pd.DataFrame]) -> list[int]:
    """The seeds of records that must cover the same seeds ({what: records}, each with a seed
    column): those of the first, in their order; a seed missing from any of them is an error."""
    (first, first_records), *others = records.items()
    seeds = [int(s) for s in pd.unique(first_records.seed)]
    for what, other in others:
        theirs = {int(s) for s in other.seed}
        if theirs != set(seeds):
            raise InputError(f"GMM records of different seeds: {first} has seeds {sorted(seeds)}, "
                             f"{what} has {sorted(theirs)}")
    return seeds


def finals(pretrain: pd.DataFrame, joint: pd.DataFrame, ml: pd.DataFrame, encoder: str) -> Finals:
    """The end points of every seed, checked: one phase and one encoder per metrics record, one
    control row per seed, and the same seeds in all three."""
    pre, jnt = phase_finals(pretrain, "pretrain", encoder), phase_finals(joint, "joint", encoder)
    check_columns(ml, ML_COLUMNS, "maximum-likelihood fits")
    twice = ml[ml.seed.duplicated()]
    if len(twice):
        raise InputError(f"GMM maximum-likelihood fits: two rows for seed {twice.seed.iloc[0]}")
    seeds = common_seeds({"pretraining metrics": pretrain, "joint metrics": joint, "maximum-likelihood fits": ml})
    return Finals(encoder, pre.loc[seeds], jnt.loc[seeds], ml.set_index("seed").loc[seeds])


def per_seed_table(f: Finals, pub: pd.DataFrame) -> pd.DataFrame:
    """Per seed: the end of each phase (with the published ELBO of that stage) and the control."""
    setting = SETTINGS[f.encoder]
    rows = []
    for seed in f.seeds:
        for phase, row in (("pretrain", f.pretrain.loc[seed]), ("joint", f.joint.loc[seed])):
            stage = PHASES[phase]
            entry = {"encoder": f.encoder, "seed": int(seed), "stage": stage, "step": int(row.step), "elbo": row.elbo,
                     "log_likelihood": row.log_likelihood, "kl_to_posterior": row.kl_to_posterior,
                     "kl_to_true_posterior": row.kl_to_true_posterior,
                     "mean_centre_distance": row.mean_centre_distance,
                     "max_centre_distance": max(row[c] for c in CENTRE_COLUMNS)}
            entry.update({c: row[c] for c in GAP_COLUMNS})
            entry.update(published_columns(pub, EXPERIMENT, "elbo", stage, setting))
            rows.append(entry)
        ml = f.ml.loc[seed]
        rows.append({"encoder": f.encoder, "seed": int(seed), "stage": ML_STAGE, "log_likelihood": ml.log_likelihood,
                     "mean_centre_distance": ml.mean_centre_distance,
                     "max_centre_distance": max(ml[c] for c in CENTRE_COLUMNS)})
    return pd.DataFrame(rows)


def summary_table(per_seed: pd.DataFrame, pub: pd.DataFrame, encoder: str) -> tuple[pd.DataFrame, str, str]:
    """The results table (mean and standard deviation over seeds per stage, published ELBOs
    beside), its title and its note."""
    setting = SETTINGS[encoder]
    table = with_published(mean_std(per_seed, ["encoder", "stage"], NUMERIC), pub, EXPERIMENT, ["elbo"], setting)
    note = (f"Mean (standard deviation) over {per_seed.seed.nunique()} seed(s) (each its own data sample and "
            "encoder initialisation; per-seed rows in table_per_seed.csv). ELBO and log-likelihood are averages per "
            "data point; centre distances are Euclidean, in data units, from the ground-truth centres. "
            "The maximum-likelihood fit (EM on the same sample, no encoder) is the drift sampling noise alone "
            "gives the best decoder. The KL gap kl_to_posterior = log p(x) - ELBO splits (Cremer et al. 2018) into "
            "approximation_gap = log p(x) - ELBO(q*), with q* each point's best factorized posterior (two independent "
            "bits, fitted to the point alone; best_factorized_elbo is the mean ELBO(q*)), what no factorized encoder "
            "can close, and amortization_gap = ELBO(q*) - ELBO(q), what this encoder loses against q*; negative where "
            "the encoder is better than any factorized q (the consistent encoder). Published ELBOs use the reproduction's setting (variance 1, 2000 points per "
            "component, 10,000 + 10,000 steps); Shekhovtsov et al. 2022 is quoted by Kyrylov et al. 2023.")
    return table, f"Gaussian mixture, {setting}", note


# How the summary table is shown: one row per quantity, one column per stage.
SHOWN = Shown(
    transpose=("stage",), drop=("encoder",),
    values={PHASES["pretrain"]: "pretrained", PHASES["joint"]: "joint", ML_STAGE: "ML fit (control)"},
    labels={"elbo": "ELBO, nats/point ↑", "log_likelihood": "log p(x), nats/point ↑",
            "kl_to_posterior": "log p(x) - ELBO, nats/point ↓",
            "kl_to_true_posterior": "KL(q ‖ ground truth's posterior), nats/point ↓",
            "mean_centre_distance": "mean centre distance, data units ↓",
            "max_centre_distance": "largest centre distance, data units ↓",
            "best_factorized_elbo": "ELBO(q*), best factorized q, nats/point ↑",
            "approximation_gap": "approximation gap, nats/point ↓", "amortization_gap": "amortization gap, nats/point ↓"},
    notes=("Columns: pretrained = the encoder pretrained against the ground-truth decoder, frozen; joint = after joint "
           "training of encoder and decoder; ML fit = the control, the maximum-likelihood fit by EM on the same "
           "sample, with no encoder (a dash: it has no ELBO).",))


def claims(f: Finals) -> list[dict]:
    """The paper's claims for this encoder family, each decided over seeds by tables.paired_verdict.

    factorized: joint training raises the ELBO, lowers the true log-likelihood below the ground
    truth's (and below the ML fit's), and moves the centres further than the ML fit does;
    consistent: the centres move no further than the ML fit's.
    """
    setting = SETTINGS[f.encoder]

    def change(column: str, after: pd.DataFrame, before: pd.DataFrame, before_column: str | None = None) -> dict:
        return {int(k): after.loc[k, column] - before.loc[k, before_column or column] for k in f.seeds}

    if f.encoder != "factorized":
        return [seeds_claim(EXPERIMENT, setting, "joint training moves the centres no further from the ground truth "
                            "than the maximum-likelihood fit does", "mean_centre_distance",
                            change("mean_centre_distance", f.joint, f.ml), "increase", ML_CONTROL,
                            expect_change=False, name=f"centres drift no further than ML fit ({f.encoder})",
                            unit=UNITS["mean_centre_distance"])]
    return [
        seeds_claim(EXPERIMENT, setting, "joint training raises the ELBO", "elbo", change("elbo", f.joint, f.pretrain),
                    "increase", "the same seed after pretraining", by_construction=True,
                    name=f"ELBO rises ({f.encoder})", unit=UNITS["elbo"]),
        seeds_claim(EXPERIMENT, setting, "joint training lowers the true log-likelihood below the ground truth's",
                    "log_likelihood", change("log_likelihood", f.joint, f.ml, "ground_truth_log_likelihood"),
                    "decrease", "the ground-truth decoder on the same sample",
                    name=f"log p(x) falls below the truth's ({f.encoder})", unit=UNITS["log_likelihood"]),
        seeds_claim(EXPERIMENT, setting, "joint training leaves the true log-likelihood below the maximum-likelihood "
                    "fit's", "log_likelihood", change("log_likelihood", f.joint, f.ml), "decrease", ML_CONTROL,
                    by_construction=True, name=f"log p(x) below the ML fit's ({f.encoder})",
                    unit=UNITS["log_likelihood"]),
        seeds_claim(EXPERIMENT, setting, "joint training moves the centres further from the ground truth than the "
                    "maximum-likelihood fit does", "mean_centre_distance",
                    change("mean_centre_distance", f.joint, f.ml), "increase", ML_CONTROL,
                    name=f"centres drift beyond the ML fit ({f.encoder})", unit=UNITS["mean_centre_distance"]),
    ]
