"""Evaluation of the faces experiment: image sets, Frechet distances, ELBOs, decoder drift, grids.

Image sets, N images each, generated in batches with every network in eval mode, and all
treated alike: decoder means, no pixel noise on any output (the reference added noise to one
set only and sampled in training mode; see the design page).

    ground_truth               g(z_a)                       the reference set of every distance
    ground_truth_resample      g(z_b)                       an independent draw: the distance's floor,
                                                            i.e. what a perfect reconstruction scores
    pretrained_reconstruction  g(z'), z' ~ q_pre(z|x_b)     x_b = g(z_b) + sigma * eps (the data)
    joint_reconstruction       g_joint(z'), z' ~ q_joint(z|x_b)
    joint_prior                g_joint(z_b)

z_a, z_b ~ N(0, I) are independent, so no compared set is paired with the reference set.
With `reference_protocol` the sets are drawn as the reference code draws them, for comparison:
every network in training mode (BatchNorm on the statistics of the evaluation batch; the
reference's batches hold one image) and pixel noise sigma * eps added to the joint
reconstructions only.
Reconstructions sample z' from the encoder (as the reference does) and output the decoder's
mean. Decoder drift is the mean over images and pixels of (g_joint(z_b) - g(z_b))^2.
Every random draw comes from a CPU generator seeded by `seed`, so the sets are the same on
every device (up to floating point).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from ..common import atomic_path
from .metrics import FeatureExtractor, GaussianStats, frechet_distance
from .model import Encoder, GaussianDecoder, kl_to_standard_normal, log_likelihood

SETS = ("ground_truth", "ground_truth_resample", "pretrained_reconstruction", "joint_reconstruction", "joint_prior")
SET_STAGE = {"ground_truth_resample": "ground truth", "pretrained_reconstruction": "pretrain",
             "joint_reconstruction": "joint", "joint_prior": "joint"}


@dataclass
class Models:
    truth: GaussianDecoder       # ground truth, fixed sigma
    pretrained: Encoder
    joint_encoder: Encoder
    joint_decoder: GaussianDecoder

    def eval(self, device: torch.device, channels_last: bool = False) -> "Models":
        for m in (self.truth, self.pretrained, self.joint_encoder, self.joint_decoder):
            m.to(device).eval()
            if channels_last:  # a speed option (about 15% more images per second on a 2-core CPU)
                m.to(memory_format=torch.channels_last)
        return self


def _randn(shape, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=gen).to(device)


@torch.no_grad()
def image_batches(models: Models, n: int, batch_size: int, seed: int, device: torch.device,
                  reference_protocol: bool = False):
    """Yield dicts {set name: images [b, C, H, W]} of consecutive batches, n images in all."""
    if reference_protocol:  # training mode on copies: BatchNorm's running statistics stay untouched
        models = Models(*(copy.deepcopy(m).train() for m in
                          (models.truth, models.pretrained, models.joint_encoder, models.joint_decoder)))
    gen = torch.Generator().manual_seed(seed)
    nz = models.truth.generator.nz
    sigma = models.truth.log_sigma.exp()
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        z_a, z_b = _randn((b, nz), gen, device), _randn((b, nz), gen, device)
        truth_b = models.truth(z_b)
        x_b = truth_b + sigma * _randn(truth_b.shape, gen, device)
        batch = {"ground_truth": models.truth(z_a), "ground_truth_resample": truth_b}
        for name, encoder, decoder in (("pretrained_reconstruction", models.pretrained, models.truth),
                                       ("joint_reconstruction", models.joint_encoder, models.joint_decoder)):
            mu, log_s = encoder(x_b)
            batch[name] = decoder(mu + log_s.exp() * _randn(mu.shape, gen, device))
        if reference_protocol:
            joint = batch["joint_reconstruction"]
            batch["joint_reconstruction"] = joint + models.joint_decoder.log_sigma.exp() * _randn(joint.shape, gen, device)
        batch["joint_prior"] = models.joint_decoder(z_b)
        yield batch


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


def evaluate(models: Models, extractor: FeatureExtractor, n: int, batch_size: int, seed: int, n_eval: int,
             grid_n: int, grid_dir: Path | None, device: torch.device, progress=None,
             reference_protocol: bool = False, channels_last: bool = False) -> list[dict]:
    """Every metric of the table as tidy rows {stage, metric, image_set, value, n}."""
    models.eval(device, channels_last)
    stats = {name: GaussianStats(extractor.dim) for name in SETS}
    grids: dict[str, list[torch.Tensor]] = {name: [] for name in SETS}
    drift_sum, done = 0.0, 0
    for batch in image_batches(models, n, batch_size, seed, device, reference_protocol):
        for name, images in batch.items():
            stats[name].update(extractor(images))
            have = sum(len(g) for g in grids[name])
            if have < grid_n:
                grids[name].append(images[: grid_n - have].cpu())
        drift_sum += (batch["joint_prior"] - batch["ground_truth_resample"]).pow(2).flatten(1).mean(1).sum().item()
        done += len(batch["ground_truth"])
        if progress is not None:
            progress.message(f"{done}/{n} images per set")
    rows = []
    metric = extractor.metric
    for name in SETS[1:]:
        rows.append({"stage": SET_STAGE[name], "metric": metric, "image_set": name,
                     "value": frechet_distance(stats[name], stats["ground_truth"], extractor.frechet), "n": n})
    rows.append({"stage": "joint", "metric": "decoder_drift", "image_set": "joint_prior", "value": drift_sum / n, "n": n})
    for stage, encoder, decoder in (("pretrain", models.pretrained, models.truth),
                                    ("joint", models.joint_encoder, models.joint_decoder)):
        terms = heldout_elbo(encoder, decoder, models.truth, n_eval, batch_size, seed + 7919, device)
        for key, value in terms.items():
            rows.append({"stage": stage, "metric": key, "image_set": "heldout", "value": value, "n": n_eval})
    rows.append({"stage": "joint", "metric": "sigma", "image_set": "", "value": models.joint_decoder.sigma, "n": 0})
    rows.append({"stage": "all", "metric": "reference_protocol", "image_set": "", "value": float(reference_protocol), "n": 0})
    if extractor.kind == "inception":  # 1: weights that failed their SHA-256 check (tests only): not FID
        rows.append({"stage": "all", "metric": "inception_unverified", "image_set": "",
                     "value": float(not extractor.verified), "n": 0})
    if grid_dir is not None and grid_n > 0:
        for name in SETS:
            save_grid(torch.cat(grids[name]), Path(grid_dir) / f"{name}.png")
        save_comparison({name: torch.cat(grids[name]) for name in SETS}, Path(grid_dir) / "comparison.png")
    return rows
