"""The best factorized posterior q* of each data point and the split of log p(x) - ELBO into an
approximation gap and an amortization gap (Cremer, Li, Duvenaud 2018), against brute force."""

import math

import pytest
import torch

from vae_approx.gmm.data import sample_mixture
from vae_approx.gmm.evaluate import evaluate
from vae_approx.gmm.model import (
    CODE_BITS, TRUE_CENTRES, ConsistentEncoder, FactorizedEncoder, MixtureDecoder, best_factorized_posterior,
    exact_elbo, factorized_log_q, log_likelihood, log_posterior,
)

GRID = 400  # grid points per bit probability, at the cell centres of (0, 1)
ROUNDING = 1e-12  # float64 slack of an inequality that holds exactly
HIDDEN = 16


def random_log_joints(n=6, scale=2.0, seed=0):
    """log p(x, z) [n, K] of random points, correlated bits included."""
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, len(CODE_BITS), generator=g, dtype=torch.float64) - 3.0


# a bimodal point: codes (0, 0) and (1, 1) likely, (1, 1) the less so; log p(x, z) in CODES' order
BIMODAL = torch.tensor([[0.0, -8.0, -8.0, -0.3]], dtype=torch.float64)


def grid_elbo(log_joint):
    """The exact ELBO [n, GRID, GRID] of every pair of bit probabilities on the grid, and the grid."""
    p = (torch.arange(GRID, dtype=torch.float64) + 0.5) / GRID
    logits = torch.logit(torch.cartesian_prod(p, p))           # [GRID^2, 2]: (bit 0, bit 1)
    log_q = factorized_log_q(logits)                           # [GRID^2, K]
    elbo = (log_q.exp() * (log_joint[:, None, :] - log_q)).sum(-1)  # [n, GRID^2]
    return elbo.reshape(-1, GRID, GRID), p


def resolution_slack(log_joint, logits):
    """How far below ELBO(q*) the grid's best may fall: at a maximum the loss of the nearest grid
    point is second order in the half spacing h/2, (h/2)^2 / 2 * (|H_00| + |H_11| + 2 |H_01|), with the
    ELBO's curvature in the probabilities -1/(p (1 - p)) per bit and the bits' interaction between
    them; doubled for the higher-order terms."""
    p = torch.sigmoid(logits)
    bits = torch.tensor(CODE_BITS, dtype=torch.float64)
    signs = (2 * bits[:, 0] - 1) * (2 * bits[:, 1] - 1)  # +1 on (0, 0) and (1, 1), -1 elsewhere
    interaction = (log_joint * signs).sum(1).abs()
    curvature = (1 / (p * (1 - p))).sum(1) + 2 * interaction
    return 2 * (0.5 / GRID) ** 2 / 2 * curvature


@pytest.mark.parametrize("log_joint", [random_log_joints(), random_log_joints(scale=4.0, seed=1), BIMODAL],
                         ids=["random", "random wide", "bimodal"])
def test_the_best_factorized_posterior_beats_a_grid_search(log_joint):
    log_q_star, logits = best_factorized_posterior(log_joint)
    best = exact_elbo(log_q_star, log_joint)
    grid, _ = grid_elbo(log_joint)
    grid_best = grid.flatten(1).amax(1)
    assert (grid_best <= best + ROUNDING).all()  # nothing on the grid beats q*
    assert (best - grid_best <= resolution_slack(log_joint, logits)).all()  # and the grid comes as close as it can


def test_a_start_in_the_worse_mode_still_ends_in_the_better():
    worse = torch.tensor([[20.0, 20.0]], dtype=torch.float64)  # both bits 1: a local maximum
    _, logits = best_factorized_posterior(BIMODAL, worse)
    assert (logits < 0).all()  # the better mode, both bits 0
    grid, p = grid_elbo(BIMODAL)
    at = divmod(grid[0].argmax().item(), GRID)
    assert p[at[0]] < 0.5 and p[at[1]] < 0.5


