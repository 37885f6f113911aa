"""Faces experiment: our sampling path and training steps against the reference formulation.

Everything at the paper's shape (64x64x3 images, nz 100, ngf = ndf = 64, sigma 0.05), with
networks of the tutorial's random initialisation (speed does not depend on the weights), in
one process, on the same machine, so the ratios compare like with like.

1. Sampling for FID. The reference formulation, as the reproduction's FID script does it (in
   our own code): one sample per iteration (batch 1), every network in training mode, a
   ground-truth image g(z), a reconstruction through the pretrained encoder and the ground
   truth, and one through the jointly trained encoder and decoder (with pixel noise), each
   written as its own PNG file, for pytorch-fid to read back later (not timed). Ours
   (`vae_approx.images.evaluate.image_batches`, what the evaluation stage runs): batches of
   500, eval mode, no gradients, five image sets kept in memory for the feature extractor
   (ground truth, its independent redraw, both reconstructions and the joint decoder's prior
   samples), i.e. more images per sample than the reference. Reported: samples per second.
2. Training steps, batch 128: encoder pretraining (maximise log q(z|x) on (z, x) drawn from
   the ground truth) and joint training (ELBO over the encoder and a copy of the decoder).
   The reference formulation, as the reproduction's scripts do it: the ground-truth decoder
   in training mode, the loss written out with its rounded constant, the default Adam, and
   the running statistics it logs at every step synced to the host. Ours:
   `vae_approx.images.train.train_vae` (eval-mode ground truth, optional channels-last).
   Reported: seconds per iteration (median after warm-up) and the loss of both sides at the
   same iterations.

    python benchmarks/images_bench.py                          # 60 reference samples, 10 iterations
    python benchmarks/images_bench.py --reference-samples 30 --iterations 6 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torchvision.utils import save_image

from vae_approx.common import Progress, set_threads
from vae_approx.images import settings as S
from vae_approx.images.evaluate import Models, image_batches
from vae_approx.images.model import Encoder, GaussianDecoder, Generator
from vae_approx.images.settings import VaeSettings
from vae_approx.images.train import ground_truth, train_vae

ROOT = Path(__file__).resolve().parents[1]


def preset_section(*presets: str) -> dict:
    """The `images` section of config.yaml updated by each preset file in turn (as Snakemake merges --configfile)."""
    def update(base: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                update(base[key], value)
            else:
                base[key] = value

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for preset in presets:
        update(config, yaml.safe_load((ROOT / "presets" / preset).read_text()))
    return config["images"]


QUICK, PAPER_CONFIG = preset_section(), preset_section("paper.yaml")


@dataclass(frozen=True)
class Shape:
    nz: int
    width: int       # ngf = ndf
    channels: int
    size: int
    sigma: float
    batch: int


# The paper preset's shape (64x64x3, nz 100, widths 64, sigma 0.05, batch 128) and training steps (lr, beta1).
PAPER = Shape(PAPER_CONFIG["gan"]["nz"], PAPER_CONFIG["gan"]["ngf"], 3, PAPER_CONFIG["image_size"],
              PAPER_CONFIG["sigma"], PAPER_CONFIG["pretrain"]["batch_size"])
PAPER_STEPS = {phase: (PAPER_CONFIG[phase]["lr"], PAPER_CONFIG[phase]["beta1"]) for phase in S.PHASES}
CORRECTED = S.corrected()  # the protocol ours runs


def configure(shape: Shape, device: torch.device) -> None:
    """Set the shape and the device (--device) of every function below: one configuration per process at a time
    (gpu_check.py sets a tiny one)."""
    global DEVICE, NZ, WIDTH, CHANNELS, SIZE, SIGMA, BATCH
    DEVICE = device
    NZ, WIDTH, CHANNELS, SIZE, SIGMA, BATCH = shape.nz, shape.width, shape.channels, shape.size, shape.sigma, shape.batch


configure(PAPER, torch.device("cpu"))


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def paper_models(seed: int) -> tuple[Generator, Encoder, Encoder, Generator]:
    torch.manual_seed(seed)
    g = Generator(NZ, WIDTH, CHANNELS, SIZE)
    pretrained, joint_encoder = (Encoder(NZ, WIDTH, CHANNELS, SIZE, CORRECTED["encoder_init"]) for _ in range(2))
    return tuple(m.to(DEVICE) for m in (g, pretrained, joint_encoder, copy.deepcopy(g)))


# ---------------------------------------------------------------- sampling


def reference_sampling(g, pretrained, joint_encoder, joint_decoder, n: int, out_dir: Path) -> float:
    """Samples per second of the reference's FID sampling loop (batch 1, training mode, PNGs).
    On copies: training mode updates BatchNorm's running statistics."""
    g, pretrained, joint_encoder, joint_decoder = (copy.deepcopy(m).train() for m in
                                                   (g, pretrained, joint_encoder, joint_decoder))
    tic = time.perf_counter()
    for i in range(n):
        with torch.no_grad():
            x_truth = g(torch.randn(1, NZ, 1, 1, device=DEVICE))
            x = torch.normal(x_truth, SIGMA)
        mu, log_s = pretrained(x)                       # as the reference: outside no_grad
        x_pretrained = g(torch.normal(mu, log_s.exp()))
        mu, log_s = joint_encoder(x)
        x_joint = torch.normal(joint_decoder(torch.normal(mu, log_s.exp())), SIGMA)
        for name, image in (("truth", x_truth), ("pretrained", x_pretrained), ("joint", x_joint)):
            save_image(image, out_dir / f"{name}_{i}.png", normalize=True, value_range=(-1, 1))
    sync()
    return n / (time.perf_counter() - tic)


