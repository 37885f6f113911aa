"""Semantic-hashing VAE: likelihood normalisation, NELBO, and DisARM / ARM against exact gradients.

On 3 bits every expectation over q(z|x) is a sum over 8 codes, so the estimators' means can be
compared with the exact gradient; the tolerance is 5 empirical standard errors of the mean
(a fixed seed makes every run identical; a true failure rate for an unbiased estimator would
be below 1e-5 over the compared components).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from vae_approx.semhash.data import SparseCounts
from vae_approx.semhash.estimators import antithetic_codes, log_q_over_prior, pair_gradients, surrogate_loss
from vae_approx.semhash.evaluate import evaluate_nelbo
from vae_approx.semhash.model import (
    Decoder,
    Encoder,
    bernoulli_entropy,
    empirical_log_likelihood,
    encoder_input,
    encoder_spec,
    kl_to_uniform,
    log_likelihood,
    nelbo_estimate,
    reconstruction,
    sparse_log_likelihood,
    _LinearMultinomial,
)

torch.set_num_threads(1)

BITS, WORDS, DOCS = 3, 6, 4
DRAWS = 20_000  # antithetic pairs (estimators) or code samples (NELBO)
N_SE = 5.0      # tolerance in standard errors


def all_codes(bits: int) -> torch.Tensor:
    """Every code of {0,1}^bits, [2^bits, bits]; row i is the binary expansion of i (MSB first)."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=bits)), dtype=torch.float64)


def code_index(codes: torch.Tensor) -> torch.Tensor:
    weights = 2 ** torch.arange(codes.shape[-1] - 1, -1, -1, dtype=torch.float64)
    return (codes * weights).sum(-1).long()


def log_q_table(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """log q(z|x) of every code: logits [B, b], codes [C, b] -> [B, C]."""
    log_p1, log_p0 = torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits)
    return log_p1 @ codes.T + log_p0 @ (1 - codes).T


@pytest.fixture(params=["bits", "spins"])
def problem(request):
    """Smoothed counts x [B, V], encoder logits [B, b] and a small float64 decoder, reading the
    codes as bits or as spins."""
    torch.manual_seed(0)
    counts = torch.tensor([[3, 0, 1, 0, 0, 2], [0, 5, 0, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 7, 1]],
                          dtype=torch.float64)
    smoothing = torch.tensor([0.3, 0.2, 0.2, 0.1, 0.1, 0.1], dtype=torch.float64)
    x = counts + smoothing
    logits = torch.tensor([[0.3, -1.2, 2.0], [-0.5, 0.1, 0.8], [1.5, -2.5, 0.0], [0.05, 0.7, -0.9]],
                          dtype=torch.float64)
    decoder = Decoder(BITS, WORDS, hidden=(5,), code_values=request.param).double()
    with torch.no_grad():  # a decoder whose codes matter: large enough weights
        for p in decoder.parameters():
            p.mul_(3.0)
    return x, logits, decoder


def exact_quantities(x, logits, decoder):
    """By enumeration: F [B, C] = reconstruction of every code, log q [B, C], and
    the exact gradient of E_q[F] w.r.t. the logits [B, b]."""
    codes = all_codes(BITS)
    with torch.no_grad():
        f = reconstruction(x, decoder(codes)[:, None, :].expand(len(codes), *x.shape)).T  # [B, C]
    a = logits.detach().clone().requires_grad_(True)
    log_q = log_q_table(a, codes)
    expected = (log_q.exp() * f).sum()
    (grad,) = torch.autograd.grad(expected, a)
    return f, log_q.detach(), grad


def stats(samples: torch.Tensor):
    """Mean, standard error of the mean and variance over the first axis."""
    var = samples.var(dim=0)
    return samples.mean(dim=0), (var / samples.shape[0]).sqrt(), var


# ---------------------------------------------------------------- likelihood and KL


def test_log_q_table_is_normalised(problem):
    _, logits, _ = problem
    assert torch.allclose(log_q_table(logits, all_codes(BITS)).exp().sum(1), torch.ones(DOCS, dtype=torch.float64))


