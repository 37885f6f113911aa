"""Semantic-hashing tables and claims from hand-made records (vae_approx.semhash.results)."""

import numpy as np
import pandas as pd
import pytest

from vae_approx.common import InputError
from vae_approx.semhash.results import (encoder_claims, exact_columns, exact_records, gap_claims, gaps_table,
                                        grid_results, grid_tables, iwae_table, split_table)
from vae_approx.semhash.settings import TABLES
from vae_approx.tables import PUBLISHED_COLUMNS, paired_verdict

K = 100
# e1 minus e2, and e1 minus e3, per cell (depth, bits) and seed 1, 2, 3
E1_MINUS_E2 = {(0, 8): [-5.0, -5.5, -4.5], (0, 16): [-1.0, 2.0, -0.5]}   # holds; inconclusive
E1_MINUS_E3 = {(0, 8): [-3.0, -2.5, -3.5], (0, 16): [4.0, 3.5, 4.5]}     # holds; fails


def records(seeds=(1, 2, 3)):
    """Histories (two epochs per run, the second the best) and retrievals of a grid of e1, e2, e3 x 8, 16
    bits at depth 0; e2's best test NELBO is 100 in every run, e1's and e3's follow the differences."""
    histories, retrievals = [], []
    for seed in seeds:
        for encoder in ("e1", "e2", "e3"):
            for (depth, bits), changes in E1_MINUS_E2.items():
                e1 = 100.0 + changes[seed - 1]
                best = {"e1": e1, "e2": 100.0, "e3": e1 - E1_MINUS_E3[depth, bits][seed - 1]}[encoder]
                run = {"seed": seed, "encoder": encoder, "depth": depth, "bits": bits}
                histories += [{**run, "epoch": 1, "pairs": 1, "train_nelbo": 150.0 + seed, "test_nelbo": best + 20},
                              {**run, "epoch": 2, "pairs": 1, "train_nelbo": 120.0 + seed, "test_nelbo": best}]
                retrievals.append({**run, f"precision_at_{K}": 0.1 * seed})
    return pd.DataFrame(histories), pd.DataFrame(retrievals)


def published():
    return pd.DataFrame([{"experiment": "semhash", "setting": "e1", "metric": "test_nelbo", "stage": "best epoch",
                          "value": 285.7, "source": "Kyrylov et al. ReScience C 9(2) 2023"}], columns=PUBLISHED_COLUMNS)


def test_one_row_per_run_from_its_history_and_retrieval():
    histories, retrievals = records()
    results = grid_results(histories.sample(frac=1, random_state=0), retrievals.iloc[::-1], K)  # any row order
    assert len(results) == 3 * 3 * 2 and list(results.columns) == [
        "encoder", "depth", "bits", "seed", "test_nelbo_best", "best_epoch", "test_nelbo_last", "train_nelbo_last",
        "epochs", "precision"]
    row = results[(results.encoder == "e1") & (results.bits == 16) & (results.seed == 2)].iloc[0]
    assert row.test_nelbo_best == row.test_nelbo_last == 102.0 and row.best_epoch == row.epochs == 2
    assert row.train_nelbo_last == 122.0 and row.precision == pytest.approx(0.2)


