"""Result tables, published numbers and the claims table, shared by every experiment.

An experiment reads its tidy metrics with `read_tidy` / `one_value`, lays out one row per stage
with the published numbers beside ours (`with_published`), writes its results tables with
`write_table` (over seeds: `mean_std`, `with_spread`) and its claims as rows made by `seeds_claim` (one
claim decided over seeds by `paired_verdict`) or `cells_claim` (a claim that must hold in every cell of a
grid) (`write_claims`: one CSV per experiment); `collect_claims` stacks those files into the run's
claims table. Nothing here knows an experiment by name.

    python -m vae_approx.tables claims --inputs a.csv b.csv --csv claims.csv --md claims.md
    python -m vae_approx.tables record results/quick --page docs/results.md
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from .common import InputError, save_csv, save_text

# measured: the change over seeds as "+0.053 [+0.049, +0.057], 3/3 seeds" (mean, 95% t-interval,
# seeds in the expected direction); control: what each seed's value is compared with;
# by_construction: the claim cannot fail by the way it is trained (no evidence for the paper)
CLAIM_COLUMNS = ["experiment", "setting", "claim", "metric", "expected", "measured", "tolerance", "control", "seeds",
                 "per_seed", "mean_change", "low", "high", "in_direction", "by_construction", "verdict"]
PUBLISHED_COLUMNS = ["experiment", "setting", "metric", "stage", "value", "source"]
HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"


def markdown(df: pd.DataFrame, title: str | None = None, note: str | None = None, floatfmt: str = ".4g") -> str:
    parts = [f"## {title}\n"] if title else []
    parts.append(df.to_markdown(index=False, floatfmt=floatfmt))
    if note:
        parts.append(f"\n{note}")
    return "\n".join(parts) + "\n"


def write_table(df: pd.DataFrame, csv_path, md_path, title: str | None = None, note: str | None = None) -> None:
    """The same table as tidy CSV (for code) and Markdown (for people), both written atomically; in
    the Markdown, a column with a `<column> std` beside it reads 'mean (std)' (with_spread)."""
    save_csv(df, csv_path)
    save_text(markdown(spread_text(df), title, note), md_path)


def read_tidy(path, what: str, columns) -> pd.DataFrame:
    """A tidy CSV that must exist, parse and hold rows with `columns`; errors name `what` and the file.
    Empty strings stay empty strings (not NaN), so selector columns compare as text."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: file not found: {path}")
    try:
        df = pd.read_csv(path, keep_default_na=False)
    except Exception as exc:
        raise InputError(f"{what} {path}: cannot read ({type(exc).__name__}: {exc})") from exc
    missing = set(columns) - set(df.columns)
    if missing or df.empty:
        raise InputError(f"{what} {path}: expected rows with columns {', '.join(columns)}"
                         + (f"; missing {', '.join(sorted(missing))}" if missing else "; no rows"))
    return df


def read_records(paths, what: str, columns) -> pd.DataFrame:
    """Per-run tidy CSV files (read_tidy), concatenated in the order given: the records a table is made of."""
    return pd.concat([read_tidy(p, what, columns) for p in paths], ignore_index=True)


def one_value(df: pd.DataFrame, what: str, column: str = "value", **where) -> float:
    """The one number in `column` of the row matching every column=value in `where`."""
    sel = pd.Series(True, index=df.index)
    for key, value in where.items():
        sel &= df[key] == value
    if sel.sum() != 1:
        cond = " ".join(f"{k}={v}" for k, v in where.items())
        raise InputError(f"{what}: expected one row {cond}, found {int(sel.sum())}")
    try:
        return float(df.loc[sel, column].iloc[0])
    except ValueError as exc:
        raise InputError(f"{what}: row {' '.join(f'{k}={v}' for k, v in where.items())}: {column} is not a number") from exc


def load_published(path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"published results: file not found: {path}")
    df = pd.read_csv(path)
    missing = set(PUBLISHED_COLUMNS) - set(df.columns)
    if missing:
        raise InputError(f"published results {path}: missing columns {sorted(missing)}")
    return df