@pytest.mark.parametrize("depth", [0, 2])
def test_decoder_first_layer_reads_bits_or_spins(depth):
    """Bits: the first layer sees z in {0, 1} itself (the reproduction's decoder); spins: 2z - 1.
    Checked through the first layer's output, at depth 0 (straight into the scores) and deeper,
    and through the sparse likelihood, which must read the codes the same way."""
    torch.manual_seed(0)
    codes = all_codes(BITS)                                            # [8, b], every code
    expected = {"bits": codes, "spins": 2 * codes - 1}
    x = torch.tensor([[2.0, 0.5, 1.0, 0.25, 3.0, 0.25]], dtype=torch.float64)
    sparse = SparseCounts(sp.csr_matrix(np.floor(x.numpy())), dtype=torch.float64)
    batch = sparse.batch([0], x[0] - torch.floor(x[0]))
    for values in ("bits", "spins"):
        decoder = Decoder(BITS, WORDS, hidden=(4,) * depth, code_values=values).double()
        first = decoder.net[0]
        seen = []
        hook = first.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
        scores = decoder.logits(codes)
        hook.remove()
        assert torch.equal(seen[0], expected[values])
        if depth == 0:
            assert torch.allclose(scores, expected[values] @ first.weight.T + first.bias)
        dense = log_likelihood(x, decoder(codes[:, None, :]))          # [8, 1]
        assert torch.allclose(sparse_log_likelihood(batch, decoder, codes[:, None, :]), dense)
    with pytest.raises(ValueError, match="unknown code values 'ising'"):
        Decoder(BITS, WORDS, code_values="ising")


def test_decoder_is_normalised_for_any_shape():
    decoder = Decoder(BITS, WORDS, hidden=(7, 4), code_values="bits").double()
    codes = torch.randint(0, 2, (2, 5, BITS)).double()
    log_probs = decoder(codes)
    assert log_probs.shape == (2, 5, WORDS)
    assert torch.allclose(log_probs.logsumexp(-1), torch.zeros(2, 5, dtype=torch.float64), atol=1e-12)


def test_reconstruction_is_relative_to_the_empirical_distribution(problem):
    x, _, _ = problem
    empirical = (x / x.sum(1, keepdim=True)).log()
    assert torch.allclose(reconstruction(x, empirical), torch.zeros(DOCS, dtype=torch.float64), atol=1e-12)
    # otherwise |x| KL(x/|x| || p) > 0
    log_p = torch.randn(3, DOCS, WORDS, dtype=torch.float64).log_softmax(-1)
    rec = reconstruction(x, log_p)
    x_hat = x / x.sum(1, keepdim=True)
    kl = (x_hat * (x_hat.log() - log_p)).sum(-1)
    assert rec.shape == (3, DOCS) and torch.all(rec > 0)
    assert torch.allclose(rec, x.sum(1) * kl, rtol=1e-12)
    assert torch.allclose(log_likelihood(x, log_p), (x * log_p).sum(-1), rtol=1e-12)
    assert torch.allclose(empirical_log_likelihood(x), (x * empirical).sum(-1), rtol=1e-12)


def test_perfect_decoder_gives_zero_reconstruction():
    """A decoder ignoring z whose softmax is the document's frequencies reconstructs it exactly."""
    x = torch.tensor([[4.0, 1.0, 0.5, 2.5, 1.0, 1.0]], dtype=torch.float64)
    decoder = Decoder(BITS, WORDS, code_values="bits").double()
    with torch.no_grad():
        decoder.net[-1].weight.zero_()
        decoder.net[-1].bias.copy_((x / x.sum()).log()[0] + 1.7)  # any shift: softmax removes it
    logits = torch.zeros(1, BITS, dtype=torch.float64)
    terms = nelbo_estimate(x, logits, decoder)
    assert abs(terms.reconstruction.item()) < 1e-12
    assert terms.kl.item() == pytest.approx(0.0, abs=1e-12)  # q is the uniform prior


