"""The provenance of a run: the code, config, software and machine that made its results, and what they cost.

    python -m vae_approx.provenance --run-dir results/<run> --settings '<the whole config as JSON>'
                                    --preset config.yaml presets/smoke.yaml --json provenance.json --config config.yaml

Rule record_provenance runs it after every other job of the run and writes `provenance.json` (the sections of
SECTIONS, each with the keys of FIELDS) and `config.yaml` (the effective config, whose hash it records).
Nothing here reaches the network, and nothing fails for want of git, a GPU or a benchmark file: a missing
value is written as such ("not a git checkout", null).

The GPU, the executor and the training hosts come from what each training job recorded of its own environment
(job_environment, one `environment: {...}` line in its log and the same dict in its checkpoint), so this job
needs no GPU. The times are summed from the jobs' `benchmark:` files (Snakemake's s and cpu_time columns).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import importlib.metadata
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

SECTIONS = ("code", "config", "software", "machine", "gpu", "executor", "times")
FIELDS = {
    "code": ("version", "commit", "dirty"),
    "config": ("run", "preset", "hash", "file"),
    "software": ("python", "torch", "torchvision", "numpy", "scipy", "pandas", "scikit-learn", "snakemake",
                 "pytorch-fid", "blas", "numpy_blas"),
    "machine": ("os", "cpu", "cores", "cores_available", "memory_gib"),
    "gpu": ("used", "name", "driver", "cuda", "jobs"),
    "executor": ("kind", "training_jobs", "devices", "threads", "hosts"),
    "times": ("start", "end", "wall_seconds", "job_seconds", "core_seconds", "gpu_seconds", "jobs"),
}
PACKAGES = ("torch", "torchvision", "numpy", "scipy", "pandas", "scikit-learn", "snakemake", "pytorch-fid")
NOT_GIT = "not a git checkout"
ENVIRONMENT = "environment: "  # the mark of a training job's environment line in its log
OWN_BENCHMARK = "provenance.tsv"  # this job's own record: left out of the sums (on a re-run, the last run's)
WORKFLOW_DIR = Path(__file__).resolve().parents[2]  # the checkout whose src/ the jobs run (PYTHONPATH)
MAX_LINE = 160  # characters per line of the Markdown block
# /proc/driver/nvidia/version: "NVRM version: NVIDIA UNIX [Open ]Kernel Module [for x86_64]  550.54.15  ..."
DRIVER = re.compile(r"Kernel Module(?: for \S+)?\s+(\d[\d.]+)")


# ---------------------------------------------------------------- what each training job records


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version, from the kernel module's file, else nvidia-smi; None when neither answers."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        found = DRIVER.search(text)
        if found:
            return found[1]
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.split("\n")[0].strip() or None) if out.returncode == 0 else None


def job_environment(device) -> dict:
    """Where a training job runs: its device (with the GPU's name, CUDA and driver versions on CUDA), torch's
    thread count, the torch version, the host and the SLURM job id (None outside SLURM)."""
    import torch

    device = torch.device(device)
    env = {"device": str(device), "threads": torch.get_num_threads(), "torch": str(torch.__version__),
           "hostname": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
    if device.type == "cuda":
        env.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda, driver=nvidia_driver())
    return env


def log_environment(stage: str, device) -> dict:
    """job_environment(device), written as one `[stage] environment: {...}` line to stderr (the job's log,
    which collect reads back); returned for the job's checkpoint."""
    env = job_environment(device)
    print(f"[{stage}] {ENVIRONMENT}{json.dumps(env, sort_keys=True)}", file=sys.stderr, flush=True)
    return env


def job_environments(run_dir) -> dict[str, dict]:
    """{log path relative to logs/, without .log: the environment its job recorded} for every job that did."""
    logs, found = Path(run_dir) / "logs", {}
    for log in sorted(logs.rglob("*.log")) if logs.is_dir() else []:
        for line in log.read_text(errors="replace").splitlines():
            at = line.find(ENVIRONMENT)
            if at >= 0:
                try:
                    found[str(log.relative_to(logs).with_suffix(""))] = json.loads(line[at + len(ENVIRONMENT):])
                except json.JSONDecodeError:
                    pass  # a line cut short by a kill: that job left no usable record
    return found


# ---------------------------------------------------------------- the sections


def git_state(workflow_dir) -> tuple[str, bool | None]:
    """(commit, dirty) of the checkout holding workflow_dir; (NOT_GIT, None) without git or a repository."""
    def git(*args):
        return subprocess.run(["git", "-C", str(workflow_dir), *args], capture_output=True, text=True, timeout=60)

    try:
        head, status = git("rev-parse", "HEAD"), git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return NOT_GIT, None
    if head.returncode != 0 or status.returncode != 0:
        return NOT_GIT, None
    return head.stdout.strip(), bool(status.stdout.strip())


def project_version(workflow_dir) -> str:
    """The version in the checkout's pyproject.toml (the code the jobs ran), else the installed package's."""
    import tomllib

    try:
        return tomllib.loads((Path(workflow_dir) / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    try:
        return importlib.metadata.version("vae_approx")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def config_hash(config: dict) -> str:
    """sha256 of the config's canonical JSON (sorted keys, no spaces): equal configs, equal hashes."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_blas() -> str | None:
    """The BLAS torch was built with (its build settings' BLAS_INFO), with MKL's version where it is MKL."""
    try:
        import torch

        shown = torch.__config__.show()
    except Exception:  # no torch, or a build that cannot describe itself
        return None
    blas = re.search(r"BLAS_INFO=(\w+)", shown)
    mkl = re.search(r"Math Kernel Library Version (\S+?)-", shown)
    name = blas[1] if blas else ("mkl" if torch.backends.mkl.is_available() else None)
    return f"{name} {mkl[1]}" if name == "mkl" and mkl else name


def numpy_blas() -> str | None:
    try:
        import numpy

        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except Exception:  # numpy < 1.25 has no mode="dicts"; the field is informative only
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def memory_gib() -> float | None:
    try:
        found = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), flags=re.M)
        return round(int(found[1]) / 2**20, 1) if found else None
    except OSError:
        return None


def machine() -> dict:
    """The machine this job runs on (on a cluster: a node; the training jobs' hosts are in `executor`)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"os": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count(), "cores_available": available,
            "memory_gib": memory_gib()}


def gpu(environments: dict[str, dict]) -> dict:
    """The GPUs the training jobs used, from their records: distinct values joined by '; '."""
    cuda = [env for env in environments.values() if str(env.get("device", "")).startswith("cuda")]

    def distinct(key):
        return "; ".join(sorted({str(env.get(key)) for env in cuda})) or None

    return {"used": bool(cuda), "name": distinct("device_name"), "driver": distinct("driver"),
            "cuda": distinct("cuda"), "jobs": len(cuda)}


def executor(environments: dict[str, dict]) -> dict:
    """SLURM when a training job (or this one) ran under a SLURM job id, else local; the training jobs' devices,
    thread counts and hosts."""
    slurm = os.environ.get("SLURM_JOB_ID") or any(env.get("slurm_job_id") for env in environments.values())

    def values(key):
        return sorted({env[key] for env in environments.values() if env.get(key) is not None})

    return {"kind": "slurm" if slurm else "local", "training_jobs": len(environments), "devices": values("device"),
            "threads": values("threads"), "hosts": values("hostname")}


def last_row(path: Path) -> dict:
    """The last row of a benchmark TSV (Snakemake writes one per repeat); {} when it has none."""
    try:
        rows = list(csv.DictReader(path.read_text().splitlines(), delimiter="\t"))
    except OSError:
        return {}
    return rows[-1] if rows else {}


def number(text) -> float:
    """A benchmark value as a float; 0 for the NA Snakemake writes when it could not measure."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def times(run_dir, environments: dict[str, dict]) -> dict:
    """From every job's benchmark file: the start (the earliest file's mtime less its job's s), the end (the
    latest mtime), the wall time between them, and the sums of s (job_seconds), cpu_time (core_seconds) and,
    over the jobs that recorded a CUDA device, s (gpu_seconds). The results present are counted, however many
    Snakemake invocations made them."""
    root = Path(run_dir) / "benchmarks"
    files = [p for p in sorted(root.rglob("*.tsv")) if p.relative_to(root) != Path(OWN_BENCHMARK)] \
        if root.is_dir() else []
    cuda = {key for key, env in environments.items() if str(env.get("device", "")).startswith("cuda")}
    starts, ends, job, core, gpu_s = [], [], 0.0, 0.0, 0.0
    for path in files:
        row, mtime = last_row(path), path.stat().st_mtime
        seconds = number(row.get("s"))
        starts.append(mtime - seconds)
        ends.append(mtime)
        job += seconds
        core += number(row.get("cpu_time"))
        if str(path.relative_to(root).with_suffix("")) in cuda:  # logs/ and benchmarks/ mirror each other
            gpu_s += seconds
    if not files:
        return {"start": None, "end": None, "wall_seconds": None, "job_seconds": 0.0, "core_seconds": 0.0,
                "gpu_seconds": 0.0, "jobs": 0}
    return {"start": stamp(min(starts)), "end": stamp(max(ends)), "wall_seconds": round(max(ends) - min(starts), 1),
            "job_seconds": round(job, 1), "core_seconds": round(core, 1), "gpu_seconds": round(gpu_s, 1),
            "jobs": len(files)}


def collect(config: dict, preset, run_dir, workflow_dir=WORKFLOW_DIR, with_times: bool = True) -> dict:
    """The provenance of the run in `run_dir` made with `config` (the effective config) from the config files
    `preset` (a path or a list, as given), by the checkout in `workflow_dir`: {section: {field: value}} in the
    order of SECTIONS and FIELDS. Without `with_times` there is no `times` section (a job that runs before the
    last one: the times are in provenance.json)."""
    commit, dirty = git_state(workflow_dir)
    environments = job_environments(run_dir)
    presets = [preset] if isinstance(preset, (str, os.PathLike)) else list(preset or [])
    prov = {
        "code": {"version": project_version(workflow_dir), "commit": commit, "dirty": dirty},
        "config": {"run": config.get("run"), "preset": [str(p) for p in presets], "hash": config_hash(config),
                   "file": "config.yaml"},
        "software": {"python": platform.python_version(), **{name: package_version(name) for name in PACKAGES},
                     "blas": torch_blas(), "numpy_blas": numpy_blas()},
        "machine": machine(),
        "gpu": gpu(environments),
        "executor": executor(environments),
    }
    if with_times:
        prov["times"] = times(run_dir, environments)
    return prov


# ---------------------------------------------------------------- the short block of claims.md and the report


def short(value, length: int = 12) -> str:
    return str(value)[:length]


def summary(prov: dict) -> list[tuple[str, str]]:
    """(label, text) per line of the short block, in words."""
    code, cfg, sw, mc, g, ex = (prov[s] for s in SECTIONS[:6])
    if code["commit"] == NOT_GIT:
        commit = NOT_GIT
    else:
        commit = f"commit {short(code['commit'])}" + (" (uncommitted changes)" if code["dirty"] else "")
    packages = ", ".join(f"{name} {sw[name]}" for name in PACKAGES if sw.get(name))
    used = f"{g['name']}, driver {g['driver']}, CUDA {g['cuda']}" if g["used"] else "none used"
    training = (f"{ex['training_jobs']} training jobs on {', '.join(ex['devices'])}, "
                f"threads {', '.join(map(str, ex['threads']))}, host(s) {', '.join(ex['hosts'])}"
                if ex["training_jobs"] else "no training job recorded its environment")
    lines = [
        ("code", f"vae_approx {code['version']}, {commit}"),
        ("config", f"run {cfg['run']}, from {' + '.join(cfg['preset']) or 'the defaults'}, {short(cfg['hash'], 19)}... "
                   "(merged: config.yaml)"),
        ("software", f"Python {sw['python']}, {packages}"),
        ("machine", f"{mc['os']}, {mc['cpu']}, {mc['cores']} cores ({mc['cores_available']} available), "
                    f"{mc['memory_gib'] or '?'} GiB"),
        ("compute", f"BLAS {sw['blas']} (torch), {sw['numpy_blas']} (numpy); GPU: {used}"),
        ("executor", f"{ex['kind']}; {training}"),
    ]
    t = prov.get("times")
    if t and t["start"]:
        lines.append(("times", f"{t['start']} to {t['end']}, wall {t['wall_seconds']:.0f} s, {t['jobs']} jobs, "
                               f"{t['core_seconds']:.0f} core-s, {t['gpu_seconds']:.0f} GPU-s"))
    else:
        lines.append(("times", "start, end, wall time, core- and GPU-seconds: provenance.json, written after the "
                               "last job"))
    return lines


def clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[:length - 3] + "..."


def markdown_block(prov: dict) -> str:
    """The provenance in 8 lines of at most MAX_LINE characters, for the top of claims.md."""
    lines = ["Provenance (every field: `provenance.json`, beside this file):"]
    lines += [clip(f"- {label}: {text}", MAX_LINE) for label, text in summary(prov)]
    return "\n".join(lines) + "\n"


def html_block(prov: dict) -> str:
    """The same lines as markdown_block, as a small HTML table, every value escaped."""
    rows = "".join(f"<tr><th>{html.escape(label)}</th><td>{html.escape(text)}</td></tr>"
                   for label, text in summary(prov))
    return ('<table class="provenance"><caption>Provenance (every field: provenance.json)</caption>'
            f"{rows}</table>")


# ---------------------------------------------------------------- command line


def write(prov: dict, config: dict, json_path, config_path) -> None:
    import yaml

    from .common import save_text

    save_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), config_path)
    save_text(json.dumps(prov, indent=2) + "\n", json_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vae_approx.provenance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="the run's folder, results/<run>")
    parser.add_argument("--settings", required=True, help="the whole effective config, as JSON")
    parser.add_argument("--preset", nargs="*", default=[], help="the config files, in the order they were merged")
    parser.add_argument("--json", required=True, help="where provenance.json goes")
    parser.add_argument("--config", required=True, help="where the effective config goes (YAML)")
    parser.add_argument("--workflow-dir", default=str(WORKFLOW_DIR), help="the checkout (default: this code's)")
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.settings)
    except json.JSONDecodeError as exc:
        sys.exit(f"error: provenance --settings: not JSON ({exc})")
    if not isinstance(config, dict):
        sys.exit(f"error: provenance --settings: expected a JSON object, got {args.settings[:80]!r}")
    prov = collect(config, args.preset, args.run_dir, args.workflow_dir, with_times=True)
    write(prov, config, args.json, args.config)
    print(markdown_block(prov), file=sys.stderr)


if __name__ == "__main__":
    main()
