"""The semantic-hashing approximation error by enumeration (semhash/exact.py, evaluate.exact_terms),
checked where the answer is known: a brute-force loop over documents and codes in float64, the
ordering log p(x) >= ELBO(q*) >= ELBO(q), a decoder that ignores the code, the IWAE bound's
approach to the exact value, and the likelihood control's gradient against finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from vae_approx.semhash.data import SparseCounts
from vae_approx.semhash.evaluate import exact_terms, train_subset
from vae_approx.semhash.exact import (all_codes, best_factorized, expectation, factorized_elbo, iwae_bounds,
                                      log_marginal, sampled_likelihood, table_likelihood)
from vae_approx.semhash.model import Decoder, Encoder
from vae_approx.semhash.settings import ExactSettings
from vae_approx.semhash.train import exact_log_likelihood

BITS, WORDS = 3, 5
DEPTHS = (0, 1, 2)


def settings(**changes) -> ExactSettings:
    values = dict(max_bits=16, train_documents=10, iwae_samples=50, iwae_curve=(1, 10, 100), tolerance=1e-12,
                  max_sweeps=500)
    return ExactSettings(**{**values, **changes})


def tiny(depth: int, seed: int = 0, code_values: str = "bits", scale: float = 3.0):
    """Counts of 6 documents over WORDS words (one empty), a smoothing vector, and float64 models
    whose codes matter (weights scaled up)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, size=(6, WORDS)) * (rng.random((6, WORDS)) < 0.7)
    counts[3] = 0
    smoothing = torch.tensor(rng.dirichlet(np.ones(WORDS)), dtype=torch.float64)
    encoder = Encoder(WORDS, BITS, (4,) if depth else (), "counts").double()
    decoder = Decoder(BITS, WORDS, (4,) * depth, code_values=code_values).double()
    with torch.no_grad():
        for p in [*decoder.parameters(), *encoder.parameters()]:
            p.mul_(scale)
    return sp.csr_matrix(counts), smoothing, encoder, decoder


def brute_force(counts, smoothing, encoder, decoder) -> dict[str, np.ndarray]:
    """A loop over documents and codes, in float64, from the model's own forward passes."""
    codes = [torch.tensor([(n >> i) & 1 for i in range(BITS)], dtype=torch.float64) for n in range(2**BITS)]
    out = {"nll": [], "nelbo": []}
    with torch.no_grad():
        for row in counts.toarray():
            x = torch.tensor(row, dtype=torch.float64) + smoothing
            empirical = float((x * torch.log(x / x.sum())).sum())
            ll = torch.stack([(x * decoder(z)).sum() for z in codes])       # log p(x|z), each code
            log_px = torch.logsumexp(ll, 0) - BITS * math.log(2)
            p = torch.sigmoid(encoder(x[None]))[0]
            q = torch.stack([torch.prod(torch.where(z > 0, p, 1 - p)) for z in codes])
            elbo = (q * (ll - BITS * math.log(2) - torch.log(q))).sum()
            out["nll"].append(empirical - float(log_px))
            out["nelbo"].append(empirical - float(elbo))
    return {k: np.array(v) for k, v in out.items()}


def terms(counts, smoothing, encoder, decoder, **changes):
    data = SparseCounts(counts, dtype=torch.float64)
    return exact_terms(encoder, decoder, data, smoothing, settings(**changes), 4,
                       torch.Generator().manual_seed(0))


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("code_values", ["bits", "spins"])
def test_enumeration_matches_brute_force(depth, code_values):
    counts, smoothing, encoder, decoder = tiny(depth, code_values=code_values)
    got, want = terms(counts, smoothing, encoder, decoder), brute_force(counts, smoothing, encoder, decoder)
    for name in ("nll", "nelbo"):
        np.testing.assert_allclose(got[name].numpy(), want[name], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("seed", range(4))
def test_likelihood_bounds_the_best_factorized_elbo_which_bounds_the_encoders(depth, seed):
    counts, smoothing, encoder, decoder = tiny(depth, seed)
    got = terms(counts, smoothing, encoder, decoder)
    assert (got["nll"] <= got["nelbo_q_star"] + 1e-10).all()             # log p(x) >= ELBO(q*)
    assert (got["nelbo_q_star"] <= got["nelbo"] + 1e-10).all()           # ELBO(q*) >= ELBO(q)
    assert got["q_star_converged"].all()


def test_best_factorized_is_a_stationary_point_and_no_random_q_beats_its_start():
    torch.manual_seed(1)
    ll = torch.randn(5, 2**BITS, dtype=torch.float64) * 4
    start = torch.randn(5, BITS, dtype=torch.float64)
    best = best_factorized(ll, start, tolerance=1e-14, max_sweeps=2000)
    logits = best.logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(factorized_elbo(ll, logits).sum(), logits)
    assert grad.abs().max() < 1e-6
    np.testing.assert_allclose(best.elbo.numpy(), factorized_elbo(ll, best.logits).numpy(), atol=1e-12)
    # each coordinate update is that bit's exact maximiser: no single-bit change improves on q*
    for i in range(BITS):
        for delta in (-0.5, 0.5):
            moved = best.logits.clone()
            moved[:, i] += delta
            assert (factorized_elbo(ll, moved) <= best.elbo + 1e-12).all()


def test_saturated_bits_stay_finite():
    """Documents so long that q* is nearly deterministic: logits of hundreds, probabilities that
    underflow; the ascent must stay finite and below log p(x)."""
    torch.manual_seed(2)
    ll = torch.randn(4, 2**BITS) * 500                                     # float32, as the pipeline runs
    ll -= ll.amax(-1, keepdim=True)
    best = best_factorized(ll, torch.randn(4, BITS) * 50, tolerance=1e-4, max_sweeps=100)
    assert torch.isfinite(best.logits).all() and torch.isfinite(best.elbo).all()
    assert (best.elbo <= log_marginal(ll) + 1e-4).all()


@pytest.mark.parametrize("depth", DEPTHS)
def test_a_decoder_that_ignores_the_code_has_the_prior_as_posterior(depth):
    counts, smoothing, encoder, decoder = tiny(depth)
    with torch.no_grad():
        decoder.net[-1].weight.zero_()                                      # h(z) = bias for every code
    got = terms(counts, smoothing, encoder, decoder)
    data = SparseCounts(counts, dtype=torch.float64)
    x = data.smoothed(torch.arange(len(data)), smoothing)
    logits = encoder(x).detach()
    p = torch.sigmoid(logits)
    kl = (p * torch.log(2 * p) + (1 - p) * torch.log(2 * (1 - p))).sum(-1)   # KL(q || uniform)
    np.testing.assert_allclose((got["nelbo_q_star"] - got["nll"]).numpy(), 0, atol=1e-10)  # approximation gap
    np.testing.assert_allclose((got["nelbo"] - got["nelbo_q_star"]).numpy(), kl.numpy(), atol=1e-10)


def test_iwae_rises_towards_the_exact_value():
    counts, smoothing, encoder, decoder = tiny(0, seed=3)
    counts = sp.vstack([counts] * 100).tocsr()                              # 100 independent draws per document
    got = terms(counts, smoothing, encoder, decoder, iwae_curve=(1, 10, 100, 10_000), iwae_samples=1000)
    gap = {K: (got[f"nll_iwae_{K}"] - got["nll"]).mean().item() for K in (1, 10, 100, 1000, 10_000)}
    assert all(value >= -1e-3 for value in gap.values())                   # a bound, up to sampling noise
    assert gap[1] > gap[10] > gap[100] > gap[10_000]
    assert gap[10_000] < 0.02 * gap[1]
    # K = 1 is the ELBO: its mean over draws is the exact NELBO
    assert abs(gap[1] - (got["nelbo"] - got["nll"]).mean().item()) < 0.1 * gap[1]


def test_iwae_by_lookup_equals_iwae_through_the_decoder():
    counts, smoothing, encoder, decoder = tiny(1, seed=4)
    data = SparseCounts(counts, dtype=torch.float64)
    x = next(data.batches(torch.arange(len(data)), len(data), smoothing, by_word=False))
    from vae_approx.semhash.exact import code_table, document_features, log_likelihoods
    with torch.no_grad():
        features = document_features(x, decoder)
        ll = log_likelihoods(features, x.length, code_table(decoder, all_codes(BITS, dtype=torch.float64)))
        logits = encoder(x)
        lookup = iwae_bounds(table_likelihood(ll), logits, [7, 30], BITS, torch.Generator().manual_seed(5))
        direct = iwae_bounds(sampled_likelihood(features, x.length, decoder), logits, [7, 30], BITS,
                             torch.Generator().manual_seed(5))
    for K in (7, 30):
        np.testing.assert_allclose(lookup[K].numpy(), direct[K].numpy(), rtol=1e-10)


def test_above_max_bits_only_the_bound():
    counts, smoothing, encoder, decoder = tiny(0)
    counts = sp.vstack([counts] * 50).tocsr()
    got = terms(counts, smoothing, encoder, decoder, max_bits=2)
    assert set(got) == {"nll_iwae_50"}
    exact = terms(counts, smoothing, encoder, decoder)
    # a bound in expectation (one estimate may fall on either side): over 50 draws per document
    assert (got["nll_iwae_50"] - exact["nll"]).mean() > 0


@pytest.mark.parametrize("bits", [1, 4, 7])
def test_expectation_by_contraction_equals_the_sum_over_codes(bits):
    torch.manual_seed(bits)
    ll = torch.randn(3, 2**bits, dtype=torch.float64) * 10
    logits = torch.randn(3, bits, dtype=torch.float64) * 3
    logits[0, 0] = 200.0                                                    # a saturated bit: p = 1 exactly
    codes = all_codes(bits, dtype=torch.float64)
    log_q = logits @ codes.T - torch.nn.functional.softplus(logits).sum(-1, keepdim=True)  # log q(z) of every code
    direct = (log_q.exp() * ll).sum(-1)
    np.testing.assert_allclose(expectation(ll, torch.sigmoid(logits)).numpy(), direct.numpy(), rtol=1e-12)


def test_train_subset_is_fixed_and_spread():
    assert train_subset(5, 10).tolist() == list(range(5))
    subset = train_subset(11269, 4)
    assert subset.tolist() == [0, 3756, 7512, 11268]


@pytest.mark.parametrize("depth", DEPTHS)
def test_likelihood_control_gradient_matches_finite_differences(depth):
    """The gradient the control trains by (autograd through the enumeration) against central
    differences of the brute-force exact log-likelihood, for every decoder parameter."""
    counts, smoothing, encoder, decoder = tiny(depth, seed=5, scale=1.0)
    data = SparseCounts(counts, dtype=torch.float64)
    x = next(data.batches(torch.arange(len(data)), len(data), smoothing, by_word=False))
    codes = all_codes(BITS, dtype=torch.float64)
    loss = -exact_log_likelihood(x, decoder, codes).sum()
    grads = torch.autograd.grad(loss, list(decoder.parameters()))

    def brute() -> float:
        return float(brute_force(counts, smoothing, encoder, decoder)["nll"].sum()
                     - sum(float((torch.tensor(r, dtype=torch.float64) + smoothing).mul(
                         torch.log((torch.tensor(r, dtype=torch.float64) + smoothing)
                                   / (torch.tensor(r, dtype=torch.float64) + smoothing).sum())).sum())
                           for r in counts.toarray()))

    eps = 1e-6
    with torch.no_grad():
        for p, g in zip(decoder.parameters(), grads):
            flat, gflat = p.view(-1), g.reshape(-1)
            for j in range(0, flat.numel(), max(1, flat.numel() // 7)):
                old = flat[j].item()
                flat[j] = old + eps
                up = brute()
                flat[j] = old - eps
                down = brute()
                flat[j] = old
                assert gflat[j].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-6)
