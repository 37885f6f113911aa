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
# The same codes as bits (1 where the spin is +1): [K, 2].
CODE_BITS = tuple(tuple(int(spin > 0) for spin in code) for code in CODES)


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

    def bit_logits(self, x: torch.Tensor) -> torch.Tensor:
        """log q(bit i = 1) - log q(bit i = 0), bit i being 1 where spin i is +1: [N, 2] -> [N, 2].
        exp(g s) over s = +-1 gives the odds exp(2 g)."""
        return 2 * self.net(x)


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


# ---- the best factorized posterior per data point (the approximation gap's reference)
#
# Cremer, Li, Duvenaud, "Inference Suboptimality in Variational Autoencoders", ICML 2018: the gap
# log p(x) - ELBO(q) splits into an approximation gap, log p(x) - ELBO(q*) with q* the best member of
# the family fitted to each point alone, and an amortization gap, ELBO(q*) - ELBO(q).

MEAN_FIELD_LOGIT_TOL = 1e-10  # a point has converged when no bit logit moves by more than this in a sweep
MEAN_FIELD_ELBO_TOL = 1e-12   # ... or when its ELBO rises by less than this (nats) in a sweep
MEAN_FIELD_MAX_SWEEPS = 10_000


def factorized_log_q(logits: torch.Tensor) -> torch.Tensor:
    """log q(z) of two independent bits with logits log q(bit=1) - log q(bit=0): [N, 2] -> [N, K] (CODES' order)."""
    bits = torch.tensor(CODE_BITS, dtype=logits.dtype, device=logits.device)  # [K, 2]
    return F.logsigmoid(logits) @ bits.T + F.logsigmoid(-logits) @ (1 - bits).T


def bit_table(log_joint: torch.Tensor) -> torch.Tensor:
    """log p(x, z) indexed by the two bits: [N, K] -> [N, 2, 2], entry [n, bit 0, bit 1]."""
    bits = torch.tensor(CODE_BITS)                                            # [K, 2]
    order = (2 * bits[:, 0] + bits[:, 1]).argsort().to(log_joint.device)  # the code at each (bit 0, bit 1)
    return log_joint[:, order].reshape(-1, 2, 2)


def mean_field_sweep(table: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """One coordinate-ascent sweep over the bits: each logit set to the exact maximiser of the ELBO
    given the other bit, E_q(other)[log p(x, bit=1, other) - log p(x, bit=0, other)].
    table [N, 2, 2] (bit_table), logits [N, 2] -> [N, 2]."""
    def expected(diff, other_logit):  # diff [N, 2] over the other bit's values -> [N]
        return torch.sigmoid(-other_logit) * diff[:, 0] + torch.sigmoid(other_logit) * diff[:, 1]

    logit_0 = expected(table[:, 1, :] - table[:, 0, :], logits[:, 1])
    logit_1 = expected(table[:, :, 1] - table[:, :, 0], logit_0)
    return torch.stack([logit_0, logit_1], dim=1)


def mean_field(log_joint: torch.Tensor, logits: torch.Tensor, max_sweeps: int = MEAN_FIELD_MAX_SWEEPS) -> torch.Tensor:
    """Coordinate ascent on each point's ELBO over two independent bits, from `logits` [N, 2], until
    every point has converged (MEAN_FIELD_LOGIT_TOL or MEAN_FIELD_ELBO_TOL); log_joint [N, K].
    Each sweep never lowers a point's ELBO. Returns the logits [N, 2]; raises after `max_sweeps`."""
    table = bit_table(log_joint)
    elbo = torch.full((len(log_joint),), -math.inf, dtype=log_joint.dtype, device=log_joint.device)
    for _ in range(max_sweeps):
        new = mean_field_sweep(table, logits)
        new_elbo = exact_elbo(factorized_log_q(new), log_joint)
        converged = ((new - logits).abs().amax(dim=1) <= MEAN_FIELD_LOGIT_TOL) | (new_elbo - elbo <= MEAN_FIELD_ELBO_TOL)
        converged |= ~torch.isfinite(new_elbo)  # a non-finite point (NaN data) stops here; the loss check names it
        logits, elbo = new, new_elbo
        if converged.all():
            return logits
    raise RuntimeError(f"GMM best factorized posterior: coordinate ascent did not converge in {max_sweeps} sweeps")


def best_factorized_posterior(log_joint: torch.Tensor, start_logits: torch.Tensor | None = None,
                              max_sweeps: int = MEAN_FIELD_MAX_SWEEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per data point, the product of two independent bits q* that maximises the exact ELBO, in float64.

    log_joint [N, K] (CODES' order); start_logits [N, 2], the encoder's own bit logits where it has
    them (else the uniform). Coordinate ascent (mean_field) from that start and from both extreme
    states of bit 1; each point keeps the best end point (the first on a tie, so ELBO(q*) >= ELBO
    of the start). With two bits the ELBO maximised over bit 0 has at most three stationary points
    in bit 1 (two maxima around a minimum), and the ascents from bit 1 = 0 and bit 1 = 1 reach the
    outer two, so q* is the global maximum. Returns log q* [N, K] and its logits [N, 2].
    """
    log_joint = log_joint.double()
    n = len(log_joint)
    own = torch.zeros(n, 2, dtype=torch.float64, device=log_joint.device) if start_logits is None \
        else start_logits.double()
    extremes = [torch.full_like(own, sign * math.inf) for sign in (-1, 1)]  # bit 1 certain; bit 0 is set first
    starts = torch.cat([own, *extremes])                                     # [S N, 2]
    repeated = log_joint.repeat(len(extremes) + 1, 1)                        # [S N, K]
    ends = mean_field(repeated, starts, max_sweeps)                          # [S N, 2]
    elbo = exact_elbo(factorized_log_q(ends), repeated).reshape(-1, n)       # [S, N]
    logits = ends.reshape(-1, n, 2)[elbo.argmax(dim=0), torch.arange(n, device=log_joint.device)]  # [N, 2]
    return factorized_log_q(logits), logits


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
