"""Two runs compared (vae_approx.compare), on small run folders made here: each kind of difference is found and
shown, the times and values within the tolerance are not, and a run compared with itself lists nothing."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from vae_approx import compare as C
from vae_approx.common import InputError

PROVENANCE = {
    "code": {"version": "0.1.0", "commit": "abc123", "dirty": False},
    "config": {"run": "r", "preset": ["config.yaml"], "hash": "sha256:1", "file": "config.yaml"},
    "software": {"python": "3.11.7", "torch": "2.5.0"},
    "times": {"start": "2025-01-01T10:00:00+00:00", "wall_seconds": 300.0, "core_seconds": 500.0},
}
CONFIG = {"run": "r", "semhash": {"precision_k": 100, "seeds": [1, 2]}, "gmm": {"joint": {"lr": 0.003}}}
CLAIMS = pd.DataFrame({
    "experiment": ["gmm", "gmm", "semhash"],
    "setting": ["factorized encoder", "consistent encoder", "encoders e1 vs e3"],
    "claim": ["joint training raises the ELBO", "joint training raises the ELBO", "e1 reaches a lower test NELBO"],
    "measured": ["+0.05 [+0.04, +0.06], 2/2 seeds", "+0.01 [-0.01, +0.03], 2/2 seeds", "-12 [-14, -10], 2/2 seeds"],
    "mean_change": [0.05, 0.01, -12.0], "low": [0.04, -0.01, -14.0], "high": [0.06, 0.03, -10.0],
    "tolerance": [0.0, 0.0, 0.0], "seeds": [2, 2, 2], "by_construction": [True, False, False],
    "verdict": ["holds", "inconclusive", "holds"],
})
PRECISION = pd.DataFrame({"encoder": ["e1", "e3"], "depth": [0, 0], "8 bits": [0.55, 0.33], "8 bits std": [0.01, 0.02]})
GMM_TABLE = pd.DataFrame({"encoder": ["factorized", "factorized"], "stage": ["pretrained", "joint"], "seeds": [2, 2],
                          "elbo": [-3.35, -3.30], "log_likelihood": [-3.29, -3.30]})


def make_run(folder, provenance=None, config=None, claims=None, tables=None):
    """A run folder as the workflow leaves it, with per-seed records, logs and claims files that are no tables."""
    folder.mkdir(parents=True)
    (folder / "provenance.json").write_text(json.dumps(provenance or PROVENANCE))
    (folder / "config.yaml").write_text(yaml.safe_dump(config or CONFIG))
    (claims if claims is not None else CLAIMS).to_csv(folder / "claims.csv", index=False)
    if tables is None:
        tables = {"semhash/precision.csv": PRECISION, "gmm/factorized/table.csv": GMM_TABLE}
    for name, frame in tables.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(folder / name, index=False)
    for ignored in ("semhash/seed1/e1/depth0/8bits/retrieval.csv", "logs/x.csv", "benchmarks/y.csv",
                    "gmm/factorized/claims.csv", "images/.gan.partial/losses.csv"):
        (folder / ignored).parent.mkdir(parents=True, exist_ok=True)
        (folder / ignored).write_text("a,b\n1,2\n")
    return folder


def compared(tmp_path, **b):
    a = C.load_run(make_run(tmp_path / "a"))
    return C.compare_runs(a, C.load_run(make_run(tmp_path / "b", **b)), rtol=1e-6)


def test_the_tables_of_a_run_are_its_csv_files_outside_records_and_claims(tmp_path):
    run = make_run(tmp_path / "run")
    assert C.table_files(run) == ["gmm/factorized/table.csv", "semhash/precision.csv"]


def test_a_run_compared_with_itself_lists_nothing(tmp_path):
    run = C.load_run(make_run(tmp_path / "a"))
    c = C.compare_runs(run, run)
    assert c.identical() and not (c.settings or c.claims or c.values or c.files)
    text = C.markdown(c)
    assert "No differences" in text and "## Provenance" in text
    for section in ("## Settings", "## Claims", "## Table values", "**differs**"):
        assert section not in text
    assert "| times.wall_seconds | 300 | 300 | not compared |" in text


def test_times_are_shown_but_never_a_difference(tmp_path):
    later = {**PROVENANCE, "times": {"start": "2025-02-01T10:00:00+00:00", "wall_seconds": 999.0,
                                     "core_seconds": 1.0}}
    c = compared(tmp_path, provenance=later)
    assert c.identical()
    assert ("times.wall_seconds", 300.0, 999.0, None) in c.provenance


def test_a_changed_setting_and_what_it_moved_are_listed_and_nothing_else(tmp_path):
    config = {**CONFIG, "semhash": {**CONFIG["semhash"], "precision_k": 50}}
    provenance = {**PROVENANCE, "config": {**PROVENANCE["config"], "hash": "sha256:2"}}
    precision = PRECISION.assign(**{"8 bits": [0.60, 0.33 * (1 + 1e-9)]})  # e3: within the tolerance
    c = compared(tmp_path, config=config, provenance=provenance,
                 tables={"semhash/precision.csv": precision, "gmm/factorized/table.csv": GMM_TABLE})
    assert c.settings == [("semhash.precision_k", 100, 50)]
    assert [(k, d) for k, _, _, d in c.provenance if d] == [("config.hash", True)]
    assert c.values == [("semhash/precision.csv", "encoder e1, depth 0", "8 bits", 0.55, 0.60)]
    assert not c.claims and not c.files
    text = C.markdown(c)
    assert "| semhash.precision_k | 100 | 50 |" in text
    assert "| semhash/precision.csv | encoder e1, depth 0 | 8 bits | 0.55 | 0.6 | +9.09% |" in text
    assert "| config.hash | sha256:1 | sha256:2 | **differs** |" in text
    assert text.count("\n## ") == 3  # provenance, settings, table values
    assert ("Differences (relative tolerance 1e-06): provenance fields: 1; settings: 1; claims: 0; table values: 1; "
            "files in one run only: 0.") in text


def test_claims_that_moved_are_listed_with_changed_verdicts_marked(tmp_path):
    claims = CLAIMS.copy()
    claims.loc[1, ["measured", "mean_change", "low", "high", "verdict"]] = ["+0.02 [+0.01, +0.03], 2/2 seeds", 0.02,
                                                                            0.01, 0.03, "holds"]
    claims.loc[2, "mean_change"] = -12.0 * (1 + 1e-9)  # within the tolerance: not listed
    extra = pd.DataFrame([{**CLAIMS.iloc[0].to_dict(), "setting": "new setting"}])
    c = compared(tmp_path, claims=pd.concat([claims, extra], ignore_index=True))
    assert [(r["setting"], r["verdict A"], r["verdict B"], r["change"]) for r in c.claims] == [
        ("consistent encoder", "inconclusive", "holds", "**verdict changed**"),
        ("new setting", None, "holds", "only in B")]
    text = C.markdown(c)
    assert ("| gmm | consistent encoder | joint training raises the ELBO | +0.01 [-0.01, +0.03], 2/2 seeds | "
            "+0.02 [+0.01, +0.03], 2/2 seeds | inconclusive | holds | **verdict changed** |") in text
    # a claim whose numbers moved but whose verdict did not is listed, unmarked
    claims = CLAIMS.copy()
    claims.loc[0, "mean_change"] = 0.051
    assert [(r["setting"], r["change"]) for r in compared(tmp_path / "2", claims=claims).claims] == [
        ("factorized encoder", "")]


def test_rows_columns_and_files_one_run_lacks_are_listed(tmp_path):
    table = pd.concat([GMM_TABLE, pd.DataFrame([{"encoder": "factorized", "stage": "ml fit", "seeds": 2,
                                                 "elbo": float("nan"), "log_likelihood": -3.28}])])
    c = compared(tmp_path, tables={"gmm/factorized/table.csv": table.assign(kl=1.0),
                                   "images/table.csv": GMM_TABLE})
    assert ("gmm/factorized/table.csv", "every row", "kl", "absent", "present") in c.values
    assert ("gmm/factorized/table.csv", "encoder factorized, stage ml fit, seeds 2", "the whole row", "absent",
            "present") in c.values
    assert c.files == [("images/table.csv", "B"), ("semhash/precision.csv", "A")]
    text = C.markdown(c)
    assert "- `images/table.csv`: only in B" in text and "- `semhash/precision.csv`: only in A" in text


def test_cells_differ_beyond_the_relative_tolerance_only():
    assert not C.differ(1.0, 1.0 + 1e-9, 1e-6) and C.differ(1.0, 1.001, 1e-6) and not C.differ(1.0, 1.001, 1e-2)
    assert not C.differ(0.0, 0.0, 0) and not C.differ(float("nan"), None, 1e-6)
    assert C.differ(float("nan"), 1.0, 1e-6) and C.differ("holds", "fails", 1e-6) and not C.differ("a", "a", 0)


def test_a_folder_that_is_not_a_run_is_named_in_the_error(tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path / 'nowhere'}: no such folder"):
        C.load_run(tmp_path / "nowhere")
    half = make_run(tmp_path / "half")
    (half / "provenance.json").unlink()
    with pytest.raises(InputError, match=rf"{half}: not a run folder \(no provenance.json\)"):
        C.load_run(half)
    proc = subprocess.run([sys.executable, "-m", "vae_approx", "compare", str(half), str(half)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: {half}: not a run folder (no provenance.json); give results/<run> after the workflow has run to "
        "its end")


def test_the_command_writes_the_markdown(tmp_path):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", config={**CONFIG, "run": "other"})
    proc = subprocess.run([sys.executable, "-m", "vae_approx", "compare", str(a), str(b), "--rtol", "1e-3",
                           "--out", str(tmp_path / "diff.md")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "diff.md").read_text()
    assert text.startswith(f"# Runs compared: A = `{a}`, B = `{b}`") and "| run | r | other |" in text
    assert "relative tolerance 0.001" in text
