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

import numpy as np
import torch

from ..common import NonFiniteLossError

LogLikelihood = Callable[[torch.Tensor], torch.Tensor]  # z [C, nz] -> log p(x|z) [C]

TARGET_ACCEPTANCE = 0.65  # HMC's step size adapts towards it (Neal 2011; lxuechen/BDMC's 0.65)
# The step sizes are fixed before the AIS runs that are measured, by a pilot run (tune_steps): a chain whose step
# follows its own acceptances has a transition that depends on its own state, which then no longer leaves p_t
# invariant, and the weights lose their expectation (on the linear-Gaussian check, per-chain adaptation put
# forward AIS 0.17 nats above the exact log p(x), averaged over 16 images, while one step shared by every image
# made the quick preset's sandwich ten times wider: the images' posteriors need different steps). In the pilot,
# one chain per image adapts its step after each transition by log step += ADAPT_RATE (alpha - 0.65), alpha the
# proposal's acceptance probability (a Robbins-Monro step whose fixed point is a mean acceptance of 0.65; at 0.2
# a step 16 times too small is found in about 40 transitions); the measured runs then use each image's pilot
# step at each beta, interpolated, for every chain of the image and in both directions.
ADAPT_RATE = 0.2
PILOT_FRACTION = 4  # the pilot: T / 4 transitions, one chain per image
PILOT_MIN = 50      # and at least 50 (a step needs some 40 transitions to adapt)


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
    `leapfrog` steps of size `step` (a scalar tensor, or [C, 1]), Metropolis accept or reject. The potential is
    U(z) = |z|^2 / 2 - beta log p(x|z), its gradient z - beta grad log p(x|z); log p(x|z) and its
    gradient are kept with the state, so a transition costs `leapfrog` decoder passes. Returns
    the new state and each chain's acceptance probability [C] (0 for a proposal with a non-finite energy,
    which is rejected)."""
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
    probability = torch.nan_to_num(log_ratio.clamp(max=0).exp(), nan=0.0)
    return State(torch.where(keep, z, state.z), torch.where(accept, ll, state.ll),
                 torch.where(keep, grad, state.grad)), probability


def ais(z0: torch.Tensor, betas: torch.Tensor, log_likelihood: LogLikelihood, leapfrog: int,
        steps: torch.Tensor | float, generator: torch.Generator | None = None, what: str = "AIS",
        chains: int = 1, adapt: bool = False, report: Callable[[str], None] | None = None,
        ) -> tuple[torch.Tensor, float, torch.Tensor]:
    """AIS along `betas` from chains z0 [C, nz] distributed as p_{betas[0]}: the log-weights
    sum_t (beta_t - beta_{t-1}) log p(x | z_{t-1}) [C], with an HMC transition at each beta_t (the
    last omitted: it changes no weight) of step steps[t] ([T + 1, C], or one number for all).
    Forward: betas rising from 0, z0 from the prior; reverse: falling from 1, z0 exact posterior
    samples. `adapt` (the pilot only, tune_steps): each chain's step adapts after each transition,
    starting from steps[0]. `report`, if given, receives a progress line at every tenth of the schedule.
    Returns the log-weights, HMC's mean acceptance probability and the log step used at each beta
    [T + 1, C]. Raises NonFiniteLossError naming the image (chain // `chains`,
    the chains per image) and the first step at which its log p(x|z) was not finite (tracked on the
    device: no host sync per step)."""
    T, C = len(betas) - 1, len(z0)
    steps = torch.as_tensor(steps, dtype=z0.dtype, device=z0.device).expand(T + 1, C).clone()
    state = State(z0, *_value_and_grad(z0, log_likelihood))
    log_w = torch.zeros(C, dtype=torch.float64, device=z0.device)
    first_bad = torch.full((C,), -1, dtype=torch.long, device=z0.device)
    accepted = torch.zeros((), device=z0.device)
    for t in range(1, T + 1):
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(state.ll), t - 1, first_bad)
        log_w += (betas[t] - betas[t - 1]).item() * state.ll.double()
        if t < T:
            state, alpha = hmc(state, betas[t].item(), log_likelihood, steps[t][:, None], leapfrog, generator)
            if adapt:
                steps[t + 1] = steps[t] * torch.exp(ADAPT_RATE * (alpha - TARGET_ACCEPTANCE))
            accepted += alpha.float().mean()
        if report is not None and t % max(1, T // 10) == 0 and t < T:
            report(f"{what}: step {t}/{T}")
    bad = (first_bad >= 0).nonzero()
    if len(bad) or not bool(torch.isfinite(log_w).all()):
        chain = int(bad[0, 0]) if len(bad) else int((~torch.isfinite(log_w)).nonzero()[0, 0])
        at = int(first_bad[chain]) if len(bad) else T
        raise NonFiniteLossError(f"{what}: non-finite log p(x|z) of image {chain // chains} (chain {chain}) at step "
                                 f"{at} of {T}")
    return log_w, float(accepted) / max(1, T - 1), steps.log()


def tune_steps(u0: torch.Tensor, betas: torch.Tensor, log_likelihood: LogLikelihood, leapfrog: int,
               step_size: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The HMC step of each image at each of `betas` [T + 1], fixed before the measured runs: a pilot
    forward AIS of T / PILOT_FRACTION transitions, one chain per image (u0 [N, nz], `log_likelihood`
    of one chain per image), each chain's step adapting from `step_size`; its log step, interpolated
    linearly in beta. Returns [T + 1, N]."""
    pilot = sigmoid_schedule(max(PILOT_MIN, math.ceil((len(betas) - 1) / PILOT_FRACTION)))
    _, _, log_steps = ais(u0, pilot, log_likelihood, leapfrog, step_size, generator, "the HMC step's pilot AIS",
                          adapt=True)
    grid, at = pilot.numpy(), betas.numpy()
    table = log_steps.detach().cpu().double().numpy()
    return torch.stack([torch.from_numpy(np.interp(at, grid, table[:, i])) for i in range(table.shape[1])],
                       dim=1).to(u0.device, u0.dtype).exp()


