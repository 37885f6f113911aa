"""Every benchmark: our stage against the reference formulation, timed in the same run.

Each side runs as its own process (so neither inherits the other's allocator or thread
settings) and is timed as a whole, start-up included, alternating sides for each repeat.

    python benchmarks/run.py                 # all benchmarks at the paper's scale
    python benchmarks/run.py --scale 0.1     # a tenth of the steps, for a quick look
    python benchmarks/run.py --only gmm --repeats 3

Prints, per benchmark, both times and ours/reference speed-up; writes benchmarks/out/results.csv.
"""

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable


def paper_section(experiment: str) -> dict:
    """An experiment's config section at the paper preset: config.yaml updated by presets/paper.yaml,
    as Snakemake merges --configfile."""
    import yaml
    from snakemake.utils import update_config

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    update_config(config, yaml.safe_load((ROOT / "presets" / "paper.yaml").read_text()))
    return config[experiment]


def gmm(scale: float, workdir: Path):
    """GMM stage, factorized encoder, at the paper preset's settings (10,000 + 10,000 full-batch
    steps on 8,000 points), each phase's steps scaled."""
    from vae_approx.config import stage_json
    from vae_approx.gmm.settings import PHASES, STAGE_KEYS

    section = paper_section("gmm")
    for phase in PHASES:
        section[phase]["steps"] = max(1, round(section[phase]["steps"] * scale))
    steps, n = section["pretrain"]["steps"], section["n_per_component"]
    data, model = workdir / "data.npz", workdir / "pretrained.pt"

    def ours():
        run([PY, "-m", "vae_approx.gmm", "sample", "--settings", stage_json(section, STAGE_KEYS["sample"]),
             "--run", json.dumps({"seed": 0}), "--out", str(data)])
        common = ["--run", json.dumps({"encoder": "factorized", "seed": 0}), "--data", str(data),
                  "--threads", "2", "--device", "cpu"]
        run([PY, "-m", "vae_approx.gmm", "train", "--phase", "pretrain",
             "--settings", stage_json(section, STAGE_KEYS["pretrain"]), *common,
             "--out", str(model), "--metrics", str(workdir / "pre.csv")])
        run([PY, "-m", "vae_approx.gmm", "train", "--phase", "joint",
             "--settings", stage_json(section, STAGE_KEYS["joint"]), "--init", str(model), *common,
             "--out", str(workdir / "joint.pt"), "--metrics", str(workdir / "joint.csv")])

    def reference():
        # the reference formulation hand-types the variance (1) and the learning rates of the paper preset
        run([PY, str(HERE / "reference_gmm.py"), "--steps", str(steps), "--n-per-component", str(n)])

    return ours, reference, f"{steps} + {section['joint']['steps']} steps, {4 * n} points"


BENCHMARKS = {"gmm": gmm}


def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{proc.stderr}")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=sorted(BENCHMARKS))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the paper-scale work")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for name in args.only:
        with tempfile.TemporaryDirectory() as tmp:
            ours, reference, what = BENCHMARKS[name](args.scale, Path(tmp))
            t_ours, t_ref = [], []
            for _ in range(args.repeats):
                t_ref.append(timed(reference))
                t_ours.append(timed(ours))
        o, r = statistics.median(t_ours), statistics.median(t_ref)
        rows.append({"benchmark": name, "work": what, "ours_s": round(o, 2), "reference_s": round(r, 2),
                     "speedup": round(r / o, 2), "repeats": args.repeats})
        print(f"{name:10s} {what}: ours {o:.1f} s, reference {r:.1f} s, speed-up {r / o:.2f}x", flush=True)
    out = HERE / "out" / "results.csv"
    out.parent.mkdir(exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"written {out}")


if __name__ == "__main__":
    main()