def test_entropy_and_kl_match_enumeration(problem):
    _, logits, _ = problem
    log_q = log_q_table(logits, all_codes(BITS))
    entropy = -(log_q.exp() * log_q).sum(1)
    kl = (log_q.exp() * (log_q + BITS * math.log(2))).sum(1)
    assert torch.allclose(bernoulli_entropy(logits), entropy, atol=1e-12)
    assert torch.allclose(kl_to_uniform(logits), kl, atol=1e-12)
    extreme = torch.tensor([[100.0, -100.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(kl_to_uniform(extreme), torch.tensor([2 * math.log(2)], dtype=torch.float64))


def test_nelbo_estimate_is_unbiased_for_the_exact_nelbo(problem):
    x, logits, decoder = problem
    f, log_q, _ = exact_quantities(x, logits, decoder)
    exact = (log_q.exp() * (f + log_q + BITS * math.log(2))).sum(1)  # E_q[rec] + KL(q || uniform)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        terms = nelbo_estimate(x.repeat(DRAWS, 1), logits.repeat(DRAWS, 1), decoder, generator)
    mean, se, _ = stats(terms.nelbo.view(DRAWS, DOCS))
    assert torch.all((mean - exact).abs() <= N_SE * se + 1e-9), (mean, exact, se)
    assert torch.allclose(terms.kl.view(DRAWS, DOCS)[0], kl_to_uniform(logits))


# ---------------------------------------------------------------- DisARM and ARM


def test_disarm_and_arm_are_unbiased_and_disarm_has_lower_variance(problem, record_property):
    x, logits, decoder = problem
    f, _, exact = exact_quantities(x, logits, decoder)
    generator = torch.Generator().manual_seed(5)
    u, b, b_anti = antithetic_codes(logits, DRAWS, generator)  # [K, B, b]
    docs = torch.arange(DOCS)
    f_b, f_anti = f[docs, code_index(b)], f[docs, code_index(b_anti)]  # [K, B] by table lookup

    # both codes of a pair are distributed as q: check the code frequencies of b~
    q = log_q_table(logits, all_codes(BITS)).exp()
    freq = torch.nn.functional.one_hot(code_index(b_anti), 2 ** BITS).double().mean(0)
    assert torch.all((freq - q).abs() <= N_SE * (q * (1 - q) / DRAWS).sqrt() + 1e-9)

    results = {}
    for method in ("disarm", "arm"):
        mean, se, var = stats(pair_gradients(f_b, f_anti, u, logits, method))
        assert torch.all((mean - exact).abs() <= N_SE * se + 1e-9), (method, mean, exact, se)
        results[method] = var
    ratio = results["disarm"] / results["arm"]
    record_property("disarm_variance_sum", results["disarm"].sum().item())
    record_property("arm_variance_sum", results["arm"].sum().item())
    record_property("disarm_to_arm_variance_ratio_max", ratio.max().item())
    print(f"\nvariance per logit, summed: DisARM {results['disarm'].sum().item():.4g}, "
          f"ARM {results['arm'].sum().item():.4g}; ratio per logit min {ratio.min().item():.3f} "
          f"max {ratio.max().item():.3f}")
    # DisARM = E[ARM | b, b~] (Rao-Blackwell): never a larger variance, per logit
    assert torch.all(ratio <= 1.0 + 1e-9)
    assert results["disarm"].sum() < results["arm"].sum()


@pytest.mark.parametrize("kl_gradient", ["estimator", "analytic"])
@pytest.mark.parametrize("method", ["disarm", "arm"])
def test_surrogate_gradients_match_exact_gradients(problem, method, kl_gradient):
    """Through autograd: encoder logits get the estimator (of the reconstruction plus log q -
    log p, or of the reconstruction alone plus the exact KL gradient), the decoder gets the Monte
    Carlo mean of its gradient over the 2K codes; both unbiased for the NELBO's gradient."""
    x, logits, decoder = problem
    f, log_q, exact_rec_grad = exact_quantities(x, logits, decoder)
    pairs = DRAWS
    a = logits.clone().requires_grad_(True)
    calls = []
    hook = decoder.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape))
    terms = surrogate_loss(x, a, decoder, method=method, pairs=pairs, generator=torch.Generator().manual_seed(7),
                           kl_gradient=kl_gradient)
    hook.remove()
    assert calls == [(2 * pairs, DOCS, BITS)]  # all 2K codes in one decoder pass
    assert torch.allclose(terms.loss.detach(), terms.nelbo, rtol=1e-12)
    decoder.zero_grad()
    terms.loss.sum().backward()

    # the logits' gradient is exactly the mean of the per-pair estimates of the same uniforms
    u, b, b_anti = antithetic_codes(logits, pairs, torch.Generator().manual_seed(7))
    docs = torch.arange(DOCS)
    a_kl = logits.clone().requires_grad_(True)
    (kl_grad,) = torch.autograd.grad(kl_to_uniform(a_kl).sum(), a_kl)
    if kl_gradient == "estimator":
        # f + log q(z|x) - log p(z), looked up per code; the KL's gradient only through the estimate
        f_kl = f + log_q + BITS * math.log(2)
        per_pair = pair_gradients(f_kl[docs, code_index(b)], f_kl[docs, code_index(b_anti)], u, logits, method)
        assert torch.allclose(a.grad, per_pair.mean(0), atol=1e-10)
        mean, se, _ = stats(per_pair)
    else:
        per_pair = pair_gradients(f[docs, code_index(b)], f[docs, code_index(b_anti)], u, logits, method)
        assert torch.allclose(a.grad, per_pair.mean(0) + kl_grad, atol=1e-10)
        mean, se, _ = stats(per_pair)
    assert torch.all((a.grad - (exact_rec_grad + kl_grad)).abs() <= N_SE * se + 1e-9)

    # decoder: exact gradient of sum_d E_q[F_d], and the variance of one sample of its estimate
    codes = all_codes(BITS)
    params = list(decoder.parameters())
    q = log_q.exp()                                                     # [B, C]
    jac = []                                                            # [B, C, P]
    for d in range(DOCS):
        rows = []
        for c in range(len(codes)):
            g = torch.autograd.grad(reconstruction(x[d:d + 1], decoder(codes[c:c + 1])).sum(), params)
            rows.append(torch.cat([t.reshape(-1) for t in g]))
        jac.append(torch.stack(rows))
    jac = torch.stack(jac)
    exact_dec = (q[..., None] * jac).sum((0, 1))
    var_one = ((q[..., None] * jac ** 2).sum(1) - (q[..., None] * jac).sum(1) ** 2).sum(0)  # docs independent
    got = torch.cat([p.grad.reshape(-1) for p in params])
    # each antithetic pair's mean has at most the variance of one sample; K pairs are independent
    assert torch.all((got - exact_dec).abs() <= N_SE * (var_one / pairs).sqrt() + 1e-9)


def test_surrogate_rejects_bad_arguments(problem):
    x, logits, decoder = problem
    with pytest.raises(ValueError, match="unknown gradient estimator 'reinforce'"):
        surrogate_loss(x, logits, decoder, method="reinforce", kl_gradient="estimator")
    with pytest.raises(ValueError, match="pairs"):
        surrogate_loss(x, logits, decoder, method="disarm", kl_gradient="estimator", pairs=0)
    with pytest.raises(ValueError, match="unknown KL gradient 'exact'"):
        surrogate_loss(x, logits, decoder, method="disarm", kl_gradient="exact")


def test_log_q_over_prior_of_every_code(problem):
    """Against log q computed bit by bit; its q-weighted mean over all codes is the analytic KL."""
    _, logits, _ = problem
    codes = all_codes(BITS)[:, None, :].expand(-1, DOCS, -1)           # [C, B, b]
    got = log_q_over_prior(codes, logits)                              # [C, B]
    expected = log_q_table(logits, all_codes(BITS)).T + BITS * math.log(2)
    assert torch.allclose(got, expected, atol=1e-12)
    assert torch.allclose((expected.exp() * 2.0 ** -BITS * got).sum(0), kl_to_uniform(logits), atol=1e-12)


def test_training_step_reaches_encoder_and_decoder():
    torch.manual_seed(1)
    x = torch.rand(8, 20) * 3 + 0.05
    encoder = Encoder(20, 4, hidden=(6,), representation="frequencies")
    decoder = Decoder(4, 20, hidden=(5, 7), code_values="bits")
    terms = surrogate_loss(x, encoder(x), decoder, method="disarm", kl_gradient="estimator", pairs=3)
    terms.loss.mean().backward()
    for module in (encoder, decoder):
        for p in module.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert terms.nelbo.shape == (8,) and terms.encoder_gradient.shape == (8, 4)


# ---------------------------------------------------------------- networks and batches


@pytest.mark.parametrize("hidden", [(), (7,), (5, 4)])
def test_encoder_shapes_and_representations(hidden):
    x = torch.rand(5, 12) * 10 + 0.1
    enc = Encoder(12, 3, hidden=hidden, representation="counts")
    assert enc(x).shape == (5, 3)
    assert sum(isinstance(m, torch.nn.LeakyReLU) for m in enc.net) == len(hidden)
    freq = encoder_input(x, "frequencies")
    assert torch.allclose(freq.sum(1), torch.ones(5))
    enc_f = Encoder(12, 3, hidden=hidden, representation="frequencies")
    assert torch.allclose(enc_f(x), enc_f.net(freq))
    assert torch.allclose(enc_f(x, representation="counts"), enc_f.net(x))  # the reference's defect
    with pytest.raises(ValueError, match="representation"):
        Encoder(12, 3, representation="tfidf")


def test_encoder_specs():
    assert encoder_spec("e1", 16) == ("counts", ())
    assert encoder_spec("e2", 16) == ("frequencies", (16,))
    assert encoder_spec("e3", 16) == ("frequencies", ())
    with pytest.raises(ValueError, match="e4"):
        encoder_spec("e4", 16)


def test_sparse_counts_densify_batches_only():
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.7, size=(30, 9)) * (rng.random((30, 9)) < 0.5)
    dense[[4, 17, 29]] = 0  # documents without words
    counts = SparseCounts(sp.csr_matrix(dense))
    rows = torch.tensor([29, 4, 0, 17, 3, 3, 12])  # repeats and empty rows
    assert torch.equal(counts.dense(rows), torch.tensor(dense[rows.numpy()], dtype=torch.float32))
    smoothing = torch.full((9,), 1 / 9)
    assert torch.allclose(counts.smoothed(rows, smoothing).sum(1),
                          torch.tensor(dense[rows.numpy()].sum(1) + 1.0, dtype=torch.float32))
    assert counts.dense(torch.tensor([], dtype=torch.long)).shape == (0, 9)


