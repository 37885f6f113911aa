"""The Gaussian-mixture VAE with a 2-bit latent code, where every expectation is exact.

Shekhovtsov, Schlesinger, Flach, "VAE Approximation Error: ELBO and Exponential Families",
ICLR 2022, Sec. 5 (toy example): a mixture of four isotropic 2-D Gaussians is a decoder
p(x|z) = N(x; mu_z, s^2 I) with a uniform prior over the four codes z. Its exact posterior is
a softmax of a linear function of x, so a linear-softmax encoder ("consistent") can match it,
while an encoder that is a product of two Bernoulli bits ("factorized", q(z|x) proportional
to exp(<g(x), z_b>)) in general cannot. Joint ELBO training then moves the decoder towards
models whose posteriors the encoder can represent, away from the data's true likelihood.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .settings import ENCODERS

# Ground-truth centres of the reproduction (Kyrylov et al., ReScience C 9(2) 2023).
TRUE_CENTRES = ((-1.0, 0.0), (0.0, 0.0), (1.0, 1.0), (1.0, -1.0))
# The 2-bit code z_b of each component, in the order of TRUE_CENTRES, as +-1 spins.
CODES = ((-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0))


class MixtureDecoder(nn.Module):
    """p(z) = 1/K, p(x|z) = N(x; mu_z, variance I); the centres mu are the learned parameters."""

    def __init__(self, centres, variance: float):
        super().__init__()
        self.centres = nn.Parameter(torch.as_tensor(centres, dtype=torch.float32).clone())  # [K, D]
        self.variance = float(variance)

    def log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x, z) for every code: [N, D] -> [N, K]."""
        k, d = self.centres.shape
        sq_dist = torch.cdist(x, self.centres).pow(2)  # [N, K]
        log_norm = 0.5 * d * math.log(2 * math.pi * self.variance)
        return -0.5 * sq_dist / self.variance - log_norm - math.log(k)


class FactorizedEncoder(nn.Module):
    """MLP 2-H-H-2 (H = gmm.hidden) giving g(x); q(z|x) proportional to exp(<g(x), z_b>) over the 2-bit codes.

    The exponential family of two independent bits: it cannot express correlations between
    the bits, which the true posterior of the mixture has.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.ReLU(),       # [N, 2] -> [N, H]
            nn.Linear(hidden, hidden), nn.ReLU(),  # [N, H] -> [N, H]
            nn.Linear(hidden, 2),                  # [N, H] -> [N, 2] natural parameters g(x)
        )
        self.register_buffer("codes", torch.tensor(CODES))  # [K, 2]

    def log_q(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.net(x) @ self.codes.T, dim=1)  # [N, K]


class ConsistentEncoder(nn.Module):
    """Linear 2-4 + softmax: the family that contains the mixture's exact posterior."""

    def __init__(self, n_codes: int = len(CODES)):
        super().__init__()
        self.linear = nn.Linear(2, n_codes)  # [N, 2] -> [N, K]

    def log_q(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.linear(x), dim=1)  # [N, K]


def make_encoder(name: str, hidden: int) -> nn.Module:
    """An encoder of family `name` (settings.ENCODERS); `hidden` is the factorized encoder's width."""
    if name == "factorized":
        return FactorizedEncoder(hidden)
    if name == "consistent":
        return ConsistentEncoder()
    raise ValueError(f"unknown GMM encoder '{name}'; expected one of {ENCODERS}")


# ---- exact quantities, per data point; all take log-probability tables [N, K]

def exact_elbo(log_q: torch.Tensor, log_joint: torch.Tensor) -> torch.Tensor:
    """ELBO(x) = sum_z q(z|x) [log p(x, z) - log q(z|x)]   (Kingma & Welling 2014, eq. 3)."""
    return (log_q.exp() * (log_joint - log_q)).sum(dim=1)


def log_likelihood(log_joint: torch.Tensor) -> torch.Tensor:
    """log p(x) = log sum_z p(x, z)."""
    return torch.logsumexp(log_joint, dim=1)


def log_posterior(log_joint: torch.Tensor) -> torch.Tensor:
    """log p(z|x) = log p(x, z) - log p(x)."""
    return log_joint - log_likelihood(log_joint)[:, None]


def kl_divergence(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) over the codes; log p(x) - ELBO(x) = KL(q(z|x) || p(z|x))."""
    return (log_q.exp() * (log_q - log_p)).sum(dim=1)


def fit_centres_ml(x: torch.Tensor, variance: float, centres=TRUE_CENTRES, tol: float = 1e-10,
                   max_iterations: int = 10_000) -> tuple[torch.Tensor, int]:
    """Maximum-likelihood centres of the mixture on the sample x [N, D], by EM from `centres`.

    The control of the centre-drift claims: the best any decoder of this family can do on the
    same sample, with no encoder (uniform weights and the variance fixed, as in the VAE; EM
    increases log p(x) at every step). E-step: the exact posterior r = p(z|x); M-step: each
    centre the r-weighted mean of the points. Stops when no centre moves by more than `tol`.
    Returns the centres [K, D] (float64) and the number of iterations.
    """
    decoder = MixtureDecoder(centres, variance).double()
    x = x.double()
    with torch.no_grad():
        for iteration in range(1, max_iterations + 1):
            r = log_posterior(decoder.log_joint(x)).exp()                      # [N, K]
            new = (r.T @ x) / r.sum(0)[:, None]                                # [K, D]
            moved = (new - decoder.centres).abs().max().item()
            decoder.centres.copy_(new)
            if moved <= tol:
                break
    return decoder.centres.detach().clone(), iteration


def restore(saved: dict) -> tuple[nn.Module, MixtureDecoder]:
    """The encoder and decoder of a saved model dict (the training stage's output file)."""
    encoder = make_encoder(saved["encoder_name"], saved["hidden"])
    encoder.load_state_dict(saved["encoder"])
    decoder = MixtureDecoder(TRUE_CENTRES, saved["variance"])
    decoder.load_state_dict(saved["decoder"])
    return encoder, decoder
