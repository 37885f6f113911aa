"""A run's provenance (vae_approx.provenance): every field, the commit of this checkout, the times summed from
the jobs' benchmark files, what a training job records of its environment, and the short block of claims.md."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vae_approx import provenance as P

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())


def git(*args) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


def has_every_field(prov: dict, with_times: bool = True) -> None:
    assert list(prov) == [s for s in P.SECTIONS if with_times or s != "times"]
    for section in prov:
        assert list(prov[section]) == list(P.FIELDS[section]), section


def test_collect_on_this_checkout_has_every_field_and_its_commit(tmp_path):
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                                     capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    prov = P.collect(CONFIG, ["config.yaml"], tmp_path, ROOT)
    has_every_field(prov)
    assert prov["code"]["commit"] == git("rev-parse", "HEAD").strip()
    # another process may edit the tree meanwhile: the flag matches git's answer right after
    assert prov["code"]["dirty"] == bool(git("status", "--porcelain").strip()) or prov["code"]["dirty"]
    assert prov["code"]["version"] == P.project_version(ROOT) != "unknown"
    assert prov["config"] == {"run": CONFIG["run"], "preset": ["config.yaml"], "hash": P.config_hash(CONFIG),
                              "file": "config.yaml"}
    software = prov["software"]
    assert software["python"].count(".") == 2 and software["torch"] == torch.__version__.split("+")[0]
    assert all(software[name] for name in ("numpy", "pandas", "snakemake"))
    assert prov["machine"]["cores"] == os.cpu_count() and prov["machine"]["cores_available"] >= 1
    assert prov["gpu"] == {"used": False, "name": None, "driver": None, "cuda": None, "jobs": 0}
    assert prov["times"]["jobs"] == 0 and prov["times"]["start"] is None  # no benchmark file yet
    json.dumps(prov)  # every value is JSON


def test_a_plain_copy_is_not_a_git_checkout(tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above it counts either
    prov = P.collect(CONFIG, "config.yaml", tmp_path / "run", copy, with_times=False)
    has_every_field(prov, with_times=False)
    assert prov["code"]["commit"] == P.NOT_GIT and prov["code"]["dirty"] is None
    assert prov["code"]["version"] == P.project_version(ROOT)
    assert P.NOT_GIT in P.markdown_block(prov)


def test_the_config_hash_is_of_the_content_not_the_order():
    same = {"b": {"y": [1, 2], "x": 0.5}, "a": "run"}
    assert P.config_hash(same) == P.config_hash({"a": "run", "b": {"x": 0.5, "y": [1, 2]}})
    assert P.config_hash(same) != P.config_hash({"a": "run", "b": {"x": 0.25, "y": [1, 2]}})
    assert P.config_hash(same).startswith("sha256:") and len(P.config_hash(same)) == 7 + 64


def benchmark(path: Path, rows: list[tuple], mtime: float) -> None:
    """A benchmark TSV in Snakemake's columns, one row per (s, cpu_time), written at `mtime`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"]
    lines += [f"{s}\t0:00:00\t1\t1\t1\t1\t0\t0\t50\t{cpu}" for s, cpu in rows]
    path.write_text("\n".join(lines) + "\n")
    os.utime(path, (mtime, mtime))


