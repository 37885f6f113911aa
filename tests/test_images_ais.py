"""The faces' likelihood estimators (images/ais.py) where the answer is known: a linear-Gaussian
decoder g(z) = W z + b, whose log p(x) = log N(x; b, W W^T + sigma^2 I) is closed form."""

from __future__ import annotations

import math

import pytest
import torch

from vae_approx.common import NonFiniteLossError
from vae_approx.images.ais import (State, _value_and_grad, ais, from_proposal, gaussian_likelihood, hmc, iwae,
                                   log_mean_exp, log_normal, sandwich, sigmoid_schedule)

NZ, D, SIGMA, N = 3, 8, 0.5, 16


def linear_gaussian(seed: int = 0):
    """W, b, images x simulated from the model with their true z, and the exact log p(x) [N]."""
    g = torch.Generator().manual_seed(seed)
    W, b = torch.randn(D, NZ, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)
    z = torch.randn(N, NZ, generator=g, dtype=torch.float64)
    x = z @ W.T + b + SIGMA * torch.randn(N, D, generator=g, dtype=torch.float64)
    cov = W @ W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(b, cov).log_prob(x)
    return W, b, x, z, exact


def posterior(W, b, x):
    """The exact posterior N(mu [N, NZ], cov [NZ, NZ]) of the linear-Gaussian model."""
    cov = torch.linalg.inv(torch.eye(NZ, dtype=torch.float64) + W.T @ W / SIGMA**2)
    return (x - b) @ W @ cov / SIGMA**2, cov


def broad_proposal(W, b, x):
    """An encoder's q(z|x) as the pretrained one is: the posterior mean shifted by 0.3 and twice its widest
    marginal deviation in every dimension (mass-covering, not exact)."""
    mu, cov = posterior(W, b, x)
    return mu + 0.3, (0.5 * torch.log(torch.diagonal(cov)).max() + math.log(2)).expand(N, NZ)


def bounds(T: int, seed: int = 0, chains: int = 8, start: str = "prior"):
    W, b, x, z, exact = linear_gaussian(seed)
    proposal = broad_proposal(W, b, x) if start == "encoder" else None
    found = sandwich(x, z, lambda zz: zz @ W.T + b, math.log(SIGMA), NZ, T, leapfrog=5, chains=chains,
                     step_size=0.1, generator=torch.Generator().manual_seed(seed + 1), proposal=proposal)
    return found, exact


def contains(found, exact, close: float = 0.3) -> bool:
    """Each bound within `close` of the exact value in the mean over the images, and not beyond it by more
    than three standard errors: they are stochastic bounds, each only in expectation (an image's estimate
    from a few chains can lie on the wrong side)."""
    lower, upper = found.lower - exact, exact - found.upper
    beyond = lambda d: d.mean() > 3 * d.std() / math.sqrt(len(d))  # noqa: E731
    return (-close < lower.mean() and -close < upper.mean() and not beyond(lower) and not beyond(upper))


def test_the_sandwich_contains_the_exact_value_and_narrows_as_t_grows():
    short, exact = bounds(T=20)
    long, _ = bounds(T=500)
    assert contains(long, exact)
    assert (short.lower - exact).mean() < -0.5 and (short.upper - exact).mean() > 0.5
    width = lambda s: (s.upper - s.lower).mean().item()  # noqa: E731
    assert width(long) < 0.15 * width(short)
    assert 0.4 < long.acceptance < 0.9


def test_the_sandwich_from_an_encoder_contains_the_exact_value_and_is_narrower_than_from_the_prior():
    width = lambda s: (s.upper - s.lower).mean().item()  # noqa: E731
    prior, exact = bounds(T=20)
    encoder, _ = bounds(T=20, start="encoder")
    long, _ = bounds(T=500, start="encoder")
    assert contains(long, exact) and contains(encoder, exact, close=1.0)
    assert width(encoder) < 0.5 * width(prior) and width(long) < 0.5 * width(encoder)


