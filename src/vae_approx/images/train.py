"""Training loops of the faces experiment: the digits classifier, DCGAN, encoder pretraining, joint VAE training.

Plain loops with resume checkpoints (common.checkpoint / load_resume): on the CPU an
interrupted and resumed run ends with exactly the numbers of an uninterrupted one. Every loop
seeds torch itself at its start, so the numbers depend on the settings only. `on_step(step)` is
called after every iteration (tests raise from it to simulate a kill).

BatchNorm (`decoder_bn`). With "eval" (the corrected protocol) the ground-truth decoder is used
in eval mode (running statistics from GAN training) to draw training data, so that it is one
fixed function g(z); the jointly trained decoder starts as a copy of it and is also trained in
eval mode: its BatchNorm layers normalise with the frozen running statistics while their
scales and shifts and every convolution are trained. At step 0 it is therefore exactly the
ground truth, and all drift comes from the ELBO. With "train" (the reference code) both
decoders run in training mode, so each batch is normalised by its own statistics, and the
trained copy's running statistics follow its training batches. Encoders train in train mode and
are evaluated in eval mode, like any BatchNorm network, with running statistics re-estimated
for the final weights at the end of training (`recalibrate_batchnorm`).

The reference's ELBO statistic (`elbo_ema` in the joint curve): its script logs an exponential
moving average of the training batches' ELBOs, ema <- 0.999 ema + 0.001 elbo, starting from 0
and never bias-corrected, so after n steps it weighs the ELBOs by 1 - 0.999^n in all (0.63 at
1,000 steps, 1 to within 5e-435 at the reference's 1,000,000).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..common import Progress, check_finite, checkpoint, load_resume, resume_path, save_csv, save_torch, seed_everything
from ..provenance import job_environment
from .data import quantize, to_float
from .model import (DigitsClassifier, Discriminator, Encoder, GaussianDecoder, Generator, elbo_terms, generator_spec,
                    log_q)
from .settings import FACTORS, PHASES, SIGMA_VARIANTS, GanSettings, VaeSettings


class Optimizers:
    """Several optimizers behind the one-optimizer interface of common.checkpoint/load_resume."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def _layout(module: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    return module.to(memory_format=torch.channels_last) if channels_last else module


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA where asked for (a speed option); the CPU, and bf16 false, keep fp32."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else contextlib.nullcontext()


# ---------------------------------------------------------------- the digits classifier