def environment_log(path: Path, env: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[x] starting\n[x] {P.ENVIRONMENT}{json.dumps(env)}\n[x] step 1/1 loss 1 elapsed 0.1s\n")


def test_times_are_summed_from_the_jobs_benchmark_files(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run, t0 = tmp_path / "run", 1_700_000_000.0
    benchmark(run / "benchmarks" / "a.tsv", [(99.0, 99.0), (10.0, 15.5)], t0 + 10)  # the last row counts
    benchmark(run / "benchmarks" / "gpu" / "seed0" / "model.tsv", [(100.0, 90.0)], t0 + 200)
    benchmark(run / "benchmarks" / "b.tsv", [(5.0, "NA")], t0 + 300)  # NA: Snakemake could not measure
    benchmark(run / "benchmarks" / P.OWN_BENCHMARK, [(1000.0, 1000.0)], t0 + 5000)  # the last run's own record
    cuda = {"device": "cuda:0", "threads": 4, "torch": "2.x", "hostname": "node7", "slurm_job_id": "123",
            "device_name": "NVIDIA H100", "cuda": "12.4", "driver": "550.54"}
    environment_log(run / "logs" / "gpu" / "seed0" / "model.log", cuda)
    environment_log(run / "logs" / "c.log", {**cuda, "device": "cpu", "threads": 1, "slurm_job_id": None})
    prov = P.collect(CONFIG, ["config.yaml"], run, tmp_path)
    times = prov["times"]
    assert times["jobs"] == 3 and times["job_seconds"] == 115.0 and times["core_seconds"] == 105.5
    assert times["gpu_seconds"] == 100.0  # the job whose log recorded a CUDA device
    assert times["start"] == P.stamp(t0 + 0) and times["end"] == P.stamp(t0 + 300) and times["wall_seconds"] == 300.0
    assert prov["gpu"] == {"used": True, "name": "NVIDIA H100", "driver": "550.54", "cuda": "12.4", "jobs": 1}
    assert prov["executor"] == {"kind": "slurm", "training_jobs": 2, "devices": ["cpu", "cuda:0"], "threads": [1, 4],
                                "hosts": ["node7"]}
    block = P.markdown_block(prov)
    assert "NVIDIA H100" in block and "100 GPU-s" in block and "wall 300 s" in block


def test_a_training_job_records_its_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    env = P.log_environment("gmm joint factorized", torch.device("cpu"))
    assert env == P.job_environment("cpu")
    assert env["device"] == "cpu" and env["threads"] == torch.get_num_threads() and env["torch"] == torch.__version__
    assert env["slurm_job_id"] is None and env["hostname"]
    line = capsys.readouterr().err
    assert line.startswith(f"[gmm joint factorized] {P.ENVIRONMENT}{{")
    (tmp_path / "logs" / "gmm").mkdir(parents=True)
    (tmp_path / "logs" / "gmm" / "joint.log").write_text("[gmm] 100 points\n" + line + "[gmm] step 1/1\n")
    assert P.job_environments(tmp_path) == {"gmm/joint": env}
    assert P.collect(CONFIG, [], tmp_path, tmp_path)["executor"]["kind"] == "local"


def test_a_job_on_cuda_records_the_gpu_its_cuda_and_driver(monkeypatch):
    """The CUDA branch without a GPU: the device's name and the driver stubbed, torch's CUDA version as built."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"NVIDIA H100 ({device})")
    monkeypatch.setattr(P, "nvidia_driver", lambda: "550.54.15")
    env = P.job_environment(torch.device("cuda:0"))
    assert env["device"] == "cuda:0" and env["device_name"] == "NVIDIA H100 (cuda:0)"
    assert env["cuda"] == torch.version.cuda and env["driver"] == "550.54.15"
    for line, version in (("NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 2023", "535.104.05"),
                          ("NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build", "550.54.15")):
        assert P.DRIVER.search(f"NVRM version: {line}")[1] == version


def test_a_training_stage_writes_its_environment_into_its_model_and_log(tmp_path):
    """The GMM's pretraining as its rule runs it (stderr is the job's log); every training stage calls the same
    log_environment."""
    from conftest import config_section
    from vae_approx.config import stage_json
    from vae_approx.gmm import settings as S

    section = {**config_section("gmm", "smoke.yaml"), "n_per_component": 20, "eval_every": 2}
    section["pretrain"] = {**section["pretrain"], "steps": 2}

    def stage(*args):
        proc = subprocess.run([sys.executable, "-m", "vae_approx.gmm", *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    stage("sample", "--settings", stage_json(section, S.STAGE_KEYS["sample"]), "--run", '{"seed": 0}',
          "--out", str(tmp_path / "data.npz"))
    log = stage("train", "--phase", "pretrain", "--settings", stage_json(section, S.STAGE_KEYS["pretrain"]),
                "--run", '{"encoder": "factorized", "seed": 0}', "--data", str(tmp_path / "data.npz"),
                "--threads", "1", "--device", "cpu", "--out", str(tmp_path / "m.pt"),
                "--metrics", str(tmp_path / "m.csv"))
    saved = torch.load(tmp_path / "m.pt", weights_only=True)["environment"]
    assert saved["device"] == "cpu" and saved["threads"] == 1 and saved["torch"] == torch.__version__
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "pretrained.log").write_text(log)
    assert P.job_environments(tmp_path) == {"pretrained": saved}


def test_the_short_block_fits_the_top_of_claims_md():
    prov = P.collect(CONFIG, ["config.yaml", "presets/smoke.yaml"], "/nonexistent", ROOT, with_times=False)
    block = P.markdown_block(prov)
    lines = block.splitlines()
    assert len(lines) <= 8 and all(len(line) <= P.MAX_LINE for line in lines)
    assert "provenance.json" in lines[-1] and "core-s," not in block  # no times: they are in provenance.json
    assert "config.yaml + presets/smoke.yaml" in block and prov["config"]["hash"][:19] in block
    # long values are cut, never wrapped
    prov["machine"]["cpu"] = "x" * 300
    assert all(len(line) <= P.MAX_LINE for line in P.markdown_block(prov).splitlines())
    prov["machine"]["cpu"] = "<b>A & B</b>"
    page = P.html_block(prov)
    assert page.startswith("<table") and "&lt;b&gt;A &amp; B&lt;/b&gt;" in page and "<b>" not in page


def test_the_command_writes_provenance_json_and_the_config(tmp_path):
    config = {**CONFIG, "run": "test"}
    run = tmp_path / "results" / "test"
    run.mkdir(parents=True)
    P.main(["--run-dir", str(run), "--settings", json.dumps(config), "--preset", "config.yaml", "x.yaml",
            "--json", str(run / "provenance.json"), "--config", str(run / "config.yaml")])
    prov = json.loads((run / "provenance.json").read_text())
    has_every_field(prov)
    assert prov["config"]["preset"] == ["config.yaml", "x.yaml"]
    assert yaml.safe_load((run / "config.yaml").read_text()) == config
    assert P.config_hash(yaml.safe_load((run / "config.yaml").read_text())) == prov["config"]["hash"]
    with pytest.raises(SystemExit, match="--settings: not JSON"):
        P.main(["--run-dir", str(run), "--settings", "{", "--json", "a", "--config", "b"])
