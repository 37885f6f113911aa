"""The shared table helpers: tidy metrics in, one row per stage with published numbers, claims out."""

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vae_approx.common import InputError
from vae_approx.tables import (CLAIM_COLUMNS, FAILS, HOLDS, INCONCLUSIVE, cells_claim, mean_std, one_value,
                               paired_verdict, read_claims, read_tidy, seeds_claim, spread_text, with_published,
                               write_claims)

PUBLISHED = pd.DataFrame({
    "experiment": ["x", "x", "x", "y"],
    "setting": ["s", "s", "s", "s"],
    "metric": ["elbo", "elbo", "fid", "elbo"],
    "stage": ["before", "after", "after", "after"],
    "value": [-2.0, -1.0, 70.0, 5.0],
    "source": ["Kyrylov et al. ReScience C 9(2) 2023", "Kyrylov et al. ReScience C 9(2) 2023",
               "Kyrylov et al. ReScience C 9(2) 2023", "Other et al. 2020"],
})


def test_read_tidy_names_the_file_and_what_is_missing(tmp_path):
    path = tmp_path / "m.csv"
    with pytest.raises(InputError, match=r"metrics: file not found: .*m\.csv"):
        read_tidy(path, "metrics", ["stage", "value"])
    path.write_text("stage,other\na,1\n")
    with pytest.raises(InputError, match=r"metrics .*m\.csv: expected rows with columns stage, value; missing value"):
        read_tidy(path, "metrics", ["stage", "value"])
    path.write_text("stage,value\n")
    with pytest.raises(InputError, match="no rows"):
        read_tidy(path, "metrics", ["stage", "value"])
    path.write_text("stage,set,value\na,,1.5\n")
    df = read_tidy(path, "metrics", ["stage", "value"])
    assert df.set.tolist() == [""]  # empty strings stay strings, so they can be selected


def test_one_value_wants_exactly_one_matching_row():
    df = pd.DataFrame({"stage": ["a", "a", "b"], "metric": ["m", "n", "m"], "value": [1.0, 2.0, 3.0]})
    assert one_value(df, "t", stage="a", metric="n") == 2.0
    with pytest.raises(InputError, match="t: expected one row stage=a, found 2"):
        one_value(df, "t", stage="a")
    with pytest.raises(InputError, match="found 0"):
        one_value(df, "t", stage="c", metric="m")


def test_with_published_puts_the_published_numbers_beside_ours():
    table = with_published(pd.DataFrame({"stage": ["before", "after"], "elbo": [-3.0, -0.5]}), PUBLISHED, "x",
                           ["elbo", "fid"])
    assert table.columns.tolist() == ["stage", "elbo", "elbo published (Kyrylov et al. 2023)",
                                      "fid published (Kyrylov et al. 2023)"]
    assert table.stage.tolist() == ["before", "after"]
    assert table["elbo published (Kyrylov et al. 2023)"].tolist() == [-2.0, -1.0]
    assert pd.isna(table["fid published (Kyrylov et al. 2023)"][0]) and table["fid published (Kyrylov et al. 2023)"][1] == 70


def test_mean_std_and_its_text_over_seeds():
    per_seed = pd.DataFrame({"stage": ["a", "a", "a", "b"], "seed": [0, 1, 2, 0], "v": [1.0, 2.0, 4.0, 5.0]})
    summary = mean_std(per_seed, ["stage"], ["v"])
    assert summary.stage.tolist() == ["a", "b"] and summary.seeds.tolist() == [3, 1]
    assert summary.v.tolist() == pytest.approx([7 / 3, 5.0])
    assert summary["v std"][0] == pytest.approx(np.std([1, 2, 4], ddof=1)) and np.isnan(summary["v std"][1])
    text = spread_text(summary)
    assert text.columns.tolist() == ["stage", "seeds", "v"] and text.v.tolist() == ["2.333 (1.5)", "5"]


