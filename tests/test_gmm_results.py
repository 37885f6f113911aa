"""Tables and claims of the Gaussian-mixture experiment from small hand-made records, and the
settings module's keys and file lists."""

import pandas as pd
import pytest
import yaml

from conftest import ROOT, config_section
from vae_approx.common import InputError
from vae_approx.config import stage_json, stage_section
from vae_approx.gmm import results
from vae_approx.gmm import settings as S
from vae_approx.tables import FAILS, HOLDS, INCONCLUSIVE, PUBLISHED_COLUMNS

NO_PUBLISHED = pd.DataFrame(columns=PUBLISHED_COLUMNS)


def metrics(phase, encoder, finals, steps=(0, 10)):
    """Metrics records: per seed {seed: (elbo, log_likelihood, mean distance)} at the last step,
    an earlier row of other numbers before it."""
    rows = []
    for seed, (elbo, ll, dist) in finals.items():
        for step in steps:
            last = step == steps[-1]
            row = {"seed": seed, "encoder": encoder, "phase": phase, "step": step,
                   "elbo": elbo if last else -9.0, "log_likelihood": ll if last else -8.0,
                   "kl_to_posterior": 0.1, "kl_to_true_posterior": 0.2}
            row.update(gap_columns(row["elbo"], row["log_likelihood"], GAP_SHARE[seed]))
            row.update({c: (dist if last else 5.0) * (k + 1) / 2.5 for k, c in enumerate(results.CENTRE_COLUMNS)})
            row["mean_centre_distance"] = dist if last else 5.0
            rows.append(row)
    return pd.DataFrame(rows)


def gap_columns(elbo, ll, share):
    """The gap split of a metrics row whose approximation gap is `share` of log p(x) - ELBO."""
    approximation = share * (ll - elbo)
    return {"best_factorized_elbo": ll - approximation, "approximation_gap": approximation,
            "amortization_gap": ll - approximation - elbo}


def ml(fits):
    """Control records: {seed: (log_likelihood, ground_truth_log_likelihood, mean distance)}."""
    rows = []
    for seed, (ll, truth, dist) in fits.items():
        row = {"seed": seed, "log_likelihood": ll, "ground_truth_log_likelihood": truth, "iterations": 7}
        row.update({c: dist for c in results.CENTRE_COLUMNS})
        row["mean_centre_distance"] = dist
        rows.append(row)
    return pd.DataFrame(rows)


# seeds listed as a config may list them (not sorted): the tables keep this order
SEEDS = [2, 0, 1]
PRE = {2: (-3.10, -3.00, 0.0), 0: (-3.20, -3.05, 0.0), 1: (-3.15, -3.02, 0.0)}
JOINT = {2: (-3.05, -3.01, 0.30), 0: (-3.14, -3.062, 0.35), 1: (-3.09, -3.031, 0.32)}
ML = {2: (-2.99, -3.00, 0.05), 0: (-3.04, -3.05, 0.04), 1: (-3.01, -3.02, 0.06)}
GAP_SHARE = {2: 0.9, 0: 0.8, 1: 1.2}  # the approximation gap's share of log p(x) - ELBO (above 1: amortization < 0)


def factorized():
    return results.finals(metrics("pretrain", "factorized", PRE), metrics("joint", "factorized", JOINT), ml(ML),
                          "factorized")


def test_the_tables_are_the_means_of_the_records():
    f = factorized()
    assert f.seeds == SEEDS
    per_seed = results.per_seed_table(f, NO_PUBLISHED)
    assert list(per_seed.seed) == [s for s in SEEDS for _ in range(3)]
    assert list(per_seed.stage[:3]) == [S.PHASES["pretrain"], S.PHASES["joint"], S.ML_STAGE]
    assert (per_seed.step.dropna() == 10).all()  # the last evaluation of each phase
    table, title, note = results.summary_table(per_seed, NO_PUBLISHED, "factorized")
    assert title == "Gaussian mixture, factorized encoder" and "3 seed(s)" in note
    row = table.set_index("stage").loc[S.PHASES["joint"]]
    assert row.seeds == 3
    assert row.elbo == pytest.approx(sum(v[0] for v in JOINT.values()) / 3)
    assert row["elbo std"] == pytest.approx(pd.Series([v[0] for v in JOINT.values()]).std())
    assert row.max_centre_distance == pytest.approx(sum(v[2] for v in JOINT.values()) / 3 * 4 / 2.5)
    control = table.set_index("stage").loc[S.ML_STAGE]
    assert control.log_likelihood == pytest.approx(sum(v[0] for v in ML.values()) / 3)
    assert pd.isna(control.elbo)


