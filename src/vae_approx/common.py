"""Helpers every stage shares: devices, threads, seeds, atomic writes, progress, resume.

Stages are thin scripts; these helpers keep the contracts of the design page in one place:
outputs appear atomically, a non-finite loss stops the job with its stage and step, and long
training loops resume from one checkpoint dict {model, optimizer, step, rng, config}.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


class NonFiniteLossError(RuntimeError):
    """Raised when a loss becomes NaN or infinite; names the stage and the step."""


class InputError(ValueError):
    """A missing, corrupt or inconsistent input file or value; the message names it."""


# ---------------------------------------------------------------- devices, threads, seeds


def select_device(name: str = "auto") -> torch.device:
    """`auto` takes CUDA when present, else the CPU; nothing assumes a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{name}' was asked for but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def set_threads(threads: int) -> None:
    """Use exactly the cores Snakemake gave the job (its `threads:`), and tune the CPU.

    glibc returns every freed block above 128 KiB to the kernel, so each training step of a
    full-batch model pays page faults on fresh activation buffers; raising the mmap and trim
    thresholds keeps them in the heap (about 1.6x faster GMM steps on a 2-core CPU).
    Denormal floats, frequent in tiny late-training gradients, are flushed to zero.
    """
    torch.set_num_threads(max(1, int(threads)))
    torch.set_flush_denormal(True)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
            libc.mallopt(m_mmap_threshold, 256 * 2**20)
            libc.mallopt(m_trim_threshold, 256 * 2**20)
        except OSError:  # not glibc (musl, ...): keep the default allocator
            pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stage_seed(seed: int, stage: str) -> int:
    """The seed of one stage of replicate `seed`. Each (replicate, stage) draws its own stream:
    seeding every stage with the replicate's seed itself would start joint training on the
    pretraining's first batches, and replicate 1's draws would overlap replicate 0's shifted ones."""
    tag = int.from_bytes(hashlib.sha256(stage.encode()).digest()[:4], "little")
    return int(np.random.SeedSequence([seed, tag]).generate_state(1)[0])


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- atomic outputs


def current_umask() -> int:
    """The process's umask (os.umask can only be read by setting it, so set it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    An interrupted job therefore never leaves a file that looks complete. The file gets the
    mode a plain open() would give it (0666 less the umask), not mkstemp's private 0600, so
    outputs on a shared filesystem are as readable as any other file the user writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_csv(df, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def save_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_json(obj: Any, path: str | os.PathLike) -> None:
    save_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def save_figure(fig, path: str | os.PathLike, **kwargs) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip("."), **kwargs)


def with_run(run: dict, rows: list[dict]):
    """A per-run stage's rows as a frame, the run's identity (its --run) as their first columns."""
    import pandas as pd

    return pd.DataFrame([{**run, **row} for row in rows])


def plot_seeds(ax, curves, colour: str, label: str) -> None:
    """Curves (x, y) of several seeds on one axis: each seed as a thin line, their mean as a thick
    one, labelled with the number of seeds. The seeds share one schedule, so the mean is taken
    point by point (over the points every seed has)."""
    for x, y in curves:
        ax.plot(x, y, c=colour, lw=0.6, alpha=0.45)
    n = min(len(y) for _, y in curves)
    mean = np.mean([np.asarray(y, dtype=float)[:n] for _, y in curves], axis=0)
    ax.plot(np.asarray(curves[0][0])[:n], mean, c=colour, lw=1.6,
            label=f"{label} ({len(curves)} seeds, mean)" if len(curves) > 1 else label)


def check_sha256(path, pinned: str, what: str) -> None:
    """No-op without a pinned digest; otherwise the file must have it (an InputError naming `what`)."""
    if pinned:
        actual = sha256(path)
        if actual != pinned.lower():
            raise InputError(f"{what}: SHA-256 {actual} does not match the pinned {pinned}")


def load_torch(path: str | os.PathLike, what: str) -> Any:
    """torch.load with an error that names the file and what it was supposed to be."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise InputError(f"{what}: cannot read {path} ({type(exc).__name__}: {exc})") from exc


# ---------------------------------------------------------------- progress and checks


