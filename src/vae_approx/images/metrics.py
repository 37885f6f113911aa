"""Image-quality metrics: Frechet distances on Inception (FID) or digits-classifier features.

Both distances compare the mean and covariance of features, accumulated batch by batch in
float64 (running sums of f and f f^T), so no set of images or activations is ever held whole.
The digits distance is pytorch-fid's `calculate_frechet_distance` (scipy.linalg.sqrtm of
C_a C_b; the reference implementation, and what the issue asks for); the Inception distance
(2048 features, where sqrtm took 12-17 s per distance on 2 cores here) is
`frechet_distance_eigh`, the same quantity from two symmetric eigendecompositions: it agrees with
pytorch-fid's to about 1e-15 relative on full-rank covariances and to about 1e-7 on
rank-deficient ones (fewer feature vectors than dimensions), where it is the closer of the two
to the exact value (tests/test_images_model.py).

Images reach a feature extractor as the reference's PNG files would: pixels in [-1, 1] are
clipped and quantised to 8 bits (torchvision's save_image), then mapped to the extractor's
input. pytorch-fid reads PNGs as [0, 1] and its InceptionV3 (normalize_input=True) scales them
to [-1, 1] and resizes bilinearly to 299x299.

Names: the distance on Inception features is `fid`; the one on the digits classifier's
features is `fd_digits` and is never called FID.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common import InputError
from .data import check_inception_weights, inception_weights_path

FEATURES = {"inception": "fid", "digits": "fd_digits"}  # extractor -> the metric's name


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> the uint8 values a PNG written by save_image(normalize=True, value_range=(-1, 1)) holds."""
    return ((x.clamp(-1, 1) + 1) * 0.5).mul(255).add_(0.5).clamp_(0, 255).floor_().to(torch.uint8)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] in steps of 1/255, as save_image(normalize=True, value_range=(-1, 1)) + PNG."""
    return quantize_uint8(x).float() / 255


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


# ---------------------------------------------------------------- digits classifier


class DigitsClassifier(nn.Module):
    """Three 3x3 convolution blocks, global average pooling (the features), a linear head.

    The features are the pooled output of the last block (4 * width values), the
    counterpart of Inception's pool3 features that FID uses.
    """

    def __init__(self, channels: int = 1, width: int = 16, n_classes: int = 10):
        super().__init__()
        self.channels, self.width, self.n_classes = channels, width, n_classes
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * w, n_classes)

    @property
    def feature_dim(self) -> int:
        return 4 * self.width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(images: np.ndarray, labels: np.ndarray, width: int, epochs: int, batch_size: int, lr: float,
                     seed: int, val_fraction: float, device: torch.device, progress=None) -> tuple[DigitsClassifier, list[dict]]:
    """Adam on cross-entropy; a held-out split (val_fraction) measures accuracy each epoch.

    Inputs are quantised exactly as the images the classifier will later see.
    """
    from .data import to_float

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


def classifier_file(model: DigitsClassifier) -> dict:
    return {"kind": "digits classifier", "channels": model.channels, "width": model.width,
            "n_classes": model.n_classes, "state": model.state_dict()}


def load_classifier(path) -> DigitsClassifier:
    from ..common import load_torch

    saved = load_torch(path, "digits classifier")
    if not isinstance(saved, dict) or saved.get("kind") != "digits classifier":
        raise InputError(f"digits classifier {path}: not a classifier file")
    model = DigitsClassifier(saved["channels"], saved["width"], saved["n_classes"])
    model.load_state_dict(saved["state"])
    return model.eval()


# ---------------------------------------------------------------- Inception


def load_inception(torch_home, device: torch.device | str = "cpu", sha256: str = "",
                   unverified_ok: bool = False) -> nn.Module:
    """pytorch-fid's InceptionV3 (FID weights, 2048 pool3 features), offline, after a SHA-256 check.

    The weights must already be at <torch_home>/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth
    (rule fetch_inception, `python -m vae_approx.images fetch-inception`, or placed by hand);
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
        raise InputError(f"Inception weights not found: {weights}; fetch them with rule fetch_inception "
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
        self.metric = FEATURES[kind]
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


def make_extractor(kind: str, device: torch.device, classifier=None, torch_home=None, channels: int = 3,
                   inception_sha256: str = "", inception_unverified_ok: bool = False) -> FeatureExtractor:
    """`digits`: the classifier file's pooled features; `inception`: pytorch-fid's 2048 pool3
    features (grey images are repeated over the three colour channels), from weights that pass
    `load_inception`'s SHA-256 check (or, with `inception_unverified_ok`, marked unverified)."""
    if kind == "digits":
        if classifier is None:
            raise InputError("the digits Frechet distance needs --classifier (a digits classifier file)")
        model = load_classifier(classifier).to(device)
        return FeatureExtractor(kind, model, model.feature_dim, lambda u: model.features(u * 2 - 1), device)
    if kind == "inception":
        if torch_home is None:
            raise InputError("FID needs --torch-home (the folder holding hub/checkpoints/ with the Inception weights)")
        model = load_inception(torch_home, device, inception_sha256, inception_unverified_ok)

        def fn(u: torch.Tensor) -> torch.Tensor:
            if u.shape[1] == 1:
                u = u.expand(-1, 3, -1, -1)
            return model(u)[0].flatten(1)
        return FeatureExtractor(kind, model, 2048, fn, device, model.weights_verified)
    raise InputError(f"unknown feature extractor '{kind}'; expected one of {sorted(FEATURES)}")


def image_stats(extractor: FeatureExtractor, batches) -> GaussianStats:
    """Feature statistics of an iterable of image batches in [-1, 1]."""
    stats = GaussianStats(extractor.dim)
    for batch in batches:
        stats.update(extractor(batch))
    return stats


# ---------------------------------------------------------------- decoder drift


@torch.no_grad()
def decoder_drift(decoder: nn.Module, ground_truth: nn.Module, z: torch.Tensor) -> float:
    """Mean over images and pixels of (g_joint(z) - g_true(z))^2, both decoders in eval mode."""
    return F.mse_loss(decoder(z), ground_truth(z)).item()