def test_the_tables_split_the_gap_into_approximation_and_amortization():
    per_seed = results.per_seed_table(factorized(), NO_PUBLISHED)
    trained = per_seed[per_seed.stage != S.ML_STAGE]
    pd.testing.assert_series_equal(trained.approximation_gap + trained.amortization_gap,
                                   trained.log_likelihood - trained.elbo, check_names=False)
    assert per_seed[per_seed.stage == S.ML_STAGE][results.GAP_COLUMNS].isna().all().all()  # no encoder, no split
    table, _, note = results.summary_table(per_seed, NO_PUBLISHED, "factorized")
    assert list(table.columns[-2 * len(results.GAP_COLUMNS):]) == [
        name for c in results.GAP_COLUMNS for name in (c, f"{c} std")]
    row = table.set_index("stage").loc[S.PHASES["joint"]]
    gaps = pd.Series({seed: GAP_SHARE[seed] * (ll - elbo) for seed, (elbo, ll, _) in JOINT.items()})
    assert row.approximation_gap == pytest.approx(gaps.mean())
    assert row["approximation_gap std"] == pytest.approx(gaps.std())
    assert row.amortization_gap == pytest.approx(row.log_likelihood - row.elbo - gaps.mean())
    assert row.best_factorized_elbo == pytest.approx(row.log_likelihood - gaps.mean())
    assert "amortization_gap = ELBO(q*) - ELBO(q)" in note and "negative where" in note


def test_published_numbers_stand_beside_their_stage():
    pub = pd.DataFrame([{"experiment": "gmm", "setting": "factorized encoder", "metric": "elbo",
                         "stage": S.PHASES["joint"], "value": -3.3, "source": "Kyrylov et al. ReScience C 2023"}])
    per_seed = results.per_seed_table(factorized(), pub)
    table, _, _ = results.summary_table(per_seed, pub, "factorized")
    column = "elbo published (Kyrylov et al. 2023)"
    assert list(table[column].isna()) == [True, False, True] and table[column][1] == -3.3


def test_claims_that_hold_and_one_that_fails():
    claims = {c["claim"]: c for c in results.claims(factorized())}
    assert len(claims) == 4 and all(c["setting"] == "factorized encoder" and c["seeds"] == 3 for c in claims.values())
    assert claims["joint training raises the ELBO"]["verdict"] == HOLDS
    assert claims["joint training raises the ELBO"]["by_construction"]
    assert claims["joint training moves the centres further from the ground truth than the maximum-likelihood fit "
                  "does"]["verdict"] == HOLDS
    assert claims["joint training leaves the true log-likelihood below the maximum-likelihood fit's"]["verdict"] == HOLDS
    below = claims["joint training lowers the true log-likelihood below the ground truth's"]
    assert below["verdict"] == HOLDS and below["per_seed"] == "0: -0.012; 1: -0.011; 2: -0.01"

    above = {seed: (elbo, ll + 0.05, dist) for seed, (elbo, ll, dist) in JOINT.items()}
    f = results.finals(metrics("pretrain", "factorized", PRE), metrics("joint", "factorized", above), ml(ML),
                       "factorized")
    claims = {c["claim"]: c for c in results.claims(f)}
    assert claims["joint training lowers the true log-likelihood below the ground truth's"]["verdict"] == FAILS


def test_a_claim_whose_interval_spans_zero_is_inconclusive():
    mixed = {2: (-3.05, -3.01, 0.30), 0: (-3.14, -3.02, 0.35), 1: (-3.09, -3.03, 0.32)}  # -0.01, +0.03, -0.01
    f = results.finals(metrics("pretrain", "factorized", PRE), metrics("joint", "factorized", mixed), ml(ML),
                       "factorized")
    claims = {c["claim"]: c for c in results.claims(f)}
    assert claims["joint training lowers the true log-likelihood below the ground truth's"]["verdict"] == INCONCLUSIVE