def published(df: pd.DataFrame, experiment: str, metric: str, stage: str, setting: str | None = None) -> list[tuple[float, str]]:
    """Every published (value, source) for this experiment, metric and stage."""
    sel = (df.experiment == experiment) & (df.metric == metric) & (df.stage == stage)
    if setting is not None:
        sel &= df.setting == setting
    return [(float(v), s) for v, s in zip(df.value[sel], df.source[sel])]


def short_source(source: str) -> str:
    """'Kyrylov et al. ReScience C 9(2) 2023 (README ...)' -> 'Kyrylov et al. 2023'."""
    author = re.match(r"\s*([A-Z][\w-]+ et al\.)", source)
    year = re.search(r"\b(19|20)\d\d\b", source)
    if author and year:
        return f"{author.group(1)} {year.group(0)}"
    return source


def published_columns(df: pd.DataFrame, experiment: str, metric: str, stage: str,
                      setting: str | None = None) -> dict[str, float]:
    """One column per published source: {'elbo published (Kyrylov et al. 2023)': -3.31, ...}."""
    return {f"{metric} published ({short_source(s)})": v for v, s in published(df, experiment, metric, stage, setting)}


def with_published(table: pd.DataFrame, pub: pd.DataFrame, experiment: str, metrics, setting: str | None = None,
                   label: str = "stage") -> pd.DataFrame:
    """`table` (one row per stage, named in column `label`) followed by one column per published
    (metric, source) for that stage."""
    published = [{k: v for metric in metrics for k, v in published_columns(pub, experiment, metric, stage, setting).items()}
                 for stage in table[label]]
    return pd.concat([table.reset_index(drop=True), pd.DataFrame(published, index=range(len(table)))], axis=1)


def mean_std(df: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """One row per group of `by` (in first-seen order): `seeds`, the rows in the group, then each of
    `columns` as its mean over them and `<column> std`, the standard deviation (nan with one row)."""
    rows = []
    for key, group in df.groupby(by, sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)), seeds=len(group))
        for column in columns:
            values = group[column].dropna()
            if len(values):
                row[column] = values.mean()
                row[f"{column} std"] = values.std(ddof=1) if len(values) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def with_spread(mean: float, std: float, fmt: str = ".4g") -> str:
    """'93.1 (0.21)': a mean and its standard deviation over seeds, or the mean alone without one."""
    if not math.isfinite(std):
        return format(mean, fmt)
    return f"{mean:{fmt}} ({std:.2g})"