def ours_sampling(g, pretrained, joint_encoder, joint_decoder, n: int, batch_size: int,
                  channels_last: bool) -> float:
    models = Models(GaussianDecoder(g, SIGMA), pretrained, joint_encoder, GaussianDecoder(joint_decoder, SIGMA))
    models.eval(DEVICE, channels_last)
    tic = time.perf_counter()
    count = 0
    sampling = {name: CORRECTED[name] for name in S.SAMPLING_FACTORS}
    for batch in image_batches(models, n, batch_size, 0, DEVICE, **sampling, bf16=False):
        count += len(batch["ground_truth"])
    sync()
    rate = count / (time.perf_counter() - tic)
    for m in (g, pretrained, joint_encoder, joint_decoder):
        m.to(memory_format=torch.contiguous_format)
    return rate


# ---------------------------------------------------------------- training steps


def reference_steps(phase: str, g, encoder, iterations: int, lr: float, beta1: float) -> tuple[list[float], list[float]]:
    """Seconds and loss per iteration of the reference formulation of `phase`."""
    truth = copy.deepcopy(g).train()                    # never put in eval mode by the reference
    truth.requires_grad_(False)
    encoder = copy.deepcopy(encoder).train()
    params = list(encoder.parameters())
    if phase == "joint":
        decoder = copy.deepcopy(g).train()
        params += list(decoder.parameters())
    optimizer = torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999))
    running = torch.zeros((), device=DEVICE)           # the reference's logged running averages
    seconds, losses = [], []
    for _ in range(iterations):
        tic = time.perf_counter()
        with torch.no_grad():
            z = torch.randn(BATCH, NZ, 1, 1, device=DEVICE)
            x = torch.normal(truth(z), SIGMA)
        optimizer.zero_grad()
        mu, log_s = encoder(x)
        s = log_s.exp()
        if phase == "pretrain":
            diff = mu - z[:, :, 0, 0]
            loss = (torch.log(s) + diff * diff / (2 * s * s) + 0.9189).sum(1).mean()
        else:
            mean = decoder(mu + s * torch.randn_like(mu))            # reparameterised, as the reference
            rec = (-np.log(SIGMA) - (x - mean) ** 2 / (2 * SIGMA ** 2) - 0.9189).flatten(1).sum(1)
            kl = 0.5 * (s * s + mu * mu - 1 - 2 * torch.log(s)).sum(1)
            loss = (kl - rec).mean()
        loss.backward()
        optimizer.step()
        running = 0.999 * running + 0.001 * loss.detach()
        losses.append(loss.item())                       # logged every step: a host sync
        running.item()
        seconds.append(time.perf_counter() - tic)
    return seconds, losses


