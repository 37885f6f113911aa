"""Evaluation of the faces experiment: image sets (uint8 files), Frechet distances, ELBOs, decoder drift, grids.

Image sets, N images each, generated in batches:

    ground_truth               g(z_ref)                     the reference set of every distance
    ground_truth_resample      g(z_other)                   an independent draw: the distance's floor,
                                                            i.e. what a perfect reconstruction scores
    pretrained_reconstruction  g(z'), z' ~ q_pre(z|x)       x = g(z_x) + sigma * eps (the data)
    joint_reconstruction       g_joint(z'), z' ~ q_joint(z|x)
    joint_prior                g_joint(z_x)

The protocol's sampling factors (settings.FACTORS) decide how:
- z_pairing: "independent" (corrected) draws the data from z_x = z_other, so no compared set is
  paired with the reference set; "shared" (the reference's train_celeba_04_fid.py) draws it from
  z_x = z_ref, so each reconstruction is of a noisy copy of its own reference image.
- sampling: "eval" (corrected) runs every network in eval mode on batches; "train_batch1" (the
  reference) runs every network in training mode on one image at a time, so BatchNorm
  normalises each image by its own statistics (on copies: running statistics stay untouched).
- pixel_noise: "none" (corrected) keeps the decoders' means; "joint" (the reference) adds
  sigma_joint * eps to the joint reconstructions only; "every" adds the decoder's sigma * eps to
  every set.
Reconstructions sample z' from the encoder (as the reference does). Every random number comes
from a CPU generator seeded by `seed`, drawn in one fixed order whatever the protocol, so two
protocols see the same z and the same noise (their difference is the factor's, not the draws'),
and the sets are the same on every device (up to floating point).

Each set is stored as the prepared data is, a uint8 array [N, C, H, W] (what a PNG would hold:
metrics.quantize_uint8), so the distances, the grids and pytorch-fid's own tool read the same
pixels.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..common import atomic_path
from .metrics import FeatureExtractor, GaussianStats, frechet_distance, quantize_uint8
from .model import Encoder, GaussianDecoder, kl_to_standard_normal, log_likelihood
from .train import autocast

SETS = ("ground_truth", "ground_truth_resample", "pretrained_reconstruction", "joint_reconstruction", "joint_prior")
SET_STAGE = {"ground_truth_resample": "ground truth", "pretrained_reconstruction": "pretrain",
             "joint_reconstruction": "joint", "joint_prior": "joint"}
SAMPLING = ("eval", "train_batch1")
PIXEL_NOISE = ("none", "joint", "every")
Z_PAIRING = ("independent", "shared")


@dataclass
class Models:
    truth: GaussianDecoder       # ground truth, fixed sigma
    pretrained: Encoder
    joint_encoder: Encoder
    joint_decoder: GaussianDecoder

    def all(self) -> tuple:
        return self.truth, self.pretrained, self.joint_encoder, self.joint_decoder

    def eval(self, device: torch.device, channels_last: bool = False) -> "Models":
        for m in self.all():
            m.to(device).eval()
            if channels_last:  # a speed option (about 15% more images per second on a 2-core CPU)
                m.to(memory_format=torch.channels_last)
        return self


def _randn(shape, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=gen).to(device)


def in_bf16(net):
    """net under bf16 autocast, its outputs (a tensor or a tuple of them) in fp32."""
    def apply(x):
        with autocast(x.device, True):
            out = net(x)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()
    return apply


def one_at_a_time(net):
    """net applied to each input row alone (batch 1), the outputs stacked as a batch would be."""
    def apply(x):
        outs = [net(x[i:i + 1]) for i in range(len(x))]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outs))
        return torch.cat(outs)
    return apply


@torch.no_grad()
def image_batches(models: Models, n: int, batch_size: int, seed: int, device: torch.device,
                  sampling: str = "eval", pixel_noise: str = "none", z_pairing: str = "independent",
                  bf16: bool = False):
    """Yield dicts {set name: images [b, C, H, W] in [-1, 1]} of consecutive batches, n images in all;
    `bf16`: the networks under bf16 autocast on CUDA (a speed option; the images come out in fp32)."""
    for value, allowed in ((sampling, SAMPLING), (pixel_noise, PIXEL_NOISE), (z_pairing, Z_PAIRING)):
        if value not in allowed:
            raise ValueError(f"unknown sampling factor value '{value}'; expected one of {allowed}")
    nets = models.all()
    if sampling == "train_batch1":  # training mode on copies, each image alone
        nets = tuple(one_at_a_time(copy.deepcopy(m).train()) for m in nets)
    if bf16 and device.type == "cuda":
        nets = tuple(in_bf16(net) for net in nets)
    truth, pretrained, joint_encoder, joint_decoder = nets
    sigma = {"truth": models.truth.log_sigma.exp(), "joint": models.joint_decoder.log_sigma.exp()}
    gen = torch.Generator().manual_seed(seed)
    nz = models.truth.generator.nz
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        z_ref, z_other = _randn((b, nz), gen, device), _randn((b, nz), gen, device)
        reference, other = truth(z_ref), truth(z_other)
        shape = reference.shape
        eps_x = _randn(shape, gen, device)
        eps_z = {"pretrained_reconstruction": _randn((b, nz), gen, device),
                 "joint_reconstruction": _randn((b, nz), gen, device)}
        noise = {name: _randn(shape, gen, device) for name in SETS}
        z_x, mean_x = (z_ref, reference) if z_pairing == "shared" else (z_other, other)
        x = mean_x + sigma["truth"] * eps_x
        batch = {"ground_truth": reference, "ground_truth_resample": other}
        for name, encoder, decoder in (("pretrained_reconstruction", pretrained, truth),
                                       ("joint_reconstruction", joint_encoder, joint_decoder)):
            mu, log_s = encoder(x)
            batch[name] = decoder(mu + log_s.exp() * eps_z[name])
        batch["joint_prior"] = joint_decoder(z_x)
        noisy = {"none": (), "joint": ("joint_reconstruction",), "every": SETS}[pixel_noise]
        for name in noisy:
            batch[name] = batch[name] + sigma["joint" if name.startswith("joint") else "truth"] * noise[name]
        yield batch


def write_sets(batches, n: int, sample_dir: Path, progress=None) -> dict[str, Path]:
    """Each set of `batches` into sample_dir/<set>.npy (uint8 [n, C, H, W], memory-mappable), written
    in place of a temporary file and renamed at the end, so a killed job leaves no set that looks whole."""
    sample_dir = Path(sample_dir)
    paths = {name: sample_dir / f"{name}.npy" for name in SETS}
    with contextlib.ExitStack() as stack:
        tmps = {name: stack.enter_context(atomic_path(path)) for name, path in paths.items()}
        arrays, done = {}, 0
        for batch in batches:
            for name, images in batch.items():
                if name not in arrays:
                    arrays[name] = np.lib.format.open_memmap(tmps[name], mode="w+", dtype=np.uint8,
                                                             shape=(n, *images.shape[1:]))
                arrays[name][done:done + len(images)] = quantize_uint8(images).cpu().numpy()
            done += len(batch["ground_truth"])
            if progress is not None:
                progress.message(f"{done}/{n} images per set")
        if done != n:
            raise RuntimeError(f"generated {done} images per set, expected {n}")
        for name in arrays:
            arrays[name].flush()
        arrays.clear()  # closes the memory maps before the renames
    return paths


def set_distances(sample_dir: Path, extractor: FeatureExtractor, batch_size: int, progress=None) -> list[dict]:
    """The Frechet distance of every set in sample_dir (uint8 files) to the ground_truth set, as tidy rows."""
    from .data import load_images
    sets = {name: load_images(Path(sample_dir) / f"{name}.npy") for name in SETS}
    sizes = {name: a.shape for name, a in sets.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{sample_dir}: image sets of different shapes {sizes}")
    stats = {}
    for name, images in sets.items():
        stats[name] = GaussianStats(extractor.dim)
        for start in range(0, len(images), batch_size):
            stats[name].update(extractor.of_uint8(images[start:start + batch_size]))
        if progress is not None:
            progress.message(f"features of {name}: {len(images)} images")
    n = len(sets["ground_truth"])
    return [{"stage": SET_STAGE[name], "metric": extractor.metric, "image_set": name,
             "value": frechet_distance(stats[name], stats["ground_truth"], extractor.frechet), "n": n}
            for name in SETS[1:]]


@torch.no_grad()
def heldout_elbo(encoder: Encoder, decoder: GaussianDecoder, truth: GaussianDecoder, n: int, batch_size: int,
                 seed: int, device: torch.device) -> dict[str, float]:
    """Mean ELBO (and its two terms) per image on a fixed held-out set of n ground-truth samples
    x = g(z) + sigma * eps (seeded: every stage sees the same images), all in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    sums = {"elbo": 0.0, "reconstruction": 0.0, "kl": 0.0}
    nz = truth.generator.nz
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        mean = truth(_randn((b, nz), gen, device))
        x = mean + truth.log_sigma.exp() * _randn(mean.shape, gen, device)
        z_gen = torch.Generator().manual_seed(seed + 1 + start)
        mu, log_s = encoder(x)
        z = mu + log_s.exp() * _randn(mu.shape, z_gen, device)
        rec = log_likelihood(x, decoder(z), decoder.log_sigma)
        kl = kl_to_standard_normal(mu, log_s)
        sums["reconstruction"] += rec.sum().item()
        sums["kl"] += kl.sum().item()
        sums["elbo"] += (rec - kl).sum().item()
    return {k: v / n for k, v in sums.items()}


