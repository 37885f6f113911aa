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
import json
import math
import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from .common import InputError, save_csv, save_text

# measured: the change over seeds as "+0.053 [+0.049, +0.057], 3/3 seeds" (mean, 95% t-interval,
# seeds in the expected direction); control: what each seed's value is compared with;
# by_construction: the claim cannot fail by the way it is trained (no evidence for the paper)
# name: the claim in a few words (the claims table's row), unit: the change's unit
CLAIM_COLUMNS = ["experiment", "setting", "name", "claim", "metric", "unit", "expected", "measured", "tolerance",
                 "control", "seeds", "per_seed", "mean_change", "low", "high", "in_direction", "by_construction",
                 "verdict"]
PUBLISHED_COLUMNS = ["experiment", "setting", "metric", "stage", "value", "source"]
HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"


DASH = "–"  # a cell with no value; every table's notes say what a dash means there
BETTER = {"higher": "↑", "lower": "↓"}
DIRECTION_NOTE = "↑: higher is better; ↓: lower is better; no arrow: a change or a setting, not a score."


@dataclass(frozen=True)
class Shown:
    """How a table is shown to a reader, in Markdown and in the report's HTML (its CSV stays tidy):

    labels: column -> header with its unit and direction (BETTER), e.g. "ELBO, nats/point ↑";
    transpose: the columns that name a row; when given, the shown table has one row per other
    column (a quantity, its label first) and one column per row (headed by those columns' values
    joined by ", "): a table of many quantities over a few stages stays narrow;
    drop: columns left out of the shown table (kept in the CSV);
    values: cell text -> its short form (a stage's long name, which the notes spell out);
    notes: numbered notes under the table, the prose that cells must not hold.
    A published column '<metric> published (<source>)' takes the metric's label, without its arrow.
    """

    labels: dict = field(default_factory=dict)
    transpose: tuple = ()
    drop: tuple = ()
    values: dict = field(default_factory=dict)
    notes: tuple = ()

    def label(self, column: str) -> str:
        if column in self.labels:
            return self.labels[column]
        metric, published, source = column.partition(" published ")
        if published and metric in self.labels:
            return f"{self.labels[metric].rstrip(' ↑↓')}, published {source}"
        return column


def cell_text(value, floatfmt: str = ".4g") -> str:
    """A cell as a reader sees it: numbers formatted, a missing value as a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return format(float(value), floatfmt)
    text = str(value).strip()
    return text if text and text.lower() != "nan" else DASH


NUMBER = re.compile(r"^[-+]?(\d[\d,]*\.?\d*|\.\d+)(e[-+]?\d+)?( \(.*\)| \[.*\])?$")


def looks_numeric(text: str) -> bool:
    """A cell that reads as a number ('1.5', '-3.3 (0.03)', '+0.05 [+0.04, +0.06]'): aligned right."""
    return bool(NUMBER.match(text))


def shown_frame(df: pd.DataFrame, shown: Shown | None = None, floatfmt: str = ".4g") -> pd.DataFrame:
    """The table a reader sees, all text: `shown`'s columns dropped, headers labelled, transposed."""
    shown = shown or Shown()
    df = df.drop(columns=[c for c in shown.drop if c in df.columns])
    text = pd.DataFrame({column: [shown.values.get(t, t) for t in (cell_text(v, floatfmt) for v in df[column])]
                         for column in df.columns})
    if shown.transpose:
        heads = [", ".join(row) for row in text[list(shown.transpose)].itertuples(index=False)]
        quantities = [c for c in df.columns if c not in shown.transpose]
        rows = [[shown.label(q), *text[q]] for q in quantities]
        return pd.DataFrame(rows, columns=["quantity", *heads])
    return text.rename(columns=shown.label)


def table_notes(shown_df: pd.DataFrame, notes) -> list[str]:
    """The notes of a table: its own, then the direction legend where a header or row carries an arrow."""
    notes = [notes] if isinstance(notes, str) else list(notes or ())
    labels = [*shown_df.columns, *(shown_df.iloc[:, 0] if len(shown_df.columns) else [])]
    if any(arrow in str(label) for label in labels for arrow in BETTER.values()):
        notes.append(DIRECTION_NOTE)
    return notes


