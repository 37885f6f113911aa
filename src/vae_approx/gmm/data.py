"""The ground-truth sample of the Gaussian-mixture experiment and its file (data.npz)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..common import InputError, atomic_path
from .model import TRUE_CENTRES


def sample_mixture(n_per_component: int, variance: float, seed: int,
                   centres=TRUE_CENTRES) -> tuple[np.ndarray, np.ndarray]:
    """n_per_component points from each isotropic component; returns (x [N,2], component [N])."""
    rng = np.random.default_rng(seed)
    centres = np.asarray(centres, dtype=np.float64)
    component = np.repeat(np.arange(len(centres)), n_per_component)
    x = centres[component] + math.sqrt(variance) * rng.standard_normal((len(component), centres.shape[1]))
    return x.astype(np.float32), component


def save_data(path, x: np.ndarray, component: np.ndarray, variance: float) -> None:
    """data.npz: the points, their components, the ground-truth centres and the variance (written atomically)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, x=x, component=component, centres=np.asarray(TRUE_CENTRES), variance=variance)


def load_data(path) -> tuple[torch.Tensor, float]:
    """The points x [N, 2] of a data.npz and the variance they were drawn with."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"GMM data: file not found: {path}")
    try:
        with np.load(path) as f:
            x, variance = f["x"], float(f["variance"])
    except Exception as exc:
        raise InputError(f"GMM data {path}: not a valid data file ({type(exc).__name__}: {exc})") from exc
    if x.ndim != 2 or x.shape[1] != 2 or not np.isfinite(x).all():
        raise InputError(f"GMM data {path}: expected finite points of shape [N, 2], got {x.shape}")
    return torch.from_numpy(x), variance
