"""The smoke preset through Snakemake, checked as a user sees it: every claim has its row and verdict, every
table is written and readable, every per-run file carries its run's identity, every job left its log and
benchmark, the report holds every figure and table, a second run does nothing and a changed key re-runs
exactly the jobs that depend on it. And the paper preset, shrunk by a config file layered after it, end to
end on a synthetic CelebA zip with Inception weights of random values placed by hand (wiring only: those
distances are not FID).

The numbers themselves (tables are the means of the per-run records, claims the decision rule applied to
them) are tested in each experiment's results tests, on hand-made records; here they are only read.
The workflow is copied into a temporary directory, so the tests never touch results/.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from html import unescape
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from vae_approx.config import EXPERIMENTS
from vae_approx.images import settings as S
from vae_approx.tables import CLAIM_COLUMNS, FAILS, HOLDS, INCONCLUSIVE

ROOT = Path(__file__).resolve().parents[1]
COPY = ["Snakefile", "config.yaml", "presets", "workflow", "envs", "reference", "src", "profiles"]
PNG = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.workflow


def snakemake(workdir, *args, check=True, configfiles=("presets/smoke.yaml",)):
    """Snakemake in `workdir` on config.yaml updated by `configfiles` in turn (one --configfile: a second
    one would replace the first's list)."""
    proc = subprocess.run(["snakemake", "--cores", "2", "--configfile", *configfiles, *args],
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


class Job(NamedTuple):
    rule: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    log: str
    benchmark: str
    wildcards: dict
    command: str


def jobs_of(output: str) -> list[Job]:
    """Every job of a dry run printed with -p: its rule, files, wildcards and shell command."""
    jobs = []
    for block in re.split(r"^\[[^\]\n]+\]\n", output, flags=re.M)[1:]:
        head = re.match(r"(?:local)?rule (\w+):", block)
        if head is None:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, flags=re.M))
        files = lambda key: tuple(fields[key].split(", ")) if key in fields else ()  # noqa: E731
        wildcards = dict(item.split("=", 1) for item in fields["wildcards"].split(", ")) if "wildcards" in fields else {}
        command = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        jobs.append(Job(head[1], files("input"), files("output"), fields.get("log", ""), fields.get("benchmark", ""),
                        wildcards, command[1] if command else ""))
    return jobs


def every_job(workdir, *configfiles) -> list[Job]:
    """Every job of the whole DAG (a forced dry run), except the target rule; the smoke preset's unless
    `configfiles` are given."""
    proc = snakemake(workdir, "-n", "-p", "--forceall", configfiles=configfiles or ("presets/smoke.yaml",))
    return [job for job in jobs_of(proc.stdout) if job.rule != "all"]


def copy_workflow(workdir: Path) -> Path:
    for name in COPY:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, workdir / name)
    return workdir


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    snakemake(workdir)
    return workdir


@pytest.fixture(scope="module")
def smoke_jobs(smoke):
    return every_job(smoke)


def results(workdir):
    return workdir / "results" / "smoke"


def merged_config(workdir, *presets):
    """config.yaml updated by each preset file in turn, as Snakemake merges --configfile."""
    from snakemake.utils import update_config

    config = yaml.safe_load((workdir / "config.yaml").read_text())
    for preset in presets:
        update_config(config, yaml.safe_load((workdir / preset).read_text()))
    return config


def read_claims(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"per_seed": str, "in_direction": str})


# ---------------------------------------------------------------- what a user reads