def train_classifier(images: np.ndarray, labels: np.ndarray, width: int, epochs: int, batch_size: int, lr: float,
                     seed: int, val_fraction: float, device: torch.device,
                     progress=None) -> tuple[DigitsClassifier, list[dict]]:
    """Adam on cross-entropy; a held-out split (val_fraction) measures accuracy each epoch.

    Inputs are quantised exactly as the images the classifier will later see.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = len(images)
    order = torch.randperm(n, generator=gen)
    n_val = int(round(val_fraction * n))
    val_idx, train_idx = order[:n_val], order[n_val:]
    x_all = quantize(to_float(np.asarray(images))) * 2 - 1
    y_all = torch.as_tensor(labels)
    model = DigitsClassifier(images.shape[1], width, int(labels.max()) + 1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rows = []
    for epoch in range(1, epochs + 1):
        model.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        total, count = 0.0, 0
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            if len(idx) < 2:
                continue
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
        row = {"epoch": epoch, "train_loss": total / max(count, 1)}
        if n_val:
            model.eval()
            with torch.no_grad():
                pred = model(x_all[val_idx].to(device)).argmax(1).cpu()
            row["val_accuracy"] = (pred == y_all[val_idx]).float().mean().item()
        rows.append(row)
        if progress is not None:
            progress.log(epoch, force=True, **{k: v for k, v in row.items() if k != "epoch"})
    model.eval()
    return model.cpu(), rows


# ---------------------------------------------------------------- DCGAN


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch, recomputable on resume: a permutation seeded by (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def generator_file(g: Generator, epoch: int) -> dict:
    return {"kind": "dcgan generator", "spec": generator_spec(g), "epoch": epoch,
            "state": {k: v.detach().cpu().clone() for k, v in g.state_dict().items()}}


def train_gan(images: np.ndarray, settings: GanSettings, epoch_dir: Path, device: torch.device,
              resume_file: Path | None, progress: Progress,
              on_step: Callable[[int], None] | None = None) -> list[dict]:
    """The DCGAN tutorial's loop; writes epoch_dir/epoch_NNN.pt after every epoch; returns per-epoch rows.

    `images` is the uint8 array (memory-mapped); each batch is read, converted to [-1, 1] and
    moved to the device on its own. Each epoch visits every image once in a seeded order; the
    last batch may be smaller (as the tutorial's DataLoader); a last batch of one image (which
    BatchNorm cannot normalise) is skipped.
    """
    s = settings
    n, channels, size = images.shape[0], images.shape[1], images.shape[2]
    torch.manual_seed(s.seed)
    netG = Generator(s.nz, s.ngf, channels, size).to(device)
    netD = Discriminator(s.ndf, channels, size).to(device)
    optG = torch.optim.Adam(netG.parameters(), lr=s.lr, betas=(s.beta1, 0.999))
    optD = torch.optim.Adam(netD.parameters(), lr=s.lr, betas=(s.beta1, 0.999))
    optimizers = Optimizers(generator=optG, discriminator=optD)
    models = {"generator": netG, "discriminator": netD}
    per_epoch = math.ceil(n / s.batch_size)
    total = s.epochs * per_epoch
    config = {**asdict(s), "n_images": n, "channels": channels, "image_size": size}

    rows: list[dict] = []
    sums = {"loss_d": 0.0, "loss_g": 0.0, "d_real": 0.0, "d_fake": 0.0, "batches": 0}
    start = 0
    ckpt = load_resume(resume_file, config, models, optimizers, progress) if resume_file else None
    epoch_dir.mkdir(parents=True, exist_ok=True)
    if ckpt is not None:
        start, rows, sums = ckpt["step"], ckpt["rows"], ckpt["sums"]
    else:  # a fresh start: no generator of an earlier, other run may stay
        for stale in epoch_dir.glob("epoch_*.pt"):
            stale.unlink()
    netG.train()
    netD.train()
    order = None
    for step in range(start + 1, total + 1):
        epoch, i = (step - 1) // per_epoch + 1, (step - 1) % per_epoch
        if order is None or i == 0:
            order = epoch_order(n, s.seed, epoch)
        idx = np.sort(order[i * s.batch_size:(i + 1) * s.batch_size].numpy())
        if len(idx) > 1:
            real = to_float(images[idx]).to(device)
            b = len(idx)
            ones, zeros = torch.ones(b, device=device), torch.zeros(b, device=device)
            # (1) discriminator: maximise log D(x) + log(1 - D(G(z)))
            optD.zero_grad(set_to_none=True)
            out_real = netD(real)
            loss_real = F.binary_cross_entropy_with_logits(out_real, ones)
            loss_real.backward()
            fake = netG(torch.randn(b, s.nz, device=device))
            out_fake = netD(fake.detach())
            loss_fake = F.binary_cross_entropy_with_logits(out_fake, zeros)
            loss_fake.backward()
            loss_d = loss_real + loss_fake
            check_finite(loss_d, "images train-gan", step, "discriminator loss")
            optD.step()
            # (2) generator: maximise log D(G(z)) on the updated discriminator
            optG.zero_grad(set_to_none=True)
            loss_g = F.binary_cross_entropy_with_logits(netD(fake), ones)
            loss_g.backward()
            check_finite(loss_g, "images train-gan", step, "generator loss")
            optG.step()
            sums["loss_d"] += loss_d.item()
            sums["loss_g"] += loss_g.item()
            sums["d_real"] += torch.sigmoid(out_real).mean().item()
            sums["d_fake"] += torch.sigmoid(out_fake).mean().item()
            sums["batches"] += 1
            progress.log(step, loss_d=loss_d.item(), loss_g=loss_g.item())
        if i == per_epoch - 1:
            k = max(sums.pop("batches"), 1)
            rows.append({"epoch": epoch, "step": step, **{key: v / k for key, v in sums.items()}})
            sums = {"loss_d": 0.0, "loss_g": 0.0, "d_real": 0.0, "d_fake": 0.0, "batches": 0}
            save_torch({**generator_file(netG, epoch), "environment": job_environment(device)},
                       epoch_dir / f"epoch_{epoch:03d}.pt")
            progress.message(f"epoch {epoch}/{s.epochs}: loss_d {rows[-1]['loss_d']:.4f} loss_g {rows[-1]['loss_g']:.4f}")
        if resume_file and step < total and (i == per_epoch - 1 or step % s.checkpoint_every == 0):
            save_torch(checkpoint(models, optimizers, step, config, rows=rows, sums=sums), resume_file)
        if on_step is not None:
            on_step(step)
    return rows


def train_gan_into(images: np.ndarray, settings: GanSettings, out_dir: Path, losses: Path,
                   device: torch.device) -> None:
    """train_gan writing its epochs into a staging folder .<out_dir>.partial/ beside `out_dir`, renamed onto it
    once the per-epoch losses are written to `losses`; the staging folder and the resume file
    (common.resume_path(out_dir)) survive a failed job, so a re-run resumes."""
    progress = Progress("images train-gan", settings.epochs * -(-len(images) // settings.batch_size),
                        settings.log_every)
    progress.message(f"{images.shape[0]} images {images.shape[1:]}, {settings.epochs} epochs, on {device}, "
                     f"{torch.get_num_threads()} threads")
    out_dir = Path(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.partial"
    resume = resume_path(out_dir)
    save_csv(pd.DataFrame(train_gan(images, settings, staging, device, resume, progress)), losses)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    resume.unlink(missing_ok=True)


# ---------------------------------------------------------------- encoder pretraining and joint training


EMA_DECAY = 0.999  # the reference script's moving average of training-batch ELBOs


def ground_truth(generator: Generator, sigma: float) -> GaussianDecoder:
    """The frozen probabilistic ground-truth decoder N(g(z), sigma^2 I), eval mode."""
    decoder = GaussianDecoder(generator, sigma, learn_sigma=False).eval()
    decoder.requires_grad_(False)
    return decoder


@torch.no_grad()
def draw(decoder: GaussianDecoder, batch_size: int, device: torch.device,
         channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, x) with z ~ N(0, I) and x = g(z) + sigma * eps from the (eval-mode) decoder."""
    z = torch.randn(batch_size, decoder.generator.nz, device=device)
    x = decoder.sample(z)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return z, x


