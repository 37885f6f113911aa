"""The exact quantities of the Gaussian-mixture VAE, and which parameters get gradients."""

import io
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from conftest import config_section
from vae_approx.common import Progress
from vae_approx.gmm.data import sample_mixture
from vae_approx.gmm.model import (
    TRUE_CENTRES, ConsistentEncoder, MixtureDecoder, exact_elbo, kl_divergence, log_likelihood,
    fit_centres_ml, log_posterior, make_encoder,
)
from vae_approx.gmm.settings import ENCODERS, TrainSettings
from vae_approx.gmm.train import train

HIDDEN = config_section("gmm")["hidden"]


def data(n=200, variance=1.0, seed=0):
    x, _ = sample_mixture(n, variance, seed)
    return torch.from_numpy(x)


def quiet():
    return Progress("test", 1, 10**9, stream=io.StringIO())


def test_log_joint_matches_scipy():
    x = data(20, 0.7)
    dec = MixtureDecoder(TRUE_CENTRES, 0.7)
    expected = np.stack([multivariate_normal(c, 0.7 * np.eye(2)).logpdf(x.numpy()) for c in TRUE_CENTRES], 1)
    torch.testing.assert_close(dec.log_joint(x), torch.from_numpy(expected - math.log(4)).float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_elbo_is_loglik_minus_kl_for_any_encoder(name, seed):
    torch.manual_seed(seed)
    x = data(100)
    enc = make_encoder(name, HIDDEN)
    dec = MixtureDecoder(torch.tensor(TRUE_CENTRES) + torch.randn(4, 2), 0.5 + seed)
    log_q, log_joint = enc.log_q(x), dec.log_joint(x)
    lhs = exact_elbo(log_q, log_joint)
    rhs = log_likelihood(log_joint) - kl_divergence(log_q, log_posterior(log_joint))
    torch.testing.assert_close(lhs, rhs, atol=1e-5, rtol=1e-5)
    assert (lhs <= log_likelihood(log_joint) + 1e-6).all()


def test_posterior_and_encoders_sum_to_one():
    torch.manual_seed(0)
    x = data(50)
    log_joint = MixtureDecoder(TRUE_CENTRES, 1.0).log_joint(x)
    torch.testing.assert_close(log_posterior(log_joint).exp().sum(1), torch.ones(len(x)))
    for name in ENCODERS:
        torch.testing.assert_close(make_encoder(name, HIDDEN).log_q(x).exp().sum(1), torch.ones(len(x)))


def test_consistent_family_contains_the_exact_posterior():
    # log p(z|x) = <mu_z, x>/s^2 - |mu_z|^2/(2 s^2) + const(x): a linear-softmax encoder with
    # these weights is exact, so KL(q || p(z|x)) is zero to float precision.
    variance = 0.6
    x = data(100, variance)
    centres = torch.tensor(TRUE_CENTRES)
    enc = ConsistentEncoder()
    with torch.no_grad():
        enc.linear.weight.copy_(centres / variance)
        enc.linear.bias.copy_(-(centres**2).sum(1) / (2 * variance))
    log_joint = MixtureDecoder(centres, variance).log_joint(x)
    assert kl_divergence(enc.log_q(x), log_posterior(log_joint)).max() < 1e-5


def test_training_the_consistent_encoder_closes_the_gap_but_not_the_factorized():
    x = data(300)
    gaps = {}
    for name in ("consistent", "factorized"):
        torch.manual_seed(0)
        enc, dec = make_encoder(name, HIDDEN), MixtureDecoder(TRUE_CENTRES, 1.0)
        settings = TrainSettings("pretrain", 1500, 1e-2, 1500, 10**9, 0)
        rows = train(x, enc, dec, torch.tensor(TRUE_CENTRES), 1.0, settings, None, quiet())
        gaps[name] = rows[-1]["log_likelihood"] - rows[-1]["elbo"]
    assert gaps["consistent"] < 2e-3
    # Two independent bits cannot express this posterior: a gap remains (the paper's point).
    assert gaps["factorized"] > 10 * gaps["consistent"] and gaps["factorized"] > 0.02


@pytest.mark.parametrize("phase", ["pretrain", "joint"])
def test_gradients_reach_only_the_trained_parts(phase):
    torch.manual_seed(0)
    x = data(100)
    enc, dec = make_encoder("factorized", HIDDEN), MixtureDecoder(TRUE_CENTRES, 1.0)
    enc_before = [p.detach().clone() for p in enc.parameters()]
    settings = TrainSettings(phase, 20, 1e-2, 10, 10**9, 0)
    train(x, enc, dec, torch.tensor(TRUE_CENTRES), 1.0, settings, None, quiet())
    assert all(not torch.equal(a, b) for a, b in zip(enc_before, enc.parameters()))
    moved = not torch.equal(dec.centres.detach(), torch.tensor(TRUE_CENTRES))
    assert moved == (phase == "joint")
    assert dec.centres.requires_grad  # the frozen decoder is unfrozen again afterwards


def test_metrics_rows_are_tidy_and_complete():
    x = data(50)
    torch.manual_seed(0)
    rows = train(x, make_encoder("consistent", HIDDEN), MixtureDecoder(TRUE_CENTRES, 1.0), torch.tensor(TRUE_CENTRES),
                 1.0, TrainSettings("joint", 25, 1e-2, 10, 10**9, 0), None, quiet())
    assert [r["step"] for r in rows] == [0, 10, 20, 25]
    expected = {"phase", "step", "elbo", "log_likelihood", "kl_to_posterior", "kl_to_true_posterior",
                "best_factorized_elbo", "approximation_gap", "amortization_gap",
                "mean_centre_distance"} | {f"centre_{k}_distance" for k in range(4)}
    assert all(set(r) == expected for r in rows)
    assert rows[0]["mean_centre_distance"] == 0 and rows[-1]["mean_centre_distance"] > 0


def test_maximum_likelihood_centres_by_em():
    """The control fit: with well-separated components the ML centres are the components' sample
    means (closed form, as the responsibilities are 0 or 1 to float precision); on an overlapping
    sample they are a stationary point of log p(x) (zero gradient) above the ground truth, and
    EM's log-likelihood never decreases."""
    far = ((-50.0, 0.0), (0.0, 0.0), (50.0, 50.0), (50.0, -50.0))
    x, component = sample_mixture(40, 1.0, 3, centres=far)
    centres, _ = fit_centres_ml(torch.from_numpy(x), 1.0, far)
    means = np.stack([x[component == k].mean(0) for k in range(4)])
    np.testing.assert_allclose(centres.numpy(), means, atol=1e-5)

    x, _ = sample_mixture(200, 1.0, 4)
    x = torch.from_numpy(x).double()
    centres, iterations = fit_centres_ml(x, 1.0)
    assert 1 < iterations < 10_000
    decoder = MixtureDecoder(centres, 1.0).double()
    ll = log_likelihood(decoder.log_joint(x)).mean()
    (grad,) = torch.autograd.grad(ll, decoder.centres)
    assert grad.abs().max() < 1e-8
    truth = log_likelihood(MixtureDecoder(TRUE_CENTRES, 1.0).double().log_joint(x)).mean()
    assert ll > truth
    previous = truth.item()
    for steps in (1, 2, 5, 20):
        c, _ = fit_centres_ml(x, 1.0, max_iterations=steps)
        now = log_likelihood(MixtureDecoder(c, 1.0).double().log_joint(x)).mean().item()
        assert now >= previous - 1e-12
        previous = now