def test_evaluate_nelbo_is_reproducible_and_batch_independent():
    rng = np.random.default_rng(1)
    csr = sp.csr_matrix(rng.poisson(1.0, size=(10, 8)))
    counts, smoothing = SparseCounts(csr), torch.full((8,), 1 / 8)
    torch.manual_seed(0)
    encoder, decoder = Encoder(8, 4), Decoder(4, 8, hidden=(3,), code_values="bits")
    one = evaluate_nelbo(encoder, decoder, counts, smoothing, batch_size=4, generator=torch.Generator().manual_seed(2))
    two = evaluate_nelbo(encoder, decoder, counts, smoothing, batch_size=4, generator=torch.Generator().manual_seed(2))
    assert one.nelbo.shape == (10,) and torch.equal(one.nelbo, two.nelbo)
    assert torch.all(one.reconstruction >= 0) and torch.allclose(one.nelbo, one.reconstruction + one.kl)
    x = counts.smoothed(torch.arange(10), smoothing)
    assert torch.allclose(one.kl, kl_to_uniform(encoder(x)), atol=1e-6)


@pytest.mark.parametrize("encoder_name", ["e1", "e2", "e3"])
@pytest.mark.parametrize("depth", [0, 1])
@pytest.mark.parametrize("chunk", [10**6, 60, 30])  # all codes at once; 2 documents; 1 document per chunk
@pytest.mark.parametrize("exp_range", [(-30.0, 60.0), (1.0, -1.0)])  # exp without / always with the row-max shift
@pytest.mark.parametrize("code_values", ["bits", "spins"])
def test_sparse_batch_path_equals_the_dense_formulation(encoder_name, depth, chunk, exp_range, code_values,
                                                        monkeypatch):
    """Training never forms x as [B, V]; its loss, NELBO and every gradient must equal the dense ones,
    however the fused likelihood splits codes and documents into chunks, with or without shifting
    the scores by their row max."""
    monkeypatch.setattr(_LinearMultinomial, "CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(_LinearMultinomial, "EXP_RANGE", exp_range)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.7, size=(6, 30)) * (rng.random((6, 30)) < 0.3)
    dense[2] = 0                                                   # a document with no kept word
    counts = SparseCounts(sp.csr_matrix(dense), dtype=torch.float64)
    smoothing = torch.as_tensor(rng.dirichlet(np.ones(30)), dtype=torch.float64)
    rows = torch.tensor([4, 0, 2, 5])
    batch, x = counts.batch(rows, smoothing), counts.smoothed(rows, smoothing)
    assert torch.allclose(batch.dense(), x)
    assert torch.allclose(batch.empirical, empirical_log_likelihood(x))
    assert torch.allclose(batch.length, x.sum(1))

    representation, hidden = encoder_spec(encoder_name, 7)
    encoder = Encoder(30, 5, hidden, representation).double()
    decoder = Decoder(5, 30, (9,) * depth, code_values=code_values).double()
    params = [*encoder.parameters(), *decoder.parameters()]
    results = []
    for inputs in (x, batch):
        terms = surrogate_loss(inputs, encoder(inputs), decoder, method="disarm", kl_gradient="estimator", pairs=3,
                               generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad(terms.loss.sum(), params)
        results.append((terms.loss.detach(), terms.nelbo, grads))
    (loss_d, nelbo_d, grads_d), (loss_s, nelbo_s, grads_s) = results
    assert torch.allclose(loss_d, loss_s) and torch.allclose(nelbo_d, nelbo_s)
    for gd, gs in zip(grads_d, grads_s):
        assert torch.allclose(gd, gs, atol=1e-10)


def test_sparse_likelihood_stays_finite_for_large_scores():
    """Scores of hundreds of nats (beyond exp's float32 range) take the row-max shift: finite, and
    equal to the dense log-softmax."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    counts = SparseCounts(sp.csr_matrix(rng.poisson(1.0, size=(5, 40))))
    smoothing = torch.as_tensor(rng.dirichlet(np.ones(40)), dtype=torch.float32)
    batch = counts.batch(torch.arange(5), smoothing)
    decoder = Decoder(6, 40, code_values="bits")
    with torch.no_grad():
        decoder.net[-1].weight.mul_(2000.0)                             # |h| up to about 1,000
    codes = torch.randint(0, 2, (3, 5, 6)).float()
    got = sparse_log_likelihood(batch, decoder, codes)
    want = log_likelihood(batch.dense(), decoder(codes))
    assert torch.isfinite(got).all()
    assert torch.allclose(got, want, rtol=1e-5)


def test_batches_reuse_document_terms_only_for_the_same_smoothing():
    """|x| and sum x log(x/|x|) are computed once per smoothing vector; every batch, and a new
    smoothing vector, must still match the dense formulas."""
    rng = np.random.default_rng(3)
    counts = SparseCounts(sp.csr_matrix(rng.poisson(0.8, size=(9, 12))), dtype=torch.float64)
    for smoothing in (torch.full((12,), 1 / 12, dtype=torch.float64),
                      torch.as_tensor(rng.dirichlet(np.ones(12)), dtype=torch.float64)):
        for rows in (torch.tensor([0, 3, 8]), torch.tensor([5, 1]), torch.arange(9)):
            batch, x = counts.batch(rows, smoothing), counts.smoothed(rows, smoothing)
            assert torch.allclose(batch.length, x.sum(1))
            assert torch.allclose(batch.empirical, empirical_log_likelihood(x))


def test_batches_of_an_order_equal_single_batches():
    """SparseCounts.batches gathers the nonzeros once per order; every batch it yields, the last
    partial one and batches holding documents without a kept word included, must equal `batch`
    on the same slice of the order."""
    rng = np.random.default_rng(4)
    dense = rng.poisson(0.6, size=(11, 7))
    dense[[3, 8]] = 0                                                   # documents with no kept word
    counts, smoothing = SparseCounts(sp.csr_matrix(dense)), torch.full((7,), 1 / 7)
    order = torch.as_tensor(rng.permutation(11))
    got = list(counts.batches(order, 4, smoothing))
    assert [len(b) for b in got] == [4, 4, 3]
    for i, batch in enumerate(got):
        want = counts.batch(order[4 * i:4 * i + 4], smoothing)
        for name, a, b in zip(batch._fields, batch, want):
            assert torch.equal(a, b), name
    values_only = next(counts.batches(order, 4, smoothing, by_word=False))
    assert values_only.word_order is None and torch.equal(values_only.col, got[0].col)
    with pytest.raises(ValueError, match="by_word"):
        values_only.transposed_product(values_only.val, torch.ones(4, 2))