def ours_steps(phase: str, g, encoder, iterations: int, lr: float, beta1: float,
               channels_last: bool, bf16: bool = False) -> tuple[list[float], list[float]]:
    settings = VaeSettings(phase, iterations, BATCH, lr, beta1, SIGMA, 0, 1, 10**9, ndf=WIDTH, learn_sigma=False,
                           channels_last=channels_last, bf16=bf16, bn_batches=0,
                           decoder_bn=CORRECTED["decoder_bn"], encoder_init=CORRECTED["encoder_init"])
    stamps = [time.perf_counter()]
    rows, _, _ = train_vae(ground_truth(copy.deepcopy(g), SIGMA), copy.deepcopy(encoder), settings,
                           DEVICE, None, Progress(f"ours {phase}", iterations, 10**9, stream=io.StringIO()),
                           on_step=lambda step: stamps.append(time.perf_counter()))
    key = "loss" if phase == "pretrain" else "elbo"
    losses = [r[key] if phase == "pretrain" else -r[key] for r in rows]  # same sign as the reference's loss
    return list(np.diff(stamps)), losses


def median_after_warmup(seconds: list[float]) -> float:
    return float(np.median(seconds[2:] if len(seconds) > 3 else seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-samples", type=int, default=60)
    parser.add_argument("--samples", type=int, default=QUICK["evaluate"]["n_samples"],
                        help="our samples (batches of --batch-size; default: the quick preset's images per set)")
    parser.add_argument("--batch-size", type=int, default=PAPER_CONFIG["evaluate"]["batch_size"])
    parser.add_argument("--iterations", type=int, default=10, help="training iterations per side and phase")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="both sides run here (cpu, cuda)")
    args = parser.parse_args()
    configure(PAPER, torch.device(args.device))
    # The reference runs first with torch's defaults but for the thread count; ours then takes
    # its own settings (vae_approx.common.set_threads), which cannot be undone within a process.
    torch.set_num_threads(args.threads)
    g, pretrained, joint_encoder, joint_decoder = paper_models(args.seed)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref_rate = reference_sampling(g, pretrained, joint_encoder, joint_decoder, args.reference_samples, Path(tmp))
    phases = PAPER_STEPS
    ref_steps = {p: reference_steps(p, g, pretrained, args.iterations, *hp) for p, hp in phases.items()}

    set_threads(args.threads)
    print(f"{DEVICE}, {args.threads} threads; paper shape: {SIZE}x{SIZE}x{CHANNELS}, nz {NZ}, widths {WIDTH}, batch {BATCH}")
    print()
    print("| what | ours | reference formulation | speed-up |")
    print("|---|---|---|---|")
    for channels_last in (False, True):
        rate = ours_sampling(g, pretrained, joint_encoder, joint_decoder, args.samples, args.batch_size, channels_last)
        label = "channels-last" if channels_last else "contiguous"
        rows.append(f"| sampling for FID, samples/s (ours: batch {args.batch_size}, {label}) | {rate:.1f} | "
                    f"{ref_rate:.2f} | {rate / ref_rate:.1f}x |")
        print(rows[-1], flush=True)
    curves = {}
    for phase, hp in phases.items():
        ref_seconds, ref_losses = ref_steps[phase]
        for channels_last in (False, True):
            seconds, losses = ours_steps(phase, g, pretrained, args.iterations, *hp, channels_last)
            label = "channels-last" if channels_last else "contiguous"
            ours_s, ref_s = median_after_warmup(seconds), median_after_warmup(ref_seconds)
            rows.append(f"| {phase}, s/iteration (ours: {label}) | {ours_s:.3f} | {ref_s:.3f} | {ref_s / ours_s:.2f}x |")
            print(rows[-1], flush=True)
            curves[(phase, label)] = losses
        curves[(phase, "reference")] = ref_losses
    print()
    for (phase, label), losses in curves.items():
        print(f"{phase:8s} {label:13s} loss per iteration: " + ", ".join(f"{v:.1f}" for v in losses))


if __name__ == "__main__":
    main()
