"""The shared table helpers: tidy metrics in, one row per stage with published numbers, claims out."""

import pandas as pd
import pytest

from vae_approx.common import InputError
from vae_approx.tables import (CLAIM_COLUMNS, FAILS, HOLDS, direction_claim, one_value, read_claims, read_tidy,
                               stage_table, write_claims)

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


def test_stage_table_puts_the_published_numbers_beside_ours():
    table = stage_table({"before": {"elbo": -3.0}, "after": {"elbo": -0.5}}, PUBLISHED, "x", ["elbo", "fid"])
    assert table.columns.tolist() == ["stage", "elbo", "elbo published (Kyrylov et al. 2023)",
                                      "fid published (Kyrylov et al. 2023)"]
    assert table.stage.tolist() == ["before", "after"]
    assert table["elbo published (Kyrylov et al. 2023)"].tolist() == [-2.0, -1.0]
    assert pd.isna(table["fid published (Kyrylov et al. 2023)"][0]) and table["fid published (Kyrylov et al. 2023)"][1] == 70


def test_written_claims_read_back(tmp_path):
    rows = [direction_claim("x", "s", "rises", "elbo", -3.0, -1.0, "increase"),
            direction_claim("x", "s", "rises by more than 5", "fid", 1.0, 2.0, "increase", tolerance=5.0)]
    write_claims(rows, tmp_path / "c.csv")
    claims = read_claims(tmp_path / "c.csv")
    assert claims.columns.tolist() == CLAIM_COLUMNS and claims.verdict.tolist() == [HOLDS, FAILS]
    assert claims.measured[1] == "1 -> 2 (change +1)"