def test_one_step_forward_ais_from_a_proposal_is_importance_sampling_with_it():
    W, b, x, z, exact = linear_gaussian()
    mu, log_s = (p.repeat_interleave(50, dim=0) for p in broad_proposal(W, b, x))
    ll = gaussian_likelihood(lambda zz: zz @ W.T + b, x.repeat_interleave(50, dim=0), math.log(SIGMA))
    u0 = torch.randn(N * 50, NZ, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    log_w, _, _ = ais(u0, sigmoid_schedule(1), from_proposal(ll, mu, log_s), leapfrog=3, steps=0.1)
    zs = mu + log_s.exp() * u0  # the same draws, weighted by p(z) p(x|z) / q(z|x) directly
    log_q = torch.distributions.Normal(mu, log_s.exp()).log_prob(zs).sum(-1)
    torch.testing.assert_close(log_mean_exp(log_w, 50), log_mean_exp(log_normal(zs) + ll(zs) - log_q, 50))


def test_reverse_ais_from_exact_posterior_samples_is_above_forward_ais():
    """On a nonlinear decoder: the sandwich's two sides are ordered (in the mean over images)."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(D, NZ, generator=g, dtype=torch.float64) * 2
    z = torch.randn(N, NZ, generator=g, dtype=torch.float64)
    mean = lambda zz: torch.tanh(zz @ W.T)  # noqa: E731
    x = mean(z) + SIGMA * torch.randn(N, D, generator=g, dtype=torch.float64)
    found = sandwich(x, z, mean, math.log(SIGMA), NZ, T=20, leapfrog=3, chains=4, step_size=0.1,
                     generator=torch.Generator().manual_seed(4))
    assert (found.upper - found.lower).mean() > 0


def test_one_step_forward_ais_is_importance_sampling_with_the_prior():
    W, b, x, z, exact = linear_gaussian()
    ll = gaussian_likelihood(lambda zz: zz @ W.T + b, x.repeat_interleave(50, dim=0), math.log(SIGMA))
    z0 = torch.randn(N * 50, NZ, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    log_w, _, _ = ais(z0, sigmoid_schedule(1), ll, leapfrog=3, steps=0.1)
    torch.testing.assert_close(log_mean_exp(log_w, 50), log_mean_exp(ll(z0), 50))


def test_hmc_leaves_a_standard_normal_invariant():
    """With beta = 0 the target is the prior: a long run of chains keeps its moments."""
    flat = lambda zz: torch.zeros(len(zz), dtype=zz.dtype) + 0 * zz.sum(-1)  # noqa: E731
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(4000, 2, generator=gen, dtype=torch.float64)
    state = State(z, *_value_and_grad(z, flat))
    step = torch.full((4000, 1), 0.5, dtype=torch.float64)
    for _ in range(50):
        state, _ = hmc(state, 0.0, flat, step, 5, gen)
    assert state.z.mean(0).abs().max() < 0.1 and (state.z.var(0) - 1).abs().max() < 0.1


def test_iwae_rises_towards_the_exact_value_with_the_exact_posterior_as_proposal_it_is_exact():
    W, b, x, z, exact = linear_gaussian()
    post_mu, post_cov = posterior(W, b, x)
    # a diagonal proposal at the posterior mean, with the marginal posterior variances
    log_sd = 0.5 * torch.log(torch.diagonal(post_cov)).expand(N, NZ)
    mean = lambda zz: zz @ W.T + b  # noqa: E731
    few = iwae(x, post_mu, log_sd, mean, math.log(SIGMA), 1, torch.Generator().manual_seed(7))
    many = iwae(x, post_mu, log_sd, mean, math.log(SIGMA), 3000, torch.Generator().manual_seed(7))
    assert (exact - many.iwae).mean() < (exact - few.iwae).mean() and (exact - many.iwae).mean() < 0.05
    # the ELBO of the same draws: log p(x) - KL(q || posterior), closed form for Gaussians
    q = torch.distributions.MultivariateNormal(post_mu, torch.diag_embed(log_sd.exp() ** 2))
    kl = torch.distributions.kl_divergence(q, torch.distributions.MultivariateNormal(post_mu, post_cov))
    assert (many.elbo - (exact - kl)).abs().max() < 0.05 and (many.elbo <= many.iwae).all()


def test_a_non_finite_log_density_stops_naming_the_image_and_the_step():
    # chain 3 (image 1 of 2 chains each) turns non-finite where its z leaves the ball of radius 3
    bad = lambda zz: torch.where((torch.arange(len(zz)) == 3) & (zz.norm(dim=-1) > 3), torch.nan, 0.0) * zz.sum(-1)  # noqa: E731
    z0 = torch.zeros(6, 2, dtype=torch.float64)
    z0[3] = 4.0
    with pytest.raises(NonFiniteLossError, match=r"image 1 \(chain 3\) at step 0 of 3"):
        ais(z0, sigmoid_schedule(3), bad, 2, 0.1, chains=2)


def test_a_long_run_reports_its_progress_at_every_tenth():
    lines = []
    ll = lambda zz: -0.5 * (zz * zz).sum(-1)  # noqa: E731
    ais(torch.zeros(4, 2, dtype=torch.float64), sigmoid_schedule(50), ll, 1, 0.1, what="forward AIS",
        report=lines.append)
    assert lines == [f"forward AIS: step {t}/50" for t in range(5, 50, 5)]