SHORT = {"name": "a short name", "unit": "nats"}  # every claim has both


def test_written_claims_read_back(tmp_path):
    rows = [seeds_claim("x", "s", "rises", "elbo", {0: 2.0}, "increase", "before", **SHORT),
            seeds_claim("x", "s", "rises by more than 5", "fid", {0: 1.0}, "increase", "before", tolerance=5.0, **SHORT)]
    write_claims(rows, tmp_path / "c.csv")
    claims = read_claims(tmp_path / "c.csv")
    assert claims.columns.tolist() == CLAIM_COLUMNS and claims.verdict.tolist() == [HOLDS, FAILS]
    assert claims.measured[1] == "+1, 1 seed, no interval" and claims.seeds.tolist() == [1, 1]
    assert claims.in_direction.tolist() == ["1/1", "0/1"] and claims.per_seed.tolist() == ["0: +2", "0: +1"]


def test_cells_claim_holds_in_every_cell_fails_in_any_and_is_otherwise_inconclusive():
    clear = {0: -1.0, 1: -1.1, 2: -0.9}      # interval wholly below 0
    unclear = {0: -1.0, 1: 0.5, 2: -0.2}     # straddles 0
    wrong = {0: 1.0, 1: 1.1, 2: 0.9}         # wholly above 0
    def claim(cells):
        return cells_claim("x", "grid", "lower", "nelbo", cells, "decrease", "other encoder", "cells.csv", **SHORT)
    row, cells = claim({"c1": clear, "c2": clear})
    assert row["verdict"] == HOLDS and [c["verdict"] for c in cells] == [HOLDS, HOLDS]
    assert [c["setting"] for c in cells] == ["c1", "c2"] and row["per_seed"] == "per cell: cells.csv"
    row, cells = claim({"c1": clear, "c2": unclear})
    assert row["verdict"] == INCONCLUSIVE and "inconclusive: c2; fails: none" in row["measured"]
    pv = paired_verdict(list(unclear.values()), "decrease")
    assert (row["low"], row["high"]) == (pytest.approx(pv.low), pytest.approx(pv.high))  # the least clear cell
    assert "least clear, c2" in row["measured"] and row["measured"].startswith("1 of 2 cells hold")
    row, _ = claim({"c1": unclear, "c2": wrong, "c3": clear})
    assert row["verdict"] == FAILS and "fails: c2" in row["measured"]
    row, cells = claim({})
    assert row["verdict"] == FAILS and cells == []


@pytest.mark.parametrize("changes, expected, tolerance, verdict", [
    ([0.050, 0.053, 0.056], "increase", 0.0, HOLDS),      # the whole interval above 0
    ([0.050, 0.053, 0.056], "increase", 0.07, FAILS),     # the whole interval below the tolerance
    ([0.050, 0.053, 0.056], "decrease", 0.0, FAILS),      # the whole interval on the wrong side
    ([-0.02, 0.01, 0.05], "increase", 0.0, INCONCLUSIVE), # the interval straddles 0
    ([-0.050, -0.053, -0.056], "decrease", 0.01, HOLDS),
    ([0.050, 0.053, 0.056], "increase", 0.053, INCONCLUSIVE),
])
def test_paired_verdict_holds_fails_or_is_inconclusive(changes, expected, tolerance, verdict):
    assert paired_verdict(changes, expected, tolerance).verdict == verdict


def test_paired_verdict_interval_is_the_t_interval():
    changes = np.array([0.049, 0.051, 0.057, 0.055])
    v = paired_verdict(changes, "increase")
    half = stats.t.ppf(0.975, 3) * changes.std(ddof=1) / 2
    assert v.n == 4 and v.mean == pytest.approx(changes.mean()) and v.std == pytest.approx(changes.std(ddof=1))
    assert (v.low, v.high) == (pytest.approx(changes.mean() - half), pytest.approx(changes.mean() + half))
    low, high = stats.t.interval(0.95, 3, loc=changes.mean(), scale=stats.sem(changes))
    assert (v.low, v.high) == (pytest.approx(low), pytest.approx(high))
    assert v.in_direction == 4 and v.summary() == f"+0.053 [{low:+.4g}, {high:+.4g}], 4/4 seeds"
    assert paired_verdict([0.2, -0.1, 0.3], "increase", 0.0).in_direction == 2


