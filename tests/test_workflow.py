"""The smoke preset through Snakemake: outputs, claims, incremental re-runs, lint, report; and
the paper preset, shrunk by a config file layered after it, end to end on a synthetic CelebA zip
with Inception weights of random values placed by hand (wiring only: those distances are not FID).

The workflow is copied into a temporary directory, so the tests never touch results/.
"""

import hashlib
from html import unescape
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from vae_approx.images import settings as S
from vae_approx.tables import CLAIM_COLUMNS, FAILS, HOLDS, paired_verdict

ROOT = Path(__file__).resolve().parents[1]
COPY = ["Snakefile", "config.yaml", "presets", "workflow", "envs", "reference", "src", "profiles"]
pytestmark = pytest.mark.workflow


def snakemake(workdir, *args, check=True):
    proc = subprocess.run(["snakemake", "--cores", "2", "--configfile", "presets/smoke.yaml", *args],
                          cwd=workdir, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> count from the 'Job stats' table of a dry run."""
    counts = {}
    for name, count in re.findall(r"^(\w+)\s+(\d+)$", output, flags=re.M):
        if name != "total":
            counts[name] = int(count)
    return counts


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    for name in COPY:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, workdir / name)
    snakemake(workdir)
    return workdir


def results(workdir):
    return workdir / "results" / "smoke"


def merged_config(workdir, *presets):
    """config.yaml updated by each preset file in turn, as Snakemake merges --configfile."""
    from snakemake.utils import update_config

    config = yaml.safe_load((workdir / "config.yaml").read_text())
    for preset in presets:
        update_config(config, yaml.safe_load((workdir / preset).read_text()))
    return config


IMAGE_SETS = ["ground_truth", "ground_truth_resample", "pretrained_reconstruction", "joint_reconstruction",
              "joint_prior"]
PRETRAIN, JOINT = "encoder pretrained (decoder frozen)", "joint training"


def image_metric(metrics, stage, metric, image_set=None):
    row = metrics[(metrics.stage == stage) & (metrics.metric == metric)
                  & ((metrics.image_set == image_set) if image_set else True)]
    assert len(row) == 1, (stage, metric, image_set)
    return float(row.value.iloc[0])


def main_run(config, sigma):
    """The main faces protocol's run folder below seed<k>/."""
    return S.run_dir(S.configured_protocol(config["images"]), sigma)


def run_metrics(run, fd):
    """One faces run's numbers, from its distances, held-out metrics and joint curve, in the table's columns."""
    distances = pd.read_csv(run / f"{fd}.csv")
    held = pd.read_csv(run.parent / "heldout.csv")
    curve = pd.read_csv(run.parent / "joint_curve.csv")
    floor = image_metric(distances, "ground truth", fd, "ground_truth_resample")
    return distances, floor, {
        PRETRAIN: {"elbo": image_metric(held, "pretrain", "elbo"),
                   f"{fd} reconstructions": image_metric(distances, "pretrain", fd, "pretrained_reconstruction"),
                   f"{fd} prior samples": floor, "decoder_drift": 0.0},
        JOINT: {"elbo": image_metric(held, "joint", "elbo"), "elbo_ema (reference statistic)": curve.elbo_ema.iloc[-1],
                f"{fd} reconstructions": image_metric(distances, "joint", fd, "joint_reconstruction"),
                f"{fd} prior samples": image_metric(distances, "joint", fd, "joint_prior"),
                "decoder_drift": image_metric(held, "joint", "decoder_drift"), "sigma": image_metric(held, "joint", "sigma")},
    }


def check_images_results(out, config, fd):
    """What every images run must show, whatever its numbers: the table is the mean of the seeds'
    metrics (per sigma variant), each claim is the decision rule applied to the per-seed changes, and every
    seed's grids are PNG images."""
    images = out / "images"
    seeds, sigmas = config["images"]["seeds"], config["images"]["sigma_variants"]
    table = pd.read_csv(images / "table.csv").set_index(["decoder_sigma", "stage"])
    assert list(table.index) == [(v, stage) for v in sigmas for stage in (PRETRAIN, JOINT)]
    assert (table.seeds == len(seeds)).all()
    published = pd.read_csv(out.parents[1] / "reference" / "published_results.csv")
    claims = pd.read_csv(images / "claims.csv", dtype={"per_seed": str, "in_direction": str})
    assert list(claims.columns) == CLAIM_COLUMNS and set(claims.experiment) == {"images"}
    assert len(claims) == 3 * len(sigmas)
    floor_rule = config["images"]["fd_tolerance"] == "floor"
    tolerance = 0.0 if floor_rule else float(config["images"]["fd_tolerance"])
    per_variant = {}
    for v, sigma in enumerate(sigmas):
        per_seed = {k: run_metrics(images / f"seed{k}" / main_run(config, sigma), fd) for k in seeds}
        per_variant[sigma] = per_seed
        for stage in (PRETRAIN, JOINT):
            for column in per_seed[seeds[0]][2][stage]:
                values = [per_seed[k][2][stage][column] for k in seeds]
                assert table.loc[(sigma, stage), column] == pytest.approx(np.mean(values), rel=1e-9, abs=1e-12), (
                    sigma, stage, column)
                if len(seeds) > 1:
                    assert table.loc[(sigma, stage), f"{column} std"] == pytest.approx(np.std(values, ddof=1),
                                                                                       rel=1e-6, abs=1e-12)
        for metric, stage, value in published[published.experiment == "images"][["metric", "stage", "value"]].itertuples(index=False):
            column = table.loc[(sigma, stage), f"{metric} published (Kyrylov et al. 2023)"]
            assert column == pytest.approx(value) if sigma == "fixed" else np.isnan(column)
        assert all(per_seed[k][2][JOINT]["decoder_drift"] > 0 for k in seeds)
        learned = [per_seed[k][2][JOINT]["sigma"] for k in seeds]
        assert np.allclose(learned, config["images"]["sigma"], rtol=1e-6, atol=0) == (sigma == "fixed")

        # each seed's rise less its own floor (or the fixed tolerance), through the one decision rule
        allowance = {k: per_seed[k][1] if floor_rule else 0.0 for k in seeds}

        def change(column, allow=True):
            return [per_seed[k][2][JOINT][column] - per_seed[k][2][PRETRAIN][column] - (allowance[k] if allow else 0)
                    for k in seeds]
        expected = [paired_verdict(change("elbo", False), "increase"),
                    paired_verdict(change(f"{fd} reconstructions"), "increase", tolerance),
                    paired_verdict(change(f"{fd} prior samples"), "increase", tolerance)]
        rows = claims.iloc[3 * v:3 * v + 3]
        assert list(rows.verdict) == [e.verdict for e in expected], rows
        assert rows.mean_change.tolist() == pytest.approx([e.mean for e in expected])
        assert list(rows.in_direction) == [f"{e.in_direction}/{len(seeds)}" for e in expected]
        assert list(rows.metric) == ["elbo", f"{fd} reconstructions", f"{fd} prior samples"]
        assert rows.tolerance.tolist() == pytest.approx([0.0, tolerance, tolerance])
        assert list(rows.by_construction) == [True, False, False] and rows.control.str.len().min() > 0
    rows = pd.read_csv(images / "table_per_seed.csv")
    assert sorted(set(rows.seed)) == sorted(seeds) and len(rows) == 2 * len(seeds) * len(sigmas)
    md = (images / "table.md").read_text()
    assert f"{fd} reconstructions" in md and "Faces experiment" in md
    stacked = pd.read_csv(out / "claims.csv", dtype={"per_seed": str, "in_direction": str})
    pd.testing.assert_frame_equal(stacked[stacked.claim.isin(claims.claim) & (stacked.experiment == "images")]
                                  .reset_index(drop=True), claims)

    size = config["images"]["image_size"]
    for seed in seeds:
        for sigma in sigmas:
            for name in IMAGE_SETS:
                png = images / f"seed{seed}" / main_run(config, sigma) / "grids" / f"{name}.png"
                assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
                with Image.open(png) as im:
                    im.verify()
                with Image.open(png) as im:
                    assert min(im.size) >= size, (png, im.size)
    assert (images / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return {k: v[0] for k, v in per_variant[sigmas[0]].items()}, table, claims


def check_ablation(out, config, fd):
    """The ablation table's rows follow the runs they come from, and its claims the one decision rule."""
    im = config["images"]
    seeds, rows = im["seeds"], im["ablation"]["rows"]
    table = pd.read_csv(out / "images" / "ablation.csv").set_index("protocol")
    assert list(table.index) == rows
    rise = {}
    for row in rows:
        runs = {k: run_metrics(out / "images" / f"seed{k}" / S.run_dir(S.ablation_protocol(row), "fixed"), fd)
                for k in seeds}
        rise[row] = [runs[k][2][JOINT][f"{fd} reconstructions"] - runs[k][2][PRETRAIN][f"{fd} reconstructions"]
                     for k in seeds]
        pv = paired_verdict(rise[row], "increase")
        assert table.loc[row, "rise"] == pytest.approx(pv.mean, rel=1e-9, abs=1e-12), row
        assert table.loc[row, "decoder_drift"] == pytest.approx(np.mean([runs[k][2][JOINT]["decoder_drift"]
                                                                         for k in seeds]))
        assert table.loc[row, "seeds"] == len(seeds)
        if row == "reference":
            floors = [runs[k][1] for k in seeds]
    claims = pd.read_csv(out / "images" / "ablation_claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS
    if "reference" in rows:
        changes = np.subtract(rise["reference"], floors) if im["fd_tolerance"] == "floor" else rise["reference"]
        assert claims.verdict[0] == paired_verdict(changes, "increase").verdict
        assert claims.mean_change[0] == pytest.approx(np.mean(changes))
    return table, claims


def test_outputs_exist_and_tables_parse(smoke):
    out = results(smoke)
    seeds = yaml.safe_load((smoke / "presets" / "smoke.yaml").read_text())["gmm"]["seeds"]
    assert len(seeds) >= 2
    for encoder in ("factorized", "consistent"):
        d = out / "gmm" / encoder
        table = pd.read_csv(d / "table.csv")
        assert list(table.stage) == ["encoder pretrained (decoder frozen)", "joint training",
                                     "maximum-likelihood fit (control)"]
        assert (table.seeds == len(seeds)).all()
        assert table[["log_likelihood", "log_likelihood std", "mean_centre_distance"]].notna().all().all()
        assert "| stage" in re.sub(r"\s+", " ", (d / "table.md").read_text())
        per_seed = pd.read_csv(d / "table_per_seed.csv")
        assert sorted(set(per_seed.seed)) == sorted(seeds) and len(per_seed) == 3 * len(seeds)
        # the summary is the mean of the per-seed rows
        joint = per_seed[per_seed.stage == "joint training"]
        assert table.set_index("stage").loc["joint training", "elbo"] == pytest.approx(joint.elbo.mean())
        assert (d / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # every seed in one figure
        for seed in seeds:
            s = out / "gmm" / f"seed{seed}" / encoder
            assert (s / "regions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            for phase in ("pretrain", "joint"):
                metrics = pd.read_csv(s / f"{phase}_metrics.csv")
                assert set(metrics.phase) == {phase} and metrics.step.is_monotonic_increasing
            log = (out / "logs" / "gmm" / f"seed{seed}" / encoder / "joint.log").read_text()
            assert re.search(r"step \d+/\d+ loss .* elapsed", log)
            assert (out / "benchmarks" / "gmm" / f"seed{seed}" / encoder / "joint.tsv").is_file()
    # seeds differ: each its own data sample
    samples = [np.load(out / "gmm" / f"seed{seed}" / "data.npz")["x"] for seed in seeds]
    assert not np.array_equal(samples[0], samples[1])
    factorized = pd.read_csv(out / "gmm" / "factorized" / "table.csv")
    assert factorized.filter(like="published").iloc[:2].notna().all().all()


def test_semantic_hashing_tables_and_claims_follow_the_histories(smoke):
    out = results(smoke) / "semhash"
    preset = merged_config(smoke, "presets/smoke.yaml")["semhash"]
    seeds, encoders = preset["seeds"], preset["encoders"]
    assert len(seeds) >= 2
    epochs = preset["epochs_one_pair"] + preset["epochs_many_pairs"]
    best = {}
    for seed in seeds:
        for encoder in encoders:
            run = out / f"seed{seed}" / encoder / "depth0" / "8bits"
            history = pd.read_csv(run / "history.csv")
            assert list(history.epoch) == list(range(1, epochs + 1))
            assert list(history.pairs) == [1] * preset["epochs_one_pair"] + [preset["many_pairs"]] * preset["epochs_many_pairs"]
            best[seed, encoder] = history.test_nelbo.min()
            retrieval = pd.read_csv(run / "retrieval.csv").iloc[0]
            assert 0 <= retrieval.precision_at_100 <= 1 and retrieval.seed == seed
            assert (results(smoke) / "benchmarks" / "semhash" / f"seed{seed}" / encoder / "depth0" / "8bits" / "model.tsv").is_file()
            assert f"seed {seed}" in (results(smoke) / "logs" / "semhash" / f"seed{seed}" / encoder / "depth0" / "8bits" / "model.log").read_text()
    # seeds differ: each its own initialisation, batch order and code samples
    assert best[seeds[0], encoders[0]] != best[seeds[1], encoders[0]]
    table = pd.read_csv(out / "test_nelbo_best.csv").set_index("encoder")
    for encoder in encoders:
        values = [best[k, encoder] for k in seeds]
        assert table.loc[encoder, "8 bits"] == pytest.approx(np.mean(values))
        assert table.loc[encoder, "8 bits std"] == pytest.approx(np.std(values, ddof=1))
    assert "8 bits" in (out / "precision.md").read_text()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # e1 against each other encoder, per cell over seeds, through the one decision rule
    claims = pd.read_csv(out / "claims.csv", dtype={"per_seed": str, "in_direction": str})
    cells = pd.read_csv(out / "claims_cells.csv", dtype={"per_seed": str, "in_direction": str})
    others = [e for e in ("e2", "e3") if e in encoders]
    assert list(claims.columns) == list(cells.columns) == CLAIM_COLUMNS and len(claims) == len(cells) == len(others)
    for other, claim, cell in zip(others, claims.itertuples(), cells.itertuples()):
        pv = paired_verdict([best[k, "e1"] - best[k, other] for k in seeds], "decrease")
        assert cell.setting == "decoder depth 0, 8 bits" and cell.verdict == pv.verdict and other in cell.claim
        assert (cell.mean_change, cell.low, cell.high) == pytest.approx((pv.mean, pv.low, pv.high))
        assert claim.verdict == pv.verdict  # one cell: the claim is that cell's verdict
        assert claim.measured.startswith(f"{int(pv.verdict == HOLDS)} of 1 cells hold")
        assert claim.per_seed == "per cell: claims_cells.csv" and claim.control == f"{other} in the same cell and seed"


def test_the_images_table_claims_and_grids_follow_the_metrics(smoke):
    out = results(smoke)
    config = merged_config(smoke, "presets/smoke.yaml")
    metrics, _, _ = check_images_results(out, config, "fd_digits")
    for seed_metrics_ in metrics.values():  # the digits distance is never called FID
        assert not seed_metrics_.metric.str.contains("fid").any()
    assert "not FID" in (out / "images" / "table.md").read_text()
    im = config["images"]
    images = np.load(out / "images" / "data" / "digits.npy", mmap_mode="r")
    assert images.shape == (1797, 1, im["image_size"], im["image_size"]) and images.dtype == np.uint8
    assert len(pd.read_csv(out / "images" / "classifier" / "classifier.csv")) == im["classifier"]["epochs"]
    assert sorted(p.name for p in (out / "images" / "gan" / "generators").glob("epoch_*.pt")) == [
        f"epoch_{e:03d}.pt" for e in range(1, im["gan"]["epochs"] + 1)]
    distances = pd.read_csv(out / "images" / "gan" / "distances.csv")
    assert list(distances.epoch) == list(range(1, im["gan"]["epochs"] + 1))  # generator_epoch auto: all scored
    chosen = distances.epoch[distances.fd_digits.idxmin()]
    assert distances.chosen.tolist() == [e == chosen for e in distances.epoch]
    assert torch.load(out / "images" / "gan" / "generator.pt", weights_only=False)["epoch"] == chosen
    trained = S.training_dir(S.configured_protocol(im))
    for seed in im["seeds"]:
        for name, phase in (("pretrain_curve.csv", "pretrain"), ("sigma-fixed/joint_curve.csv", "joint")):
            curve = pd.read_csv(out / "images" / f"seed{seed}" / trained / name)
            assert set(curve.phase) == {phase} and curve.step.max() == im[phase]["iterations"]
        run = f"seed{seed}/{main_run(config, 'fixed')}"
        for job in (f"seed{seed}/{trained}/pretrained", f"seed{seed}/{trained}/sigma-fixed/joint",
                    f"seed{seed}/{trained}/sigma-fixed/heldout", f"{run}/samples", f"{run}/distances"):
            assert (out / "benchmarks" / "images" / f"{job}.tsv").is_file(), job
        log = (out / "logs" / "images" / f"seed{seed}" / trained / "sigma-fixed" / "joint.log").read_text()
        assert re.search(r"step \d+/\d+ .*elapsed", log)
        samples = np.load(out / "images" / run / "samples" / "ground_truth.npy", mmap_mode="r")
        assert samples.shape == (im["evaluate"]["n_samples"], 1, im["image_size"], im["image_size"])
        assert samples.dtype == np.uint8
    for job in ("classifier/classifier", "gan/generators", "gan/generator"):  # shared by the seeds
        assert (out / "benchmarks" / "images" / f"{job}.tsv").is_file(), job
    # the seeds differ from the encoder's initialisation on, and one generator is the truth of all
    first, second = (torch.load(out / "images" / f"seed{k}" / trained / "pretrained.pt", weights_only=False)
                     for k in im["seeds"][:2])
    assert not torch.equal(next(iter(first["encoder"].values())), next(iter(second["encoder"].values())))
    assert first["generator_epoch"] == second["generator_epoch"] == chosen


def test_the_ablation_covers_every_factor_and_follows_its_runs(smoke):
    out = results(smoke)
    config = merged_config(smoke, "presets/smoke.yaml")
    assert config["images"]["ablation"]["rows"] == list(S.ABLATION_ROWS)  # the smoke preset covers every factor
    table, claims = check_ablation(out, config, "fd_digits")
    assert len(claims) == 2 and "adds the most" in claims.claim[1] and "not run alone" not in claims.control[1]
    assert "Faces protocol ablation" in (out / "images" / "ablation.md").read_text()
    stacked = pd.read_csv(out / "claims.csv")
    assert set(claims.claim) <= set(stacked.claim)  # the ablation's claims are in claims.csv and claims.md
    # a training factor trained its own encoder; a sampling factor re-used the corrected training
    seed = config["images"]["seeds"][0]
    for row, own in (("decoder_bn", True), ("encoder_init", True), ("sampling", False), ("z_pairing", False)):
        trained = out / "images" / f"seed{seed}" / S.training_dir(S.ablation_protocol(row))
        assert (trained != out / "images" / f"seed{seed}" / S.training_dir(S.corrected())) == own
        assert (trained / "pretrained.pt").is_file()


def test_the_paper_preset_plans_the_download_and_the_whole_grid(smoke):
    proc = subprocess.run(["snakemake", "-n", "--configfile", "presets/paper.yaml"], cwd=smoke,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    jobs = planned_jobs(proc.stdout)
    assert jobs["download_20newsgroups"] == 1 and jobs["prepare_corpus"] == 1
    paper = merged_config(smoke, "presets/paper.yaml")
    assert len(paper["gmm"]["seeds"]) == 5 and len(paper["semhash"]["seeds"]) == len(paper["images"]["seeds"]) == 3
    assert jobs["train_semhash"] == 36 * 3 and jobs["evaluate_retrieval"] == 36 * 3 and jobs["tabulate_semhash"] == 1
    assert jobs["pretrain_gmm_encoder"] == jobs["train_gmm_joint"] == 2 * 5
    assert "synthesize_corpus" not in jobs
    for rule in ("download_celeba", "prepare_celeba", "download_inception", "train_gan", "choose_generator",
                 "tabulate_images"):
        assert jobs.get(rule) == 1, (rule, jobs)
    # three seeds; the ablation's rows corrected, sampling, pixel_noise, z_pairing and reference train twice
    # (corrected, reference) and sample five ways
    for rule, count in (("pretrain_images_encoder", 6), ("train_images_joint", 6), ("evaluate_images_heldout", 6),
                        ("generate_samples", 15), ("compute_fid", 15), ("plot_images_grids", 3)):
        assert jobs.get(rule) == count, (rule, jobs)
    assert "compute_fd_digits" not in jobs and jobs["tabulate_images_ablation"] == 1
    assert "prepare_digits" not in jobs and "train_digits_classifier" not in jobs  # FID, not the digits distance


def test_the_claims_table_says_what_the_data_say(smoke):
    out = results(smoke)
    claims = pd.read_csv(out / "claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS
    evidence = claims[~claims.by_construction]
    assert f"Of {len(evidence)} claims that could fail: {(evidence.verdict == HOLDS).sum()} hold, {(evidence.verdict == FAILS).sum()} fail" in (out / "claims.md").read_text()
    seeds = yaml.safe_load((smoke / "presets" / "smoke.yaml").read_text())["gmm"]["seeds"]

    def final(seed, encoder, phase):
        return pd.read_csv(out / "gmm" / f"seed{seed}" / encoder / f"{phase}_metrics.csv").iloc[-1]

    def ml(seed):
        return pd.read_csv(out / "gmm" / f"seed{seed}" / "ml_fit.csv").iloc[0]

    # every GMM claim recomputed from the per-seed files, through the one decision rule
    changes = {
        "joint training raises the ELBO":
            ("increase", True, [final(k, "factorized", "joint").elbo - final(k, "factorized", "pretrain").elbo for k in seeds]),
        "joint training lowers the true log-likelihood below the ground truth's":
            ("decrease", True, [final(k, "factorized", "joint").log_likelihood - ml(k).ground_truth_log_likelihood for k in seeds]),
        "joint training leaves the true log-likelihood below the maximum-likelihood fit's":
            ("decrease", True, [final(k, "factorized", "joint").log_likelihood - ml(k).log_likelihood for k in seeds]),
        "joint training moves the centres further from the ground truth than the maximum-likelihood fit does":
            ("increase", True, [final(k, "factorized", "joint").mean_centre_distance - ml(k).mean_centre_distance for k in seeds]),
        "joint training moves the centres no further from the ground truth than the maximum-likelihood fit does":
            ("increase", False, [final(k, "consistent", "joint").mean_centre_distance - ml(k).mean_centre_distance for k in seeds]),
    }
    gmm_claims = claims[claims.experiment == "gmm"].set_index("claim")
    assert set(gmm_claims.index) == set(changes)
    assert set(claims.experiment) == {"gmm", "semhash", "images"}
    for claim, (direction, expect_change, values) in changes.items():
        row = gmm_claims.loc[claim]
        verdict = paired_verdict(values, direction).verdict
        if not expect_change:
            verdict = FAILS if verdict == HOLDS else HOLDS
        assert row.verdict == verdict, claim
        assert row.seeds == len(seeds) and row.mean_change == pytest.approx(np.mean(values))
        assert row.low <= row.mean_change <= row.high and row.control
    assert gmm_claims.by_construction["joint training raises the ELBO"]
    assert not gmm_claims.by_construction["joint training lowers the true log-likelihood below the ground truth's"]
    # the ML fit is the best decoder of the family: never below the ground truth on its own sample
    assert all(ml(k).log_likelihood >= ml(k).ground_truth_log_likelihood for k in seeds)


def test_the_claims_figure_and_the_faces_comparison_are_images(smoke):
    out = results(smoke)
    claims = pd.read_csv(out / "claims.csv")
    with Image.open(out / "claims.png") as im:
        assert im.size[1] >= 60 * len(claims)  # one panel per claim
    size = merged_config(smoke, "presets/smoke.yaml")["images"]["image_size"]
    for seed in merged_config(smoke, "presets/smoke.yaml")["images"]["seeds"]:
        run = main_run(merged_config(smoke, "presets/smoke.yaml"), "fixed")
        with Image.open(out / "images" / f"seed{seed}" / run / "grids" / "comparison.png") as im:
            # four rows (truth, two reconstructions, joint prior), each image at least 4x 32 pixels
            assert im.size[1] >= 4 * max(128, size) and im.size[0] >= 8 * max(128, size)


def test_a_second_run_does_nothing(smoke):
    proc = snakemake(smoke, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_changed_hyperparameter_reruns_only_what_depends_on_it(smoke):
    changed = smoke / "changed.yaml"
    cases = [
        ({"gmm": {"joint": {"lr": 0.002}}},
         {"train_gmm_joint": 4, "plot_gmm_regions": 4, "plot_gmm_curves": 2, "tabulate_gmm": 2, "collect_claims": 1,
          "all": 1}),
        # a new seed: only its jobs, and the tables and curves over seeds
        ({"gmm": {"seeds": [0, 1, 7]}},
         {"sample_gmm": 1, "fit_gmm_ml": 1, "pretrain_gmm_encoder": 2, "train_gmm_joint": 2, "plot_gmm_regions": 2,
          "plot_gmm_curves": 2, "tabulate_gmm": 2, "collect_claims": 1, "all": 1}),
        ({"semhash": {"seeds": [1, 2, 5]}},
         {"train_semhash": 2, "evaluate_retrieval": 2, "plot_semhash": 1, "tabulate_semhash": 1, "collect_claims": 1,
          "all": 1}),
        # a new faces seed: per seed the smoke preset trains 4 protocols (corrected, decoder_bn, encoder_init,
        # reference), 5 joint models (and the learned sigma of the main one) and samples 8 ways
        ({"images": {"seeds": [0, 1, 4]}},
         {"pretrain_images_encoder": 4, "train_images_joint": 5, "evaluate_images_heldout": 5, "generate_samples": 8,
          "compute_fd_digits": 8, "plot_images_grids": 2, "plot_images_curves": 1, "tabulate_images": 1,
          "tabulate_images_ablation": 1, "collect_claims": 1, "all": 1}),
        ({"images": {"joint": {"lr": 2.0e-4}}},
         {"train_images_joint": 10, "evaluate_images_heldout": 10, "generate_samples": 16, "compute_fd_digits": 16,
          "plot_images_grids": 4, "plot_images_curves": 1, "tabulate_images": 1, "tabulate_images_ablation": 1,
          "collect_claims": 1, "all": 1}),
        # a sampling factor of the main run: only its sampling, distances and grids (the training is shared)
        ({"images": {"protocol": {"pixel_noise": "every"}}},
         {"generate_samples": 4, "compute_fd_digits": 4, "plot_images_grids": 4, "tabulate_images": 1,
          "collect_claims": 1, "all": 1}),
        # what only the grids read, or nothing: no image set is drawn again
        ({"images": {"evaluate": {"grid_size": 8}}}, {"plot_images_grids": 4, "all": 1}),
        ({"images": {"evaluate": {"keep_samples": False}}}, {}),
        ({"images": {"fd_tolerance": 0.5}},
         {"tabulate_images": 1, "tabulate_images_ablation": 1, "collect_claims": 1, "all": 1}),
    ]
    for change, expected in cases:
        changed.write_text(yaml.safe_dump(change))
        proc = snakemake(smoke, "-n", "--configfile", "presets/smoke.yaml", str(changed))
        assert planned_jobs(proc.stdout) == expected, change


def test_the_report_holds_every_plot_and_table(smoke):
    report = results(smoke) / "report.html"
    snakemake(smoke, "--report", str(report.relative_to(smoke)))
    html = report.read_text(errors="replace")
    for name in ("regions.png", "curves.png", "table.csv", "claims.csv", "claims.png", "Gaussian mixture",
                 "Semantic hashing", "test_nelbo_best.csv", "Faces", "seed 1", "comparison.png",
                 *(f"{name}.png" for name in IMAGE_SETS)):
        assert name in html, name
    # every figure and table with its caption
    for caption in sorted((ROOT / "workflow" / "report").glob("*.rst")):
        if caption.name != "workflow.rst":  # the report escapes characters such as @ and >
            assert caption.read_text().strip()[:60] in unescape(html), caption.name


# ---------------------------------------------------------------- the paper preset, shrunk, on synthetic data

# Layered after presets/paper.yaml: the paper's data path (CelebA zip, Inception FID) at toy sizes.
# inception_unverified_ok: the random weights fail the SHA-256 check by design (tests only).
PAPER_SYNTHETIC = {
    "run": "paper-synthetic",
    "experiments": ["images"],
    "images": {
        "inception_unverified_ok": True,
        "celeba": {"expected_count": 40},
        "gan": {"nz": 8, "ngf": 8, "ndf": 8, "epochs": 2, "batch_size": 20, "checkpoint_every": 2},
        "generator_epoch": 2,
        "choose": {"n_samples": 4},
        "seeds": [0, 1],
        "encoder_ndf": 8,
        "pretrain": {"iterations": 2, "batch_size": 4},
        "joint": {"iterations": 2, "batch_size": 4},
        "log_every": 1,
        "checkpoint_every": 1,
        "bn_batches": 1,
        "evaluate": {"n_samples": 4, "batch_size": 4, "n_eval": 4, "grid_size": 4},
        "ablation": {"rows": ["corrected", "reference"]},
        "threads": 1,
    },
}


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def paper_synthetic(tmp_path_factory):
    """presets/paper.yaml end to end on a synthetic zip in CelebA's layout and Inception weights
    with RANDOM values placed by hand (they test the wiring; their distances are not FID)."""
    from vae_approx.images.data import write_random_inception_weights

    workdir = tmp_path_factory.mktemp("paper")
    for name in COPY:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, workdir / name)
    config = merged_config(workdir, "presets/paper.yaml")["images"]
    subprocess.run(["python", "-m", "vae_approx.images", "synth-celeba-zip", "--n", "40",
                    "--out", config["celeba"]["zip"]], cwd=workdir, check=True, capture_output=True)
    weights = workdir / config["torch_home"] / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    write_random_inception_weights(weights)
    placed = {"zip": digest(workdir / config["celeba"]["zip"]), "weights": digest(weights)}
    (workdir / "synthetic.yaml").write_text(yaml.safe_dump(PAPER_SYNTHETIC))
    command = ["snakemake", "--cores", "2", "--configfile", "presets/paper.yaml", "synthetic.yaml"]
    dry = subprocess.run([*command, "-n", "-p"], cwd=workdir, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    # TORCH_HOME of the jobs comes from the config, whatever the caller's environment says.
    env = {**os.environ, "TORCH_HOME": str(workdir / "elsewhere")}
    proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"workdir": workdir, "planned": planned_jobs(dry.stdout), "placed": placed, "weights": weights,
            "zip": workdir / config["celeba"]["zip"], "dry": dry.stdout}


def test_the_paper_preset_runs_end_to_end_on_a_synthetic_celeba_zip(paper_synthetic):
    workdir = paper_synthetic["workdir"]
    planned = paper_synthetic["planned"]
    # two seeds, two protocols (the ablation's corrected and reference rows); the zip and the weights placed by hand
    # are used as is: no download jobs
    assert planned == {"prepare_celeba": 1, "train_gan": 1, "choose_generator": 1, "pretrain_images_encoder": 4,
                       "train_images_joint": 4, "evaluate_images_heldout": 4, "generate_samples": 4, "compute_fid": 4,
                       "plot_images_grids": 2, "plot_images_curves": 1, "tabulate_images": 1,
                       "tabulate_images_ablation": 1, "collect_claims": 1, "all": 1}
    assert digest(paper_synthetic["zip"]) == paper_synthetic["placed"]["zip"]
    assert digest(paper_synthetic["weights"]) == paper_synthetic["placed"]["weights"]
    assert not (workdir / "elsewhere").exists()
    out = workdir / "results" / "paper-synthetic"
    config = merged_config(workdir, "presets/paper.yaml", "synthetic.yaml")
    faces = np.load(out / "images" / "data" / "celeba.npy", mmap_mode="r")
    assert faces.shape == (40, 3, 64, 64) and faces.dtype == np.uint8
    distances = pd.read_csv(out / "images" / "gan" / "distances.csv")
    assert distances.epoch.tolist() == [2] and distances.chosen.tolist() == [True] and "fid" in distances
    generator = torch.load(out / "images" / "gan" / "generator.pt", weights_only=False)
    assert generator["epoch"] == 2 and generator["spec"]["image_size"] == 64 and generator["spec"]["channels"] == 3
    check_images_results(out, config, "fid")
    assert "Inception" in (out / "images" / "table.md").read_text()
    # Both FID jobs check the hand-placed weights' SHA-256; the random ones pass only through the
    # opt-out, and every output says that their distances are not FID.
    commands = [line for line in paper_synthetic["dry"].splitlines() if "--features inception" in line]
    assert len(commands) == 1 + planned["compute_fid"], paper_synthetic["dry"]
    assert all("--inception-sha256 '' --inception-unverified-ok true" in line for line in commands), commands
    assert distances.inception_unverified.tolist() == [True]
    for seed in config["images"]["seeds"]:
        metrics = pd.read_csv(out / "images" / f"seed{seed}" / main_run(config, "fixed") / "fid.csv")
        assert image_metric(metrics, "all", "inception_unverified") == 1
    md = (out / "images" / "table.md").read_text()
    assert "UNVERIFIED" in md and "NOT FID" in md and "FID (Inception features)" not in md
    assert all("not FID" in claim for claim in pd.read_csv(out / "images" / "claims.csv").claim[1:])
    check_ablation(out, config, "fid")
    for log in ("gan/generator.log", f"seed0/{main_run(config, 'fixed')}/distances.log"):
        text = (out / "logs" / "images" / log).read_text()
        assert "UNVERIFIED" in text and "NOT FID" in text, log


def test_lint_and_format_are_clean():
    lint = subprocess.run(["snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    fmt = subprocess.run(["snakefmt", "--check", "Snakefile", "workflow/"], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr


def test_the_local_profile_shares_the_gpu_among_launch_bound_jobs():
    """profiles/local: semantic-hashing and GMM training take one GPU slot each, every faces job all of them."""
    profile = yaml.safe_load((ROOT / "profiles" / "local" / "config.yaml").read_text())
    slots = int(next(r for r in profile["resources"] if r.startswith("gpu_slots=")).split("=")[1])
    assert slots > 1
    proc = subprocess.run(["snakemake", "-n", "--profile", "profiles/local", "--configfile", "presets/paper.yaml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", proc.stdout, flags=re.M)
    asked = {}
    for rule, resources in jobs:
        asked.setdefault(rule, set()).add(dict(item.split("=", 1) for item in resources.split(", ")).get("gpu_slots"))
    for rule in ("train_semhash", "pretrain_gmm_encoder", "train_gmm_joint"):
        assert asked[rule] == {"1"}, (rule, asked[rule])
    for rule in ("train_gan", "choose_generator", "pretrain_images_encoder", "train_images_joint", "generate_samples",
                 "compute_fid", "evaluate_images_heldout"):
        assert asked[rule] == {str(slots)}, (rule, asked[rule])
    assert asked["tabulate_images"] == {None} and asked["prepare_corpus"] == {None}  # CPU jobs take no slot