def train_vae(truth: GaussianDecoder, encoder: Encoder, settings: VaeSettings, device: torch.device,
              resume_file: Path | None, progress: Progress,
              on_step: Callable[[int], None] | None = None) -> tuple[list[dict], Encoder, GaussianDecoder]:
    """Encoder pretraining (maximise log q(z|x) on (z, x) from the ground truth) or joint training
    (maximise the ELBO over the encoder and a copy of the ground-truth decoder, on x from the
    ground truth). Returns the curve rows, the encoder and the trained decoder (the ground
    truth itself for pretraining)."""
    s = settings
    if s.phase not in PHASES:
        raise ValueError(f"unknown phase '{s.phase}'; expected one of {sorted(PHASES)}")
    modes = FACTORS["decoder_bn"].values  # eval, train
    if s.decoder_bn not in modes:
        raise ValueError(f"unknown decoder BatchNorm mode '{s.decoder_bn}'; expected one of {modes}")
    torch.manual_seed(s.seed)
    train_bn = s.decoder_bn == modes[1]  # see the module's note on BatchNorm
    truth = _layout(truth.to(device).train(train_bn), s.channels_last)
    encoder = _layout(encoder.to(device).train(), s.channels_last)
    if s.phase == "joint":
        decoder = GaussianDecoder(copy.deepcopy(truth.generator), truth.sigma, s.learn_sigma).to(device)
        decoder.requires_grad_(True)
        if not s.learn_sigma:
            decoder.log_sigma.requires_grad_(False)
        decoder.train(train_bn)
        params = list(encoder.parameters()) + [p for p in decoder.parameters() if p.requires_grad]
        models = {"encoder": encoder, "decoder": decoder}
    else:
        decoder = truth
        params = list(encoder.parameters())
        models = {"encoder": encoder}
    optimizer = torch.optim.Adam(params, lr=s.lr, betas=(s.beta1, 0.999))
    config = asdict(s)
    stage = f"images {s.phase}"
    names = ["loss"] if s.phase == "pretrain" else ["elbo", "reconstruction", "kl"]

    rows: list[dict] = []
    sums = dict.fromkeys(names, 0.0)
    start, ema = 0, 0.0
    ckpt = load_resume(resume_file, config, models, optimizer, progress) if resume_file else None
    if ckpt is not None:
        start, rows, sums, ema = ckpt["step"], ckpt["rows"], ckpt["sums"], ckpt["ema"]
    for step in range(start + 1, s.iterations + 1):
        z, x = draw(truth, s.batch_size, device, s.channels_last)
        with autocast(device, s.bf16):
            if s.phase == "pretrain":
                mu, log_s = encoder(x)
                loss = -log_q(z, mu.float(), log_s.float()).mean()
                values = {"loss": loss}
            else:
                rec, kl = elbo_terms(x, encoder, decoder)
                rec, kl = rec.float().mean(), kl.float().mean()
                loss = kl - rec
                values = {"elbo": -loss, "reconstruction": rec, "kl": kl}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        check_finite(loss, stage, step)
        optimizer.step()
        values = {k: v.item() for k, v in values.items()}
        for k, v in values.items():
            sums[k] += v
        if s.phase == "joint":
            ema = EMA_DECAY * ema + (1 - EMA_DECAY) * values["elbo"]
        if step % s.log_every == 0 or step == s.iterations:
            count = step - (rows[-1]["step"] if rows else 0)
            rows.append({"phase": s.phase, "step": step, **{k: v / count for k, v in sums.items()}})
            if s.phase == "joint":
                rows[-1]["elbo_ema"] = ema
            sums = dict.fromkeys(names, 0.0)
            progress.log(step, force=True, **{k: v for k, v in rows[-1].items() if k in names})
        if resume_file and step % s.checkpoint_every == 0 and step < s.iterations:
            save_torch(checkpoint(models, optimizer, step, config, rows=rows, sums=sums, ema=ema), resume_file)
        if on_step is not None:
            on_step(step)
    recalibrate_batchnorm(encoder, truth, s.bn_batches, s.batch_size, device, s.channels_last)
    for module in (truth, encoder, decoder):
        module.to(memory_format=torch.contiguous_format)
    return rows, encoder.eval(), decoder