def test_a_factorizing_posterior_has_no_approximation_gap():
    # log p(x, z) = a z_0 + b z_1 + c: the posterior is two independent bits with logits a, b
    g = torch.Generator().manual_seed(2)
    a, b, c = (3 * torch.randn(8, 1, generator=g, dtype=torch.float64) for _ in range(3))
    bits = torch.tensor(CODE_BITS, dtype=torch.float64)
    log_joint = a * bits[:, 0] + b * bits[:, 1] + c  # [8, K]
    log_q_star, logits = best_factorized_posterior(log_joint)
    gap = log_likelihood(log_joint) - exact_elbo(log_q_star, log_joint)
    assert gap.abs().max() < 1e-10
    torch.testing.assert_close(logits, torch.cat([a, b], dim=1), atol=1e-8, rtol=0)
    torch.testing.assert_close(log_q_star, log_posterior(log_joint), atol=1e-10, rtol=0)


def test_the_factorized_encoder_gives_its_own_bit_logits():
    torch.manual_seed(0)
    x = torch.randn(30, 2)
    enc = FactorizedEncoder(HIDDEN)
    torch.testing.assert_close(factorized_log_q(enc.bit_logits(x)), enc.log_q(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_likelihood_above_best_factorized_above_the_encoders_elbo(seed):
    torch.manual_seed(seed)
    x = torch.from_numpy(sample_mixture(50, 1.0, seed)[0])
    enc = FactorizedEncoder(HIDDEN)
    dec = MixtureDecoder(torch.tensor(TRUE_CENTRES) + 0.5 * torch.randn(4, 2), 1.0)
    with torch.no_grad():
        log_joint, start = dec.log_joint(x).double(), enc.bit_logits(x)
        log_q_star, _ = best_factorized_posterior(log_joint, start)
        best = exact_elbo(log_q_star, log_joint)
        own = exact_elbo(factorized_log_q(start.double()), log_joint)
    assert (log_likelihood(log_joint) >= best - ROUNDING).all()
    assert (best >= own - ROUNDING).all()
    assert (best - own).mean() > 0.01  # an untrained encoder is far from q*


def test_an_iteration_cap_that_is_hit_raises():
    with pytest.raises(RuntimeError, match="did not converge in 2 sweeps"):
        best_factorized_posterior(random_log_joints(), max_sweeps=2)


def exact_consistent_encoder(variance):
    """The consistent encoder whose q is the ground-truth decoder's posterior."""
    centres = torch.tensor(TRUE_CENTRES)
    enc = ConsistentEncoder()
    with torch.no_grad():
        enc.linear.weight.copy_(centres / variance)
        enc.linear.bias.copy_(-(centres**2).sum(1) / (2 * variance))
    return enc


@pytest.mark.parametrize("name", ["factorized", "consistent"])
def test_the_gaps_add_up_to_the_kl_gap(name):
    variance = 1.0
    torch.manual_seed(0)
    x = torch.from_numpy(sample_mixture(100, variance, 0)[0])
    dec = MixtureDecoder(TRUE_CENTRES, variance)
    enc = FactorizedEncoder(HIDDEN) if name == "factorized" else exact_consistent_encoder(variance)
    true = log_posterior(dec.log_joint(x)).detach()
    row = evaluate(x, enc, dec, true, torch.tensor(TRUE_CENTRES))
    assert row["approximation_gap"] + row["amortization_gap"] == pytest.approx(
        row["log_likelihood"] - row["elbo"], abs=ROUNDING)
    assert row["approximation_gap"] > 0.01  # the mixture's posterior does not factorize
    if name == "factorized":
        assert row["amortization_gap"] > 0.01  # untrained
    else:  # q is the posterior: it loses nothing, and beats every factorized q by the approximation gap
        assert row["amortization_gap"] == pytest.approx(-row["approximation_gap"], abs=1e-5)
    assert math.isfinite(row["best_factorized_elbo"])
