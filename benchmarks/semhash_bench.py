"""Semantic hashing: our trainer against the reproduction's, taking turns epoch by epoch.

Both train the same Bernoulli VAE (encoder e1, decoder depth 0, 64 bits, DisARM, Adam 1e-3,
batch 256) on the same archive, at the paper's shape: 11,269 training and 7,505 test documents
over 10,000 kept words (a synthetic corpus written in the real 20news-bydate-matlab format,
since the real one cannot be fetched here). Each side runs a few epochs of each phase of the
protocol, with the test NELBO evaluated after every epoch as the protocol does, and the whole
schedule (1,000 epochs with one pair + 500 with ten) is extrapolated from the measured epoch
times.

The reference side is, with --reference-checkout PATH (a checkout of proger/vae), the
reproduction's own scripts/train_semhash.py: the archive is placed where its loader reads it
(data/20news-bydate-matlab.tgz under its working directory), and the script runs as a
subprocess, stopped (SIGSTOP) between its epochs while ours runs; its epoch times are the
running time from one "Epoch" print to the next, its NELBOs the printed ones. It runs from a
temporary copy in which only its seed line and its two epoch ranges are substituted (printed
when they differ); with seed 1 and the protocol's 1,000 + 500 epochs the copy is the script.

Without a checkout the reference side is a restatement in our code. It follows the reproduction's scripts (Kyrylov et al., ReScience C
9(2) 2023: its semantic-hashing model module, training script and 20 Newsgroups loader), in
our own code, with our layers and initial weights:
- the training set as one dense smoothed [N, V] float tensor in a TensorDataset, batches
  drawn by a shuffling DataLoader (batch 256, no workers);
- every ELBO evaluation recomputes the document normalisation sum_w x_w log(x_w / |x|) over
  the dense batch, and the code's log q(z|x) - log p(z) (the reference's "entropy" term,
  detached, so the KL's gradient also goes through the estimator);
- the two codes of a pair in separate decoder passes, each a full log-softmax [B, V];
- every pair a separate DisARM surrogate and backward pass with retain_graph=True (one per
  batch in the one-pair phase, ten in the ten-pair phase), gradients averaged by scaling;
- an extra decoder pass on a fresh code, with the analytic entropy, for the logged NELBO;
- the test NELBO of each epoch from the same estimate, test batches of 256;
- the decoder reads bits z, as the reproduction's does.
A restatement shares our layers and initial weights, so it cannot catch a choice we made
differently from the reproduction; the script can.

Settings: our trainer's are the paper preset's (config.yaml's `semhash` section updated by
presets/paper.yaml: width 512, DisARM, Adam 1e-3, batch 256, 10 pairs, 10,000 words, the 1,000 +
500 epochs the schedule is extrapolated to), except the benchmark's own choices in BENCH and on
its command line (the epochs run, the seeds, the test NELBO as the script averages it).
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy import stats
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from vae_approx.common import Progress, set_threads
from vae_approx.semhash.data import load_prepared, prepare, read_archive, save_prepared, synthetic_corpus, \
    write_archive, write_raw_corpus
from vae_approx.semhash.settings import ALLOWED, TRAIN_KEYS, TrainSettings
from vae_approx.semhash.train import build_models, train

ROOT = Path(__file__).resolve().parents[1]


def paper_section() -> dict:
    """The config's semhash section as the paper preset runs it: config.yaml's, updated by presets/paper.yaml."""
    section = yaml.safe_load((ROOT / "config.yaml").read_text())["semhash"]
    return {**section, **yaml.safe_load((ROOT / "presets" / "paper.yaml").read_text())["semhash"]}


PAPER = paper_section()
PROTOCOL_EPOCHS = (PAPER["epochs_one_pair"], PAPER["epochs_many_pairs"])  # one-pair, ten-pair: 1,000 and 500
VOCAB_SIZE = PAPER["vocab_size"]  # 10,000 words, as the reproduction's loader keeps
# The benchmark's own choices: the reproduction's script's grid point (encoder e1, decoder depth 0,
# 64 bits, seed 1); no resume checkpoints.
BENCH = {"seed": 1, "encoder": "e1", "depth": 0, "bits": 64, "checkpoint_every": 10**9}
# The synthetic archive at the real one's shape: its documents (the paper preset's expected counts),
# raw words, classes; the topic model's shape is the benchmark's own (the measurements in
# benchmarks/README.md were taken on it), not the config's synthetic section.
PAPER_SHAPE = dict(n_train=PAPER["expected_documents"]["train"], n_test=PAPER["expected_documents"]["test"],
                   raw_vocab_size=61188, n_classes=20, n_topics=40, mean_length=150.0, length_spread=1.0,
                   topic_concentration=0.1)


def paper_settings(**overrides) -> TrainSettings:
    """Our trainer's settings: the paper preset's training keys at BENCH's grid point, then `overrides`."""
    return TrainSettings(**{**{key: PAPER[key] for key in TRAIN_KEYS}, **BENCH, **overrides})


