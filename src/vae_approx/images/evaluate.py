"""Evaluation of the faces experiment: Frechet distances and their feature extractors, the image sets
(uint8 files), held-out ELBOs, decoder drift, the ground-truth generator's choice, grids.

Frechet distances. Both compare the mean and covariance of features, accumulated batch by batch
in float64 (running sums of f and f f^T), so no set of images or activations is ever held whole.
The digits distance (`fd_digits`, on the features of the digits classifier model.DigitsClassifier)
is pytorch-fid's `calculate_frechet_distance` (scipy.linalg.sqrtm of C_a C_b; the reference
implementation); the Inception distance (`fid`, 2048 features, where sqrtm took 12-17 s per
distance on 2 cores here) is `frechet_distance_eigh`, the same quantity from two symmetric
eigendecompositions: it agrees with pytorch-fid's to about 1e-15 relative on full-rank covariances
and to about 1e-7 on rank-deficient ones (fewer feature vectors than dimensions), where it is the
closer of the two to the exact value (tests/test_images_model.py). The distance on the digits
classifier's features is never called FID.

Images reach a feature extractor as the reference's PNG files would: pixels in [-1, 1] are
clipped and quantised to 8 bits (torchvision's save_image; data.quantize), then mapped to the
extractor's input. pytorch-fid reads PNGs as [0, 1] and its InceptionV3 (normalize_input=True)
scales them to [-1, 1] and resizes bilinearly to 299x299.

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
data.quantize_uint8), so the distances, the grids and pytorch-fid's own tool read the same
pixels.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from ..common import InputError, Progress, atomic_path
from .data import (check_inception_weights, inception_weights_path, load_images, quantize, quantize_uint8, to_float,
                   torch_home_of)
from .model import (Encoder, GaussianDecoder, check_same, generator_spec, kl_to_standard_normal, load_classifier,
                    load_generator, load_joint, load_pretrained, log_likelihood)
from .ais import iwae, sandwich
from .settings import AUTO, DISTANCES, FACTORS, IMAGE_SETS
from .train import autocast, ground_truth


# ---------------------------------------------------------------- Frechet distance


class GaussianStats:
    """Mean and covariance of feature vectors from running float64 sums, one batch at a time."""

    def __init__(self, dim: int):
        self.n = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != len(self.sum):
            raise ValueError(f"features of shape {f.shape}, expected [B, {len(self.sum)}]")
        self.n += len(f)
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Sample mean and unbiased covariance (np.cov's, as pytorch-fid computes it)."""
        if self.n < 2:
            raise ValueError("a covariance needs at least 2 feature vectors")
        mu = self.sum / self.n
        cov = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, cov