def markdown(df: pd.DataFrame, title: str | None = None, note=None, floatfmt: str = ".4g",
             shown: Shown | None = None) -> str:
    """A table for people: the title, a compact pipe table (cells unpadded, so a row is as wide as
    its contents), then its notes, numbered when there are several (`note` and shown.notes)."""
    shown = shown or Shown()
    text = shown_frame(df, shown, floatfmt)
    numeric = [len(text) > 0 and all(looks_numeric(v) for v in text[c] if v != DASH) for c in text.columns]
    lines = [f"## {title}", ""] if title else []
    def row(cells):  # a pipe inside a cell would end it
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines.append(row(text.columns))
    lines.append("|" + "|".join("--:" if right else ":--" for right in numeric) + "|")
    lines += [row(cells) for cells in text.itertuples(index=False)]
    notes = table_notes(text, [*([note] if isinstance(note, str) else note or []), *shown.notes])
    if len(notes) == 1:
        lines += ["", notes[0]]
    elif notes:
        lines += [""] + [f"{k}. {n}" for k, n in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


HTML_STYLE = """<style>
.vae-table { font: 14px/1.4 system-ui, sans-serif; color: #111; margin: 0.5em 0 1.5em; }
.vae-table table { border-collapse: collapse; margin: 0.5em 0; }
.vae-table th, .vae-table td { border: 1px solid #ccc; padding: 3px 8px; vertical-align: top; }
.vae-table th { background: #f3f3f3; text-align: left; }
.vae-table td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.vae-table tr.holds td.verdict { color: #1a7f37; font-weight: 600; }
.vae-table tr.fails td.verdict { color: #cf222e; font-weight: 600; }
.vae-table tr.inconclusive td.verdict { color: #9a6700; font-weight: 600; }
.vae-table ol, .vae-table p { max-width: 60em; color: #333; }
.vae-table table.provenance { font-size: 12px; color: #333; }
.vae-table table.provenance caption { text-align: left; font-weight: 600; }
</style>"""


def html(df: pd.DataFrame, title: str | None = None, note=None, floatfmt: str = ".4g", shown: Shown | None = None,
         row_classes: list[str] | None = None, head: str = "", before: str = "", after: str = "") -> str:
    """The same table as an HTML fragment (a style, a heading, the table, its notes) that the report shows
    inline: opened as a page of its own and embedded in the report's landing page alike. `head`, `before` and
    `after` (HTML) go above the heading, between it and the table, and right under the table."""
    from html import escape

    shown = shown or Shown()
    text = shown_frame(df, shown, floatfmt)
    parts = ['<meta charset="utf-8">', HTML_STYLE, '<div class="vae-table">' + head]
    if title:
        parts.append(f"<h2>{escape(title)}</h2>")
    parts += [before, "<table>"] if before else ["<table>"]
    parts.append("<thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in text.columns) + "</tr></thead><tbody>")
    for k, row in enumerate(text.itertuples(index=False)):
        css = f' class="{escape(row_classes[k])}"' if row_classes else ""
        cells = []
        for column, value in zip(text.columns, row):
            kind = ["verdict"] if column == "verdict" else []
            kind += ["num"] if looks_numeric(value) else []
            cells.append(f'<td class="{" ".join(kind)}">{escape(value)}</td>' if kind else f"<td>{escape(value)}</td>")
        parts.append(f"<tr{css}>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>" + after)
    notes = table_notes(text, [*([note] if isinstance(note, str) else note or []), *shown.notes])
    if len(notes) == 1:
        parts.append(f"<p>{escape(notes[0])}</p>")
    elif notes:
        parts.append("<ol>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ol>")
    parts.append("</div>")
    return "\n".join(parts) + "\n"


def html_path(md_path) -> Path:
    """Where a table's HTML lies: beside its Markdown, same name."""
    return Path(md_path).with_suffix(".html")


def write_table(df: pd.DataFrame, csv_path, md_path, title: str | None = None, note=None,
                shown: Shown | None = None) -> None:
    """The same table as tidy CSV (for code), Markdown (for people) and HTML beside the Markdown (for the
    report), all written atomically; in Markdown and HTML a column with a `<column> std` beside it reads
    'mean (std)' (with_spread)."""
    save_csv(df, csv_path)
    write_shown(spread_text(df), md_path, title, note, shown)


def write_shown(df: pd.DataFrame, md_path, title: str | None = None, note=None, shown: Shown | None = None) -> None:
    """A table for people only: its Markdown at md_path and its HTML beside it (html_path)."""
    save_text(markdown(df, title, note, shown=shown), md_path)
    save_text(html(df, title, note, shown=shown), html_path(md_path))


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
           tolerance: float, verdict: str, *, name: str, unit: str, control: str = "", seeds: int = 1,
           per_seed: str = "", mean_change: float = float("nan"), low: float = float("nan"),
           high: float = float("nan"), in_direction: int | str = "", by_construction: bool = False) -> dict:
    """One row of the claims table, in CLAIM_COLUMNS."""
    if not name or not unit:
        raise ValueError(f"claim {claim!r}: a short name and the unit of its change are required")
    return {"experiment": experiment, "setting": setting, "name": name, "claim": claim, "metric": metric,
            "unit": unit, "expected": expected,
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
                expect_change: bool = True, *, name: str, unit: str) -> dict:
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
    return _claim(experiment, setting, claim, metric, wanted, pv.summary(), tolerance, verdict, name=name, unit=unit,
                  control=control, seeds=pv.n, per_seed=per_seed, mean_change=pv.mean, low=pv.low, high=pv.high,
                  in_direction=f"{pv.in_direction}/{pv.n}", by_construction=by_construction)


def cells_claim(experiment: str, setting: str, claim: str, metric: str, cells: dict, expected: str,
                control: str, cells_file: str, tolerance: float = 0.0, *, name: str,
                unit: str) -> tuple[dict, list[dict]]:
    """A claim that must hold in every cell of a grid: `cells` {cell name: {seed: paired change}},
    each cell decided by seeds_claim. It holds when every cell holds, fails when any cell fails
    and is inconclusive otherwise (no cells: fails). The summary row names the inconclusive and
    failing cells and shows the least clear cell's interval (its end nearest the tolerance);
    `cells_file` is where the per-cell rows (the second return value) are written."""
    rows = [seeds_claim(experiment, cell, claim, metric, changes, expected, control, tolerance, name=name, unit=unit)
            for cell, changes in cells.items()]
    if not rows:
        return _claim(experiment, setting, claim, metric, "in every cell", "no cells to compare", tolerance,
                      FAILS, name=name, unit=unit, control=control, seeds=0, per_seed=cells_file), rows
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
                  name=name, unit=unit, control=control, seeds=least["seeds"], per_seed=f"per cell: {cells_file}",
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


def change_text(row) -> str:
    """A claim's change as a cell: '+0.0541 [+0.0511, +0.0572]' (mean, 95% interval), or the mean alone."""
    if not math.isfinite(row.mean_change):
        return DASH
    if math.isfinite(row.low) and math.isfinite(row.high):
        return f"{row.mean_change:+.4g} [{row.low:+.4g}, {row.high:+.4g}]"
    return f"{row.mean_change:+.4g}"


def claim_note(row) -> str:
    """The claim's long text, numbered like its row: setting, claim, what was expected against which control."""
    parts = [f"{row.experiment}, {row.setting}: {row.claim}.", f"Expected: {row.expected}; control: {row.control}."]
    if str(row.per_seed).startswith("per cell"):
        parts.append(f"Cells: {row.measured} (the row shows the least clear cell; every cell in {row.per_seed.split(': ', 1)[-1]}).")
    if str(row.expected).startswith("no "):
        parts.append("A no-change claim holds unless the whole interval lies beyond the tolerance; its seeds column "
                     "counts the seeds that did change beyond it.")
    if row.by_construction:
        parts.append("By construction: it cannot fail by the way the model is trained, so it is no evidence.")
    return " ".join(parts)


CLAIMS_TITLE = "Claims of the paper, checked on this run"


def claims_shown(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str], str]:
    """The claims table a reader sees (one short row per claim: number, experiment, name, change with its
    interval, unit, seeds in the expected direction, verdict), its notes (one per claim, numbered like
    the rows, then how a claim is decided) and the one-line summary of the verdicts."""
    evidence = df[~df.by_construction.astype(bool)]
    counts = {v: int((evidence.verdict == v).sum()) for v in (HOLDS, FAILS, INCONCLUSIVE)}
    summary = (f"Of {len(evidence)} claims that could fail: {counts[HOLDS]} hold, {counts[FAILS]} fail, "
               f"{counts[INCONCLUSIVE]} inconclusive; {len(df) - len(evidence)} more hold or fail by the way the "
               "model is trained (by construction) and are no evidence.")
    shown = pd.DataFrame({
        "#": range(1, len(df) + 1), "experiment": df.experiment, "claim": df.name,
        "change [95% interval]": [change_text(r) for r in df.itertuples()], "unit": df.unit,
        "seeds": df.in_direction.astype(str),
        "verdict": [f"{r.verdict}, by construction" if r.by_construction else r.verdict for r in df.itertuples()]})
    notes = [claim_note(r) for r in df.itertuples()]
    notes += ["How a claim is decided: each seed's change is its value minus its control's (the same seed "
              "before training, or the control fit); the claim holds when the 95% t-interval of the mean change "
              "over seeds lies beyond the tolerance (0 unless its note says otherwise) in the expected direction, "
              "fails when it lies on the other side, and is inconclusive otherwise; with one seed the point "
              "decides. seeds: how many seeds' own change lies beyond the tolerance in the expected direction. "
              "Every seed's change: claims.csv; every claim against its tolerance: claims.png."]
    return shown, notes, summary