def write_paper_shape_archive(path, seed: int = 0, **shape) -> None:
    """The synthetic corpus in the real archive's format (as `python -m vae_approx.semhash
    synthesize` writes it), at the paper's shape unless `shape` overrides it."""
    shape = {**PAPER_SHAPE, **shape}
    raw = synthetic_corpus(shape["n_train"], shape["n_test"], shape["raw_vocab_size"], shape["n_classes"],
                           shape["n_topics"], shape["mean_length"], seed, length_spread=shape["length_spread"],
                           topic_concentration=shape["topic_concentration"])
    with tempfile.TemporaryDirectory() as tmp:
        write_raw_corpus(tmp, *raw)
        write_archive(tmp, path)


def prepare_archive(archive, vocab_size: int = VOCAB_SIZE):
    """Our side's corpus from the archive, as rule prepare_corpus makes it (the tied words at the
    vocabulary's cut as the paper preset keeps them, those torch.topk returns, as the script does)."""
    raw = read_archive(archive)
    return prepare(raw.train_counts, raw.test_counts, vocab_size, ties=PAPER["vocabulary_ties"],
                   train_labels=raw.train_labels, test_labels=raw.test_labels)


def reference_epochs(corpus, settings: TrainSettings, device: str = "cpu"):
    """The reference formulation of TrainSettings' schedule, one history row per epoch as it
    ends; same initialisation as ours. The KL's gradient as settings.kl_gradient says: through
    the estimator (the reproduction's), or, a diagnostic, the KL's exact gradient added and only
    the reconstruction through the estimator.
    On a GPU (`device`) each batch moves there as the reference's loop would move it; the
    random numbers stay on the CPU generator, so the numbers do not depend on the device."""
    torch.manual_seed(settings.seed)
    enc, dec = build_models(settings, corpus.n_words)  # same layers and initial weights as ours
    enc, dec = enc.to(device), dec.to(device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=settings.lr)
    s = torch.as_tensor(corpus.smoothing, dtype=torch.float32)
    gen = torch.Generator().manual_seed(settings.seed)

    def rand(shape):
        return torch.rand(shape, generator=gen).to(device)

    train_loader = DataLoader(TensorDataset(torch.as_tensor(corpus.train.toarray(), dtype=torch.float32) + s),
                              batch_size=settings.batch_size, shuffle=True, generator=gen)   # dense [N, V]
    test_loader = DataLoader(TensorDataset(torch.as_tensor(corpus.test.toarray(), dtype=torch.float32) + s),
                             batch_size=settings.batch_size)

    def reconstruction(x, z):  # -log p(x|z) relative to the document's own distribution, [B]
        log_probs = F.log_softmax(dec.net(z), dim=-1)                        # a decoder pass, on bits z
        return (x * torch.log(x / x.sum(1, keepdim=True))).sum(1) - (x * log_probs).sum(1)

    def log_q_over_prior(z, a):  # log q(z|x) - log p(z) of a code, [B]
        return (z * F.logsigmoid(a) + (1 - z) * F.logsigmoid(-a)).sum(1) + a.shape[1] * math.log(2)

    def analytic_kl(a):
        p = torch.sigmoid(a)
        return (p * F.logsigmoid(a) + (1 - p) * F.logsigmoid(-a)).sum(1) + a.shape[1] * math.log(2)

    def single_sample_nelbo(x, z, a):
        if settings.kl_gradient == "analytic":
            return reconstruction(x, z) + analytic_kl(a)
        return reconstruction(x, z) + log_q_over_prior(z, a.detach())

    def analytic_nelbo(x, a):  # the logged estimate: a fresh code, analytic KL
        z = (rand(a.shape) < torch.sigmoid(a)).float()
        return reconstruction(x, z) + analytic_kl(a)

    def disarm_surrogate(x, a):
        u = rand(a.shape)
        left, right = (u > torch.sigmoid(-a)).float(), (u < torch.sigmoid(a)).float()
        f_left, f_right = single_sample_nelbo(x, left, a), single_sample_nelbo(x, right, a)  # two passes
        weight = (1 - 2 * right) * (left != right).float() * torch.sigmoid(a.abs())
        estimator = 0.5 * (f_left - f_right).detach() * (weight * a).sum(1)
        return 0.5 * (f_left + f_right) + (estimator - estimator.detach())

    for epoch in range(1, settings.epochs + 1):
        pairs, tic = settings.pairs(epoch), time.perf_counter()
        total, n = 0.0, 0
        for (x,) in train_loader:
            x = x.to(device)
            a = enc(x)
            for _ in range(pairs):                                            # one backward per pair
                (disarm_surrogate(x, a).mean() / pairs).backward(retain_graph=True)
            with torch.no_grad():                                             # extra pass for the log
                total += analytic_nelbo(x, a).sum().item()
            n += len(x)
            opt.step()
            opt.zero_grad(set_to_none=True)
        with torch.inference_mode():
            test = torch.cat([analytic_nelbo(x, enc(x)) for x in (x.to(device) for (x,) in test_loader)])
        yield {"epoch": epoch, "pairs": pairs, "train_nelbo": total / n, "test_nelbo": test.mean().item(),
               "seconds": time.perf_counter() - tic}