def frechet_distance_eigh(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, S1) and N(mu2, S2), in float64, by symmetric eigendecompositions.

        d^2 = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))

    (Dowson & Landau, "The Frechet distance between multivariate normal distributions",
    J. Multivariate Analysis 12, 1982; on Inception features this is FID, Heusel et al., "GANs
    trained by a two time-scale update rule converge to a local Nash equilibrium", NeurIPS 2017.)

    Identity used: Tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2.
    Write S1 = V diag(w) V^T (eigh; eigenvalues below 0 from round-off clipped to 0) and
    B = V diag(sqrt(w)), so S1 = B B^T and sqrt(S1) = B V^T. The eigenvalues of S1 S2 = B (B^T S2)
    equal those of B^T S2 B (up to zeros), and B^T S2 B = V^T sqrt(S1) S2 sqrt(S1) V is symmetric
    positive semi-definite: its eigenvalues (eigvalsh, clipped at 0) are real and >= 0, and
    Tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i). This needs no Cholesky factor, so singular
    covariances (fewer feature vectors than dimensions) work too. Cost: one eigh with vectors, one
    without, two matrix products, all on D x D symmetric matrices, instead of sqrtm's complex
    Schur decomposition of the non-symmetric S1 S2 (2048 dimensions, 2 CPU cores: about 2 s
    instead of 12-17 s). pytorch-fid's `calculate_frechet_distance` stays the reference
    implementation (`frechet_distance_pytorch_fid`) and computes the digits distance.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"Frechet distance: means {mu1.shape}, {mu2.shape} and covariances {s1.shape}, "
                         f"{s2.shape} do not fit together")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2  # symmetric to the last bit, as eigh assumes
    w, v = linalg.eigh(s1, driver="evd")  # divide and conquer: the fastest driver here at D = 2048
    b = v * np.sqrt(np.clip(w, 0, None))
    m = b.T @ s2 @ b
    lam = linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(lam, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_distance_pytorch_fid(mu1, sigma1, mu2, sigma2) -> float:
    """pytorch-fid's `calculate_frechet_distance` (scipy.linalg.sqrtm of S1 S2): the reference."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    with warnings.catch_warnings():  # scipy deprecates sqrtm's disp argument that pytorch-fid passes
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


FRECHET = {"pytorch-fid": frechet_distance_pytorch_fid, "eigh": frechet_distance_eigh}
FRECHET_METHOD = {"fd_digits": "pytorch-fid", "fid": "eigh"}  # metric -> how its distance is computed


def frechet_distance(a: GaussianStats, b: GaussianStats, method: str = "pytorch-fid") -> float:
    """d^2 = |mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)), by pytorch-fid's function or by
    `frechet_distance_eigh` (method "eigh"); FeatureExtractor.frechet names each metric's method."""
    if method not in FRECHET:
        raise ValueError(f"unknown Frechet distance method {method!r}; expected one of {sorted(FRECHET)}")
    mu1, s1 = a.mean_cov()
    mu2, s2 = b.mean_cov()
    return FRECHET[method](mu1, s1, mu2, s2)


# ---------------------------------------------------------------- Inception


def load_inception(torch_home, device: torch.device | str, sha256: str, unverified_ok: bool) -> nn.Module:
    """pytorch-fid's InceptionV3 (FID weights, 2048 pool3 features), offline, after a SHA-256 check.

    The weights must already be at <torch_home>/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth
    (rule download_inception, `python -m vae_approx.images fetch-inception`, or placed by hand);
    TORCH_HOME and the torch.hub directory point there, so pytorch-fid finds the file and never
    downloads. Before loading, the file's SHA-256 must start with 6726825d and equal `sha256`
    when one is pinned (`data.check_inception_weights`; an InputError otherwise). With
    `unverified_ok` (tests and wiring checks only) a file that fails the check is loaded anyway,
    with a warning; the model's `weights_verified` says which, and distances computed with
    unverified weights are not FID.
    """
    import torch.hub
    from pytorch_fid.inception import InceptionV3

    weights = inception_weights_path(torch_home)
    if not weights.is_file():
        raise InputError(f"Inception weights not found: {weights}; fetch them with rule download_inception "
                         f"(python -m vae_approx.images fetch-inception --torch-home {torch_home}) or place the "
                         "file there by hand")
    verified = check_inception_weights(weights, sha256, unverified_ok)
    os.environ["TORCH_HOME"] = str(Path(torch_home).resolve())
    previous = getattr(torch.hub, "_hub_dir", None)
    torch.hub.set_dir(str(Path(torch_home).resolve() / "hub"))
    try:
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True)
    except Exception as exc:
        raise InputError(f"Inception weights {weights}: cannot load ({type(exc).__name__}: {exc})") from exc
    finally:
        torch.hub._hub_dir = previous
    model.weights_verified = verified
    return model.eval().to(device)


# ---------------------------------------------------------------- feature extractors