def test_paired_verdict_with_one_seed_is_the_point_comparison():
    one = paired_verdict([0.02], "increase", 0.01)
    assert one.verdict == HOLDS and one.summary() == "+0.02, 1 seed, no interval" and np.isnan(one.low)
    assert paired_verdict([0.005], "increase", 0.01).verdict == FAILS
    assert paired_verdict([-0.02], "decrease").verdict == HOLDS


def test_paired_verdict_rejects_nothing_and_fails_on_non_finite():
    assert paired_verdict([0.1, float("nan"), 0.2], "increase").verdict == FAILS
    with pytest.raises(ValueError, match="at least one change"):
        paired_verdict([], "increase")
    with pytest.raises(ValueError, match="'increase' or 'decrease'"):
        paired_verdict([1.0], "up")


def test_seeds_claim_rows_carry_interval_seeds_control_and_by_construction():
    row = seeds_claim("x", "s", "moves", "d", {2: 0.40, 0: 0.45, 1: 0.38}, "increase", "control fit", **SHORT)
    v = paired_verdict([0.45, 0.38, 0.40], "increase")
    assert row["verdict"] == HOLDS and row["seeds"] == 3 and row["in_direction"] == "3/3"
    assert (row["low"], row["high"]) == (pytest.approx(v.low), pytest.approx(v.high))
    assert row["per_seed"] == "0: +0.45; 1: +0.38; 2: +0.4" and row["control"] == "control fit"
    assert row["measured"] == v.summary() and not row["by_construction"]
    # "no change beyond the control": holds while the interval reaches the control's side
    assert seeds_claim("x", "s", "stays", "d", {0: 1e-6, 1: -2e-6, 2: 3e-6}, "increase", "c",
                       expect_change=False, **SHORT)["verdict"] == HOLDS
    assert seeds_claim("x", "s", "stays", "d", {0: 0.4, 1: 0.45, 2: 0.38}, "increase", "c",
                       expect_change=False, **SHORT)["verdict"] == FAILS
    assert seeds_claim("x", "s", "rises", "e", {0: 0.1}, "increase", "c", by_construction=True, **SHORT)["by_construction"]


def test_record_writes_a_runs_tables_into_the_page_from_its_mark_on(tmp_path):
    from vae_approx.tables import RECORD_MARK, write_record

    run = tmp_path / "results" / "quick"
    (run / "gmm" / "factorized").mkdir(parents=True)
    (run / "claims.md").write_text("## Claims of the paper\n\n| a |\n|---|\n| 1 |\n")
    (run / "gmm" / "factorized" / "table.md").write_text("## Gaussian mixture\n\n| b |\n|---|\n| 2 |\n")
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\nWritten by hand.\n\n## Tables of the run\n\n{RECORD_MARK} old -->\nstale\n")
    write_record(run, page)
    text = page.read_text()
    assert text.startswith("# Results\n\nWritten by hand.\n\n## Tables of the run\n\n") and "stale" not in text
    assert text.index("`claims.md`") < text.index("`gmm/factorized/table.md`") and "**Gaussian mixture**" in text
    write_record(run, page)
    assert page.read_text() == text  # the hand-written part is kept, the generated part replaced, not appended
    (run / "claims.md").unlink()
    with pytest.raises(InputError, match="no claims.md"):
        write_record(run, page)


# ---------------------------------------------------------------- how tables are shown