class Progress:
    """Progress lines (step, loss, elapsed) on stderr, which rules send to their log file."""

    def __init__(self, stage: str, total_steps: int, every: int, stream=None):
        self.stage, self.total, self.every = stage, total_steps, max(1, every)
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()

    def log(self, step: int, force: bool = False, **values: float) -> None:
        if not force and step % self.every and step != self.total:
            return
        parts = " ".join(f"{k} {v:.5g}" for k, v in values.items())
        elapsed = time.perf_counter() - self.start
        print(f"[{self.stage}] step {step}/{self.total} {parts} elapsed {elapsed:.1f}s", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        print(f"[{self.stage}] {text}", file=self.stream, flush=True)


def check_finite(value: torch.Tensor | float, stage: str, step: int, name: str = "loss") -> None:
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(v):
        raise NonFiniteLossError(f"{stage}: non-finite {name} ({v}) at step {step}")


# ---------------------------------------------------------------- resume checkpoints


def resume_path(output: str | os.PathLike) -> Path:
    """Where a stage keeps its resume checkpoint: beside its output, never a declared output.

    Snakemake removes the declared outputs of a failed job, but not this file, so a re-run
    after a kill (or a SLURM time limit) continues from it.
    """
    output = Path(output)
    return output.parent / f".{output.name}.resume.pt"


def checkpoint(models: dict[str, torch.nn.Module], optimizer, step: int, config: dict[str, Any],
               **extra: Any) -> dict[str, Any]:
    """The one resume dict: {model, optimizer, step, rng, config} plus what the loop needs (history)."""
    return {"model": {name: m.state_dict() for name, m in models.items()}, "optimizer": optimizer.state_dict(),
            "step": step, "rng": rng_state(), "config": config, **extra}


def load_resume(path: Path, config: dict[str, Any], models: dict[str, torch.nn.Module], optimizer,
                progress: Progress | None = None) -> dict[str, Any] | None:
    """Restore models, optimizer and RNG states from the checkpoint at `path` if it was written
    for the same config; return it (for its step and extras), else None and touch nothing."""
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        if progress:
            progress.message(f"ignoring unreadable resume checkpoint {path}: {exc}")
        return None
    if ckpt.get("config") != config:
        if progress:
            progress.message(f"ignoring resume checkpoint {path}: written for another configuration")
        return None
    for name, module in models.items():
        module.load_state_dict(ckpt["model"][name])
    optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    if progress:
        progress.message(f"resuming from {path} at step {ckpt['step']}")
    return ckpt


def run_stage(parser, argv: list[str] | None = None) -> None:
    """Parse a stage's command line and run it; a bad input, settings that do not fit the stage or a
    non-finite loss exits with its one-line message instead of a traceback."""
    from .config import ConfigError  # --settings or --run that does not fit the stage

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (InputError, NonFiniteLossError, ConfigError) as exc:
        sys.exit(f"error: {exc}")


# ---------------------------------------------------------------- an experiment's command line


class StageTable:
    """The command line of an experiment's file-to-file stages (python -m vae_approx.<experiment> <stage>),
    declared stage by stage with @table.stage beside each function: what it does; its required options
    ("name" a path, "name:int" a number, "name:+" several paths); which of --settings (the stage's keys of
    the config section, `stage_keys`), --run (its identity, `runs`) and --threads/--device it takes; an
    option whose default is no config value."""

    KINDS = {"": {}, "int": {"type": int}, "+": {"nargs": "+"}}  # a path, a number, several paths

    def __init__(self, experiment: str, stage_keys: dict, runs: dict):
        self.experiment, self.stage_keys, self.runs = experiment, stage_keys, runs
        self.stages: dict = {}

    def stage(self, name: str, help: str, options: str, takes: str = "", optional: tuple | None = None):
        def register(command):
            self.stages[name] = dict(command=command, help=help, options=options.split(), takes=takes.split(),
                                     optional=optional)
            return command
        return register

    def prepared(self, args):
        """args with --settings as `section`, --run as `identity` and --threads and --device applied (the device
        as `on`); a wrong key, value or text is a ConfigError (run_stage exits with its message)."""
        from .config import run_identity, stage_section

        what = f"{self.experiment} {args.stage}"
        if args.stage in self.stage_keys:
            args.section = stage_section(args.settings, self.stage_keys[args.stage], what)
        if args.stage in self.runs:
            args.identity = run_identity(args.run, self.runs[args.stage], what)
        if hasattr(args, "threads"):  # "device" in takes, or a stage's own threads:int (CPU only)
            set_threads(args.threads)
        if hasattr(args, "device"):
            args.on = select_device(args.device)
        return args

    def main(self, prog: str, description: str, argv: list[str] | None = None) -> None:
        import argparse

        parser = argparse.ArgumentParser(prog=prog, description=description,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        sub = parser.add_subparsers(dest="command", required=True)
        for name, s in self.stages.items():
            p = sub.add_parser(name, help=s["help"])
            for option in s["options"]:
                flag, _, kind = option.partition(":")
                p.add_argument(f"--{flag}", required=True, **self.KINDS[kind])
            for flag, what in (("settings", self.stage_keys), ("run", self.runs)):
                if flag in s["takes"]:
                    p.add_argument(f"--{flag}", required=True, help="JSON: " + ", ".join(what[name]))
            if "device" in s["takes"]:
                p.add_argument("--threads", type=int, required=True, help="CPU threads (the rule's threads)")
                p.add_argument("--device", required=True, help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
            if s["optional"]:
                p.add_argument(s["optional"][0], **s["optional"][1])
            p.set_defaults(func=lambda args, command=s["command"]: command(self.prepared(args)), stage=name)
        run_stage(parser, argv)
