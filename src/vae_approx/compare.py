"""Two runs compared, as Markdown: what differs in their provenance, settings, claims and tables.

    python -m vae_approx compare results/<a> results/<b> [--rtol 1e-6] [--out comparison.md]

A run folder is what the workflow writes under results/<run>/: provenance.json, config.yaml, claims.csv and the
tables (every CSV outside logs/, benchmarks/ and the per-seed folders; the per-experiment claims files are
stacked in claims.csv and compared there). The Markdown has
(a) the two provenances side by side, the fields that differ marked; the times are shown but never counted as
    a difference (they differ on every run);
(b) the settings that differ, as dotted keys;
(c) the claims whose numbers or verdict differ, matched on (experiment, setting, claim), changed verdicts marked;
(d) every table value that differs by more than the relative tolerance, rows matched on their leading non-float
    columns (claims-shaped files on the claim), and the files, rows and columns only one run has.
A run compared with itself gives one line saying there are no differences, and the provenance.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from .common import InputError

RUN_FILES = ("provenance.json", "config.yaml", "claims.csv")
NOT_COMPARED = ("times",)  # provenance sections that differ on every run
CLAIM_KEY = ("experiment", "setting", "claim")
CLAIM_NUMBERS = ("mean_change", "low", "high", "tolerance", "seeds", "by_construction")
SKIPPED_FOLDERS = ("logs", "benchmarks")
MISSING = "—"


@dataclass
class Run:
    folder: Path
    provenance: dict
    config: dict
    claims: pd.DataFrame
    tables: dict[str, pd.DataFrame]  # path relative to the folder -> table


@dataclass
class Comparison:
    a: Run
    b: Run
    rtol: float
    provenance: list[tuple] = field(default_factory=list)  # (field, A, B, differs: True/False, None: not compared)
    settings: list[tuple] = field(default_factory=list)  # (dotted key, A, B)
    claims: list[dict] = field(default_factory=list)  # one per claim that differs
    values: list[tuple] = field(default_factory=list)  # (file, row, column, A, B)
    files: list[tuple] = field(default_factory=list)  # (file, the run that has it: "A" or "B")

    def counts(self) -> dict[str, int]:
        return {"provenance fields": sum(bool(d) for *_, d in self.provenance), "settings": len(self.settings),
                "claims": len(self.claims), "table values": len(self.values), "files in one run only": len(self.files)}

    def identical(self) -> bool:
        return not any(self.counts().values())


# ---------------------------------------------------------------- reading a run


def table_files(folder: Path) -> list[str]:
    """The run's tables: every CSV outside logs/, benchmarks/, per-seed and hidden folders, except the claims
    files (claims.csv, and the per-experiment ones it stacks)."""
    found = []
    for path in folder.rglob("*.csv"):
        parts = path.relative_to(folder).parts
        if parts[0] in SKIPPED_FOLDERS or path.name.endswith("claims.csv"):
            continue
        if any(re.fullmatch(r"seed\d+", p) or p.startswith(".") for p in parts[:-1]):
            continue
        found.append("/".join(parts))
    return sorted(found)


def read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: cannot read it as CSV ({exc})") from exc


def load_run(folder) -> Run:
    """A run folder's provenance, config, claims and tables; InputError naming the folder when it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder; give a run folder, results/<run>")
    missing = [name for name in RUN_FILES if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder}: not a run folder (no {', '.join(missing)}); give results/<run> after the "
                         "workflow has run to its end")
    try:
        provenance = json.loads((folder / "provenance.json").read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{folder}: provenance.json or config.yaml unreadable ({exc})") from exc
    claims = read_csv(folder / "claims.csv")
    if not set(CLAIM_KEY) <= set(claims.columns):
        raise InputError(f"{folder / 'claims.csv'}: not a claims table (no {', '.join(CLAIM_KEY)} columns)")
    tables = {name: read_csv(folder / name) for name in table_files(folder)}
    return Run(folder, provenance, config or {}, claims, tables)


# ---------------------------------------------------------------- values


def flatten(tree, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def is_number(value) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def differ(a, b, rtol: float) -> bool:
    """Whether two cells differ: numbers by more than rtol relative to the larger, anything else when unequal;
    two missing values are equal."""
    if missing(a) or missing(b):
        return missing(a) != missing(b)
    if is_number(a) and is_number(b):
        return abs(a - b) > rtol * max(abs(a), abs(b))
    return a != b


def text(value) -> str:
    """A value as a Markdown table cell."""
    if missing(value):
        out = MISSING
    elif isinstance(value, float):
        out = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        out = ", ".join(map(str, value)) or "[]"
    elif isinstance(value, dict):
        out = json.dumps(value, sort_keys=True)
    else:
        out = str(value)
    return out.replace("|", "\\|").replace("\n", " ")


def relative_change(a, b) -> str:
    if is_number(a) and is_number(b) and not (missing(a) or missing(b)) and a != 0:
        return f"{100 * (b - a) / abs(a):+.3g}%"
    return ""


def plain(value):
    """A pandas cell as a plain Python value (numpy scalars -> int, float, bool)."""
    return value.item() if hasattr(value, "item") else value


# ---------------------------------------------------------------- the four comparisons


def compare_provenance(a: dict, b: dict) -> list[tuple]:
    fa, fb = flatten(a), flatten(b)
    rows = []
    for key in [*fa, *(k for k in fb if k not in fa)]:
        counted = key.split(".")[0] not in NOT_COMPARED
        rows.append((key, fa.get(key), fb.get(key), (fa.get(key) != fb.get(key)) if counted else None))
    return rows


def compare_settings(a: dict, b: dict) -> list[tuple]:
    fa, fb = flatten(a), flatten(b)
    return [(key, fa.get(key, MISSING), fb.get(key, MISSING))
            for key in [*fa, *(k for k in fb if k not in fa)] if fa.get(key, MISSING) != fb.get(key, MISSING)]


def keyed(df: pd.DataFrame, key: list[str]) -> dict[tuple, dict]:
    """{row key: row} with the key's cells as text, and an occurrence number where the key repeats (or, without
    key columns, the row's position)."""
    rows, seen = {}, Counter()
    for position, row in enumerate(df.to_dict("records")):
        ident = tuple(text(plain(row[k])) for k in key) or (f"row {position + 1}",)
        seen[ident] += 1
        rows[ident + ((f"#{seen[ident]}",) if seen[ident] > 1 else ())] = {k: plain(v) for k, v in row.items()}
    return rows


def compare_claims(a: pd.DataFrame, b: pd.DataFrame, rtol: float) -> list[dict]:
    """Each claim whose numbers or verdict differ, or that one run lacks."""
    ra, rb = keyed(a, list(CLAIM_KEY)), keyed(b, list(CLAIM_KEY))
    out = []
    for ident in [*ra, *(k for k in rb if k not in ra)]:
        x, y = ra.get(ident, {}), rb.get(ident, {})
        if x and y:
            numbers_moved = any(differ(x[c], y[c], rtol) for c in CLAIM_NUMBERS if c in x and c in y)
            if not numbers_moved and x.get("verdict") == y.get("verdict"):
                continue
            mark = "**verdict changed**" if x.get("verdict") != y.get("verdict") else ""
        else:
            mark = "only in A" if x else "only in B"
        out.append({"experiment": ident[0], "setting": ident[1], "claim": ident[2],
                    "measured A": x.get("measured"), "measured B": y.get("measured"),
                    "verdict A": x.get("verdict"), "verdict B": y.get("verdict"), "change": mark})
    return out


def key_columns(df: pd.DataFrame) -> list[str]:
    """What identifies a table's row: the claim in a claims-shaped table, else its leading non-float columns
    (encoder, depth; protocol, stage, seeds ...)."""
    if set(CLAIM_KEY) <= set(df.columns):
        return list(CLAIM_KEY)
    key = []
    for column in df.columns:
        if pd.api.types.is_float_dtype(df[column]):
            break
        key.append(column)
    return key


def compare_table(name: str, a: pd.DataFrame, b: pd.DataFrame, rtol: float) -> list[tuple]:
    """(file, row, column, A, B) for every cell beyond the tolerance, and every row or column one table lacks."""
    key = key_columns(a)
    if not set(key) <= set(b.columns) or key_columns(b) != key:
        key = [c for c in key if c in b.columns and c in key_columns(b)]
    ra, rb = keyed(a, key), keyed(b, key)

    def label(ident):
        return ", ".join(f"{k} {v}" for k, v in zip(key, ident)) or ident[0]

    out = [(name, "every row", c, "present", "absent") for c in a.columns if c not in b.columns]
    out += [(name, "every row", c, "absent", "present") for c in b.columns if c not in a.columns]
    shared = [c for c in a.columns if c in b.columns and c not in key]
    for ident in [*ra, *(k for k in rb if k not in ra)]:
        x, y = ra.get(ident), rb.get(ident)
        if x is None or y is None:
            has = ("present" if x else "absent", "present" if y else "absent")
            out.append((name, label(ident), "the whole row", *has))
            continue
        out += [(name, label(ident), c, x[c], y[c]) for c in shared if differ(x[c], y[c], rtol)]
    return out


def compare_runs(a: Run, b: Run, rtol: float = 1e-6) -> Comparison:
    c = Comparison(a, b, rtol)
    c.provenance = compare_provenance(a.provenance, b.provenance)
    c.settings = compare_settings(a.config, b.config)
    c.claims = compare_claims(a.claims, b.claims, rtol)
    for name in sorted({*a.tables, *b.tables}):
        if name in a.tables and name in b.tables:
            c.values += compare_table(name, a.tables[name], b.tables[name], rtol)
        else:
            c.files.append((name, "A" if name in a.tables else "B"))
    return c


# ---------------------------------------------------------------- Markdown


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table of cells already made text (text())."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(c: Comparison) -> str:
    lines = [f"# Runs compared: A = `{c.a.folder}`, B = `{c.b.folder}`", ""]
    if c.identical():
        lines += [f"No differences: the provenance (times aside), the settings, the claims and every table value "
                  f"(relative tolerance {c.rtol:g}) are the same.", ""]
    else:
        counts = "; ".join(f"{what}: {n}" for what, n in c.counts().items())
        lines += [f"Differences (relative tolerance {c.rtol:g}): {counts}.", ""]
    lines += ["## Provenance", "", "Times are shown, never counted as a difference: they differ on every run.", ""]
    marks = {True: "**differs**", False: "", None: "not compared"}
    lines += table(["field", "A", "B", ""], [[text(k), text(x), text(y), marks[d]] for k, x, y, d in c.provenance])
    if c.settings:
        lines += ["", "## Settings that differ", ""]
        lines += table(["setting", "A", "B"], [[text(k), text(x), text(y)] for k, x, y in c.settings])
    if c.claims:
        lines += ["", "## Claims that differ", ""]
        header = ["experiment", "setting", "claim", "measured A", "measured B", "verdict A", "verdict B", ""]
        lines += table(header, [[text(r[h]) for h in header[:-1]] + [r["change"]] for r in c.claims])
    if c.values or c.files:
        lines += ["", f"## Table values that differ (relative tolerance {c.rtol:g})", ""]
    if c.values:
        rows = [[text(f), text(r), text(col), text(x), text(y), relative_change(x, y)] for f, r, col, x, y in c.values]
        lines += table(["file", "row", "column", "A", "B", "relative change"], rows)
    if c.files:
        lines += [""] + [f"- `{name}`: only in {which}" for name, which in c.files]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="two runs side by side: provenance, settings, claims, table values",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="run folder A, results/<run>")
    p.add_argument("b", help="run folder B")
    p.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance of table values (default 1e-6)")
    p.add_argument("--out", help="write the Markdown here (default: standard output)")
    p.set_defaults(func=run)


def run(args) -> None:
    from .common import save_text

    if not (math.isfinite(args.rtol) and args.rtol >= 0):
        raise InputError(f"compare --rtol: {args.rtol} is not a finite number >= 0")
    report = markdown(compare_runs(load_run(args.a), load_run(args.b), args.rtol))
    if args.out:
        save_text(report, args.out)
    else:
        print(report, end="")