class FeatureExtractor:
    """images in [-1, 1], [B, C, H, W] -> float features [B, D]; `metric` names the distance,
    `frechet` how it is computed (FRECHET_METHOD), `verified` whether Inception weights passed
    their SHA-256 check (always True for the digits classifier), `label` what to call it."""

    def __init__(self, kind: str, model: nn.Module, dim: int, fn: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device, verified: bool = True):
        self.kind, self.model, self.dim, self.fn, self.device = kind, model, dim, fn, device
        self.metric = DISTANCES[kind]
        self.frechet = FRECHET_METHOD[self.metric]
        self.verified = verified

    @property
    def label(self) -> str:
        if self.kind == "digits":
            return "fd_digits (digits-classifier features, not FID)"
        if not self.verified:
            return "Inception features with UNVERIFIED weights (the 'fid' numbers are NOT FID)"
        return "FID (Inception features, weights SHA-256-checked)"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(quantize(images.to(self.device).float())).double().cpu()

    @torch.no_grad()
    def of_uint8(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Features of stored uint8 images [B, C, H, W] (a PNG's pixel values), read as pytorch-fid reads a PNG."""
        if not isinstance(images, torch.Tensor):  # a read-only memory map: copy before torch sees it
            images = torch.from_numpy(np.require(images, requirements=["C", "W"]))
        return self.fn(images.to(self.device).float() / 255).double().cpu()


def make_extractor(kind: str, device: torch.device, path, channels: int, inception_sha256: str,
                   inception_unverified_ok: bool) -> FeatureExtractor:
    """`digits`: the pooled features of the classifier file `path`; `inception`: pytorch-fid's 2048
    pool3 features (grey images are repeated over the three colour channels), from the weights file
    `path` (<torch_home>/hub/checkpoints/...) if it passes `load_inception`'s SHA-256 check (or, with
    `inception_unverified_ok`, marked unverified)."""
    if kind == "digits":
        model = load_classifier(path).to(device)
        return FeatureExtractor(kind, model, model.feature_dim, lambda u: model.features(u * 2 - 1), device)
    if kind == "inception":
        model = load_inception(torch_home_of(path), device, inception_sha256, inception_unverified_ok)

        def fn(u: torch.Tensor) -> torch.Tensor:
            if u.shape[1] == 1:
                u = u.expand(-1, 3, -1, -1)
            return model(u)[0].flatten(1)
        return FeatureExtractor(kind, model, 2048, fn, device, model.weights_verified)
    raise InputError(f"unknown feature extractor '{kind}'; expected one of {sorted(DISTANCES)}")


# ---------------------------------------------------------------- image sets


SET_STAGE = {"ground_truth_resample": "ground truth", "pretrained_reconstruction": "pretrain",
             "joint_reconstruction": "joint", "joint_prior": "joint"}


@dataclass
class Models:
    truth: GaussianDecoder       # ground truth, fixed sigma
    pretrained: Encoder
    joint_encoder: Encoder
    joint_decoder: GaussianDecoder

    def all(self) -> tuple:
        return self.truth, self.pretrained, self.joint_encoder, self.joint_decoder

    def eval(self, device: torch.device, channels_last: bool) -> "Models":
        for m in self.all():
            m.to(device).eval()
            if channels_last:  # a speed option (about 15% more images per second on a 2-core CPU)
                m.to(memory_format=torch.channels_last)
        return self


def load_models(generator, pretrained, joint) -> Models:
    """The ground truth, the pretrained encoder and the jointly trained VAE of one run (their files), checked to
    match."""
    _, g = load_generator(generator)
    esaved, encoder = load_pretrained(pretrained)
    jsaved, joint_encoder, joint_decoder = load_joint(joint)
    check_same(esaved["generator_spec"], generator_spec(g), f"{pretrained} vs {generator}")
    check_same(jsaved["generator_spec"], generator_spec(g), f"{joint} vs {generator}")
    return Models(ground_truth(g, esaved["sigma"]), encoder, joint_encoder, joint_decoder)


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
                  sampling: str, pixel_noise: str, z_pairing: str, bf16: bool):
    """Yield dicts {set name: images [b, C, H, W] in [-1, 1]} of consecutive batches, n images in all;
    `bf16`: the networks under bf16 autocast on CUDA (a speed option; the images come out in fp32)."""
    for name, value in (("sampling", sampling), ("pixel_noise", pixel_noise), ("z_pairing", z_pairing)):
        allowed = FACTORS[name].values
        if value not in allowed:
            raise ValueError(f"unknown sampling factor value '{value}'; expected one of {allowed}")
    _, batch1 = FACTORS["sampling"].values            # eval, train_batch1
    none, joint, every = FACTORS["pixel_noise"].values  # none, joint, every
    _, shared = FACTORS["z_pairing"].values            # independent, shared
    nets = models.all()
    if sampling == batch1:  # training mode on copies, each image alone
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
        noise = {name: _randn(shape, gen, device) for name in IMAGE_SETS}
        z_x, mean_x = (z_ref, reference) if z_pairing == shared else (z_other, other)
        x = mean_x + sigma["truth"] * eps_x
        batch = {"ground_truth": reference, "ground_truth_resample": other}
        for name, encoder, decoder in (("pretrained_reconstruction", pretrained, truth),
                                       ("joint_reconstruction", joint_encoder, joint_decoder)):
            mu, log_s = encoder(x)
            batch[name] = decoder(mu + log_s.exp() * eps_z[name])
        batch["joint_prior"] = joint_decoder(z_x)
        noisy = {none: (), joint: ("joint_reconstruction",), every: IMAGE_SETS}[pixel_noise]
        for name in noisy:
            batch[name] = batch[name] + sigma["joint" if name.startswith("joint") else "truth"] * noise[name]
        yield batch


def generate_sets(models: Models, n: int, batch_size: int, seed: int, device: torch.device, sampling: str,
                  pixel_noise: str, z_pairing: str, bf16: bool, sample_dir: Path) -> dict[str, Path]:
    """The image sets of one run (image_batches, by the protocol's sampling factors) into sample_dir (write_sets)."""
    progress = Progress("images generate", n, batch_size)
    progress.message(f"{n} images per set, sampling {sampling}, pixel noise {pixel_noise}, z {z_pairing}, on {device}")
    batches = image_batches(models, n, batch_size, seed, device, sampling, pixel_noise, z_pairing, bf16)
    return write_sets(batches, n, sample_dir, progress)


def write_sets(batches, n: int, sample_dir: Path, progress=None) -> dict[str, Path]:
    """Each set of `batches` into sample_dir/<set>.npy (uint8 [n, C, H, W], memory-mappable), written
    in place of a temporary file and renamed at the end, so a killed job leaves no set that looks whole."""
    sample_dir = Path(sample_dir)
    paths = {name: sample_dir / f"{name}.npy" for name in IMAGE_SETS}
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


def set_distances(sample_dir: Path, extractor: FeatureExtractor, batch_size: int) -> list[dict]:
    """The Frechet distance of every set in sample_dir (uint8 files) to the ground_truth set, as tidy rows (with
    Inception features, a last row inception_unverified: 1 when the weights failed their SHA-256 check)."""
    sets = {name: load_images(Path(sample_dir) / f"{name}.npy") for name in IMAGE_SETS}
    progress = Progress("images distances", 1, 1)
    progress.message(f"distance: {extractor.label}, {len(sets[IMAGE_SETS[0]])} images per set in {sample_dir}")
    sizes = {name: a.shape for name, a in sets.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{sample_dir}: image sets of different shapes {sizes}")
    stats = {}
    for name, images in sets.items():
        stats[name] = GaussianStats(extractor.dim)
        for start in range(0, len(images), batch_size):
            stats[name].update(extractor.of_uint8(images[start:start + batch_size]))
        progress.message(f"features of {name}: {len(images)} images")
    n = len(sets["ground_truth"])
    rows = [{"stage": SET_STAGE[name], "metric": extractor.metric, "image_set": name,
             "value": frechet_distance(stats[name], stats["ground_truth"], extractor.frechet), "n": n}
            for name in IMAGE_SETS[1:]]
    if extractor.kind == "inception":  # 1: weights that failed their SHA-256 check (tests only): not FID
        rows.append({"stage": "all", "metric": "inception_unverified", "image_set": "",
                     "value": float(not extractor.verified), "n": 0})
    return rows


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
    grids = {name: to_float(load_images(Path(sample_dir) / f"{name}.npy")[:grid_n]) for name in IMAGE_SETS}
    for name in IMAGE_SETS:
        save_grid(grids[name], Path(grid_dir) / f"{name}.png")
    save_comparison(grids, Path(grid_dir) / "comparison.png")


@torch.no_grad()
def heldout(models: Models, n_eval: int, batch_size: int, seed: int, device: torch.device,
            channels_last: bool) -> list[dict]:
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


# ---------------------------------------------------------------- the ground-truth generator


@torch.no_grad()
def choose_generator(files: dict, epoch, images: np.ndarray, extractor: FeatureExtractor, n_samples: int,
                     batch_size: int, seed: int, device: torch.device) -> tuple[pd.DataFrame, int]:
    """The ground truth among train-gan's generators `files` {epoch: file}: `epoch` itself, or (AUTO) the one
    whose n_samples samples are closest to n_samples images of the data by the extractor's distance. Returns
    the per-epoch distances with the choice (a table of epoch, distance, chosen, rule) and the chosen epoch."""
    if epoch != AUTO:
        try:
            chosen = int(epoch)
        except ValueError:
            raise InputError(f"generator_epoch must be '{AUTO}' or an epoch number, got {epoch!r}") from None
        if chosen not in files:
            raise InputError(f"{Path(files[min(files)]).parent}: no generator of epoch {chosen}; epochs "
                             f"{min(files)}..{max(files)}")
        scored = [chosen]
    else:
        scored = list(files)
    progress = Progress("images choose-generator", len(scored), 1)
    progress.message(f"distance: {extractor.label}")
    n = min(n_samples, len(images))
    subset = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
    data_stats = GaussianStats(extractor.dim)
    for start in range(0, n, batch_size):
        data_stats.update(extractor(to_float(images[subset[start:start + batch_size]])))
    rows = []
    for k in scored:
        _, g = load_generator(files[k])
        g = g.to(device).eval()
        gen = torch.Generator().manual_seed(seed)
        stats = GaussianStats(extractor.dim)
        for start in range(0, n_samples, batch_size):
            b = min(batch_size, n_samples - start)
            stats.update(extractor(g(torch.randn(b, g.nz, generator=gen).to(device))))
        rows.append({"epoch": k, extractor.metric: frechet_distance(stats, data_stats, extractor.frechet)})
        progress.log(len(rows), force=True, **{extractor.metric: rows[-1][extractor.metric]})
    frame = pd.DataFrame(rows)
    if epoch == AUTO:
        chosen = int(frame.loc[frame[extractor.metric].idxmin(), "epoch"])
    frame["chosen"] = frame.epoch == chosen
    frame["rule"] = "lowest distance to the data" if epoch == AUTO else "fixed by the config"
    if extractor.kind == "inception":  # True: weights that failed their SHA-256 check (tests only), not FID
        frame["inception_unverified"] = not extractor.verified
    progress.message(f"chose epoch {chosen} ({'auto' if epoch == AUTO else 'fixed'})")
    return frame, chosen


# ---------------------------------------------------------------- log-likelihoods (AIS, BDMC, IWAE)

# The likelihood's cases, one AIS run per case and T: (decoder, whose images, their true z known).
# The ground truth's held-out images come with the z they were drawn from (exact posterior samples
# under the ground truth: its sandwich); the joint decoder has no such samples for them, only its
# forward bound, whose precision BDMC states on images simulated from the joint decoder itself.
LONG_SCHEDULE = 1000  # AIS runs this long report their progress, a line at every tenth of the schedule
LIKELIHOOD_CASES = (("truth", "truth", True), ("joint", "truth", False), ("joint", "joint", True))


def likelihood(models: Models, settings, seed: int, device: torch.device, progress: Progress | None = None) -> list[dict]:
    """log p(x) of N held-out ground-truth images under the ground truth and the joint decoder, as tidy rows
    (settings.LIKELIHOOD_COLUMNS; value and sd: mean and standard deviation over the images, nats per image), every
    network in eval mode, fp32. `settings`: settings.LikelihoodSettings.

    - AIS with HMC (ais.sandwich), for each T of settings.steps and each case of LIKELIHOOD_CASES:
      `ais_lower` (forward AIS, a stochastic lower bound) and, where the images' true z are known,
      `ais_upper` (reverse AIS from them, a stochastic upper bound). The chains start at the prior
      or at each decoder's own encoder (the pretrained encoder for the ground truth, the joint
      encoder for the joint decoder).
    - `iwae` and `elbo`, K = settings.iwae_samples, of each decoder with its own encoder on the
      ground truth's images.

    Every random number comes from generators seeded by `seed`: the images first (the ground
    truth's, then the joint decoder's own), then each estimator's stream."""
    models.eval(device, channels_last=False)
    progress = progress or Progress("images likelihood", len(settings.steps), 1)
    truth, joint = models.truth, models.joint_decoder
    encoders = {"truth": models.pretrained, "joint": models.joint_encoder}
    decoders = {"truth": truth, "joint": joint}
    nz, N = truth.generator.nz, settings.images
    gen = torch.Generator().manual_seed(seed)
    data = {}
    with torch.no_grad():
        for name, decoder in decoders.items():  # the images of each decoder, with the z each was drawn from
            z = _randn((N, nz), gen, device)
            mean = decoder(z)
            data[name] = (mean + decoder.log_sigma.exp() * _randn(mean.shape, gen, device), z)
    pixels = data["truth"][0][0].numel()

    def row(decoder: str, images: str, estimate: str, steps: int, samples: int, values: torch.Tensor,
            acceptance: float, seconds: float) -> dict:
        values = values.double().cpu()
        return {"decoder": decoder, "images": images, "estimate": estimate, "steps": steps, "samples": samples,
                "value": values.mean().item(), "sd": values.std().item() if N > 1 else 0.0, "n": N,
                "pixels": pixels, "acceptance": acceptance, "seconds": seconds}

    rows = []

    def report(line: str) -> None:
        progress.message(f"T {T}: {decoder} decoder on {images}'s images: {line}")

    for i, T in enumerate(settings.steps):
        for decoder, images, sandwiched in LIKELIHOOD_CASES:
            x, z = data[images]
            proposal = None
            if settings.start == "encoder":
                with torch.no_grad():
                    proposal = encoders[decoder](x)
            tic = time.perf_counter()
            s = sandwich(x, z if sandwiched else None, decoders[decoder], decoders[decoder].log_sigma.detach(), nz,
                         T, settings.leapfrog, settings.chains, settings.step_size,
                         torch.Generator(device).manual_seed(seed + 1000 * (i + 1)), proposal,
                         report if T >= LONG_SCHEDULE else None)
            seconds = time.perf_counter() - tic
            rows.append(row(decoder, images, "ais_lower", T, settings.chains, s.lower, s.acceptance, seconds))
            if sandwiched:
                rows.append(row(decoder, images, "ais_upper", T, settings.chains, s.upper, s.acceptance, seconds))
            width = f", width {(s.upper - s.lower).mean().item():.4g}" if sandwiched else ""
            progress.message(f"T {T}: {decoder} decoder on {images}'s images: lower {s.lower.mean().item():.6g}"
                             f"{width} nats/image, acceptance {s.acceptance:.2f}, {seconds:.1f}s")
        progress.log(i + 1)
    x = data["truth"][0]
    for decoder in decoders:
        tic = time.perf_counter()
        with torch.no_grad():
            mu, log_s = encoders[decoder](x)
        b = iwae(x, mu, log_s, decoders[decoder], decoders[decoder].log_sigma.detach(), settings.iwae_samples,
                 torch.Generator(device).manual_seed(seed + 1), chunk=max(1, 4096 // N))
        seconds = time.perf_counter() - tic
        for estimate, values in (("iwae", b.iwae), ("elbo", b.elbo)):
            rows.append(row(decoder, "truth", estimate, 0, settings.iwae_samples, values, float("nan"), seconds))
        progress.message(f"{decoder} decoder, its encoder: IWAE (K {settings.iwae_samples}) "
                         f"{b.iwae.mean().item():.6g}, ELBO {b.elbo.mean().item():.6g} nats/image, {seconds:.1f}s")
    return rows