def test_tables_are_the_means_over_seeds_of_the_records():
    results = grid_results(*records(), K)
    tables = {t.name: t for t in grid_tables(results, K, published())}
    assert list(tables) == list(TABLES)
    best = tables["test_nelbo_best"].table.set_index("encoder")
    for (depth, bits), changes in E1_MINUS_E2.items():
        assert best.loc["e1", f"{bits} bits"] == pytest.approx(100 + np.mean(changes))
        assert best.loc["e1", f"{bits} bits std"] == pytest.approx(np.std(changes, ddof=1))
        assert best.loc["e2", f"{bits} bits"] == 100.0 and best.loc["e2", f"{bits} bits std"] == 0
    assert tables["precision"].table.set_index("encoder").loc["e3", "8 bits"] == pytest.approx(0.2)
    assert tables["train_nelbo_last"].table.set_index("encoder").loc["e2", "16 bits"] == pytest.approx(122.0)
    note = tables["test_nelbo_best"].note
    assert "Mean (standard deviation) over 3 seeds (1, 2, 3;" in note and "Kyrylov et al. 2023: 285.7" in note
    assert tables["precision"].note.startswith(f"precision@{K} of Hamming ranking")
    assert tables["precision"].title == f"Semantic hashing: precision@{K} of Hamming ranking, higher is better"
    one_seed = grid_results(*records(seeds=(1,)), K)
    assert "One seed (1), no spread." in grid_tables(one_seed, K, published())[1].note


def test_claims_hold_fail_or_are_inconclusive_per_cell():
    claims, cells = encoder_claims(grid_results(*records(), K), "claims_cells.csv")
    by_setting = {c["setting"]: c for c in claims}
    e2, e3 = by_setting["encoders e1 vs e2, every (depth, bits) cell"], by_setting["encoders e1 vs e3, every (depth, bits) cell"]
    assert e2["verdict"] == "inconclusive" and "inconclusive: decoder depth 0, 16 bits; fails: none" in e2["measured"]
    assert e3["verdict"] == "fails" and "fails: decoder depth 0, 16 bits" in e3["measured"]
    assert e2["per_seed"] == "per cell: claims_cells.csv" and "e2 (frequencies, one hidden layer)" in e2["claim"]
    verdicts = [(c["claim"].split(" than ")[1][:2], c["setting"], c["verdict"]) for c in cells]
    assert verdicts == [("e2", "decoder depth 0, 8 bits", "holds"), ("e2", "decoder depth 0, 16 bits", "inconclusive"),
                        ("e3", "decoder depth 0, 8 bits", "holds"), ("e3", "decoder depth 0, 16 bits", "fails")]
    pv = paired_verdict(E1_MINUS_E2[0, 16], "decrease")
    assert cells[1]["low"] == pytest.approx(pv.low) and cells[1]["high"] == pytest.approx(pv.high)
    assert cells[0]["per_seed"] == "1: -5; 2: -5.5; 3: -4.5"


def test_records_that_do_not_fit_are_refused_naming_the_run():
    histories, retrievals = records()
    cases = [
        (pd.concat([histories, histories.iloc[[0]]]), retrievals, "two rows for an epoch of seed 1 e1 depth 0 8 bits"),
        (histories, pd.concat([retrievals, retrievals.iloc[[0]]]), "retrievals: two rows for seed 1 e1 depth 0 8 bits"),
        (histories, retrievals.iloc[1:], "a history but no retrieval for seed 1 e1 depth 0 8 bits"),
        (histories[~((histories.seed == 3) & (histories.encoder == "e3") & (histories.bits == 16))],
         retrievals, "a retrieval but no history for seed 3 e3 depth 0 16 bits"),
    ]
    missing = (histories.seed == 2) & (histories.encoder == "e2") & (histories.bits == 8)
    cases.append((histories[~missing], retrievals[~((retrievals.seed == 2) & (retrievals.encoder == "e2")
                                                    & (retrievals.bits == 8))],
                  r"the grid lacks seed 2 e2 depth 0 8 bits \(every cell needs every seed\)"))
    for h, r, message in cases:
        with pytest.raises(InputError, match=message):
            grid_results(h, r, K)


# ---------------------------------------------------------------- the approximation error

CURVE = [10, 100]


