"""The Gaussian-mixture stages on the command line: --settings and --run in, the run's identity as
the first columns of every CSV out, and a table over seeds from those files alone."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, config_section
from vae_approx.config import stage_json
from vae_approx.gmm import settings as S

PUBLISHED = str(ROOT / "reference" / "published_results.csv")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "vae_approx.gmm", *args], capture_output=True, text=True)


def ok(*args):
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def section():
    """The smoke preset's section, cut to a few points and steps."""
    section = config_section("gmm", "smoke.yaml")
    section.update(n_per_component=20, eval_every=2, checkpoint_every=2)
    for phase in S.PHASES:
        section[phase] = {**section[phase], "steps": 4}
    return section


def settings(section, stage):
    return stage_json(section, S.STAGE_KEYS[stage])


def run(**identity):
    return json.dumps(identity)


def test_stages_write_identity_columns_and_tabulate_reads_them(tmp_path, section):
    encoder, seeds = "factorized", [1, 0]
    files = {name: [] for name in ("pretrain", "joint", "ml")}
    for seed in seeds:
        d = tmp_path / f"seed{seed}"
        ok("sample", "--settings", settings(section, "sample"), "--run", run(seed=seed), "--out", str(d / "data.npz"))
        ok("fit-ml", "--run", run(seed=seed), "--data", str(d / "data.npz"), "--out", str(d / "ml_fit.csv"))
        for phase in S.PHASES:
            init = ["--init", str(d / "pretrain.pt")] if phase == "joint" else []
            ok("train", "--phase", phase, "--settings", settings(section, phase), "--run", run(seed=seed, encoder=encoder),
               "--data", str(d / "data.npz"), *init, "--threads", "1", "--device", "cpu",
               "--out", str(d / f"{phase}.pt"), "--metrics", str(d / f"{phase}.csv"))
            metrics = pd.read_csv(d / f"{phase}.csv")
            assert list(metrics.columns[:4]) == ["seed", "encoder", "phase", "step"]
            assert set(metrics.seed) == {seed} and set(metrics.encoder) == {encoder}
            assert list(metrics.step) == [0, 2, 4]
            files[phase].append(str(d / f"{phase}.csv"))
        fit = pd.read_csv(d / "ml_fit.csv")
        assert list(fit.columns[:2]) == ["seed", "log_likelihood"] and list(fit.seed) == [seed]
        files["ml"].append(str(d / "ml_fit.csv"))

    out = tmp_path / "table"
    ok("tabulate", "--run", run(encoder=encoder), "--pretrain", *files["pretrain"], "--joint", *files["joint"],
       "--ml", *files["ml"], "--published", PUBLISHED,
       "--per-seed", str(out / "per_seed.csv"), "--csv", str(out / "table.csv"), "--md", str(out / "table.md"),
       "--claims", str(out / "claims.csv"))
    per_seed = pd.read_csv(out / "per_seed.csv")
    assert list(per_seed.seed) == [1, 1, 1, 0, 0, 0]  # the order the files were given
    assert len(pd.read_csv(out / "claims.csv")) == 4

    # the records of another family are refused
    bad = cli("tabulate", "--run", run(encoder="consistent"), "--pretrain", *files["pretrain"],
              "--joint", *files["joint"], "--ml", *files["ml"], "--published", PUBLISHED,
              "--per-seed", str(out / "x.csv"), "--csv", str(out / "y.csv"), "--md", str(out / "y.md"),
              "--claims", str(out / "z.csv"))
    assert bad.returncode != 0 and "expected rows of encoder 'consistent'" in bad.stderr


@pytest.mark.parametrize("run_text, message", [
    (run(seed=0), "expected a JSON object with the keys ['encoder', 'seed']"),
    (run(seed=0, encoder="gaussian"), "encoder 'gaussian' is not one of ['factorized', 'consistent']"),
    (run(seed="0", encoder="factorized"), "seed must be an integer"),
])
def test_a_bad_run_identity_is_named(tmp_path, section, run_text, message):
    proc = cli("train", "--phase", "pretrain", "--settings", settings(section, "pretrain"), "--run", run_text,
               "--data", str(tmp_path / "data.npz"), "--threads", "1", "--device", "cpu",
               "--out", str(tmp_path / "m.pt"), "--metrics", str(tmp_path / "m.csv"))
    assert proc.returncode != 0 and message in proc.stderr


def test_settings_of_another_stage_are_refused(tmp_path, section):
    proc = cli("train", "--phase", "joint", "--settings", settings(section, "pretrain"),
               "--run", run(seed=0, encoder="factorized"), "--data", str(tmp_path / "data.npz"),
               "--threads", "1", "--device", "cpu", "--out", str(tmp_path / "m.pt"), "--metrics", str(tmp_path / "m.csv"))
    assert proc.returncode != 0 and "gmm joint --settings: missing ['joint'], unknown ['pretrain']" in proc.stderr
