"""The smoke preset through Snakemake: outputs, claims, incremental re-runs, lint, report.

The workflow is copied into a temporary directory, so the tests never touch results/.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vae_approx.tables import CLAIM_COLUMNS, HOLDS

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


def test_outputs_exist_and_tables_parse(smoke):
    out = results(smoke)
    for encoder in ("factorized", "consistent"):
        d = out / "gmm" / encoder
        for name in ("regions.png", "curves.png"):
            assert (d / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        table = pd.read_csv(d / "table.csv")
        assert list(table.stage) == ["encoder pretrained (decoder frozen)", "joint training"]
        assert table[["elbo", "log_likelihood"]].notna().all().all()
        assert "| stage" in re.sub(r"\s+", " ", (d / "table.md").read_text())
        for phase in ("pretrain", "joint"):
            metrics = pd.read_csv(d / f"{phase}_metrics.csv")
            assert set(metrics.phase) == {phase} and metrics.step.is_monotonic_increasing
        log = (out / "logs" / "gmm" / encoder / "joint.log").read_text()
        assert re.search(r"step \d+/\d+ loss .* elapsed", log)
        assert (out / "benchmarks" / "gmm" / encoder / "joint.tsv").is_file()
    factorized = pd.read_csv(out / "gmm" / "factorized" / "table.csv")
    assert factorized.filter(like="published").notna().all().all()


def test_semantic_hashing_tables_and_claim_follow_the_histories(smoke):
    out = results(smoke) / "semhash"
    preset = yaml.safe_load((smoke / "presets" / "smoke.yaml").read_text())["semhash"]
    epochs = preset["epochs_one_pair"] + preset["epochs_many_pairs"]
    best = {}
    for encoder in preset["encoders"]:
        run = out / encoder / "depth0" / "8bits"
        history = pd.read_csv(run / "history.csv")
        assert list(history.epoch) == list(range(1, epochs + 1))
        assert list(history.pairs) == [1] * preset["epochs_one_pair"] + [preset["many_pairs"]] * preset["epochs_many_pairs"]
        best[encoder] = history.test_nelbo.min()
        precision = pd.read_csv(run / "retrieval.csv").precision_at_100.item()
        assert 0 <= precision <= 1
        assert (results(smoke) / "benchmarks" / "semhash" / encoder / "depth0" / "8bits" / "model.tsv").is_file()
    table = pd.read_csv(out / "test_nelbo_best.csv").set_index("encoder")
    for encoder, value in best.items():
        assert table.loc[encoder, "8 bits"] == pytest.approx(value)
    assert "8 bits" in (out / "precision.md").read_text()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    claim = pd.read_csv(out / "claims.csv").iloc[0]
    holds = all(best["e1"] < v for e, v in best.items() if e != "e1")
    assert (claim.verdict == HOLDS) == holds and claim.measured == f"{int(holds)} of 1 cells"


def test_the_paper_preset_plans_the_download_and_the_whole_grid(smoke):
    proc = subprocess.run(["snakemake", "-n", "--configfile", "presets/paper.yaml"], cwd=smoke,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    jobs = planned_jobs(proc.stdout)
    assert jobs["download_20newsgroups"] == 1 and jobs["prepare_corpus"] == 1
    assert jobs["train_semhash"] == 36 and jobs["evaluate_retrieval"] == 36 and jobs["tabulate_semhash"] == 1
    assert "synthesize_corpus" not in jobs


def test_the_claims_table_says_what_the_data_say(smoke):
    out = results(smoke)
    claims = pd.read_csv(out / "claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS
    assert f"{(claims.verdict == HOLDS).sum()} of {len(claims)} claims hold" in (out / "claims.md").read_text()
    tolerance = yaml.safe_load((smoke / "presets" / "smoke.yaml").read_text())["gmm"]["centre_tolerance"]

    def final(encoder, phase):
        return pd.read_csv(out / "gmm" / encoder / f"{phase}_metrics.csv").iloc[-1]

    f_pre, f_joint, c_joint = final("factorized", "pretrain"), final("factorized", "joint"), final("consistent", "joint")
    expected = {
        "joint training raises the ELBO": f_joint.elbo > f_pre.elbo,
        "joint training lowers the true log-likelihood": f_joint.log_likelihood < f_pre.log_likelihood,
        "joint training moves the centres away from the ground truth": f_joint.mean_centre_distance > tolerance,
        "joint training keeps the centres at the ground truth": c_joint.mean_centre_distance < tolerance,
    }
    gmm_claims = claims[claims.experiment == "gmm"]
    assert set(gmm_claims.claim) == set(expected)
    assert set(claims.experiment) == {"gmm", "semhash"}
    for claim, holds in expected.items():
        assert (claims.set_index("claim").verdict[claim] == HOLDS) == holds, claim


def test_a_second_run_does_nothing(smoke):
    proc = snakemake(smoke, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_changed_hyperparameter_reruns_only_what_depends_on_it(smoke):
    changed = smoke / "changed.yaml"
    changed.write_text(yaml.safe_dump({"gmm": {"joint": {"lr": 0.002}}}))
    proc = snakemake(smoke, "-n", "--configfile", "presets/smoke.yaml", str(changed))
    assert planned_jobs(proc.stdout) == {"train_gmm_joint": 2, "plot_gmm": 2, "tabulate_gmm": 2,
                                         "collect_claims": 1, "all": 1}
    changed.write_text(yaml.safe_dump({"gmm": {"centre_tolerance": 0.25}}))
    proc = snakemake(smoke, "-n", "--configfile", "presets/smoke.yaml", str(changed))
    assert planned_jobs(proc.stdout) == {"tabulate_gmm": 2, "collect_claims": 1, "all": 1}


def test_the_report_holds_every_plot_and_table(smoke):
    report = results(smoke) / "report.html"
    snakemake(smoke, "--report", str(report.relative_to(smoke)))
    html = report.read_text(errors="replace")
    for name in ("regions.png", "curves.png", "table.csv", "claims.csv", "Gaussian mixture", "Semantic hashing",
                 "test_nelbo_best.csv"):
        assert name in html, name


def test_lint_and_format_are_clean():
    lint = subprocess.run(["snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    fmt = subprocess.run(["snakefmt", "--check", "Snakefile", "workflow/"], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr
