"""Faces experiment: network shapes, Gaussian log-densities, KL, ELBO, Frechet distance."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from vae_approx.images.data import quantize
from vae_approx.images.evaluate import (FRECHET, GaussianStats, frechet_distance, frechet_distance_eigh,
                                       frechet_distance_pytorch_fid)
from vae_approx.images.model import (Discriminator, Encoder, GaussianDecoder, Generator, elbo, elbo_terms,
                                     gaussian_log_density, kl_to_standard_normal, log_likelihood, log_q)


@pytest.mark.parametrize("size,channels,nz,width", [(32, 1, 8, 4), (64, 3, 100, 8)])
def test_shapes_at_both_image_sizes(size, channels, nz, width):
    g, d = Generator(nz, width, channels, size), Discriminator(width, channels, size)
    e = Encoder(nz, width, channels, size, "zero")
    z = torch.randn(3, nz)
    x = g(z)
    assert x.shape == (3, channels, size, size) and x.abs().max() < 1
    assert torch.equal(g(z[:, :, None, None]), x)
    assert d(x).shape == (3,)
    mu, log_s = e(x)
    assert mu.shape == log_s.shape == (3, nz)
    # the last layer starts at zero: q(z|x) = N(0, I) for every x
    assert torch.equal(mu, torch.zeros_like(mu)) and torch.equal(log_s, torch.zeros_like(log_s))


def test_the_64x64_networks_are_the_tutorials():
    g, d = Generator(100, 64, 3, 64), Discriminator(64, 3, 64)
    assert sum(p.numel() for p in g.parameters()) == 3_576_704  # the tutorial's netG
    assert sum(p.numel() for p in d.parameters()) == 2_765_568  # the tutorial's netD
    with pytest.raises(ValueError, match="power of two"):
        Generator(10, 4, 1, 48)


def test_log_densities_and_kl_against_torch_distributions():
    torch.manual_seed(0)
    x, mean, log_s = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3), torch.randn(()) * 0.3
    expected = Normal(mean, log_s.exp()).log_prob(x)
    assert torch.allclose(gaussian_log_density(x, mean, log_s), expected, atol=1e-5)
    assert torch.allclose(log_likelihood(x, mean, log_s), Independent(Normal(mean, log_s.exp()), 3).log_prob(x), atol=1e-4)

    z, mu, s = torch.randn(5, 7), torch.randn(5, 7), torch.randn(5, 7) * 0.5
    q = Independent(Normal(mu, s.exp()), 1)
    assert torch.allclose(log_q(z, mu, s), q.log_prob(z), atol=1e-5)
    prior = Independent(Normal(torch.zeros(5, 7), torch.ones(5, 7)), 1)
    assert torch.allclose(kl_to_standard_normal(mu, s), kl_divergence(q, prior), atol=1e-5)
    # the constant is exactly log sqrt(2 pi), not the reference's 0.9189
    assert gaussian_log_density(torch.zeros(()), torch.zeros(()), torch.zeros(())) == pytest.approx(-0.5 * math.log(2 * math.pi), abs=1e-7)


def test_elbo_is_reconstruction_minus_kl_and_sums_over_pixels():
    torch.manual_seed(1)
    g, e = Generator(6, 4, 1, 32).eval(), Encoder(6, 4, 1, 32, "zero").eval()
    decoder = GaussianDecoder(g, 0.05)
    x = decoder.sample(torch.randn(3, 6))
    gen = torch.Generator().manual_seed(5)
    rec, kl = elbo_terms(x, e, decoder, torch.Generator().manual_seed(5))
    assert torch.allclose(elbo(x, e, decoder, gen), rec - kl)
    # zero-initialised encoder: q = N(0, I), so KL = 0 and the reconstruction term is a sum of 1024 pixels
    assert torch.equal(kl, torch.zeros(3))
    z = torch.randn(3, 6, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(rec, Independent(Normal(g(z), 0.05), 3).log_prob(x), rtol=1e-5)
    assert decoder.sigma == pytest.approx(0.05)
    assert not any(p.requires_grad for p in decoder.parameters() if p is decoder.log_sigma)
    learned = GaussianDecoder(Generator(6, 4, 1, 32), 0.05, learn_sigma=True)
    assert learned.log_sigma.requires_grad and "log_sigma" in dict(learned.named_parameters())


def test_frechet_distance_of_diagonal_gaussians_has_its_closed_form():
    rng = np.random.default_rng(0)
    d = 4
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    a, b = GaussianStats(d), GaussianStats(d)
    # features whose sample mean and covariance are exactly (mu, diag s): +-sqrt(s (n-1)/n) around mu
    n = 2 * d
    for stats, mu, s in ((a, mu1, s1), (b, mu2, s2)):
        offsets = np.concatenate([np.diag(np.sqrt(s * (n - 1) / 2)), -np.diag(np.sqrt(s * (n - 1) / 2))])
        for chunk in np.array_split(mu + offsets, 3):  # in batches
            stats.update(chunk)
    m, c = a.mean_cov()
    assert np.allclose(m, mu1) and np.allclose(c, np.diag(s1))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    for method in FRECHET:  # pytorch-fid's sqrtm (the reference) and the eigendecomposition
        assert frechet_distance(a, b, method) == pytest.approx(expected, rel=1e-6), method
        assert frechet_distance(a, a, method) == pytest.approx(0, abs=1e-6), method


def pool3_like(rng, n, d):
    """n nonnegative, correlated feature vectors of d dimensions on varied scales (as pool3's)."""
    return np.abs(rng.standard_normal((n, d)) @ (0.05 * rng.standard_normal((d, d)))) * rng.uniform(0.1, 2, d)


def test_the_eigendecomposition_agrees_with_pytorch_fid_on_full_rank_covariances():
    rng = np.random.default_rng(0)
    d = 128
    x1, x2 = pool3_like(rng, 2000, d), pool3_like(rng, 2000, d)
    args = (x1.mean(0), np.cov(x1, rowvar=False), x2.mean(0), np.cov(x2, rowvar=False))
    assert np.linalg.eigvalsh(args[1]).min() > 0  # full rank
    reference = frechet_distance_pytorch_fid(*args)
    assert frechet_distance_eigh(*args) == pytest.approx(reference, rel=1e-10)
    assert frechet_distance_eigh(args[0], args[1], args[0], args[1]) == pytest.approx(0, abs=1e-9 * reference)


@pytest.mark.parametrize("d,n", [(256, 40), (256, 4), (64, 30)])
def test_the_eigendecomposition_agrees_with_pytorch_fid_on_rank_deficient_covariances(d, n):
    """Fewer feature vectors than dimensions, as in the smoke and wiring runs: both covariances
    have rank n - 1. The exact value comes from n x n matrices: with centred features X1, X2,
    Tr((S1 S2)^(1/2)) is the sum of the singular values of X1 X2^T / (n - 1)."""
    rng = np.random.default_rng(d + n)
    x1, x2 = pool3_like(rng, n, d), pool3_like(rng, n, d)
    mu1, mu2 = x1.mean(0), x2.mean(0)
    c1, c2 = x1 - mu1, x2 - mu2
    exact = ((mu1 - mu2) @ (mu1 - mu2) + ((c1 ** 2).sum() + (c2 ** 2).sum()) / (n - 1)
             - 2 * np.linalg.svd(c1 @ c2.T / (n - 1), compute_uv=False).sum())
    args = (mu1, np.cov(x1, rowvar=False), mu2, np.cov(x2, rowvar=False))
    ours, reference = frechet_distance_eigh(*args), frechet_distance_pytorch_fid(*args)
    assert ours == pytest.approx(reference, rel=1e-6)  # sqrtm of a singular product: about 1e-8 to 1e-7 here
    assert ours == pytest.approx(exact, rel=1e-8) and reference == pytest.approx(exact, rel=1e-6)


def test_frechet_distance_refuses_mismatched_shapes_and_unknown_methods():
    with pytest.raises(ValueError, match="do not fit together"):
        frechet_distance_eigh(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    a = GaussianStats(2)
    a.update(np.eye(2))
    with pytest.raises(ValueError, match="unknown Frechet distance method"):
        frechet_distance(a, a, "sqrtm")


def test_running_statistics_match_numpy():
    f = np.random.default_rng(1).normal(size=(50, 3))
    stats = GaussianStats(3)
    stats.update(torch.as_tensor(f[:20]))
    stats.update(f[20:])
    mu, cov = stats.mean_cov()
    assert np.allclose(mu, f.mean(0)) and np.allclose(cov, np.cov(f, rowvar=False))


def test_quantize_is_the_png_round_trip():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    u = quantize(x)
    assert torch.allclose(u * 255, torch.tensor([0.0, 0.0, 128.0, 191.0, 255.0, 255.0]))