def pretrain(g: Generator, settings: VaeSettings, device: torch.device, resume_file: Path | None,
             about: str) -> tuple[list[dict], Encoder]:
    """Encoder pretraining of one run: a fresh encoder (drawn from the run's stream, settings.seed) trained on the
    ground truth N(g(z), sigma^2 I); `about` (the generator) goes into the log. Returns the curve and the encoder."""
    s = settings
    seed_everything(s.seed)
    encoder = Encoder(g.nz, s.ndf, g.channels, g.image_size, s.encoder_init)
    progress = Progress("images pretrain", s.iterations, s.log_every)
    progress.message(f"{about}, sigma {s.sigma}, {s.iterations} iterations of {s.batch_size}, decoder BatchNorm "
                     f"{s.decoder_bn}, last layer {s.encoder_init}, on {device}, {torch.get_num_threads()} threads")
    rows, encoder, _ = train_vae(ground_truth(g, s.sigma), encoder, s, device, resume_file, progress)
    return rows, encoder


def joint(g: Generator, encoder: Encoder, settings: VaeSettings, device: torch.device,
          resume_file: Path | None) -> tuple[list[dict], Encoder, GaussianDecoder]:
    """Joint training of one run: the pretrained encoder and a copy of the ground truth g by ELBO."""
    s = settings
    seed_everything(s.seed)
    progress = Progress("images joint", s.iterations, s.log_every)
    progress.message(f"sigma {s.sigma} ({SIGMA_VARIANTS[s.learn_sigma]}), {s.iterations} iterations of "
                     f"{s.batch_size}, decoder BatchNorm {s.decoder_bn}, on {device}, "
                     f"{torch.get_num_threads()} threads")
    return train_vae(ground_truth(g, s.sigma), encoder, s, device, resume_file, progress)


@torch.no_grad()
def recalibrate_batchnorm(encoder: Encoder, truth: GaussianDecoder, batches: int, batch_size: int,
                          device: torch.device, channels_last: bool) -> None:
    """Replace the encoder's BatchNorm running statistics by plain averages over `batches` fresh
    batches from the ground truth, computed with the final weights (weights unchanged).

    The running averages (momentum 0.1) of training lag behind the moving weights: at the
    quick preset's learning rates the pretrained encoder's -log q(z|x) in eval mode was about
    twice its value in train mode, and recalibration removed the gap. 0 batches keeps them.
    """
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if batches <= 0 or not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    encoder.train()
    for _ in range(batches):
        encoder(draw(truth, batch_size, device, channels_last)[1])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    encoder.eval()
