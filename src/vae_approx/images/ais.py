"""Log-likelihoods of the faces' Gaussian decoders: annealed importance sampling (AIS) with
Hamiltonian Monte Carlo, forward and reverse, and the IWAE bound.

The model of every decoder here: z ~ N(0, I_nz), x | z ~ N(g(z), sigma^2 I_D). log p(x) has no
closed form (except for a linear g, the tests' check), so it is bounded from both sides:

- forward AIS (Neal 2001; Wu, Burda, Salakhutdinov, Grosse, ICLR 2017): chains start at the
  prior, pass through p_t(z) proportional to p(z) p(x|z)^beta_t for 0 = beta_0 < ... < beta_T = 1,
  each step an HMC transition that leaves p_t invariant, and collect the weight
  log w = sum_t (beta_t - beta_{t-1}) log p(x | z_{t-1}); E[w] = p(x), so the log-mean of the
  weights of M chains is a stochastic lower bound on log p(x);
- reverse AIS from exact posterior samples (bidirectional Monte Carlo, Grosse, Ghahramani,
  Adams 2015): the same schedule run backwards from z ~ p(z|x) has E[w] = 1 / p(x), so minus the
  log-mean of its weights is a stochastic upper bound. An image simulated from a decoder, with
  the z it was drawn from, gives that sample: the ground truth's held-out images come with their
  true z. The two bounds sandwich log p(x); the sandwich's width is the estimator's error at that
  budget (T, leapfrog steps, chains).

Every function works on a batch of chains [C, nz] (images x chains per image, flattened), with
`log_likelihood(z)` -> [C] the log p(x|z) of each chain's own image, differentiable in z.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from ..common import NonFiniteLossError

LogLikelihood = Callable[[torch.Tensor], torch.Tensor]  # z [C, nz] -> log p(x|z) [C]

TARGET_ACCEPTANCE = 0.65  # HMC's step size adapts towards it (Neal 2011; lxuechen/BDMC's 0.65)
STEP_GROWTH = 1.02        # per transition: x1.02 after an accepted proposal, /1.02 after a rejected one


def sigmoid_schedule(T: int, delta: float = 4.0) -> torch.Tensor:
    """beta_0 = 0 < ... < beta_T = 1 on a sigmoid (Grosse et al. 2015): dense near both ends, where
    the intermediate distributions change fastest. [T + 1], float64."""
    if T < 1:
        raise ValueError(f"an AIS schedule needs T >= 1 steps, got {T}")
    s = torch.sigmoid(torch.linspace(-delta, delta, T + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def log_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per row: [C, nz] -> [C]."""
    return -0.5 * (z * z).sum(dim=-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def gaussian_likelihood(mean: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                        log_sigma: torch.Tensor | float) -> LogLikelihood:
    """log N(x; g(z), sigma^2 I) of each chain's image: `mean` g maps z [C, nz] to [C, ...], `x` the
    chains' images [C, ...] (each image repeated over its chains)."""
    log_sigma = torch.as_tensor(log_sigma, dtype=x.dtype, device=x.device)
    D = x[0].numel()
    const = -D * (log_sigma + 0.5 * math.log(2 * math.pi))

    def log_likelihood(z: torch.Tensor) -> torch.Tensor:
        residual = (x - mean(z)).flatten(1)
        return const - 0.5 * (residual * residual).sum(dim=1) * torch.exp(-2 * log_sigma)
    return log_likelihood


def _value_and_grad(z: torch.Tensor, log_likelihood: LogLikelihood) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x|z) [C] and its gradient in z [C, nz]: the decoder's forward and backward in one pass."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        ll = log_likelihood(z)
        (grad,) = torch.autograd.grad(ll.sum(), z)
    return ll.detach(), grad


class State(NamedTuple):
    z: torch.Tensor     # [C, nz]
    ll: torch.Tensor    # [C] log p(x|z)
    grad: torch.Tensor  # [C, nz] its gradient


def hmc(state: State, beta: float, log_likelihood: LogLikelihood, step: torch.Tensor, leapfrog: int,
        generator: torch.Generator | None = None) -> tuple[State, torch.Tensor]:
    """One HMC transition leaving p(z) p(x|z)^beta invariant, per chain: momentum ~ N(0, I),
    `leapfrog` steps of size step [C, 1], Metropolis accept or reject. The potential is
    U(z) = |z|^2 / 2 - beta log p(x|z), its gradient z - beta grad log p(x|z); log p(x|z) and its
    gradient are kept with the state, so a transition costs `leapfrog` decoder passes. Returns
    the new state and the acceptance [C] bool (a proposal with a non-finite energy is rejected)."""
    p0 = torch.randn(state.z.shape, generator=generator, device=state.z.device, dtype=state.z.dtype)
    z, ll, grad = state
    p = p0 - 0.5 * step * (z - beta * grad)
    for i in range(leapfrog):
        z = z + step * p
        ll, grad = _value_and_grad(z, log_likelihood)
        if i < leapfrog - 1:
            p = p - step * (z - beta * grad)
    p = p - 0.5 * step * (z - beta * grad)
    energy = lambda zz, lll, pp: 0.5 * (zz * zz).sum(-1) - beta * lll + 0.5 * (pp * pp).sum(-1)  # noqa: E731
    log_ratio = energy(state.z, state.ll, p0) - energy(z, ll, p)
    u = torch.rand(log_ratio.shape, generator=generator, device=z.device, dtype=z.dtype)
    accept = torch.log(u) < log_ratio                                       # NaN: False
    keep = accept[:, None]
    return State(torch.where(keep, z, state.z), torch.where(accept, ll, state.ll),
                 torch.where(keep, grad, state.grad)), accept