def log_mean_exp(log_w: torch.Tensor, chains: int) -> torch.Tensor:
    """log (1/M) sum_m exp(log_w) per image: [images * M] (each image's M chains consecutive) -> [images]."""
    return torch.logsumexp(log_w.view(-1, chains), dim=1) - math.log(chains)


class Sandwich(NamedTuple):
    lower: torch.Tensor   # [N] forward AIS: a stochastic lower bound on log p(x)
    upper: torch.Tensor   # [N] reverse AIS: a stochastic upper bound (nan where no posterior sample was given)
    acceptance: float     # HMC's mean acceptance rate over both directions


def from_proposal(log_likelihood: LogLikelihood, mu: torch.Tensor, log_s: torch.Tensor) -> LogLikelihood:
    """AIS from a diagonal Gaussian q = N(mu, diag s^2) [C, nz] instead of the prior, in q's whitened
    coordinates u = (z - mu) / s: the chains start at u ~ N(0, I) and the function they anneal in is
    h(u) = log p(z) + log p(x|z) - log q(z) at z = mu + s u, a log density ratio and so the same in
    either coordinates. p_beta(u) = N(u; 0, I) exp(beta h(u)) runs from q (beta 0) to the posterior
    (beta 1), and the weights sum_t (beta_t - beta_{t-1}) h(u_{t-1}) still have E[w] = p(x). The
    whitening is HMC with q's scales as its mass matrix: a step size of about 1 suits every
    dimension while q's scales are the posterior's. With mu = 0 and s = 1, h is log p(x|z)."""
    s = log_s.exp()
    log_det = log_s.sum(-1)  # log q_u(u) = log q(z) + sum log s

    def h(u: torch.Tensor) -> torch.Tensor:
        z = mu + s * u
        return log_normal(z) + log_likelihood(z) - log_normal(u) + log_det
    return h