def exact_rows(seeds=(1, 2, 3), ml_nll=80.0):
    """exact.csv records of e1, e2, e3 and the control in one cell (depth 0, 8 bits): e1's decoder better
    than e2's by 1 nat, e1's gap smaller than e3's by 5 nats, every encoder's nll above the control's."""
    rows = []
    for seed in seeds:
        jitter = 0.01 * seed
        for encoder, nll, gap in (("e1", 90.0, 1.0), ("e2", 91.0, 1.1 - 2 * jitter), ("e3", 90.0, 6.0)):
            for set_name in ("test", "train"):
                approx = 0.1
                rows.append({"seed": seed, "encoder": encoder, "depth": 0, "bits": 8, "set": set_name,
                             "method": "enumeration", "documents": 100, "nll": nll + jitter,
                             "nelbo": nll + jitter + gap, "nelbo_q_star": nll + jitter + approx,
                             "inference_gap": gap, "approximation_gap": approx, "amortization_gap": gap - approx,
                             "q_star_max_sweeps": 5, "q_star_unconverged": 0,
                             "nll_iwae_10": nll + jitter + 0.5, "nll_iwae_100": nll + jitter + 0.2})
        for set_name in ("test", "train"):
            rows.append({**{c: "" for c in exact_columns(CURVE)}, "seed": seed, "encoder": "ml", "depth": 0, "bits": 8,
                         "set": set_name, "method": "enumeration", "documents": 100, "nll": ml_nll + jitter,
                         "q_star_unconverged": 0})
    return pd.DataFrame(rows, columns=exact_columns(CURVE))


def test_gaps_table_is_the_mean_over_seeds_with_the_control_last():
    table = gaps_table(exact_records(exact_rows()), 100)
    test = table[table["set"] == "test"]
    assert list(test.encoder) == ["e1", "e2", "e3", "ml"] and (table.seeds == 3).all()
    assert test.set_index("encoder").loc["e1", "nll"] == pytest.approx(90.02)
    assert test.set_index("encoder").loc["e3", "inference_gap"] == pytest.approx(6.0)
    assert np.isnan(test.set_index("encoder").loc["ml", "nelbo"])            # the control has no encoder
    assert test.set_index("encoder").loc["e1", "nll bound"] == pytest.approx(90.22)
    curve = iwae_table(exact_records(exact_rows()), CURVE)
    assert list(curve.encoder) == ["e1", "e2", "e3"] and curve["K=100"].to_numpy() == pytest.approx([0.2] * 3)


def test_split_adds_the_decoder_and_the_bound_to_the_nelbo_difference():
    split = split_table(exact_records(exact_rows()))
    assert list(split.encoders) == ["e1 - e2", "e1 - e3"]
    np.testing.assert_allclose(split["NELBO"], split["-log p(x)"] + split["gap"])
    assert split.set_index("encoders").loc["e1 - e3", "gap"] == pytest.approx(-5.0)


def test_gap_claims_decide_each_comparison_over_seeds():
    claims, cells = gap_claims(exact_records(exact_rows()), "gaps_cells.csv")
    verdict = {c["setting"].split(", every")[0]: c["verdict"] for c in claims}
    assert verdict["ELBO training gives up likelihood (e1)"] == "holds"       # 90 > 80 in every seed
    assert verdict["inference gap, e1 vs e3"] == "holds"
    assert verdict["decoder likelihood, e1 vs e2"] == "holds"                  # 90 < 91
    assert verdict["decoder likelihood, e1 vs e3"] == "inconclusive"           # the same nll: no interval
    assert len(cells) == len(claims)
    better_control = gap_claims(exact_records(exact_rows(ml_nll=100.0)), "gaps_cells.csv")[0]
    assert {c["verdict"] for c in better_control if "gives up" in c["setting"]} == {"fails"}


def test_exact_records_that_do_not_fit_are_refused():
    rows = exact_rows()
    with pytest.raises(InputError, match="two rows for a set of seed 1 e1"):
        exact_records(pd.concat([rows, rows.iloc[:1]]))
    with pytest.raises(InputError, match="lacks seed 3 e2 depth 0 8 bits"):
        exact_records(rows[~((rows.seed == 3) & (rows.encoder == "e2"))])