def test_every_claim_has_its_row_with_an_interval_and_a_verdict(smoke, smoke_jobs):
    out, config = results(smoke), merged_config(smoke, "presets/smoke.yaml")
    claims = read_claims(out / "claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS
    assert set(claims.verdict) <= {HOLDS, FAILS, INCONCLUSIVE}
    # the run's claims are every experiment's claims files, stacked in the experiments' order
    collect = next(job for job in smoke_jobs if job.rule == "collect_claims")
    stacked = pd.concat([read_claims(smoke / f) for f in collect.inputs], ignore_index=True)
    pd.testing.assert_frame_equal(claims, stacked)
    assert list(dict.fromkeys(claims.experiment)) == [e for e in EXPERIMENTS if e in config["experiments"]]
    for row in claims.itertuples():
        assert row.seeds == len(config[row.experiment]["seeds"]), row.claim
        assert row.low <= row.mean_change <= row.high, row.claim
        assert re.fullmatch(r"\d+/\d+", row.in_direction) and row.control, row.claim
    # every configured encoder, comparison and sigma variant has its claims, and the ablation its two
    assert {e for e in config["gmm"]["encoders"] if claims.setting.str.contains(e).any()} == set(config["gmm"]["encoders"])
    others = [e for e in config["semhash"]["encoders"] if e != "e1"]
    semhash = list(claims[claims.experiment == "semhash"].setting.str.split(", every").str[0])
    assert [s for s in semhash if s.startswith("encoders")] == [f"encoders e1 vs {e}" for e in others]
    gaps = {*(f"ELBO training gives up likelihood ({e})" for e in config["semhash"]["encoders"]),
            *(f"{what}, e1 vs {e}" for e in others for what in ("inference gap", "decoder likelihood"))}
    assert set(semhash) - {s for s in semhash if s.startswith("encoders")} == gaps
    faces = pd.read_csv(out / "images" / "claims.csv")
    assert len(faces) == 3 * len(config["images"]["sigma_variants"])
    assert len(pd.read_csv(out / "images" / "ablation_claims.csv")) == 2
    # the likelihood's (a) and (b) per measured protocol and sigma variant
    likelihood = pd.read_csv(out / "images" / "likelihood_claims.csv")
    assert len(likelihood) == 2 * len(config["images"]["likelihood"]["rows"]) * len(config["images"]["sigma_variants"])
    md = (out / "claims.md").read_text()
    assert all(claim in md for claim in claims.claim) and claims.name.str.len().gt(0).all() and claims.unit.str.len().gt(0).all()
    evidence = claims[~claims.by_construction]
    assert (f"Of {len(evidence)} claims that could fail: {(evidence.verdict == HOLDS).sum()} hold, "
            f"{(evidence.verdict == FAILS).sum()} fail") in md


def test_every_table_is_written_and_every_per_run_file_carries_its_run(smoke, smoke_jobs):
    out, config = results(smoke), merged_config(smoke, "presets/smoke.yaml")
    tables = [Path(f) for job in smoke_jobs if job.rule.startswith("tabulate") for f in job.outputs
              if not f.endswith(".png")]  # a table's figure: test_every_figure_is_an_image
    assert tables
    for path in tables:
        if path.suffix == ".csv":
            assert not pd.read_csv(smoke / path).empty, path
        elif path.suffix == ".html":  # what the report shows: the same table, as rows
            assert html_rows((smoke / path).read_text()) > 0, path
        else:
            text = (smoke / path).read_text()
            assert text.startswith("## ") and re.search(r"^\|.*\|$", text, flags=re.M), path
    # a run's identity travels as columns: every CSV a per-run job writes holds its wildcards in every row
    checked = 0
    for job in smoke_jobs:
        for path in (Path(f) for f in job.outputs if f.endswith(".csv") and "claims" not in Path(f).name):
            if not job.wildcards:
                continue
            frame = pd.read_csv(smoke / path, keep_default_na=False, dtype=str)
            for key, value in job.wildcards.items():
                assert key in frame.columns, (path, key)
                assert set(frame[key]) == {value}, (path, key, set(frame[key]))
            checked += 1
    assert checked >= len(config["gmm"]["seeds"]) * (1 + 2 * len(config["gmm"]["encoders"]))
    # the per-seed tables hold every configured seed
    for encoder in config["gmm"]["encoders"]:
        assert sorted(set(pd.read_csv(out / "gmm" / encoder / "table_per_seed.csv").seed)) == config["gmm"]["seeds"]
    assert sorted(set(pd.read_csv(out / "semhash" / "results.csv").seed)) == config["semhash"]["seeds"]
    assert sorted(set(pd.read_csv(out / "images" / "table_per_seed.csv").seed)) == config["images"]["seeds"]
    assert "not FID" in (out / "images" / "table.md").read_text()  # the digits distance is never called FID


def html_rows(page: str) -> int:
    """The body rows of the (one) table in a page of the report."""
    body = page[page.index("<tbody>"):page.index("</tbody>")]
    return body.count("<tr")


def test_every_markdown_table_is_narrow_with_its_notes_and_no_nan(smoke):
    """Rows of at most 160 characters (prose goes to numbered notes), a dash where there is no value."""
    pages = sorted(results(smoke).rglob("*.md"))
    assert len(pages) >= 10
    for page in pages:
        text = page.read_text()
        rows = [line for line in text.splitlines() if line.startswith("|")]
        assert rows and max(map(len, rows)) <= 160, (page, max(map(len, rows)))
        assert not re.search(r"\|\s*nan\s*\|", text, flags=re.I), page
        # its HTML beside it, for the report: the same rows
        assert html_rows(page.with_suffix(".html").read_text()) == len(rows) - 2, page


def test_every_job_left_its_outputs_log_and_benchmark(smoke, smoke_jobs):
    trained = 0
    for job in smoke_jobs:
        for path in job.outputs:
            assert (smoke / path).exists(), (job.rule, path)
        assert (smoke / job.log).is_file() and (smoke / job.benchmark).is_file(), job.rule
        if re.match(r"(pre)?train", job.rule):  # training logs show their progress as they go
            assert re.search(r"step \d+/\d+ .*elapsed", (smoke / job.log).read_text()), job.log
            trained += 1
    assert trained > 0


def test_every_figure_is_an_image(smoke, smoke_jobs):
    figures = [Path(f) for job in smoke_jobs for f in job.outputs if f.endswith(".png")]
    assert figures
    for path in figures:
        assert (smoke / path).read_bytes()[:8] == PNG, path
        with Image.open(smoke / path) as im:
            im.verify()
    out = results(smoke)
    with Image.open(out / "claims.png") as im:
        assert im.size[1] >= 60 * len(pd.read_csv(out / "claims.csv"))  # one panel per claim
    size = merged_config(smoke, "presets/smoke.yaml")["images"]["image_size"]
    for path in (p for p in figures if p.name == "comparison.png"):
        with Image.open(smoke / path) as im:
            # four rows (truth, two reconstructions, joint prior), each image at least 4x 32 pixels
            assert im.size[1] >= 4 * max(128, size) and im.size[0] >= 8 * max(128, size)


def test_the_stages_do_what_their_settings_say(smoke):
    out, config = results(smoke), merged_config(smoke, "presets/smoke.yaml")
    # GMM: each seed its own sample
    samples = [np.load(out / "gmm" / f"seed{k}" / "data.npz")["x"] for k in config["gmm"]["seeds"][:2]]
    assert not np.array_equal(*samples)
    # semantic hashing: the two-phase schedule, epoch by epoch
    sh = config["semhash"]
    histories = pd.concat([pd.read_csv(p) for p in sorted((out / "semhash").glob("seed*/*/*/*/history.csv"))])
    assert sorted(set(histories.seed)) == sh["seeds"] and sorted(set(histories.encoder)) == sorted(sh["encoders"])
    for _, history in histories.groupby(["seed", "encoder", "depth", "bits"]):
        assert list(history.pairs) == [1] * sh["epochs_one_pair"] + [sh["many_pairs"]] * sh["epochs_many_pairs"]
    # faces: the digits, one generator per GAN epoch, the one closest to the data chosen
    im = config["images"]
    digits = np.load(out / "images" / "data" / "digits.npy", mmap_mode="r")
    assert digits.shape == (1797, 1, im["image_size"], im["image_size"]) and digits.dtype == np.uint8
    assert sorted(p.name for p in (out / "images" / "gan" / "generators").glob("epoch_*.pt")) == [
        f"epoch_{e:03d}.pt" for e in range(1, im["gan"]["epochs"] + 1)]
    distances = pd.read_csv(out / "images" / "gan" / "distances.csv")
    chosen = distances.epoch[distances.fd_digits.idxmin()]
    assert distances.chosen.tolist() == [e == chosen for e in distances.epoch]
    assert torch.load(out / "images" / "gan" / "generator.pt", weights_only=False)["epoch"] == chosen
    curves = pd.concat([pd.read_csv(p) for p in sorted((out / "images").glob("seed*/*/pretrain_curve.csv"))])
    assert set(curves.step.groupby(curves.seed).max()) == {im["pretrain"]["iterations"]}


def report_variable(html: str, name: str):
    """One of the JSON objects the report embeds in a <script id=name> (results, categories, workflow_desc)."""
    found = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', html, flags=re.S)
    if found is None:  # workflow_desc sits in a script of its own without an id
        found = re.search(rf"var {name} = (.*?);\n", html)
    return json.loads(found.group(1))


def test_the_report_shows_every_table_as_rows_and_opens_on_the_claims(smoke, smoke_jobs):
    """The built report, opened as a browser does: every table a rendered page whose rows are those of its
    Markdown, every figure with its caption, one category per experiment with short labels for per-seed
    files, and the landing page (the workflow description) holding the claims table and figure."""
    report = results(smoke) / "report.html"
    snakemake(smoke, "--report", str(report.relative_to(smoke)))
    html = report.read_text(errors="replace")
    shown, categories = report_variable(html, "results"), report_variable(html, "categories")
    assert set(categories) == {"Claims", "Gaussian mixture", "Semantic hashing", "Faces"}
    tables = {path: entry for path, entry in shown.items() if entry["mime_type"] == "text/html"}
    written = [f for job in smoke_jobs for f in job.outputs if f.endswith(".html")]
    assert sorted(tables) == sorted(written) and len(tables) >= 10
    for path, entry in tables.items():
        page = base64.b64decode(entry["data_uri"].split("base64,", 1)[1]).decode()
        markdown_rows = [line for line in (smoke / path).with_suffix(".md").read_text().splitlines() if line.startswith("|")]
        assert html_rows(page) == len(markdown_rows) - 2 > 0, path
        assert entry["caption"].strip(), path
    figures = {Path(f).name for job in smoke_jobs for f in job.outputs if f.endswith(".png")}
    assert figures <= {entry["name"] for entry in shown.values()}
    for caption in sorted((ROOT / "workflow" / "report").glob("*.rst")):  # every caption is used
        if caption.name != "workflow.rst":  # the report escapes characters such as @ and >
            assert caption.read_text().strip()[:60] in unescape(html), caption.name
    # per-seed files are told apart by short labels, not by their paths
    for path, entry in shown.items():
        if "/seed" in path:
            assert entry["labels"] and entry["labels"].get("seed") is not None, path
    # the landing page: the claims, one row per claim, and their figure
    landing = report_variable(html, "workflow_desc")
    claims = pd.read_csv(results(smoke) / "claims.csv")
    assert html_rows(landing) == len(claims) and "data:image/png;base64," in landing
    assert 'class="provenance"' in landing and "<th>code</th>" in landing  # the run's provenance heads it


# ---------------------------------------------------------------- re-runs


def test_a_second_run_does_nothing(smoke):
    proc = snakemake(smoke, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def downstream(jobs: list[Job], changed: set[int]) -> set[int]:
    """`changed` (job indices) and every job that reads, directly or not, what they write."""
    producer = {f: i for i, job in enumerate(jobs) for f in job.outputs}
    readers: dict[int, set[int]] = {}
    for i, job in enumerate(jobs):
        for f in job.inputs:
            if f in producer:
                readers.setdefault(producer[f], set()).add(i)
    todo, seen = list(changed), set(changed)
    while todo:
        for reader in readers.get(todo.pop(), ()):
            if reader not in seen:
                seen.add(reader)
                todo.append(reader)
    return seen


# (change, rules it must not re-run); "a changed key re-runs what depends on it": the jobs whose command the
# change alters (a new seed: whose files are new), and every job downstream of them, and nothing else
RERUN_CASES = [
    ({"gmm": {"joint": {"lr": 0.002}}}, {"pretrain_gmm_encoder", "sample_gmm", "fit_gmm_ml"}),
    ({"gmm": {"seeds": [0, 1, 7]}}, {"train_semhash"}),
    ({"semhash": {"seeds": [1, 2, 5]}}, {"prepare_corpus", "train_gmm_joint"}),
    ({"semhash": {"precision_k": 50}}, {"train_semhash"}),
    ({"images": {"seeds": [0, 1, 4]}}, {"train_gan", "choose_generator"}),
    ({"images": {"joint": {"lr": 2.0e-4}}}, {"pretrain_images_encoder", "train_gan"}),
    ({"images": {"protocol": {"pixel_noise": "every"}}}, {"pretrain_images_encoder", "train_images_joint"}),
    ({"images": {"evaluate": {"grid_size": 8}}}, {"generate_samples", "compute_fd_digits"}),
    ({"images": {"evaluate": {"keep_samples": False}}}, set()),
    ({"images": {"likelihood": {"steps": [3, 6]}}}, {"train_images_joint", "generate_samples", "tabulate_images"}),
    ({"images": {"fd_tolerance": 0.5}}, {"generate_samples", "train_images_joint", "plot_images_grids"}),
]


def test_a_changed_key_reruns_exactly_what_depends_on_it(smoke, smoke_jobs):
    before = {job.outputs: job.command for job in smoke_jobs}
    changed = smoke / "changed.yaml"
    for change, untouched in RERUN_CASES:
        changed.write_text(yaml.safe_dump(change))
        jobs = every_job(smoke, "presets/smoke.yaml", str(changed))
        altered = {i for i, job in enumerate(jobs) if before.get(job.outputs) != job.command}
        expected = {jobs[i].outputs for i in downstream(jobs, altered)}
        proc = snakemake(smoke, "-n", "-p", configfiles=("presets/smoke.yaml", str(changed)))
        planned = [job for job in jobs_of(proc.stdout) if job.rule != "all"]
        assert {job.outputs for job in planned} == expected, change
        assert not {job.rule for job in planned} & untouched, change
        # the two jobs that record the whole config (the claims' provenance block, provenance.json) re-run on
        # any change; nothing else runs for a key that changes no command
        work = [job for job in planned if job.rule not in ("collect_claims", "record_provenance")]
        assert bool(work) == (change != {"images": {"evaluate": {"keep_samples": False}}}), change


def incomplete_outputs(workdir: Path) -> list[str]:
    """The outputs Snakemake has marked as being written (.snakemake/incomplete/, one file per output, named by
    the output's path in URL-safe base64, split into '@'-prefixed folders when long)."""
    root = workdir / ".snakemake" / "incomplete"
    found = []
    for path in (root.rglob("*") if root.is_dir() else []):
        if path.is_file() and path.name != "migration_underway":
            encoded = "".join(part.lstrip("@") for part in path.relative_to(root).parts)
            found.append(base64.urlsafe_b64decode(encoded).decode())
    return found


def test_a_killed_run_resumes_with_the_same_command(smoke, tmp_path):
    """kill -9 of a plain `snakemake --cores 1` while a training job runs, its output left as a writer that is
    not atomic (Snakemake's own logs, a user's rule) would leave it: after `--unlock`, the README's command, run
    again, re-runs that job and ends with the tables of an uninterrupted run; without the workflow profile it
    refuses."""
    workdir = copy_workflow(tmp_path)
    target = "results/smoke/gmm/factorized/table.csv"
    # the target first: after --configfile it would be read as a second config file
    command = ["snakemake", target, "--cores", "1", "--configfile", "presets/smoke.yaml"]
    run = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline = time.monotonic() + 300
    while not any(re.search(r"/(pretrained|joint)\.pt$", f) for f in incomplete_outputs(workdir)):
        assert run.poll() is None and time.monotonic() < deadline, "no training job started"
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    interrupted = incomplete_outputs(workdir)
    for output in interrupted:
        (workdir / output).parent.mkdir(parents=True, exist_ok=True)
        (workdir / output).touch()
    # a killed Snakemake leaves its lock (it cannot tell a dead process's lock from a live one's): the README's
    # one extra command after a hard kill
    unlock = subprocess.run([*command, "--unlock"], cwd=workdir, capture_output=True, text=True)
    assert unlock.returncode == 0, unlock.stdout + unlock.stderr
    refused = subprocess.run([*command, "--workflow-profile", "none"], cwd=workdir, capture_output=True, text=True)
    assert refused.returncode != 0 and "IncompleteFilesException" in refused.stdout + refused.stderr
    resumed = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not incomplete_outputs(workdir)
    assert (workdir / target).read_bytes() == (results(smoke) / "gmm" / "factorized" / "table.csv").read_bytes()


# ---------------------------------------------------------------- the paper preset, shrunk, on synthetic data

# Layered after presets/paper.yaml: the paper's data path (CelebA zip, Inception FID) at toy sizes.
# inception_unverified_ok: the random weights fail the SHA-256 check by design (tests only).
PAPER_SYNTHETIC = {
    "run": "paper-synthetic",
    "experiments": ["images"],
    "images": {
        "inception_unverified_ok": True,
        "celeba": {"expected_count": 40, "md5": ""},
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
        "likelihood": {"images": 2, "steps": [2, 3], "leapfrog": 1, "chains": 1, "iwae_samples": 4},
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

    workdir = copy_workflow(tmp_path_factory.mktemp("paper"))
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
    return {"workdir": workdir, "jobs": [j for j in jobs_of(dry.stdout) if j.rule != "all"], "placed": placed,
            "weights": weights, "zip": workdir / config["celeba"]["zip"]}


def test_the_paper_preset_runs_end_to_end_on_a_synthetic_celeba_zip(paper_synthetic):
    workdir, jobs = paper_synthetic["workdir"], paper_synthetic["jobs"]
    rules = {job.rule for job in jobs}
    # the zip and the weights placed by hand are used as is: no download; FID, not the digits distance
    assert not {r for r in rules if r.startswith("download")} and {"prepare_celeba", "compute_fid"} <= rules
    assert not rules & {"prepare_digits", "train_digits_classifier", "compute_fd_digits"}
    assert digest(paper_synthetic["zip"]) == paper_synthetic["placed"]["zip"]
    assert digest(paper_synthetic["weights"]) == paper_synthetic["placed"]["weights"]
    assert not (workdir / "elsewhere").exists()
    for job in jobs:
        assert all((workdir / f).exists() for f in job.outputs), job.rule
    out = workdir / "results" / "paper-synthetic"
    config = merged_config(workdir, "presets/paper.yaml", "synthetic.yaml")["images"]
    faces = np.load(out / "images" / "data" / "celeba.npy", mmap_mode="r")
    assert faces.shape == (40, 3, 64, 64) and faces.dtype == np.uint8
    distances = pd.read_csv(out / "images" / "gan" / "distances.csv")
    assert distances.epoch.tolist() == [2] and distances.chosen.tolist() == [True] and "fid" in distances
    generator = torch.load(out / "images" / "gan" / "generator.pt", weights_only=False)
    assert generator["epoch"] == 2 and generator["spec"]["image_size"] == 64 and generator["spec"]["channels"] == 3
    table = pd.read_csv(out / "images" / "table.csv")
    assert len(table) == 2 * len(config["sigma_variants"]) and (table.seeds == len(config["seeds"])).all()
    assert list(pd.read_csv(out / "images" / "ablation.csv").protocol) == config["ablation"]["rows"]
    likelihood = pd.read_csv(out / "images" / "likelihood.csv")
    assert list(dict.fromkeys(likelihood.protocol)) == config["likelihood"]["rows"]
    assert set(likelihood.steps) == {max(config["likelihood"]["steps"])} and (likelihood.seeds == 2).all()
    # Every FID job checks the hand-placed weights' SHA-256; the random ones pass only through the
    # opt-out, and every output says that their distances are not FID.
    fid_jobs = [job for job in jobs if '"features": "inception"' in job.command  # but the two that record the
                and job.rule not in ("collect_claims", "record_provenance")]  # whole config
    assert {job.rule for job in fid_jobs} == {"choose_generator", "compute_fid"}
    assert all('"inception_sha256": "", "inception_unverified_ok": true' in job.command for job in fid_jobs)
    assert distances.inception_unverified.tolist() == [True]
    for job in (j for j in jobs if j.rule == "compute_fid"):
        metrics = pd.read_csv(workdir / job.outputs[0])
        assert metrics.value[metrics.metric == "inception_unverified"].tolist() == [1]
        text = (workdir / job.log).read_text()
        assert "UNVERIFIED" in text and "NOT FID" in text, job.log
    md = (out / "images" / "table.md").read_text()
    assert "UNVERIFIED" in md and "NOT FID" in md and "FID (Inception features)" not in md
    assert all("not FID" in claim for claim in pd.read_csv(out / "images" / "claims.csv").claim[1:])
    assert "UNVERIFIED" in (out / "logs" / "images" / "gan" / "generator.log").read_text()


def test_the_paper_preset_plans_the_download_and_the_whole_grid(smoke):
    jobs = every_job(smoke, "presets/paper.yaml")
    count = lambda rule: sum(job.rule == rule for job in jobs)  # noqa: E731
    paper = merged_config(smoke, "presets/paper.yaml")
    gmm, sh, im = paper["gmm"], paper["semhash"], paper["images"]
    assert count("download_20newsgroups") == count("prepare_corpus") == 1 and not count("synthesize_corpus")
    grid = len(sh["seeds"]) * len(sh["encoders"]) * len(sh["depths"]) * len(sh["bits"])
    assert count("train_semhash") == count("evaluate_retrieval") == count("evaluate_semhash_exact") == grid
    controls = len(sh["seeds"]) * len(sh["depths"]) * sum(b <= sh["exact"]["ml_max_bits"] for b in sh["bits"])
    assert count("train_semhash_ml") == count("evaluate_semhash_ml_exact") == controls > 0
    assert count("pretrain_gmm_encoder") == count("train_gmm_joint") == len(gmm["seeds"]) * len(gmm["encoders"])
    for rule in ("download_celeba", "prepare_celeba", "download_inception", "train_gan", "choose_generator",
                 "tabulate_images", "tabulate_images_ablation", "tabulate_images_likelihood"):
        assert count(rule) == 1, rule
    assert not {job.rule for job in jobs} & {"prepare_digits", "train_digits_classifier", "compute_fd_digits"}
    # each seed trains once per distinct training protocol and samples once per distinct run: the main protocol
    # with every sigma variant, each ablation row's with the fixed sigma
    training = [name for name, factor in S.FACTORS.items() if factor.stage == "training"]
    protocols = [(S.configured_protocol(im), sigma) for sigma in im["sigma_variants"]]
    protocols += [(S.ablation_protocol(row), "fixed") for row in im["ablation"]["rows"]]
    runs = {(tuple(sorted(p.items())), sigma) for p, sigma in protocols}
    joints = {(tuple(p[f] for f in training), sigma) for p, sigma in protocols}
    assert count("generate_samples") == count("compute_fid") == len(im["seeds"]) * len(runs)
    assert count("train_images_joint") == len(im["seeds"]) * len(joints)
    assert count("pretrain_images_encoder") == len(im["seeds"]) * len({t for t, _ in joints})
    assert count("plot_images_grids") == len(im["seeds"]) * len(im["sigma_variants"])
    measured = {tuple(S.ablation_protocol(row)[f] for f in training) for row in im["likelihood"]["rows"]}
    assert count("evaluate_images_likelihood") == len(im["seeds"]) * len(measured) * len(im["sigma_variants"]) > 0


# ---------------------------------------------------------------- the workflow's own files


def workflow_rules() -> set[str]:
    """The names of the workflow's rules, read from its files."""
    rules = set(re.findall(r"^rule (\w+):", (ROOT / "Snakefile").read_text(), re.M))
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        rules |= set(re.findall(r"^rule (\w+):", text, re.M)) | set(re.findall(r"^use rule \w+ as (\w+)", text, re.M))
    return rules


def test_downloads_run_where_snakemake_runs():
    """On a cluster the download rules stay on the login node (localrules): compute nodes often have no internet."""
    block = re.search(r"^localrules:\n((?:    \w+,?\n)+)", (ROOT / "Snakefile").read_text(), re.M)
    downloads = {rule for rule in workflow_rules() if rule.startswith("download_")}
    assert block and set(re.findall(r"\w+", block[1])) == downloads and len(downloads) == 3


def test_every_rule_a_message_or_document_names_exists():
    """'rule download_inception' in an error message, a docstring or a page names a rule the workflow has."""
    rules = workflow_rules()
    places = [*ROOT.glob("src/**/*.py"), *ROOT.glob("workflow/**/*.smk"), *ROOT.glob("benchmarks/*.py"),
              *ROOT.glob("docs/*.md"), ROOT / "README.md", *ROOT.glob("profiles/*/config.yaml"), *ROOT.glob("presets/*.yaml")]
    named = {(m.group(1), str(path.relative_to(ROOT))) for path in places
             for m in re.finditer(r"\brules? `?([a-z0-9]+_[a-z0-9_]+)`?", path.read_text())}
    assert len(rules) > 30 and len(named) > 10
    assert not [(rule, where) for rule, where in named if rule not in rules]


def test_no_file_outside_the_repository_is_cited():
    places = [*ROOT.glob("src/**/*.py"), *ROOT.glob("workflow/**/*"), *ROOT.glob("presets/*.yaml"), ROOT / "config.yaml",
              *ROOT.glob("docs/*.md"), ROOT / "README.md", *ROOT.glob("profiles/*/config.yaml")]
    assert not [str(p) for p in places if p.is_file() and "../shared" in p.read_text()]


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


# ---------------------------------------------------------------- provenance, and two runs compared


def test_provenance_is_recorded_and_compare_lists_what_one_setting_moved(smoke, smoke_jobs, tmp_path):
    """provenance.json holds every field and config.yaml the effective config. The smoke run copied and re-run
    with semhash.precision_k changed: `python -m vae_approx compare` lists that setting, the precision values it
    moved and nothing else; the run compared with itself lists nothing."""
    import json

    from vae_approx import compare, provenance

    out, config = results(smoke), merged_config(smoke, "presets/smoke.yaml")
    prov = json.loads((out / "provenance.json").read_text())
    assert list(prov) == list(provenance.SECTIONS)
    assert all(list(prov[section]) == list(provenance.FIELDS[section]) for section in prov)
    assert prov["code"]["commit"] == provenance.NOT_GIT  # a copy of the workflow (a checkout: tests/test_provenance.py)
    assert prov["config"]["preset"] == ["config.yaml", "presets/smoke.yaml"]
    assert yaml.safe_load((out / "config.yaml").read_text()) == config
    assert prov["config"]["hash"] == provenance.config_hash(config)
    trained = [job for job in smoke_jobs if re.match(r"(pre)?train", job.rule)]
    assert prov["executor"] == {"kind": "local", "training_jobs": len(trained), "devices": ["cpu"],
                                "threads": prov["executor"]["threads"], "hosts": prov["executor"]["hosts"]}
    assert prov["times"]["jobs"] == len(smoke_jobs) - 1 and prov["times"]["core_seconds"] > 0  # all but its own
    # the copy, re-run with one setting changed
    start = time.monotonic()
    changed = tmp_path / "changed"
    shutil.copytree(smoke, changed, symlinks=True)
    (changed / "precision.yaml").write_text(yaml.safe_dump({"semhash": {"precision_k": 50}}))
    snakemake(changed, configfiles=("presets/smoke.yaml", "precision.yaml"))
    c = compare.compare_runs(compare.load_run(out), compare.load_run(results(changed)))
    assert c.settings == [("semhash.precision_k", 100, 50)]
    assert [key for key, _, _, differs in c.provenance if differs] == ["config.preset", "config.hash"]
    assert not c.claims and not c.files  # no claim reads precision@k
    moved = {(name, column) for name, _, column, _, _ in c.values}
    precision = {("semhash/results.csv", "precision"),
                 *(("semhash/precision.csv", f"{bits} bits{std}") for bits in config["semhash"]["bits"]
                   for std in ("", " std"))}
    assert ("semhash/results.csv", "precision") in moved and moved <= precision, moved
    proc = subprocess.run(["python", "-m", "vae_approx", "compare", str(out), str(results(changed))],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "| semhash.precision_k | 100 | 50 |" in proc.stdout and "## Claims" not in proc.stdout
    itself = subprocess.run(["python", "-m", "vae_approx", "compare", str(out), str(out)],
                            capture_output=True, text=True)
    assert itself.returncode == 0 and "No differences" in itself.stdout, itself.stderr
    assert "## Settings" not in itself.stdout and "## Table values" not in itself.stdout
    print(f"copy, re-run and compare: {time.monotonic() - start:.0f} s")
