"""The contracts every stage keeps: atomic outputs, resume, non-finite losses, clear errors."""

import io
import os
import stat
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import config_section
from vae_approx.common import NonFiniteLossError, Progress, atomic_path, resume_path, save_torch
from vae_approx.config import stage_json
from vae_approx.gmm.data import sample_mixture
from vae_approx.gmm.model import TRUE_CENTRES, MixtureDecoder, make_encoder
from vae_approx.gmm.settings import STAGE_KEYS, TrainSettings
from vae_approx.gmm.train import train


def quiet():
    return Progress("test", 1, 10**9, stream=io.StringIO())


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a file")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_outputs_get_the_mode_the_umask_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        for name, write in [("a.csv", lambda p: pd.DataFrame({"x": [1]}).to_csv(p)),
                            ("b.pt", lambda p: torch.save({"x": 1}, p))]:
            with atomic_path(tmp_path / name) as tmp:
                write(tmp)
            plain = tmp_path / f"plain-{name}"
            plain.write_bytes(b"")  # what open() gives under this umask
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
        assert os.umask(umask) == umask  # atomic_path left the umask as it was
    finally:
        os.umask(previous)


class Interrupt(Exception):
    pass


def run(x, name, settings, resume, interrupt_at=None):
    torch.manual_seed(settings.seed)
    enc, dec = make_encoder(name, config_section("gmm")["hidden"]), MixtureDecoder(TRUE_CENTRES, 1.0)

    def on_step(step):
        if step == interrupt_at:
            raise Interrupt

    rows = train(x, enc, dec, torch.tensor(TRUE_CENTRES), 1.0, settings, resume, quiet(), on_step)
    return rows, enc, dec


@pytest.mark.parametrize("phase", ["pretrain", "joint"])
def test_an_interrupted_run_resumes_to_the_same_numbers(tmp_path, phase):
    x = torch.from_numpy(sample_mixture(100, 1.0, 0)[0])
    settings = TrainSettings(phase, 120, 1e-2, 10, 50, 0)
    full_rows, full_enc, full_dec = run(x, "factorized", settings, None)

    resume = resume_path(tmp_path / "model.pt")
    with pytest.raises(Interrupt):
        run(x, "factorized", settings, resume, interrupt_at=77)  # killed between checkpoints
    assert torch.load(resume, weights_only=False)["step"] == 50
    rows, enc, dec = run(x, "factorized", settings, resume)
    assert pd.DataFrame(rows).equals(pd.DataFrame(full_rows))
    for a, b in zip(enc.state_dict().values(), full_enc.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(dec.centres, full_dec.centres)


def test_a_checkpoint_of_another_config_is_ignored(tmp_path):
    x = torch.from_numpy(sample_mixture(50, 1.0, 0)[0])
    resume = resume_path(tmp_path / "model.pt")
    save_torch({"config": {"something": "else"}, "step": 10}, resume)
    rows, _, _ = run(x, "consistent", TrainSettings("pretrain", 20, 1e-2, 10, 10**9, 0), resume)
    assert [r["step"] for r in rows] == [0, 10, 20]


def test_a_non_finite_loss_names_the_stage_and_step():
    x = torch.from_numpy(sample_mixture(50, 1.0, 0)[0])
    x[3, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"gmm pretrain: non-finite .* at step"):
        run(x, "consistent", TrainSettings("pretrain", 20, 1e-2, 10, 10**9, 0), None)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "vae_approx.gmm", *args], capture_output=True, text=True)


def gmm_settings(stage, **changes):
    """A GMM stage's --settings: config.yaml's section with `changes`."""
    return stage_json({**config_section("gmm"), **changes}, STAGE_KEYS[stage])


def train_args(tmp_path, data):
    settings = gmm_settings("pretrain", pretrain={"steps": 5, "lr": 0.01}, eval_every=1, checkpoint_every=2)
    return ["train", "--phase", "pretrain", "--settings", settings, "--run", '{"encoder": "consistent", "seed": 0}',
            "--data", str(data), "--threads", "1", "--device", "cpu",
            "--out", str(tmp_path / "m.pt"), "--metrics", str(tmp_path / "m.csv")]


def test_cli_rejects_a_missing_or_corrupt_data_file(tmp_path):
    missing = cli(*train_args(tmp_path, tmp_path / "nope.npz"))
    assert missing.returncode != 0 and "file not found" in missing.stderr and "nope.npz" in missing.stderr
    corrupt = tmp_path / "bad.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a real archive")
    bad = cli(*train_args(tmp_path, corrupt))
    assert bad.returncode != 0 and "bad.npz" in bad.stderr and "not a valid data file" in bad.stderr
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "m.csv").exists()


def test_cli_stage_writes_outputs_and_removes_its_resume_file(tmp_path):
    data = tmp_path / "data.npz"
    settings = gmm_settings("sample", n_per_component=20, variance=1.0)
    assert cli("sample", "--settings", settings, "--run", '{"seed": 0}', "--out", str(data)).returncode == 0
    with np.load(data) as f:
        assert f["x"].shape == (80, 2)
    done = cli(*train_args(tmp_path, data))
    assert done.returncode == 0, done.stderr
    assert "step 5/5" in done.stderr  # progress reaches the log
    assert len(pd.read_csv(tmp_path / "m.csv")) == 6
    assert not resume_path(tmp_path / "m.pt").exists()