def test_the_consistent_encoder_claims_no_drift_beyond_the_control():
    def consistent(drift):
        joint = {seed: (elbo, ll, ML[seed][2] + d) for (seed, (elbo, ll, _)), d in zip(JOINT.items(), drift)}
        f = results.finals(metrics("pretrain", "consistent", PRE), metrics("joint", "consistent", joint), ml(ML),
                           "consistent")
        (claim,) = results.claims(f)
        assert claim["setting"] == "consistent encoder" and claim["expected"] == "no increase beyond +0"
        return claim["verdict"]

    assert consistent([1e-6, -2e-6, 0.0]) == HOLDS
    assert consistent([0.2, 0.25, 0.3]) == FAILS


@pytest.mark.parametrize("case, message", [
    ("ml twice", "two rows for seed 0"),
    ("metrics twice", "two rows for seed 2 at step 10"),
    ("seed missing", "records of different seeds"),
    ("other encoder", "expected rows of encoder 'factorized'"),
    ("other phase", "expected rows of phase 'joint'"),
    ("column missing", "missing kl_to_posterior"),
    ("no rows", "no rows"),
])
def test_records_that_do_not_fit_are_refused(case, message):
    pre, joint, fits = metrics("pretrain", "factorized", PRE), metrics("joint", "factorized", JOINT), ml(ML)
    if case == "ml twice":
        fits = pd.concat([fits, fits[fits.seed == 0]], ignore_index=True)
    elif case == "metrics twice":
        joint = pd.concat([joint, joint.iloc[[1]]], ignore_index=True)
    elif case == "seed missing":
        fits = fits[fits.seed != 1]
    elif case == "other encoder":
        joint.loc[0, "encoder"] = "consistent"
    elif case == "other phase":
        joint = pd.concat([joint, metrics("pretrain", "factorized", PRE)], ignore_index=True)
    elif case == "column missing":
        pre = pre.drop(columns="kl_to_posterior")
    elif case == "no rows":
        joint = joint.iloc[:0]
    with pytest.raises(InputError, match=message):
        results.finals(pre, joint, fits, "factorized")


# ---------------------------------------------------------------- settings


def test_allowed_values_are_the_schemas():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    gmm = schema["properties"]["gmm"]["properties"]
    enums = {key: tuple(spec.get("items", spec)["enum"]) for key, spec in gmm.items()
             if "enum" in spec.get("items", spec)}
    assert S.ALLOWED == enums


@pytest.mark.parametrize("stage", sorted(S.STAGE_KEYS))
def test_every_stage_key_is_in_the_config(stage):
    section = config_section("gmm")
    keys = S.STAGE_KEYS[stage]
    assert stage_section(stage_json(section, keys), keys, stage) == {k: section[k] for k in keys}


def test_train_settings_come_from_the_section_and_the_run():
    section = config_section("gmm", "smoke.yaml")
    for phase in S.PHASES:
        settings = S.TrainSettings.from_section(phase, section, 3)
        assert (settings.phase, settings.steps, settings.lr, settings.seed) == (
            phase, section[phase]["steps"], section[phase]["lr"], 3)
        assert (settings.eval_every, settings.checkpoint_every) == (section["eval_every"], section["checkpoint_every"])


def test_file_lists_follow_the_configs_order():
    section = {"seeds": [3, 1], "encoders": ["consistent"]}
    assert S.every_seed(section, "results/x", "pretrain_metrics") == [
        "results/x/gmm/seed3/{encoder}/pretrain_metrics.csv", "results/x/gmm/seed1/{encoder}/pretrain_metrics.csv"]
    assert S.every_seed(section, "results/x", "ml_fit") == ["results/x/gmm/seed3/ml_fit.csv",
                                                            "results/x/gmm/seed1/ml_fit.csv"]
    assert S.targets(section, "results/x") == [
        "results/x/gmm/consistent/table.csv", "results/x/gmm/consistent/table.md",
        "results/x/gmm/consistent/table.html", "results/x/gmm/consistent/curves.png", "results/x/gmm/seed3/consistent/regions.png",
        "results/x/gmm/seed1/consistent/regions.png"]
    assert S.claims_files(section, "results/x") == ["results/x/gmm/consistent/claims.csv"]