def ais(z0: torch.Tensor, betas: torch.Tensor, log_likelihood: LogLikelihood, leapfrog: int, step_size: float,
        generator: torch.Generator | None = None, what: str = "AIS") -> tuple[torch.Tensor, torch.Tensor]:
    """AIS along `betas` from chains z0 [C, nz] distributed as p_{betas[0]}: the log-weights
    sum_t (beta_t - beta_{t-1}) log p(x | z_{t-1}) [C], with an HMC transition at each beta_t (the
    last omitted: it changes no weight). Forward: betas rising from 0, z0 from the prior; reverse:
    falling from 1, z0 exact posterior samples. Also returns the mean acceptance rate. Raises
    NonFiniteLossError naming the chain and the step if log p(x|z) is not finite."""
    state = State(z0, *_value_and_grad(z0, log_likelihood))
    step = torch.full((len(z0), 1), step_size, dtype=z0.dtype, device=z0.device)
    log_w = torch.zeros(len(z0), dtype=torch.float64, device=z0.device)
    accepted = torch.zeros((), device=z0.device)
    T = len(betas) - 1
    for t in range(1, T + 1):
        log_w += (betas[t] - betas[t - 1]).item() * state.ll.double()
        if t < T:
            state, accept = hmc(state, betas[t].item(), log_likelihood, step, leapfrog, generator)
            step = step * torch.where(accept, STEP_GROWTH, 1 / STEP_GROWTH)[:, None]
            accepted += accept.float().mean()
    bad = (~torch.isfinite(log_w)).nonzero()
    if len(bad):
        raise NonFiniteLossError(f"{what}: non-finite log p(x|z) in chain {int(bad[0, 0])} along the schedule "
                                 f"of {T} steps")
    return log_w, accepted / max(1, T - 1)


def log_mean_exp(log_w: torch.Tensor, chains: int) -> torch.Tensor:
    """log (1/M) sum_m exp(log_w) per image: [images * M] (each image's M chains consecutive) -> [images]."""
    return torch.logsumexp(log_w.view(-1, chains), dim=1) - math.log(chains)


class Sandwich(NamedTuple):
    lower: torch.Tensor   # [N] forward AIS: a stochastic lower bound on log p(x)
    upper: torch.Tensor   # [N] reverse AIS: a stochastic upper bound (nan where no posterior sample was given)
    acceptance: float     # HMC's mean acceptance rate over both directions


def sandwich(x: torch.Tensor, z_true: torch.Tensor | None, mean, log_sigma, nz: int, T: int, leapfrog: int,
             chains: int, step_size: float, generator: torch.Generator | None = None) -> Sandwich:
    """Both AIS bounds on log p(x) of images x [N, ...] under the decoder (mean g, log_sigma), M =
    `chains` per image: forward from the prior, and reverse from z_true [N, nz] (exact posterior
    samples: the images were simulated from this decoder with those z), if given."""
    N = len(x)
    ll = gaussian_likelihood(mean, x.repeat_interleave(chains, dim=0), log_sigma)  # chains [N M]
    betas = sigmoid_schedule(T)
    z0 = torch.randn((N * chains, nz), generator=generator, device=x.device, dtype=x.dtype)
    log_w, acc_f = ais(z0, betas, ll, leapfrog, step_size, generator, "forward AIS")
    lower = log_mean_exp(log_w, chains)
    upper, acceptance = torch.full_like(lower, math.nan), acc_f
    if z_true is not None:
        log_w, acc_r = ais(z_true.repeat_interleave(chains, dim=0), betas.flip(0), ll, leapfrog, step_size,
                           generator, "reverse AIS")
        upper, acceptance = -log_mean_exp(log_w, chains), (acc_f + acc_r) / 2
    return Sandwich(lower, upper, float(acceptance))


def iwae(x: torch.Tensor, mu: torch.Tensor, log_sigma_q: torch.Tensor, mean, log_sigma, samples: int,
         generator: torch.Generator | None = None, chunk: int = 100) -> torch.Tensor:
    """The IWAE bound on log p(x) with the encoder's q(z|x) = N(mu, diag exp(2 log_sigma_q)) as
    proposal, K = `samples`: log (1/K) sum_k p(z_k) p(x|z_k) / q(z_k|x); images x [N, ...], mu and
    log_sigma_q [N, nz] -> [N]. Drawn `chunk` samples per image at a time."""
    N, nz = mu.shape
    total = torch.full((N,), -math.inf, dtype=torch.float64, device=x.device)
    drawn = 0
    with torch.no_grad():
        while drawn < samples:
            S = min(chunk, samples - drawn)
            eps = torch.randn((N, S, nz), generator=generator, device=x.device, dtype=x.dtype)
            z = (mu[:, None] + log_sigma_q.exp()[:, None] * eps).reshape(N * S, nz)
            ll = gaussian_likelihood(mean, x.repeat_interleave(S, dim=0), log_sigma)(z)
            log_q = log_normal(eps.reshape(N * S, nz)) - log_sigma_q.repeat_interleave(S, dim=0).sum(-1)
            log_w = (log_normal(z) + ll - log_q).view(N, S).double()
            total = torch.logaddexp(total, torch.logsumexp(log_w, dim=1))
            drawn += S
    return (total - math.log(samples)).float()