class _EpochHandoff:
    """A Progress stand-in for our trainer that hands each finished epoch to the parent and
    waits for its turn before the next one starts (the epoch's time is measured before)."""

    def __init__(self, conn):
        self.conn = conn

    def log(self, epoch, force=False, **values):
        self.conn.send({"epoch": epoch, "pairs": values["pairs"], "test_nelbo": values["test_nelbo"],
                        "train_nelbo": values["train_nelbo"], "seconds": values["epoch_seconds"]})
        self.conn.recv()

    def message(self, text):
        pass


def _worker(name: str, conn, settings: TrainSettings, threads: int, corpus_file: str) -> None:
    """One side of the benchmark in its own process: waits for a turn, runs one epoch, reports it."""
    corpus = load_prepared(corpus_file)
    conn.recv()
    if name == "reference":
        torch.set_num_threads(threads)  # torch's defaults otherwise
        for row in reference_epochs(corpus, settings):
            conn.send(row)
            conn.recv()
    else:
        set_threads(threads)            # what our stages do: threads, allocator thresholds, denormals
        train(corpus, settings, torch.device("cpu"), None, _EpochHandoff(conn))
    conn.send(None)
    conn.close()


class WorkerSide:
    """Our trainer, or the restatement of the reference ("reference"), in a spawned process that
    runs one epoch per step()."""

    def __init__(self, name: str, settings: TrainSettings, threads: int, corpus_file: str):
        spawn = mp.get_context("spawn")
        parent, child = spawn.Pipe()
        self.proc = spawn.Process(target=_worker, args=(name, child, settings, threads, corpus_file), daemon=True)
        self.proc.start()
        self.conn = parent

    def step(self) -> dict:
        self.conn.send("go")
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send("go")
        self.proc.join(timeout=60)


# ---------------------------------------------------------------- the reproduction's own script

SCRIPT = "scripts/train_semhash.py"
# The script's lines a copy may change: its seed and its two epoch ranges (1,000 one-pair
# epochs, then 500 with ten pairs); each must occur exactly once.
SEED_LINE = "torch.manual_seed(1)"
PHASE_ONE, PHASE_TWO = "range(1000)", "range(1000, 1500)"
EPOCH_LINE = re.compile(r"^Epoch (\d+): train_loss=(\S+) test_loss=(\S+)$")
START_LINE = "test documents"  # the loader's last print before the first epoch