def save_grid(images: torch.Tensor, path, nrow: int = 8) -> None:
    """A PNG grid of images in [-1, 1], written atomically."""
    from torchvision.utils import save_image

    with atomic_path(path) as tmp:
        save_image(images.cpu(), tmp, nrow=nrow, normalize=True, value_range=(-1, 1), format="png")


# The comparison figure's rows: the same z_b down each column (the truth, its two reconstructions
# from x_b = g(z_b) + noise, and the jointly trained decoder at z_b).
COMPARISON = (("ground_truth_resample", "ground truth g(z)"),
              ("pretrained_reconstruction", "pretrained reconstruction"),
              ("joint_reconstruction", "joint reconstruction"),
              ("joint_prior", "joint decoder at z"))
COMPARISON_PIXELS = 128  # each image drawn at least this many pixels wide (4x the 32-pixel digits)


def save_comparison(grids: dict[str, torch.Tensor], path, columns: int = 8) -> None:
    """One figure, one column per z: the rows of COMPARISON, each image scaled up (nearest) to at
    least COMPARISON_PIXELS, written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..common import save_figure
    n = min(columns, *(len(grids[name]) for name, _ in COMPARISON))
    size = grids[COMPARISON[0][0]].shape[-1]
    scale = max(1, -(-COMPARISON_PIXELS // size))
    inch = size * scale / 100  # at dpi 100, one image is size * scale pixels
    margin = 2.2  # inches left of the images for the row labels
    fig, axes = plt.subplots(len(COMPARISON), n, figsize=(n * inch + margin, len(COMPARISON) * inch + 0.2),
                             squeeze=False, gridspec_kw={"wspace": 0.02, "hspace": 0.02})
    for r, (name, label) in enumerate(COMPARISON):
        for c in range(n):
            image = ((grids[name][c].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
            ax = axes[r, c]
            ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
    fig.subplots_adjust(left=margin / (n * inch + margin), right=0.995, top=0.995, bottom=0.005)
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def write_grids(sample_dir: Path, grid_dir: Path, grid_n: int) -> None:
    """A PNG grid of each set's first grid_n images, and the comparison figure, from the uint8 files."""
    from .data import load_images, to_float
    grids = {name: to_float(load_images(Path(sample_dir) / f"{name}.npy")[:grid_n]) for name in SETS}
    for name in SETS:
        save_grid(grids[name], Path(grid_dir) / f"{name}.png")
    save_comparison(grids, Path(grid_dir) / "comparison.png")