def spread_text(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with each column that has a `<column> std` beside it as text 'mean (std)', the std gone."""
    shown = df.copy()
    for column in df.columns:
        if f"{column} std" in df.columns:
            shown[column] = [with_spread(m, sd) if pd.notna(m) else "" for m, sd in zip(df[column], df[f"{column} std"])]
            shown = shown.drop(columns=f"{column} std")
    return shown


# ---------------------------------------------------------------- claims


def _claim(experiment: str, setting: str, claim: str, metric: str, expected: str, measured: str,
           tolerance: float, verdict: str, *, control: str = "", seeds: int = 1, per_seed: str = "",
           mean_change: float = float("nan"), low: float = float("nan"), high: float = float("nan"),
           in_direction: int | str = "", by_construction: bool = False) -> dict:
    """One row of the claims table, in CLAIM_COLUMNS."""
    return {"experiment": experiment, "setting": setting, "claim": claim, "metric": metric, "expected": expected,
            "measured": measured, "tolerance": tolerance, "control": control, "seeds": seeds, "per_seed": per_seed,
            "mean_change": mean_change, "low": low, "high": high, "in_direction": in_direction,
            "by_construction": bool(by_construction), "verdict": verdict}


class PairedVerdict(NamedTuple):
    n: int              # seeds
    mean: float         # mean paired change over the seeds
    std: float          # its standard deviation over seeds (nan with one seed)
    low: float          # the 95% t-interval of the mean change (nan with one seed)
    high: float
    in_direction: int   # seeds whose own change lies beyond the tolerance in the expected direction
    verdict: str        # holds, fails or inconclusive

    def summary(self) -> str:
        """'+0.053 [+0.049, +0.057], 3/3 seeds', or '+0.053, 1 seed, no interval'."""
        if self.n == 1:
            return f"{self.mean:+.4g}, 1 seed, no interval"
        return f"{self.mean:+.4g} [{self.low:+.4g}, {self.high:+.4g}], {self.in_direction}/{self.n} seeds"


def paired_verdict(changes, expected: str, tolerance: float = 0.0, confidence: float = 0.95) -> PairedVerdict:
    """The decision rule of every claim: paired changes (one per seed: after - before of the same
    seed, or one encoder's value minus another's in the same cell and seed) against a tolerance.

    Over n seeds, the t-interval of the mean change at `confidence`: the claim `holds` when the
    whole interval lies beyond the tolerance in the expected direction (above +tolerance for an
    `increase`, below -tolerance for a `decrease`), `fails` when it lies entirely on the other
    side of it, and is `inconclusive` otherwise. With one seed there is no interval: the verdict
    is the point comparison (holds or fails). A non-finite change fails the claim.
    """
    if expected not in ("increase", "decrease"):
        raise ValueError(f"expected must be 'increase' or 'decrease', got {expected!r}")
    values = np.asarray(changes, dtype=float).ravel()
    if values.size == 0:
        raise ValueError("paired_verdict needs at least one change")
    sign = 1.0 if expected == "increase" else -1.0
    n, mean = values.size, float(values.mean())
    in_direction = int(np.sum(sign * values > tolerance))
    if not np.all(np.isfinite(values)):
        return PairedVerdict(n, mean, float("nan"), float("nan"), float("nan"), in_direction, FAILS)
    if n == 1:
        return PairedVerdict(1, mean, float("nan"), float("nan"), float("nan"), in_direction,
                             HOLDS if sign * mean > tolerance else FAILS)
    from scipy import stats  # here, not at the top: it costs every stage's start about a second

    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    near, far = sorted((sign * low, sign * high))                      # the interval in the expected direction
    verdict = HOLDS if near > tolerance else FAILS if far < tolerance else INCONCLUSIVE
    return PairedVerdict(n, mean, std, low, high, in_direction, verdict)


def seeds_claim(experiment: str, setting: str, claim: str, metric: str, changes: dict, expected: str,
                control: str, tolerance: float = 0.0, by_construction: bool = False,
                expect_change: bool = True) -> dict:
    """A claim decided by paired_verdict over seeds: `changes` {seed: paired change}, each the
    seed's value minus its `control` (the same seed before training, or the control fit).

    expect_change=False states that no change beyond the tolerance in the expected direction
    occurs (the consistent encoder's centres drift no further than the maximum-likelihood fit's):
    it fails when the whole interval lies beyond the tolerance, and holds otherwise (the interval
    reaches the control's side)."""
    seeds = sorted(changes)
    pv = paired_verdict([changes[k] for k in seeds], expected, tolerance)
    if expect_change:
        verdict = pv.verdict
        wanted = f"{expected} beyond {tolerance:+g}" if tolerance else expected
    else:
        verdict = FAILS if pv.verdict == HOLDS else HOLDS
        wanted = f"no {expected} beyond {tolerance:+g}"
    per_seed = "; ".join(f"{k}: {changes[k]:+.4g}" for k in seeds)
    return _claim(experiment, setting, claim, metric, wanted, pv.summary(), tolerance, verdict, control=control,
                  seeds=pv.n, per_seed=per_seed, mean_change=pv.mean, low=pv.low, high=pv.high,
                  in_direction=f"{pv.in_direction}/{pv.n}", by_construction=by_construction)


def cells_claim(experiment: str, setting: str, claim: str, metric: str, cells: dict, expected: str,
                control: str, cells_file: str, tolerance: float = 0.0) -> tuple[dict, list[dict]]:
    """A claim that must hold in every cell of a grid: `cells` {cell name: {seed: paired change}},
    each cell decided by seeds_claim. It holds when every cell holds, fails when any cell fails
    and is inconclusive otherwise (no cells: fails). The summary row names the inconclusive and
    failing cells and shows the least clear cell's interval (its end nearest the tolerance);
    `cells_file` is where the per-cell rows (the second return value) are written."""
    rows = [seeds_claim(experiment, cell, claim, metric, changes, expected, control, tolerance)
            for cell, changes in cells.items()]
    if not rows:
        return _claim(experiment, setting, claim, metric, "in every cell", "no cells to compare", tolerance,
                      FAILS, control=control, seeds=0, per_seed=cells_file), rows
    sign = 1.0 if expected == "increase" else -1.0
    by_verdict = {v: [r["setting"] for r in rows if r["verdict"] == v] for v in (HOLDS, FAILS, INCONCLUSIVE)}
    verdict = FAILS if by_verdict[FAILS] else HOLDS if len(by_verdict[HOLDS]) == len(rows) else INCONCLUSIVE

    def near_end(r):  # how far the cell's interval (the point, with one seed) stays beyond the tolerance
        ends = [r["mean_change"]] if r["seeds"] == 1 else [r["low"], r["high"]]
        return min(sign * e for e in ends)

    least = min(rows, key=near_end)
    measured = f"{len(by_verdict[HOLDS])} of {len(rows)} cells hold"
    for v in (INCONCLUSIVE, FAILS):
        measured += f"; {v}: {', '.join(by_verdict[v]) or 'none'}"
    measured += f"; least clear, {least['setting']}: {least['measured']}"
    wanted = f"{expected} beyond {tolerance:+g}" if tolerance else expected
    return _claim(experiment, setting, claim, metric, f"{wanted} in every cell", measured, tolerance, verdict,
                  control=control, seeds=least["seeds"], per_seed=f"per cell: {cells_file}",
                  mean_change=least["mean_change"], low=least["low"], high=least["high"],
                  in_direction=least["in_direction"]), rows


def claims_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def write_claims(rows: list[dict], path) -> pd.DataFrame:
    """An experiment's claims file, in the columns collect_claims stacks."""
    frame = claims_frame(rows)
    save_csv(frame, path)
    return frame


def read_claims(path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"claims: file not found: {path}")
    df = pd.read_csv(path, dtype={"per_seed": str, "in_direction": str})  # text, kept as written
    if list(df.columns) != CLAIM_COLUMNS:
        raise InputError(f"claims {path}: columns {list(df.columns)}, expected {CLAIM_COLUMNS}")
    bad = set(df.verdict) - {HOLDS, FAILS, INCONCLUSIVE}
    if bad:
        raise InputError(f"claims {path}: unknown verdicts {sorted(bad)}")
    return df


def collect_claims(inputs: list, csv_path, md_path) -> pd.DataFrame:
    df = pd.concat([read_claims(p) for p in inputs], ignore_index=True)
    evidence = df[~df.by_construction.astype(bool)]
    counts = {v: int((evidence.verdict == v).sum()) for v in (HOLDS, FAILS, INCONCLUSIVE)}
    note = (f"Of {len(evidence)} claims that could fail: {counts[HOLDS]} hold, {counts[FAILS]} fail, "
            f"{counts[INCONCLUSIVE]} inconclusive; {len(df) - len(evidence)} more cannot fail by the way "
            "they are trained (by_construction: true) and are no evidence. A claim holds when the 95% t-interval of its change "
            "over seeds (each seed against its control) lies beyond the tolerance in the expected direction, "
            "fails when it lies on the other side, and is inconclusive otherwise; with one seed the point decides. "
            "Per-seed changes: claims.csv.")
    shown = df[["experiment", "setting", "claim", "expected", "measured", "tolerance", "control",
                "by_construction", "verdict"]]
    save_csv(df, csv_path)
    save_text(markdown(shown, title="Claims of the paper, checked on this run", note=note), md_path)
    return df


VERDICT_COLOURS = {HOLDS: "tab:green", FAILS: "tab:red", INCONCLUSIVE: "tab:orange"}


def plot_claims(df: pd.DataFrame, path) -> None:
    """claims.png: one panel per claim, on its own scale: the mean change (dot) with its 95%
    interval (bar) and each seed's change (small marks, where the row lists them), the tolerance
    (dashed) with the expected side shaded, coloured by verdict; by-construction claims greyed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .common import save_figure
    fig, axes = plt.subplots(len(df), 1, figsize=(9, 0.85 * len(df) + 0.6), squeeze=False)
    for ax, row in zip(axes[:, 0], df.itertuples()):
        colour = VERDICT_COLOURS[row.verdict]
        per_seed = [float(v.split(":")[1]) for v in str(row.per_seed).split(";") if ":" in v and "per cell" not in v]
        ends = [x for x in (row.low, row.high, row.mean_change, row.tolerance, -row.tolerance, *per_seed)
                if math.isfinite(x)]
        span = (max(ends) - min(ends)) or abs(max(ends)) or 1.0
        lo, hi = min(ends) - 0.15 * span, max(ends) + 0.15 * span
        kind = "increase" if "increase" in row.expected else "decrease"
        threshold = row.tolerance if kind == "increase" else -row.tolerance
        wanted_above = (kind == "increase") != row.expected.startswith("no ")  # "no increase": below it
        ax.axvspan(threshold, hi if wanted_above else lo, color="0.92", zorder=0)
        ax.axvline(threshold, c="0.4", ls="--", lw=1)
        if math.isfinite(row.low):
            ax.plot([row.low, row.high], [0, 0], c=colour, lw=3, solid_capstyle="butt")
        ax.plot(per_seed, [0.25] * len(per_seed), "|", c=colour, ms=8)
        ax.plot([row.mean_change], [0], "o", c=colour, ms=6)
        ax.set_xlim(lo, hi)
        ax.set_ylim(-0.6, 0.6)
        ax.set_yticks([])
        ax.tick_params(axis="x", labelsize=7)
        label = f"{row.experiment}: {row.claim}"
        label = label if len(label) <= 110 else label[:107] + "..."
        ax.set_title(f"{label}  [{row.verdict}{', by construction' if row.by_construction else ''}]",
                     fontsize=7.5, loc="left", color="0.5" if row.by_construction else "black")
    fig.suptitle("Claims: mean change over seeds with its 95% interval (bar), seeds (ticks); "
                 "expected side of the tolerance shaded", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


# The Markdown tables of a run, in the order docs/results.md shows them (globs under results/<run>/).
RECORD_TABLES = ("claims.md", "gmm/*/table.md", "semhash/test_nelbo_best.md", "semhash/precision.md",
                 "semhash/gaps.md", "semhash/split.md", "semhash/iwae.md", "images/table.md", "images/ablation.md",
                 "images/likelihood.md")
RECORD_MARK = "<!-- generated: python -m vae_approx.tables record"


def record_text(run_dir, tables: dict[str, str]) -> str:
    """The generated part of a results page: the run's Markdown tables {relative path: text}, each under a
    heading naming its file, their own headings one level down."""
    parts = [f"{RECORD_MARK} {run_dir} -->", "",
             f"Generated from `{run_dir}/` by `python -m vae_approx.tables record {run_dir} --page <this file>`; "
             "each table as the run wrote it.", ""]
    for name, text in tables.items():
        title, _, body = text.strip().partition("\n")
        title = f"**{title.removeprefix('## ')}**" if title.startswith("## ") else title  # the table's own title
        parts += [f"### `{name}`", "", title, body, ""]
    return "\n".join(parts)


def write_record(run_dir, page) -> None:
    """Replace everything from the page's generated mark on with the run's tables (record_text)."""
    run_dir, page = Path(run_dir), Path(page)
    tables = {}
    for pattern in RECORD_TABLES:
        for path in sorted(run_dir.glob(pattern)):
            tables[str(path.relative_to(run_dir))] = path.read_text()
    if "claims.md" not in tables:
        raise InputError(f"{run_dir}: no claims.md; run the workflow first")
    text = page.read_text() if page.is_file() else ""
    mark = text.find(RECORD_MARK)
    head = text[:mark] if mark >= 0 else text + ("\n" if text and not text.endswith("\n") else "")
    save_text(head + record_text(str(run_dir), tables), page)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vae_approx.tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    claims = sub.add_parser("claims", help="stack per-experiment claims files into one table")
    claims.add_argument("--inputs", nargs="+", required=True)
    claims.add_argument("--csv", required=True)
    claims.add_argument("--md", required=True)
    claims.add_argument("--png", help="claims.png: every claim's change and interval against its tolerance")
    record = sub.add_parser("record", help="write a run's tables into a results page, from its generated mark on")
    record.add_argument("run_dir", help="the run's folder, results/<run>")
    record.add_argument("--page", required=True, help="the Markdown page, e.g. docs/results.md")
    args = parser.parse_args(argv)
    if args.command == "record":
        write_record(args.run_dir, args.page)
    elif args.command == "claims":
        df = collect_claims(args.inputs, args.csv, args.md)
        if args.png:
            plot_claims(df, args.png)


if __name__ == "__main__":
    main()