def script_copy(text: str, seed: int, epochs: tuple[int, int]) -> tuple[str, list[str]]:
    """The script's source with its seed and epoch ranges replaced, and the changed lines."""
    one, ten = epochs
    changes = [(SEED_LINE, f"torch.manual_seed({seed})"), (PHASE_TWO, f"range({one}, {one + ten})"),
               (PHASE_ONE, f"range({one})")]
    for old, _ in changes:
        if text.count(old) != 1:
            raise SystemExit(f"{SCRIPT}: expected '{old}' once, found it {text.count(old)} times; "
                             "is this proger/vae's script?")
    changed = []
    for old, new in changes:
        text = text.replace(old, new)
        if old != new:
            changed.append(f"{old} -> {new}")
    return text, changed


class ScriptSide:
    """The reproduction's scripts/train_semhash.py, unmodified but for script_copy's lines, as a
    subprocess on `archive`, stopped between epochs: step() lets it run one epoch and returns
    that epoch's time (running time only) and its printed train and test NELBO."""

    def __init__(self, checkout: Path, archive: Path, settings: TrainSettings, threads: int, workdir: Path):
        text, self.changed = script_copy((checkout / SCRIPT).read_text(), settings.seed,
                                         (settings.epochs_one_pair, settings.epochs_many_pairs))
        self.workdir = workdir / f"seed{settings.seed}"
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        target = self.workdir / "data" / "20news-bydate-matlab.tgz"   # where va.newsgroups.unpack reads
        target.unlink(missing_ok=True)
        target.symlink_to(archive.resolve())
        self.epochs_one_pair = settings.epochs_one_pair
        script = self.workdir / "train_semhash.py"
        script.write_text(text)
        env = {**os.environ, "PYTHONPATH": str(checkout.resolve()), "PYTHONUNBUFFERED": "1",
               "OMP_NUM_THREADS": str(threads)}
        self.log = []
        tic = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, str(script), "--device", "cpu", "--latent_features",
                                      str(settings.bits), str(self.workdir / "checkpoint.pt")],
                                     cwd=self.workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self._read_until(lambda line: line.startswith(START_LINE))
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.load_seconds = time.perf_counter() - tic

    def _read_until(self, done) -> str:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.log.append(line)
            if done(line):
                return line
        self.proc.wait()
        raise SystemExit(f"{SCRIPT} ended (exit code {self.proc.returncode}) before the expected line; "
                         "its output:\n" + "\n".join(self.log[-30:]))

    def step(self) -> dict:
        tic = time.perf_counter()
        os.kill(self.proc.pid, signal.SIGCONT)
        match = EPOCH_LINE.match(self._read_until(EPOCH_LINE.match))
        os.kill(self.proc.pid, signal.SIGSTOP)
        seconds = time.perf_counter() - tic
        epoch = int(match.group(1)) + 1                                      # the script counts from 0
        return {"epoch": epoch, "pairs": 1 if epoch <= self.epochs_one_pair else 10,
                "train_nelbo": float(match.group(2)), "test_nelbo": float(match.group(3)), "seconds": seconds}

    def close(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        try:
            self.proc.communicate(timeout=600)                              # its last prints, the checkpoint
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


# ---------------------------------------------------------------- taking turns, and the verdicts


def interleaved(sides: dict, epochs: int) -> dict[str, list[dict]]:
    """The sides take turns epoch by epoch (which goes first alternates), so that slow and fast
    phases of a shared machine fall on both alike."""
    results = {name: [] for name in sides}
    names = list(sides)
    for epoch in range(1, epochs + 1):
        for name in (names if epoch % 2 else names[::-1]):
            row = sides[name].step()
            results[name].append(row)
            print(f"  {name:9s} epoch {epoch} ({row['pairs']} pairs): {row['seconds']:.2f} s, "
                  f"test NELBO {row['test_nelbo']:.2f}", flush=True)
    for side in sides.values():
        side.close()
    return results


def ours_train(corpus, settings: TrainSettings, device: str = "cpu") -> list[dict]:
    history, _, _ = train(corpus, settings, torch.device(device), None,
                          Progress("ours", settings.epochs, 1, stream=io.StringIO()))
    for row in history:
        print(f"  ours epoch {row['epoch']} ({row['pairs']} pairs): {row['seconds']:.2f} s, "
              f"test NELBO {row['test_nelbo']:.2f}", flush=True)
    return history


def phase_seconds(histories: list[list[dict]], pairs_one: bool) -> float:
    """Median epoch time of a phase over every run, leaving out each run's first epoch (warm-up)."""
    rows = [r["seconds"] for h in histories for r in h[1:] if (r["pairs"] == 1) == pairs_one] or \
           [r["seconds"] for h in histories for r in h if (r["pairs"] == 1) == pairs_one]
    return float(np.median(rows))


def speed_table(results: dict[str, list[list[dict]]], reference: str) -> str:
    lines = [f"| phase | ours (s/epoch) | {reference} (s/epoch) | speed-up |", "|---|---|---|---|"]
    totals = {"ours": 0.0, "reference": 0.0}
    for label, one, epochs in (("one pair", True, PROTOCOL_EPOCHS[0]), ("ten pairs", False, PROTOCOL_EPOCHS[1])):
        o, r = phase_seconds(results["ours"], one), phase_seconds(results["reference"], one)
        totals["ours"] += o * epochs
        totals["reference"] += r * epochs
        lines.append(f"| {label} | {o:.2f} | {r:.2f} | {r / o:.2f}x |")
    o_all, r_all = totals["ours"], totals["reference"]
    lines.append(f"| whole schedule ({PROTOCOL_EPOCHS[0]:,} + {PROTOCOL_EPOCHS[1]:,} epochs, extrapolated) "
                 f"| {o_all / 3600:.2f} h | {r_all / 3600:.2f} h "
                 f"| {r_all / o_all:.2f}x |")
    return "\n".join(lines)


def welch_halfwidth(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Standard error of mean(b) - mean(a) from the two samples' variances, and the half-width
    of its 95% interval with the Welch-Satterthwaite degrees of freedom (nan with one seed)."""
    if min(len(a), len(b)) < 2:
        return float("nan"), float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return 0.0, 0.0
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return se, float(stats.t.ppf(0.975, dof)) * se


def agreement_table(results: dict[str, list[list[dict]]], seeds: list[int]) -> tuple[str, bool]:
    """Test NELBO per epoch of each side over its seeds (mean, std, the per-seed values), and at
    each epoch whether the two sides agree within their seed spread: the 95% interval of the
    difference of the means (Welch's t) contains zero; twice the standard error is shown beside
    it. Returns the table and whether they agree at every epoch after the first."""
    ours = np.array([[r["test_nelbo"] for r in h] for h in results["ours"]])           # [seeds, epochs]
    ref = np.array([[r["test_nelbo"] for r in h] for h in results["reference"]])
    lines = ["| epoch | pairs | ours: mean (std) | reference: mean (std) | reference - ours | 2 SE "
             "| 95% half-width (Welch t) | verdict |", "|---|---|---|---|---|---|---|---|"]
    agree_after_first = True
    for e in range(ours.shape[1]):
        o, r = ours[:, e], ref[:, e]
        diff = r.mean() - o.mean()
        se, half = welch_halfwidth(o, r)
        ok = math.isfinite(half) and abs(diff) <= half
        verdict = "within seed spread" if ok else ("one seed, no spread" if not math.isfinite(half) else "beyond seed spread")
        if e > 0 and not ok:
            agree_after_first = False
        std = lambda v: f"{v.std(ddof=1):.2f}" if len(v) > 1 else "-"    # noqa: E731
        lines.append(f"| {e + 1} | {results['ours'][0][e]['pairs']} | {o.mean():.2f} ({std(o)}) | {r.mean():.2f} ({std(r)}) "
                     f"| {diff:+.2f} | {2 * se:.2f} | {half:.2f} | {verdict} |")
    lines.append("")
    for name, values in (("ours", ours), ("reference", ref)):
        for seed, row in zip(seeds, values):
            lines.append(f"{name:9s} seed {seed}: " + ", ".join(f"{v:.2f}" for v in row))
    return "\n".join(lines), agree_after_first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # the benchmark's own defaults: a few epochs of each phase, both cores of a small machine
    parser.add_argument("--epochs", type=int, nargs=2, default=(9, 2), metavar=("ONE_PAIR", "TEN_PAIRS"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=PAPER["seeds"],
                        help="one interleaved run per seed, on each side (the script's own seed is 1; "
                             "default: the paper preset's semhash.seeds)")
    parser.add_argument("--reference-checkout", type=Path, default=None, metavar="PATH",
                        help="a checkout of proger/vae: run its scripts/train_semhash.py as the reference")
    parser.add_argument("--code-values", choices=ALLOWED["code_values"], default=PAPER["code_values"],
                        help="what our decoder reads of a code (semhash.code_values; default: the config's)")
    # the benchmark's own default: the script's statistic, so that the two sides' NELBOs compare
    parser.add_argument("--test-nelbo-batch", type=int, default=256,
                        help="our test NELBO as the mean of batch means of this many documents, as the "
                             "script reports it (semhash.test_nelbo_batch; 0: over documents)")
    parser.add_argument("--small", action="store_true",
                        help="a small corpus (600 + 200 documents, 500 words) and 8 bits, to check the wiring")
    parser.add_argument("--ours-only", default="", metavar="DEVICE",
                        help="time only our trainer on DEVICE (e.g. cuda), for every encoder and depth at 64 bits")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkout = args.reference_checkout
    if checkout is not None and not (checkout / SCRIPT).is_file():
        parser.error(f"--reference-checkout {checkout}: no {SCRIPT} there (a checkout of proger/vae is expected)")
    shape = dict(n_train=600, n_test=200, raw_vocab_size=1500, mean_length=60.0) if args.small else {}
    vocab_size = 500 if args.small else VOCAB_SIZE
    settings = paper_settings(epochs_one_pair=args.epochs[0], epochs_many_pairs=args.epochs[1], seed=args.seeds[0],
                              code_values=args.code_values, test_nelbo_batch=args.test_nelbo_batch,
                              **({"bits": 8} if args.small else {}))
    with tempfile.TemporaryDirectory(prefix="semhash-bench-") as tmp:
        tmp = Path(tmp)
        tic = time.perf_counter()
        archive = tmp / "20news-bydate-matlab.tgz"
        write_paper_shape_archive(archive, 0, **shape)
        corpus = prepare_archive(archive, vocab_size)
        corpus_file = tmp / "corpus.npz"
        save_prepared(corpus, corpus_file)
        print(f"corpus: {corpus.train.shape[0]} train, {corpus.test.shape[0]} test documents, {corpus.n_words} words, "
              f"{corpus.train.nnz / corpus.train.shape[0]:.0f} distinct words per document "
              f"({time.perf_counter() - tic:.1f} s); {args.threads} threads", flush=True)
        if args.ours_only:
            set_threads(args.threads)
            print(f"| encoder | depth | one pair (s/epoch) | ten pairs (s/epoch) "
                  f"| {PROTOCOL_EPOCHS[0]:,} + {PROTOCOL_EPOCHS[1]:,} epochs |")
            print("|---|---|---|---|---|")
            for encoder in PAPER["encoders"]:
                for depth in PAPER["depths"]:
                    history = ours_train(corpus, replace(settings, encoder=encoder, depth=depth), args.ours_only)
                    one, ten = phase_seconds([history], True), phase_seconds([history], False)
                    total = PROTOCOL_EPOCHS[0] * one + PROTOCOL_EPOCHS[1] * ten
                    print(f"| {encoder} | {depth} | {one:.3f} | {ten:.3f} | {total / 60:.1f} min |", flush=True)
            return 0
        reference = "reproduction's script" if checkout else "restatement"
        print(f"reference side: {reference}" + (f" ({checkout / SCRIPT})" if checkout else ""), flush=True)
        results = {"ours": [], "reference": []}
        for seed in args.seeds:
            seeded = replace(settings, seed=seed)
            print(f"seed {seed}:", flush=True)
            sides = {"ours": WorkerSide("ours", seeded, args.threads, str(corpus_file))}
            if checkout:
                sides["reference"] = ScriptSide(checkout, archive, seeded, args.threads, tmp)
                print(f"  script copy: {'; '.join(sides['reference'].changed) or 'unchanged'}; "
                      f"its loader took {sides['reference'].load_seconds:.1f} s", flush=True)
            else:
                sides["reference"] = WorkerSide("reference", seeded, args.threads, str(corpus_file))
            run = interleaved({"reference": sides["reference"], "ours": sides["ours"]}, settings.epochs)
            for name in results:
                results[name].append(run[name])
    print()
    print(speed_table(results, reference))
    print()
    table, agree = agreement_table(results, args.seeds)
    print(table)
    print()
    print(f"test NELBO, ours against the {reference}, {len(args.seeds)} seeds per side: "
          f"{'within seed spread at every epoch after the first' if agree else 'NOT within seed spread at every epoch after the first'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
