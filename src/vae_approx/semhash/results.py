"""The semantic-hashing tables and claims, from records: the rows of every run's history.csv and
retrieval.csv, each carrying the run's identity (settings.RUN) as columns.

Pure functions: no paths, no files. A grid table is encoder x decoder depth by bits, each cell the
mean (and standard deviation) over seeds of one value per run; the claims compare e1 with each other
encoder in every (depth, bits) cell, per seed (vae_approx.tables.cells_claim).
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from ..common import InputError
from ..tables import Shown, cells_claim, mean_std, paired_verdict, published_columns
from .settings import ALLOWED, ENCODER_NAMES, EXACT_SETS, EXPERIMENT, ML_ENCODER, RUN, TABLES

IDENTITY = list(RUN)                    # seed, encoder, depth, bits
GRID = ["encoder", "depth", "bits"]     # a table's cell, over seeds
HISTORY_COLUMNS = [*IDENTITY, "epoch", "train_nelbo", "test_nelbo"]


def retrieval_columns(k: int) -> list[str]:
    return [*IDENTITY, f"precision_at_{k}"]


def _runs(keys) -> str:
    """'seed 1 e2 depth 0 8 bits, ...' of identity tuples."""
    return ", ".join(f"seed {s} {e} depth {d} {b} bits" for s, e, d, b in sorted(keys))


def grid_results(histories: pd.DataFrame, retrievals: pd.DataFrame, k: int) -> pd.DataFrame:
    """One row per run (grid point and seed): the test NELBO at the best and at the last epoch, the
    train NELBO of the last epoch, the epochs and precision@k. `histories` has one row per run and
    epoch (HISTORY_COLUMNS), `retrievals` one per run (retrieval_columns(k)). Raises InputError when
    the records do not fit: an epoch or a run twice, a run in one of them only, or a grid with a
    run missing (every encoder, depth and bits needs every seed, or the claims' pairs are not seeds')."""
    twice = histories[histories.duplicated([*IDENTITY, "epoch"])]
    if len(twice):
        raise InputError(f"semhash histories: two rows for an epoch of {_runs(set(map(tuple, twice[IDENTITY].values)))}")
    twice = retrievals[retrievals.duplicated(IDENTITY)]
    if len(twice):
        raise InputError(f"semhash retrievals: two rows for {_runs(set(map(tuple, twice[IDENTITY].values)))}")
    trained = set(map(tuple, histories[IDENTITY].drop_duplicates().values))
    evaluated = set(map(tuple, retrievals[IDENTITY].values))
    for what, runs in (("a history but no retrieval", trained - evaluated),
                       ("a retrieval but no history", evaluated - trained)):
        if runs:
            raise InputError(f"semhash records: {what} for {_runs(runs)}")
    seeds, cells = {run[0] for run in trained}, {run[1:] for run in trained}
    missing = {(seed, *cell) for seed in seeds for cell in cells} - trained
    if missing:
        raise InputError(f"semhash records: the grid lacks {_runs(missing)} (every cell needs every seed)")

    precision = retrievals.set_index(IDENTITY)[f"precision_at_{k}"]
    rows = []
    for run, history in histories.groupby(IDENTITY, sort=False):
        history = history.sort_values("epoch").reset_index(drop=True)
        best, last = history.loc[history.test_nelbo.idxmin()], history.iloc[-1]
        seed, encoder, depth, bits = run
        rows.append({"encoder": encoder, "depth": int(depth), "bits": int(bits), "seed": int(seed),
                     "test_nelbo_best": float(best.test_nelbo), "best_epoch": int(best.epoch),
                     "test_nelbo_last": float(last.test_nelbo), "train_nelbo_last": float(last.train_nelbo),
                     "epochs": int(last.epoch), "precision": float(precision.loc[run])})
    return pd.DataFrame(rows).sort_values([*GRID, "seed"], ignore_index=True)


def grid_table(results: pd.DataFrame, value: str) -> pd.DataFrame:
    """Rows encoder x decoder depth, columns bits, as the papers lay them out: each cell's mean over
    seeds, and its standard deviation as '<b> bits std'."""
    summary = mean_std(results, GRID, [value])
    numbers = summary.pivot_table(index=["encoder", "depth"], columns="bits", values=[value, f"{value} std"],
                                  dropna=False)
    table = numbers.index.to_frame(index=False)
    for b in sorted(summary.bits.unique()):
        table[f"{b} bits"], table[f"{b} bits std"] = numbers[(value, b)].to_numpy(), numbers[(f"{value} std", b)].to_numpy()
    return table


UNIT = "nats/document"  # every NELBO and -log p(x) of the tables and claims


class Table(NamedTuple):
    name: str          # the file's name, without .csv or .md
    table: pd.DataFrame
    title: str
    note: str
    shown: Shown | None = None  # how Markdown and HTML show it (tables.Shown)


# The grid tables' titles: the value, its unit and which way is better.
GRID_TITLES = {"test_nelbo_best": f"test NELBO at the best epoch, {UNIT}, lower is better",
               "test_nelbo_last": f"test NELBO at the last epoch, {UNIT}, lower is better",
               "train_nelbo_last": f"train NELBO in the last epoch, {UNIT}, lower is better",
               "precision": "precision@{k} of Hamming ranking, higher is better"}
GAPS_SHOWN = Shown(labels={"nll": "-log p(x) ↓", "nelbo": "NELBO ↓", "nelbo_q_star": "NELBO(q*) ↓",
                           "inference_gap": "inf. gap ↓", "approximation_gap": "approx. gap ↓",
                           "amortization_gap": "amort. gap ↓", "nll bound": "IWAE bound ↓"},
                   notes=(f"Every number in {UNIT}; depth: the decoder's hidden layers; inf. gap = inference gap, "
                          "approx. gap = approximation gap, amort. gap = amortization gap, IWAE bound = nll bound "
                          "(the note above); a dash: the likelihood control (ml) has no encoder, so no NELBO and no "
                          "gaps.",))
IWAE_SHOWN = Shown(labels={"depth": "decoder depth", "nll": "-log p(x) ↓"},
                   notes=(f"Every number in {UNIT}; K=n: the IWAE bound with n samples minus the exact -log p(x) "
                          "(lower is better: 0 is exact).",))
SPLIT_SHOWN = Shown(notes=(f"Every number in {UNIT}; negative: e1 lower (better).",))

def grid_tables(results: pd.DataFrame, k: int, published: pd.DataFrame) -> list[Table]:
    """The grid table of each value of settings.TABLES, with its note: what the value is, the seeds, and
    for the best test NELBO the published numbers (`published`, tables.load_published's)."""
    seeds = sorted(results.seed.unique())
    spread = (f"Mean (standard deviation) over {len(seeds)} seeds ({', '.join(map(str, seeds))}; each its own "
              "initialisation, batch order and code samples on the same corpus; per-seed rows in results.csv)"
              if len(seeds) > 1 else f"One seed ({seeds[0]}), no spread")
    notes = {
        "test_nelbo_best": "test NELBO (nats per document, relative to the document's empirical distribution) "
                           "at the best epoch, the protocol's number",
        "test_nelbo_last": "test NELBO at the last epoch",
        "train_nelbo_last": "train NELBO in the last epoch",
        "precision": f"precision@{k} of Hamming ranking (codes: bit = logit > 0; the training set is the "
                     "database, the test set the queries; relevant = same label)",
    }
    out = []
    for value in TABLES:
        note = f"{notes[value]}. {spread}"
        if value == "test_nelbo_best":
            numbers = published_columns(published, EXPERIMENT, "test_nelbo", "best epoch")
            if numbers:
                note += "; published (e1, decoder depth 0, 64 bits, real 20 Newsgroups): " + ", ".join(
                    f"{key.split('(')[-1].rstrip(')')}: {v:g}" for key, v in numbers.items())
        out.append(Table(value, grid_table(results, value), f"Semantic hashing: {GRID_TITLES[value].format(k=k)}", note + ".",
                         Shown(labels={"depth": "decoder depth"})))
    return out


def encoder_claims(results: pd.DataFrame, cells_file: str) -> tuple[list[dict], list[dict]]:
    """e1 reaches a lower best test NELBO than e2, and than e3, in every (depth, bits) cell: per cell,
    the paired change e1 minus the other encoder in the same cell and seed, over seeds. Returns the
    claims and their per-cell rows, which go to `cells_file` (a name the claims cite)."""
    counts, *others = ALLOWED["encoders"]
    claims, cells_rows = [], []
    for other in others:
        cells = _paired(results, "test_nelbo_best", counts, other)
        if not cells:
            continue
        claim, rows = cells_claim(
            EXPERIMENT, f"encoders {counts} vs {other}, every (depth, bits) cell",
            f"a linear encoder on word counts ({counts}) reaches a lower test NELBO than {other} "
            f"({ENCODER_NAMES[other]})", "test_nelbo_best", cells, "decrease",
            f"{other} in the same cell and seed", cells_file, name=f"test NELBO: {counts} below {other}", unit=UNIT)
        claims.append(claim)
        cells_rows += rows
    return claims, cells_rows


# ---------------------------------------------------------------- the approximation error (exact.csv)

EXACT_VALUES = ["nll", "nelbo", "nelbo_q_star", "inference_gap", "approximation_gap", "amortization_gap"]
EXACT_COLUMNS = [*IDENTITY, "set", "method", "documents", *EXACT_VALUES, "q_star_max_sweeps", "q_star_unconverged"]
GAP_CELL = ["depth", "bits"]
# What gaps.png reads of gaps.csv.
GAPS_COLUMNS = ["set", *GAP_CELL, "encoder", "seeds", *EXACT_VALUES]


def exact_columns(samples: list[int]) -> list[str]:
    """The columns every exact.csv has: EXACT_COLUMNS and the IWAE bound's nll_iwae_<K> of each K."""
    return [*EXACT_COLUMNS, *(f"nll_iwae_{K}" for K in sorted(samples))]


def numbers(frame: pd.DataFrame, columns) -> pd.DataFrame:
    """`frame` with `columns` as numbers: tables.read_tidy keeps an empty field (a value not computed) as
    an empty string, which becomes nan."""
    return frame.assign(**{c: pd.to_numeric(frame[c].replace("", float("nan"))) for c in columns})


def exact_records(exact: pd.DataFrame) -> pd.DataFrame:
    """The exact.csv records with their values as numbers (an empty field, a value not computed, is
    nan); InputError when they do not fit: a run and set twice, or a cell without every seed."""
    exact = numbers(exact, [c for c in exact.columns if c in EXACT_VALUES or c.startswith("nll_iwae_")])
    twice = exact[exact.duplicated([*IDENTITY, "set"])]
    if len(twice):
        raise InputError(f"semhash exact records: two rows for a set of {_runs(set(map(tuple, twice[IDENTITY].values)))}")
    runs = set(map(tuple, exact[IDENTITY].drop_duplicates().values))
    seeds, cells = {run[0] for run in runs}, {run[1:] for run in runs}
    missing = {(seed, *cell) for seed in seeds for cell in cells} - runs
    if missing:
        raise InputError(f"semhash exact records: the grid lacks {_runs(missing)} (every cell needs every seed)")
    return exact


def _order(encoders) -> list[str]:
    """The grid's encoders in the config's order, then the control."""
    known = [*ALLOWED["encoders"], ML_ENCODER]
    return sorted(set(encoders), key=lambda e: known.index(e) if e in known else len(known))


def gaps_table(exact: pd.DataFrame, iwae_samples: int) -> pd.DataFrame:
    """Per set, cell and encoder (the control last): each value's mean and '<value> std' over seeds,
    and the IWAE bound with iwae_samples samples ('nll bound'), the only number above max_bits."""
    exact = exact.assign(**{"nll bound": exact[f"nll_iwae_{iwae_samples}"]})
    exact = exact.assign(encoder=pd.Categorical(exact.encoder, _order(exact.encoder)),
                         set=pd.Categorical(exact["set"], list(EXACT_SETS)))
    exact = exact.sort_values(["set", *GAP_CELL, "encoder", "seed"])
    table = mean_std(exact, ["set", *GAP_CELL, "encoder"], [*EXACT_VALUES, "nll bound"])
    return table.assign(encoder=table.encoder.astype(str), set=table["set"].astype(str))


def iwae_table(exact: pd.DataFrame, samples: list[int]) -> pd.DataFrame:
    """How far above the exact -log p(x) the IWAE bound's is, per cell and encoder on the test set,
    for each K (mean and std over seeds): the curve that says what the bound is worth above max_bits."""
    test = exact[(exact["set"] == "test") & exact.nll.notna() & (exact.encoder != ML_ENCODER)]
    excess = test.assign(**{f"K={K}": test[f"nll_iwae_{K}"] - test.nll for K in sorted(samples)})
    return mean_std(excess.sort_values([*GAP_CELL, "encoder", "seed"]), [*GAP_CELL, "encoder"],
                    ["nll", *(f"K={K}" for K in sorted(samples))])


def _paired(test: pd.DataFrame, value: str, a: str, b: str) -> dict[str, dict[int, float]]:
    """{cell name: {seed: value of a - value of b}} over the cells where both have the value."""
    wide = test.pivot_table(index=[*GAP_CELL, "seed"], columns="encoder", values=value)
    if a not in wide.columns or b not in wide.columns:
        return {}
    pairs = wide[[a, b]].dropna()
    return {f"decoder depth {depth}, {bits} bits": {int(seed): float(row[a] - row[b])
                                                     for (_, _, seed), row in group.iterrows()}
            for (depth, bits), group in pairs.groupby(level=GAP_CELL)}


GAPS_NOTE = ("Nats per document relative to the document's empirical distribution, as the NELBO. Up to {max_bits} "
             "bits every value is exact (all codes enumerated): nll = -log p(x); nelbo = -ELBO of the trained "
             "encoder q; nelbo_q_star = -ELBO of the best factorized posterior q* per document (coordinate "
             "ascent from q: a local optimum, so approximation_gap = nelbo_q_star - nll is an upper bound and "
             "amortization_gap = nelbo - nelbo_q_star a lower bound); inference_gap = nelbo - nll is their sum. "
             "Encoder ml: the decoder trained by the exact log-likelihood (no encoder). 'nll bound' is the IWAE "
             "bound with K = {K} samples from q, an upper bound on -log p(x) (in expectation), never its value; "
             "above {max_bits} bits it is the only number. Rows: the test set, and the fixed subset of the "
             "training set (set train). Values: {spread}. Published NELBO (the protocol's one-sample estimate "
             "at the best epoch; e1, depth 0, 64 bits, real 20 Newsgroups): {published}.")


def gap_tables(exact: pd.DataFrame, max_bits: int, iwae_samples: int, curve: list[int],
               published: pd.DataFrame) -> list[Table]:
    """settings.GAPS_TABLES with their notes: gaps (gaps_table), iwae (iwae_table over `curve`) and split
    (split_table); `published` as tables.load_published gives it."""
    seeds = sorted(exact.seed.unique())
    spread = f"mean (std) over {len(seeds)} seeds ({', '.join(map(str, seeds))}); per run: each run's exact.csv"
    pub = published_columns(published, EXPERIMENT, "test_nelbo", "best epoch")
    return [
        Table("gaps", gaps_table(exact, iwae_samples), "Semantic hashing: the approximation error",
              GAPS_NOTE.format(max_bits=max_bits, K=iwae_samples, spread=spread,
                               published=", ".join(f"{k}: {v:g}" for k, v in pub.items()) or "none"), GAPS_SHOWN),
        Table("iwae", iwae_table(exact, curve), "Semantic hashing: the IWAE bound against the exact -log p(x)",
              f"Test set, -log p(x) exact and the IWAE bound's excess over it for each K, {spread}.", IWAE_SHOWN),
        Table("split", split_table(exact), "Semantic hashing: e1's NELBO advantage, split",
              "Test set, exact: the difference in NELBO = the difference in -log p(x) (the decoders) + the "
              "difference in the inference gap (the bounds); mean paired differences over seeds, 95% t-intervals.",
              SPLIT_SHOWN),
    ]


def split_table(exact: pd.DataFrame) -> pd.DataFrame:
    """e1's NELBO advantage over each other encoder, per cell on the test set, split exactly into a
    better decoder (the difference in -log p(x)) and a tighter bound (the difference in the inference
    gap): each a mean paired difference over seeds with its 95% interval."""
    test = exact[exact["set"] == "test"]
    counts, *others = ALLOWED["encoders"]
    rows = []
    for other in others:
        parts = {value: _paired(test, value, counts, other) for value in ("nelbo", "nll", "inference_gap")}
        for cell, changes in parts["nelbo"].items():
            row = {"encoders": f"{counts} - {other}", "cell": cell, "seeds": len(changes)}
            for value, label in (("nelbo", "NELBO"), ("nll", "-log p(x)"), ("inference_gap", "gap")):
                seeds = parts[value][cell]
                pv = paired_verdict([seeds[s] for s in sorted(seeds)], "decrease")
                row[label], row[f"{label} 95% interval"] = pv.mean, f"[{pv.low:+.4g}, {pv.high:+.4g}]"
            rows.append(row)
    return pd.DataFrame(rows)


def gap_claims(exact: pd.DataFrame, cells_file: str) -> tuple[list[dict], list[dict]]:
    """On the test set, each over seeds in every cell where it can be measured:
    - ELBO training gives up likelihood: each encoder's decoder has a higher -log p(x) than the
      maximum-likelihood control of the same cell and seed;
    - e1's inference gap is smaller than each other encoder's;
    - e1's decoder is better (lower -log p(x)) than each other encoder's.
    Returns the claims and their per-cell rows, which go to `cells_file`."""
    test = exact[exact["set"] == "test"]
    counts, *others = ALLOWED["encoders"]
    specs = [(encoder, ML_ENCODER, "nll", "increase", f"ELBO training gives up likelihood ({encoder})",
              f"the decoder trained with encoder {encoder} has a lower test log p(x) than the decoder trained by "
              "the exact log-likelihood", "the likelihood control of the same cell and seed",
              f"-log p(x): {encoder} above the ML decoder")
             for encoder in ALLOWED["encoders"]]
    for other in others:
        specs += [(counts, other, "inference_gap", "decrease", f"inference gap, {counts} vs {other}",
                   f"{counts}'s inference gap log p(x) - ELBO is smaller than {other}'s",
                   f"{other} in the same cell and seed", f"inference gap: {counts} below {other}"),
                  (counts, other, "nll", "decrease", f"decoder likelihood, {counts} vs {other}",
                   f"{counts}'s decoder has a higher test log p(x) than {other}'s",
                   f"{other} in the same cell and seed", f"-log p(x): {counts} below {other}")]
    claims, rows = [], []
    for a, b, value, expected, setting, claim, control, name in specs:
        cells = _paired(test, value, a, b)
        if not cells:
            continue
        metric = {"nll": "test_nll", "inference_gap": "test_inference_gap"}[value]
        summary, cell_rows = cells_claim(EXPERIMENT, setting + ", every (depth, bits) cell", claim, metric, cells,
                                         expected, control, cells_file, name=name, unit=UNIT)
        claims.append(summary)
        rows += cell_rows
    return claims, rows