def test_a_shown_table_has_short_rows_units_dashes_and_numbered_notes():
    from vae_approx.tables import DASH, DIRECTION_NOTE, Shown, html, markdown

    df = pd.DataFrame({"stage": ["encoder pretrained (decoder frozen)", "maximum-likelihood fit (control)"],
                       "elbo": [-3.3771234, np.nan], "elbo published (Kyrylov et al. 2023)": [-3.37, np.nan]})
    shown = Shown(transpose=("stage",), labels={"elbo": "ELBO, nats/point ↑"},
                  values={"encoder pretrained (decoder frozen)": "pretrained", "maximum-likelihood fit (control)": "ML"},
                  notes=("a dash: no ELBO",))
    text = markdown(df, "T", "over 2 seeds", shown=shown)
    lines = text.splitlines()
    assert lines[2:6] == ["| quantity | pretrained | ML |", "|:--|--:|--:|",
                          f"| ELBO, nats/point ↑ | -3.377 | {DASH} |",
                          f"| ELBO, nats/point, published (Kyrylov et al. 2023) | -3.37 | {DASH} |"]
    assert "nan" not in text and lines[-3:] == ["1. over 2 seeds", "2. a dash: no ELBO", f"3. {DIRECTION_NOTE}"]
    page = html(df, "T", "over 2 seeds", shown=shown)
    assert page.count("<tr>") == 3 and "<th>pretrained</th>" in page and ">nan<" not in page  # a header and two rows
    plain = markdown(pd.DataFrame({"a|b": ["x|y"], "n": [2]}))
    assert plain.splitlines()[:3] == ["| a\\|b | n |", "|:--|--:|", "| x\\|y | 2 |"]  # a pipe never ends a cell


def test_the_claims_table_is_one_short_row_per_claim_with_its_note(tmp_path):
    from vae_approx.tables import collect_claims

    long_setting = "digits 32x32 DCGAN, sigma 0.05, reference protocol, sigma learned"
    rows = [seeds_claim("images", long_setting, "joint training raises the Frechet distance of the reconstructions "
                        "beyond the floor, as published (FID rise 70.54) " * 2, "fd", {0: 1.2, 1: 1.3, 2: 1.25},
                        "increase", "the same seed's pretrained reconstructions " * 3, name="FD of reconstructions rises",
                        unit="FD, digits features"),
            seeds_claim("gmm", "consistent encoder", "centres move no further", "d", {0: 1e-6, 1: -2e-6, 2: 3e-6},
                        "increase", "ML fit", expect_change=False, name="centres no further", unit="data units"),
            seeds_claim("gmm", "factorized encoder", "ELBO rises", "elbo", {0: 0.1, 1: 0.12, 2: 0.11}, "increase", "before",
                        by_construction=True, name="ELBO rises", unit="nats/point")]
    write_claims(rows, tmp_path / "a.csv")
    collect_claims([tmp_path / "a.csv"], tmp_path / "claims.csv", tmp_path / "claims.md", header="PROVENANCE\n\n")
    md = (tmp_path / "claims.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows) and max(map(len, table)) <= 160, max(map(len, table))
    assert md.startswith("PROVENANCE") and "Of 2 claims that could fail: 2 hold, 0 fail, 0 inconclusive; 1 more" in md
    assert table[2].startswith("| 1 | images | FD of reconstructions rises | +1.25 [") and "| FD, digits features | 3/3 | holds |" in table[2]
    assert table[4].endswith("| holds, by construction |")
    notes = {int(line.split(".")[0]): line for line in md.splitlines() if re.match(r"^\d+\. ", line)}
    assert long_setting in notes[1] and "the same seed's pretrained reconstructions" in notes[1]
    assert "no-change claim holds unless the whole interval" in notes[2] and "By construction" in notes[3]
    page = (tmp_path / "claims.html").read_text()
    assert page.count('<tr class="holds">') == 3 and "PROVENANCE" not in page
    with pytest.raises(ValueError, match="short name and the unit"):
        seeds_claim("gmm", "s", "a claim", "elbo", {0: 0.1}, "increase", "before", name="", unit="nats")
