"""One prepared check of the paper preset's cost on one GPU: what each stage's step takes, ours
against the reference formulation, and what the whole preset would take.

    python benchmarks/gpu_check.py                     # on the GPU: under 8 minutes
    python benchmarks/gpu_check.py --device cpu --tiny # every section at tiny shapes, under a minute

Sections, each printing its rows as it goes:
1. semhash: seconds per epoch of the one-pair and the ten-pair phase, e1 at decoder depth 0 and
   e2 at depth 2, 64 bits, on a synthetic corpus at the paper's shape (11,269 + 7,505 documents,
   10,000 words, the real archive's format): ours (`vae_approx.semhash.train.train`) and the
   reference formulation (`semhash_bench.reference_epochs`), and ours with each step replayed as
   a CUDA graph (semhash.cuda_graphs; on the CPU its static buffers without the capture), with
   its largest test-NELBO gap to the eager step; then the aggregate throughput
   (epochs per second, all processes together) when 1, 2 and 4 of our training processes share
   the device.
2. faces: iterations per second at the paper's shape (batch 128, 64x64x3, nz 100, widths 64)
   of GAN training, encoder pretraining and joint training: the reference formulation
   (`images_bench.reference_steps`) and ours in fp32, channels-last and bf16 autocast (CUDA
   only; the CPU keeps fp32), with each variant's loss over the first steps against ours in
   fp32; evaluation sampling, ours batched against the reference's batch-1 loop; Inception
   features (images per second at 299x299, random weights: speed does not depend on them) and
   the Frechet distance on 2048 features.
3. estimate: each paper-preset stage's device time from those rates, and the total, beside the
   reproduction's (about 16 GPU-hours for semantic hashing, 9 A100-hours for the faces).

Writes <out>/gpu.csv (section, what, variant, value, unit) and <out>/gpu.md.
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing as mp
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' reference formulations

import images_bench as IB  # noqa: E402
import semhash_bench as SB  # noqa: E402
from vae_approx.common import Progress, set_threads  # noqa: E402
from vae_approx.images.evaluate import frechet_distance_eigh  # noqa: E402
from vae_approx.images.settings import GanSettings  # noqa: E402
from vae_approx.images.train import train_gan  # noqa: E402
from vae_approx.semhash.settings import TrainSettings  # noqa: E402
from vae_approx.semhash.train import train  # noqa: E402

# The paper preset's sizes (presets/paper.yaml) and the reproduction's device time (hours).
PAPER = {"semhash_jobs": 36 * 3, "epochs": (1000, 500), "gan_epochs": 100, "celeba": 202_599,
         "iterations": 1_000_000, "seeds": 3, "trained_protocols": 2, "sampled_protocols": 5, "images": 200_000,
         "sets": 5,
         # images.likelihood: per run, AIS over these T with 5 AIS runs (the ground truth's sandwich, the joint
         # decoder's forward bound, its BDMC sandwich), each of images x chains chains and leapfrog steps per T,
         # plus a pilot of one chain per image over T / 4 in each of the 3 cases
         "likelihood": {"images": 64, "chains": 4, "leapfrog": 10, "steps": (100, 1000, 10_000), "runs": 5}}
REPRODUCTION_HOURS = {"semantic hashing": 16.0, "GAN": 5.0, "encoder pretraining": 1.0, "joint training": 3.0}
TINY_CORPUS = dict(n_train=300, n_test=100, raw_vocab_size=800, n_classes=4, n_topics=4, mean_length=40.0)
TINY_FACES = replace(IB.PAPER, nz=8, width=8, size=32, batch=16)


class Report:
    """The rows of the check, printed as they come."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, section: str, what: str, variant: str, value: float, unit: str, note: str = "") -> None:
        self.rows.append({"section": section, "what": what, "variant": variant, "value": value, "unit": unit,
                          "note": note})
        print(f"[gpu_check] {section:9s} {what:40s} {variant:22s} {value:12.5g} {unit} {note}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- 1. semantic hashing


def semhash_settings(encoder: str, depth: int, tiny: bool) -> TrainSettings:
    """The paper preset's settings (semhash_bench.paper_settings), 2 + 2 epochs; tiny: 8 bits, width 16, batch 64."""
    return SB.paper_settings(encoder=encoder, depth=depth, epochs_one_pair=2, epochs_many_pairs=2, eval_batch_size=256,
                             **(dict(bits=8, width=16, batch_size=64) if tiny else {}))


def later_epochs(rows: list[dict], pairs: int) -> float:
    """Seconds of the phase's epochs after its first (warm-up: allocation, kernel selection)."""
    times = [r["seconds"] for r in rows if (r["pairs"] == 1) == (pairs == 1)]
    return float(np.median(times[1:] if len(times) > 1 else times))


def _share_worker(corpus_file: str, settings: TrainSettings, device: str, step_mode: str, queue) -> None:
    corpus = SB.load_prepared(corpus_file)
    set_threads(1)
    tic = time.perf_counter()
    train(corpus, settings, torch.device(device), None, Progress("share", settings.epochs, 1, stream=io.StringIO()),
          step_mode)
    queue.put(time.perf_counter() - tic)


def check_semhash(report: Report, device: torch.device, tiny: bool, workdir: Path) -> dict:
    """Returns our seconds per epoch of each phase (mean of the two configurations, the faster
    step mode of each) and the 4-process speed-up."""
    archive = workdir / "20news-bydate-matlab.tgz"
    SB.write_paper_shape_archive(archive, **(TINY_CORPUS if tiny else {}))
    corpus = SB.prepare_archive(archive, 300 if tiny else SB.VOCAB_SIZE)
    print(f"[gpu_check] semhash corpus: {corpus.train.shape[0]} + {corpus.test.shape[0]} documents, "
          f"{corpus.n_words} words", flush=True)
    # semhash.cuda_graphs; on the CPU its path without the capture, so that the check tests it
    graphs = "cuda_graphs" if device.type == "cuda" else "static"
    modes = {"ours": "eager", f"ours, {graphs.replace('_', ' ')}": graphs}
    best = {1: [], 10: []}
    graphs_faster = True
    for encoder, depth in (("e1", 0), ("e2", 2)):
        settings = semhash_settings(encoder, depth, tiny)
        what = f"{encoder}, depth {depth}, {settings.bits} bits"
        runs, notes = {}, {}
        for name, mode in modes.items():
            try:
                runs[name], _, _ = train(corpus, settings, device, None,
                                         Progress(name, settings.epochs, 1, stream=io.StringIO()), mode)
            except Exception as exc:  # noqa: BLE001  (a failed fast path must not lose the other measurements)
                report.add("semhash", what, name, float("nan"), "s/epoch", f"failed: {type(exc).__name__}: {exc}")
                continue
            if mode != "eager":
                gap = max(abs(a["test_nelbo"] - b["test_nelbo"]) for a, b in zip(runs[name], runs["ours"]))
                notes[name] = f"max |test NELBO - eager's| over {settings.epochs} epochs: {gap:.3g} nats"
        runs["reference formulation"] = list(SB.reference_epochs(corpus, settings, device=str(device)))
        for pairs in (1, settings.many_pairs):
            seconds = {name: later_epochs(rows, pairs) for name, rows in runs.items()}
            for name, value in seconds.items():
                report.add("semhash", f"{what}, {pairs} pair{'s' if pairs > 1 else ''}", name, value, "s/epoch",
                           notes.get(name, ""))
            ours = {name: value for name, value in seconds.items() if name in modes}
            best[pairs].append(min(ours.values()))
            graphs_faster &= len(ours) == 2 and min(ours, key=ours.get) != "ours"
    corpus_file = workdir / "corpus.npz"
    SB.save_prepared(corpus, corpus_file)
    settings = replace(semhash_settings("e1", 0, tiny), epochs_one_pair=2, epochs_many_pairs=0)
    share_mode = graphs if graphs_faster else "eager"
    spawn = mp.get_context("spawn")
    rates = {}
    for k in (1, 2, 4):
        queue = spawn.Queue()
        procs = [spawn.Process(target=_share_worker, args=(str(corpus_file), settings, str(device), share_mode, queue))
                 for _ in range(k)]
        tic = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        wall = time.perf_counter() - tic
        rates[k] = k * settings.epochs / wall
        report.add("semhash", f"{k} processes sharing the device (e1, depth 0)", f"ours ({share_mode})", rates[k],
                   "epochs/s", "all processes together, start-up included")
    return {"one pair": float(np.mean(best[1])), "ten pairs": float(np.mean(best[10])),
            "sharing": rates[4] / rates[1]}


# ---------------------------------------------------------------- 2. faces


def loss_gap(losses: list[float], fp32: list[float]) -> float:
    """The largest gap to fp32 over the steps both ran, relative to fp32's spread over them."""
    n = min(len(losses), len(fp32))
    a, b = np.asarray(losses[:n]), np.asarray(fp32[:n])
    return float(np.max(np.abs(a - b)) / max(np.std(b), 1e-12))


def check_faces(report: Report, device: torch.device, tiny: bool, steps: int) -> dict:
    """Returns our best rates: GAN, pretraining and joint iterations/s, samples/s, Inception images/s."""
    shape = TINY_FACES if tiny else IB.PAPER
    IB.configure(shape, device)
    g, pretrained, joint_encoder, joint_decoder = IB.paper_models(0)
    # GAN training: ours (the DCGAN tutorial's loop) on random images of the shape; the tutorial is the reference
    images = np.random.default_rng(0).integers(0, 256, (shape.batch * (steps + 1), shape.channels, shape.size,
                                                        shape.size), dtype=np.uint8)
    gan = GanSettings(epochs=1, batch_size=shape.batch, lr=2e-4, beta1=0.5, nz=shape.nz, ngf=shape.width,
                      ndf=shape.width, seed=999, checkpoint_every=10**9, log_every=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        stamps = [time.perf_counter()]
        train_gan(images, gan, Path(tmp), device, None, Progress("gan", steps, 10**9, stream=io.StringIO()),
                  on_step=lambda step: (sync(device), stamps.append(time.perf_counter())))
    rates = {"GAN": 1 / IB.median_after_warmup(list(np.diff(stamps)))}
    report.add("faces", "GAN training", "ours fp32", rates["GAN"], "it/s")
    variants = [("fp32", False, False), ("channels-last", True, False)]
    if device.type == "cuda":
        variants.append(("bf16 autocast", True, True))
    for phase, (lr, beta1) in IB.PAPER_STEPS.items():
        what = "encoder pretraining" if phase == "pretrain" else "joint training"
        seconds, _ = IB.reference_steps(phase, g, pretrained, steps, lr, beta1)
        report.add("faces", what, "reference formulation", 1 / IB.median_after_warmup(seconds), "it/s")
        curves = {}
        for name, channels_last, bf16 in variants:
            seconds, curves[name] = IB.ours_steps(phase, g, pretrained, steps, lr, beta1, channels_last, bf16)
            gap = "" if name == "fp32" else f"loss gap to fp32 over {steps} steps: {loss_gap(curves[name], curves['fp32']):.2f} x its spread"
            rate = 1 / IB.median_after_warmup(seconds)
            rates[what] = max(rates.get(what, 0.0), rate)
            report.add("faces", what, f"ours {name}", rate, "it/s", gap)
    samples = 8 if tiny else 60
    with tempfile.TemporaryDirectory() as tmp:
        report.add("faces", "evaluation sampling", "reference formulation (batch 1)",
                   IB.reference_sampling(g, pretrained, joint_encoder, joint_decoder, samples, Path(tmp)), "samples/s")
    rates["sampling"] = IB.ours_sampling(g, pretrained, joint_encoder, joint_decoder, 4 * samples if tiny else 2000,
                                         50 if tiny else 500, True)
    report.add("faces", "evaluation sampling", "ours (batch 500, channels-last)", rates["sampling"], "samples/s")
    rates["inception"] = check_inception(report, device, tiny)
    rates["leapfrog"] = check_leapfrog(report, g, device, tiny)
    return rates


def check_leapfrog(report: Report, g, device: torch.device, tiny: bool) -> float:
    """AIS's HMC leapfrog step at the paper preset's likelihood batch (images x chains latents): the ground
    truth's forward and backward in z, eval mode; chain-steps per second."""
    from vae_approx.images.ais import _value_and_grad, gaussian_likelihood

    like = PAPER["likelihood"]
    batch = 16 if tiny else like["images"] * like["chains"]
    g = g.eval()
    nz = g.nz
    z = torch.randn(batch, nz, device=device)
    with torch.no_grad():
        mean = g(z)
        x = mean + 0.05 * torch.randn_like(mean)
    ll = gaussian_likelihood(g, x, math.log(0.05))
    seconds = []
    for _ in range(5 if tiny else 30):
        sync(device)
        tic = time.perf_counter()
        _value_and_grad(z, ll)
        sync(device)
        seconds.append(time.perf_counter() - tic)
    rate = batch / IB.median_after_warmup(seconds)
    report.add("faces", f"AIS leapfrog step ({batch} chains)", "ours fp32", rate, "chain-steps/s")
    return rate


def check_inception(report: Report, device: torch.device, tiny: bool) -> float:
    """Images per second through pytorch-fid's InceptionV3 as the FID jobs load it (random weights in a temporary
    TORCH_HOME: the speed does not depend on them), and the Frechet distance's time; returns the former."""
    from vae_approx.images.data import write_random_inception_weights
    from vae_approx.images.evaluate import load_inception

    with tempfile.TemporaryDirectory() as home:
        write_random_inception_weights(Path(home) / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth")
        model = load_inception(home, device, "", True)
    batch, rounds = (4, 1) if tiny else (200, 5)
    images = torch.rand(batch, 3, 64, 64, device=device)
    with torch.no_grad():
        model(images)  # warm-up
        sync(device)
        tic = time.perf_counter()
        for _ in range(rounds):
            model(images)
        sync(device)
    rate = batch * rounds / (time.perf_counter() - tic)
    report.add("faces", "Inception features (299x299)", "pytorch-fid InceptionV3", rate, "images/s")
    rng = np.random.default_rng(0)
    dim = 64 if tiny else 2048
    a, b = rng.normal(size=(2 * dim, dim)), rng.normal(size=(2 * dim, dim))
    tic = time.perf_counter()
    frechet_distance_eigh(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    report.add("faces", f"Frechet distance ({dim} features)", "ours (eigh, CPU)", time.perf_counter() - tic, "s")
    return rate


# ---------------------------------------------------------------- 3. the paper preset's estimate


def likelihood_steps() -> float:
    """Chain-leapfrog steps (decoder forward and backward passes of one latent) of one likelihood run."""
    like = PAPER["likelihood"]
    total_T = sum(like["steps"])
    return like["leapfrog"] * (like["runs"] * like["images"] * like["chains"] * total_T + 3 * like["images"] * total_T / 4)


def estimate(report: Report, semhash: dict, faces: dict) -> list[dict]:
    """Hours of device time per paper-preset stage from the measured rates (at tiny shapes: the arithmetic only)."""
    p = PAPER
    sharing = max(semhash["sharing"], 1.0)  # 4 jobs at a time where that is faster
    runs, sampled = p["seeds"] * p["trained_protocols"], p["seeds"] * p["sampled_protocols"]
    rows = [("semantic hashing", p["semhash_jobs"] * (p["epochs"][0] * semhash["one pair"]
                                                     + p["epochs"][1] * semhash["ten pairs"]) / sharing,
             f"{p['semhash_jobs']} jobs, 4 sharing the device (x{sharing:.2f})"),
            ("GAN", p["gan_epochs"] * math.ceil(p["celeba"] / 128) / faces["GAN"], "100 epochs"),
            ("encoder pretraining", runs * p["iterations"] / faces["encoder pretraining"],
             f"{runs} runs (3 seeds x 2 trained protocols), the fastest variant"),
            ("joint training", runs * p["iterations"] / faces["joint training"], f"{runs} runs, the fastest variant"),
            ("sampling", sampled * p["images"] / faces["sampling"], f"{sampled} runs (3 seeds x 5 protocols)"),
            ("FID features", sampled * p["sets"] * p["images"] / faces["inception"], "5 sets per run"),
            ("likelihood (AIS)", runs * likelihood_steps() / faces["leapfrog"],
             f"{runs} runs, {likelihood_steps():.3g} chain-leapfrog steps each")]
    out = [{"stage": name, "hours": seconds / 3600, "reproduction hours": REPRODUCTION_HOURS.get(name, float("nan")),
            "note": note} for name, seconds, note in rows]
    out.append({"stage": "total", "hours": sum(r["hours"] for r in out),
                "reproduction hours": sum(REPRODUCTION_HOURS.values()), "note": "one device, stages one after another"})
    for row in out:
        report.add("estimate", row["stage"], "paper preset", row["hours"], "hours", row["note"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (the check's purpose) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: the script's own test, under a minute")
    parser.add_argument("--steps", type=int, default=50, help="training steps per faces variant (the loss comparison)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu --tiny to test the script")
    steps = min(args.steps, 6) if args.tiny else args.steps
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"[gpu_check] {name}, torch {torch.__version__}, {'tiny shapes' if args.tiny else 'paper shapes'}", flush=True)
    report = Report()
    tic = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        semhash = check_semhash(report, device, args.tiny, Path(tmp))
    faces = check_faces(report, device, args.tiny, steps)
    stages = estimate(report, semhash, faces)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(report.rows)
    table.to_csv(out / "gpu.csv", index=False)
    md = [f"## GPU check: {name}, torch {torch.__version__}, {'tiny' if args.tiny else 'paper'} shapes, "
          f"{time.perf_counter() - tic:.0f} s", "", table.to_markdown(index=False, floatfmt=".4g"), "",
          "### The paper preset on one device", "", pd.DataFrame(stages).to_markdown(index=False, floatfmt=".3g")]
    (out / "gpu.md").write_text("\n".join(md) + "\n")
    print(f"[gpu_check] done in {time.perf_counter() - tic:.0f} s: {out / 'gpu.csv'}, {out / 'gpu.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