@torch.no_grad()
def heldout(models: Models, n_eval: int, batch_size: int, seed: int, device: torch.device,
            channels_last: bool = False) -> list[dict]:
    """The held-out ELBO of each stage, the decoder drift and the joint decoder's sigma, as tidy rows,
    every network in eval mode.

    Decoder drift: the mean over n_eval latent draws and every pixel of (g_joint(z) - g(z))^2, the
    two decoders' means on the same z (0 before joint training by construction).
    """
    models.eval(device, channels_last)
    rows = []
    for stage, encoder, decoder in (("pretrain", models.pretrained, models.truth),
                                    ("joint", models.joint_encoder, models.joint_decoder)):
        terms = heldout_elbo(encoder, decoder, models.truth, n_eval, batch_size, seed, device)
        rows += [{"stage": stage, "metric": key, "image_set": "heldout", "value": value, "n": n_eval}
                 for key, value in terms.items()]
    gen = torch.Generator().manual_seed(seed + 1)
    drift = 0.0
    for start in range(0, n_eval, batch_size):
        z = _randn((min(batch_size, n_eval - start), models.truth.generator.nz), gen, device)
        drift += (models.joint_decoder(z) - models.truth(z)).pow(2).flatten(1).mean(1).sum().item()
    rows.append({"stage": "joint", "metric": "decoder_drift", "image_set": "heldout", "value": drift / n_eval,
                 "n": n_eval})
    rows.append({"stage": "joint", "metric": "sigma", "image_set": "", "value": models.joint_decoder.sigma, "n": 0})
    rows.append({"stage": "joint", "metric": "learn_sigma", "image_set": "",
                 "value": float(models.joint_decoder.learn_sigma), "n": 0})
    return rows