def sandwich(x: torch.Tensor, z_true: torch.Tensor | None, mean, log_sigma, nz: int, T: int, leapfrog: int,
             chains: int, step_size: float, generator: torch.Generator | None = None,
             proposal: tuple[torch.Tensor, torch.Tensor] | None = None,
             report: Callable[[str], None] | None = None) -> Sandwich:
    """Both AIS bounds on log p(x) of images x [N, ...] under the decoder (mean g, log_sigma), M =
    `chains` per image: forward from the prior (or from `proposal` (mu, log_s) [N, nz], the
    encoder's q(z|x) of each image: from_proposal), and reverse from z_true [N, nz] (exact
    posterior samples: the images were simulated from this decoder with those z), if given. `report`
    receives progress lines (ais)."""
    N = len(x)

    def target(reps: int):
        """The function the chains anneal, for `reps` chains per image, and the map from z to its coordinates."""
        ll = gaussian_likelihood(mean, x.repeat_interleave(reps, dim=0), log_sigma)
        if proposal is None:
            return ll, lambda z: z  # the prior's coordinates are z's own
        mu, log_s = (p.detach().repeat_interleave(reps, dim=0) for p in proposal)
        return from_proposal(ll, mu, log_s), lambda z: (z - mu) * torch.exp(-log_s)

    ll, to_u = target(chains)  # chains [N M], each image's M chains consecutive
    betas = sigmoid_schedule(T)
    u0 = torch.randn((N * chains, nz), generator=generator, device=x.device, dtype=x.dtype)
    pilot = torch.randn((N, nz), generator=generator, device=x.device, dtype=x.dtype)
    steps = tune_steps(pilot, betas, target(1)[0], leapfrog, step_size, generator)
    steps = steps.repeat_interleave(chains, dim=1)  # [T + 1, N M]
    log_w, acc_f, _ = ais(u0, betas, ll, leapfrog, steps, generator, "forward AIS", chains, report=report)
    lower = log_mean_exp(log_w, chains)
    upper, acceptance = torch.full_like(lower, math.nan), acc_f
    if z_true is not None:
        log_w, acc_r, _ = ais(to_u(z_true.repeat_interleave(chains, dim=0)), betas.flip(0), ll, leapfrog,
                              steps.flip(0), generator, "reverse AIS", chains, report=report)
        upper, acceptance = -log_mean_exp(log_w, chains), (acc_f + acc_r) / 2
    return Sandwich(lower, upper, float(acceptance))


class Bounds(NamedTuple):
    iwae: torch.Tensor  # [N] the IWAE bound log (1/K) sum_k w_k
    elbo: torch.Tensor  # [N] the ELBO's Monte Carlo estimate (1/K) sum_k log w_k, from the same draws


def iwae(x: torch.Tensor, mu: torch.Tensor, log_sigma_q: torch.Tensor, mean, log_sigma, samples: int,
         generator: torch.Generator | None = None, chunk: int = 100) -> Bounds:
    """The IWAE bound on log p(x) with the encoder's q(z|x) = N(mu, diag exp(2 log_sigma_q)) as
    proposal, K = `samples`: log (1/K) sum_k p(z_k) p(x|z_k) / q(z_k|x) (Burda et al. 2016), and
    the ELBO as the mean of the same log-weights; images x [N, ...], mu and log_sigma_q [N, nz] ->
    [N] each. Drawn `chunk` samples per image at a time."""
    N, nz = mu.shape
    total = torch.full((N,), -math.inf, dtype=torch.float64, device=x.device)
    mean_log_w = torch.zeros(N, dtype=torch.float64, device=x.device)
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
            mean_log_w += log_w.sum(dim=1) / samples
            drawn += S
    return Bounds((total - math.log(samples)).float(), mean_log_w.float())
