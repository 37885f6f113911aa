"""benchmarks/gpu_check.py, the prepared GPU check, at tiny shapes on the CPU, so that it cannot rot
before a GPU runs it."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_every_section_at_tiny_shapes(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[gpu_check] semhash" in proc.stdout and "[gpu_check] faces" in proc.stdout  # progress as it goes
    rows = pd.read_csv(tmp_path / "gpu.csv")
    assert set(rows.section) == {"semhash", "faces", "estimate"}
    assert np.isfinite(rows.value).all() and (rows.value > 0).all()
    faces = rows[rows.section == "faces"]
    for what in ("GAN training", "encoder pretraining", "joint training", "evaluation sampling",
                 "Inception features (299x299)"):
        assert what in set(faces.what), what
    for what in ("encoder pretraining", "joint training"):  # ours against the reference formulation
        assert {"reference formulation", "ours fp32", "ours channels-last"} <= set(faces[faces.what == what].variant)
    semhash = rows[rows.section == "semhash"]
    assert {"ours", "ours, static", "reference formulation"} <= set(semhash.variant)
    # semhash.cuda_graphs' path without the capture gives the eager step's numbers exactly on the CPU
    gaps = semhash[semhash.variant == "ours, static"].note.str.extract(r"eager's\| over 4 epochs: (\S+) nats")[0]
    assert len(gaps) == 4 and (gaps.astype(float) == 0).all(), semhash.note.tolist()
    assert semhash.what.str.contains("4 processes sharing").any()
    estimate = rows[rows.section == "estimate"].set_index("what")
    stages = estimate.drop(index="total")
    assert estimate.loc["total", "value"] == sum(stages.value)
    assert "GPU check: CPU" in (tmp_path / "gpu.md").read_text()