def collect_claims(inputs: list, csv_path, md_path, png_path=None, header: str = "",
                   header_html: str = "") -> pd.DataFrame:
    """Stack the experiments' claims into claims.csv (every column), claims.md and claims.html (the short
    table with its notes; `header`/`header_html` go first, e.g. the run's provenance) and, given png_path,
    claims.png (plot_claims), which claims.html then shows under its table."""
    import base64

    df = pd.concat([read_claims(p) for p in inputs], ignore_index=True)
    shown, notes, summary = claims_shown(df)
    save_csv(df, csv_path)
    text = markdown(shown, CLAIMS_TITLE, notes).replace("\n\n", f"\n\n{summary}\n\n", 1)
    save_text(header + text, md_path)
    figure = ""
    if png_path:
        plot_claims(df, png_path)
        image = base64.b64encode(Path(png_path).read_bytes()).decode()
        figure = ('\n<img alt="every claim against its tolerance (claims.png)" style="max-width: 100%" '
                  f'src="data:image/png;base64,{image}">')
    page = html(shown, CLAIMS_TITLE, notes, row_classes=list(df.verdict), head=header_html,
                before=f"<p>{summary}</p>", after=figure)
    save_text(page, html_path(md_path))
    return df


VERDICT_COLOURS = {HOLDS: "tab:green", FAILS: "tab:red", INCONCLUSIVE: "tab:orange"}


def plot_claims(df: pd.DataFrame, path) -> None:
    """claims.png: one panel per claim, on its own scale with its unit, titled by its number in claims.md
    and short name: the mean change (dot) with its 95% interval (bar) and each seed's change (small marks,
    where the row lists them), the tolerance (dashed) with the expected side shaded, coloured by verdict;
    by-construction claims greyed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .common import save_figure
    height = 1.05 * len(df) + 0.6
    fig, axes = plt.subplots(len(df), 1, figsize=(9, height), squeeze=False)
    for k, (ax, row) in enumerate(zip(axes[:, 0], df.itertuples()), 1):
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
        ax.set_xlabel(f"change, {row.unit}", fontsize=7, labelpad=1)
        # the claim's short name, numbered as in claims.md, whose note k gives its full text
        ax.set_title(f"{k}. {row.experiment}: {row.name}  [{row.verdict}{', by construction' if row.by_construction else ''}]",
                     fontsize=7.5, loc="left", color="0.5" if row.by_construction else "black")
    fig.suptitle("Claims: mean change over seeds with its 95% interval (bar), seeds (ticks); "
                 "expected side of the tolerance shaded", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))  # the suptitle keeps its own strip
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
    claims.add_argument("--run-dir", help="the run's folder, results/<run>: with --settings, the provenance block on top")
    claims.add_argument("--settings", help="the whole effective config, as JSON (vae_approx.provenance)")
    claims.add_argument("--preset", nargs="*", default=[], help="the config files, in the order they were merged")
    record = sub.add_parser("record", help="write a run's tables into a results page, from its generated mark on")
    record.add_argument("run_dir", help="the run's folder, results/<run>")
    record.add_argument("--page", required=True, help="the Markdown page, e.g. docs/results.md")
    args = parser.parse_args(argv)
    if args.command == "record":
        write_record(args.run_dir, args.page)
    elif args.command == "claims":
        header = header_html = ""
        if args.settings and args.run_dir:
            from . import provenance

            prov = provenance.collect(json.loads(args.settings), args.preset, args.run_dir, with_times=False)
            header, header_html = provenance.markdown_block(prov) + "\n", provenance.html_block(prov)
        collect_claims(args.inputs, args.csv, args.md, args.png, header, header_html)


if __name__ == "__main__":
    main()
