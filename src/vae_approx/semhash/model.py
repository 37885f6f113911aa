"""Bernoulli VAE for semantic hashing, and the DisARM and ARM gradients of its encoder.

Shekhovtsov, Schlesinger, Flach, "VAE Approximation Error: ELBO and Exponential Families",
ICLR 2022, and its reproduction (Kyrylov, Bedi, Zang, ReScience C 9(2) 2023): a document's
bag of words x is encoded into b independent bits, q(z|x) = prod_i Bernoulli(z_i;
sigmoid(a_i(x))), the prior is uniform, p(z) = 2^-b, and the decoder is a multinomial over
the vocabulary, p(x|z) proportional to prod_w softmax_w(h(z))^x_w. The paper's claim: an
encoder linear in the word counts (e1) reaches a lower NELBO than encoders on word frequencies
(e2, e3), because the exact posterior's natural parameters are linear in the counts.

Conventions
- x is always the *smoothed* count vector of the protocol: the raw counts plus the smoothing
  vector of data.prepare (which sums to 1), so every word has a positive count and
  |x| = (number of words) + 1. It is formed batch by batch (SparseCounts), never for the whole
  corpus.
- Codes z are in {0, 1}^b, the natural space of Bernoulli variables and of the estimators'
  indicator formulas. The decoder feeds them to its first layer as spins 2z - 1 in {-1, +1}:
  the same family of functions (a linear layer absorbs the affine map), but centred inputs.
- Every loss is per document, shape [B] (or [samples, B]); callers average.
- Random draws take an optional torch.Generator, which must live on the tensors' device.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

REPRESENTATIONS = ("counts", "frequencies")
ESTIMATORS = ("disarm", "arm")
# The reproduction's encoders: name -> (input representation, number of hidden layers).
ENCODER_SPECS = {"e1": ("counts", 0), "e2": ("frequencies", 1), "e3": ("frequencies", 0)}


def encoder_spec(name: str, width: int = 512) -> tuple[str, tuple[int, ...]]:
    """(representation, hidden widths) of encoder e1, e2 or e3 of the protocol."""
    if name not in ENCODER_SPECS:
        raise ValueError(f"unknown semantic-hashing encoder '{name}'; expected one of {sorted(ENCODER_SPECS)}")
    representation, depth = ENCODER_SPECS[name]
    return representation, (int(width),) * depth


# ---------------------------------------------------------------- batches of smoothed counts


class SparseCounts:
    """A CSR count matrix kept as three tensors on a device; rows become dense one batch at a time.

    A batch of 256 documents over 10,000 words is 10 MB dense, the whole training corpus
    450 MB; keeping the corpus sparse on the device and densifying on the device avoids both
    the memory and a host-to-device copy of every batch.
    """

    def __init__(self, counts: sp.spmatrix, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        counts = sp.csr_matrix(counts, copy=True)
        counts.sum_duplicates()
        self.n_docs, self.n_words = counts.shape
        self.dtype = dtype
        self.crow = torch.as_tensor(counts.indptr.astype(np.int64), device=device)  # [N+1]
        self.col = torch.as_tensor(counts.indices.astype(np.int64), device=device)  # [nnz]
        self.val = torch.as_tensor(counts.data, device=device, dtype=dtype)          # [nnz]

    @property
    def device(self) -> torch.device:
        return self.crow.device

    def __len__(self) -> int:
        return self.n_docs

    def dense(self, rows) -> torch.Tensor:
        """Raw counts of the given documents: [B] indices -> [B, V]."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        starts = self.crow[rows]                                             # [B]
        lengths = self.crow[rows + 1] - starts                               # [B] nonzeros per row
        total = int(lengths.sum())
        batch = torch.repeat_interleave(torch.arange(len(rows), device=self.device), lengths,
                                        output_size=total)                  # [nnz_B] row in batch
        # position in the CSR arrays of the batch's j-th nonzero, which is in batch row r:
        # starts[r] + (j - first nonzero of row r in the batch)
        shift = starts - (torch.cumsum(lengths, 0) - lengths)                   # [B]
        pos = torch.repeat_interleave(shift, lengths, output_size=total) + torch.arange(total, device=self.device)
        out = torch.zeros(len(rows), self.n_words, dtype=self.dtype, device=self.device)
        return out.index_put_((batch, self.col[pos]), self.val[pos], accumulate=True)

    def smoothed(self, rows, smoothing: torch.Tensor) -> torch.Tensor:
        """x = counts + smoothing vector, the model's input and target: [B] -> [B, V]."""
        return self.dense(rows) + smoothing


def encoder_input(x: torch.Tensor, representation: str) -> torch.Tensor:
    """The encoder's view of smoothed counts x [B, V]: x itself, or x / |x| (rows sum to 1)."""
    if representation == "counts":
        return x
    if representation == "frequencies":
        return x / x.sum(dim=-1, keepdim=True)
    raise ValueError(f"unknown input representation '{representation}'; expected one of {REPRESENTATIONS}")


# ---------------------------------------------------------------- networks


def _mlp(sizes: Sequence[int], negative_slope: float) -> nn.Sequential:
    """Linear layers between consecutive sizes, LeakyReLU after all but the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(negative_slope))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Smoothed counts [B, V] -> Bernoulli logits a(x) [B, b]; q(z_i = 1|x) = sigmoid(a_i(x)).

    `representation` is what the first layer sees ("counts" or "frequencies"); `hidden` the
    widths of the LeakyReLU hidden layers, () for a linear encoder.
    """

    def __init__(self, n_words: int, bits: int, hidden: Sequence[int] = (), representation: str = "counts",
                 negative_slope: float = 0.01):
        super().__init__()
        if representation not in REPRESENTATIONS:
            raise ValueError(f"unknown input representation '{representation}'; expected one of {REPRESENTATIONS}")
        self.representation = representation
        self.bits = int(bits)
        self.net = _mlp([n_words, *hidden, bits], negative_slope)  # [B, V] -> [B, H...] -> [B, b]

    def forward(self, x: torch.Tensor, representation: str | None = None) -> torch.Tensor:
        """Logits [B, b]. `representation` overrides the trained one; only for reproducing the
        reference code's defect of evaluating frequency encoders on counts."""
        return self.net(encoder_input(x, representation or self.representation))


class Decoder(nn.Module):
    """Codes z in {0,1}^b [..., b] -> log-probabilities over the vocabulary [..., V].

    The first layer gets the spins 2z - 1; `hidden` are LeakyReLU widths, () for the linear
    (depth 0) decoder; the output is a log-softmax, so every row is a normalised distribution.
    """

    def __init__(self, bits: int, n_words: int, hidden: Sequence[int] = (), negative_slope: float = 0.01):
        super().__init__()
        self.bits = int(bits)
        self.net = _mlp([bits, *hidden, n_words], negative_slope)  # [..., b] -> [..., H...] -> [..., V]

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.net(2 * codes - 1), dim=-1)


# ---------------------------------------------------------------- losses, per document


def bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(q) = sum_i [-p_i log p_i - (1-p_i) log(1-p_i)], p = sigmoid(a): [B, b] -> [B].

    Written as softplus(a) - p a, which stays finite for large |a| (where p log p underflows).
    """
    return (F.softplus(logits) - torch.sigmoid(logits) * logits).sum(dim=-1)


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || Bernoulli(1/2)^b) = b log 2 - H(q), analytic: [B, b] -> [B]."""
    return logits.shape[-1] * math.log(2.0) - bernoulli_entropy(logits)


def log_likelihood(x: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """Multinomial log p(x|z) without its coefficient: sum_w x_w log softmax_w.

    x [B, V] (smoothed counts), log_probs [..., B, V] -> [..., B]. A batched dot product, so
    the [..., B, V] product of a stack of decoder outputs is never materialised.
    """
    return torch.matmul(log_probs.unsqueeze(-2), x.unsqueeze(-1))[..., 0, 0]


def empirical_log_likelihood(x: torch.Tensor) -> torch.Tensor:
    """sum_w x_w log(x_w / |x|): the largest log_likelihood any decoder can reach, [B, V] -> [B]."""
    return torch.special.xlogy(x, x / x.sum(dim=-1, keepdim=True)).sum(dim=-1)


def reconstruction(x: torch.Tensor, log_probs: torch.Tensor, empirical: torch.Tensor | None = None) -> torch.Tensor:
    """-log p(x|z) relative to the document's own distribution, as the protocol reports it.

    sum_w x_w log(x_w/|x|) - sum_w x_w log softmax_w = |x| KL(x/|x| || softmax) >= 0, zero for
    a decoder that reproduces the document's empirical distribution. x [B, V] are the smoothed
    counts; log_probs [..., B, V] -> [..., B]. `empirical` may pass empirical_log_likelihood(x)
    when it is reused.
    """
    if empirical is None:
        empirical = empirical_log_likelihood(x)
    return empirical - log_likelihood(x, log_probs)


def sample_codes(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ q(z|x), one code per row: [B, b] logits -> [B, b] in {0, 1}."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    return (u < torch.sigmoid(logits)).to(logits.dtype)


class NelboTerms(NamedTuple):
    nelbo: torch.Tensor           # [B] reconstruction + kl
    reconstruction: torch.Tensor  # [B] one-sample estimate of E_q[-log p(x|z)], relative (>= 0)
    kl: torch.Tensor              # [B] analytic KL(q || uniform prior)


def nelbo_estimate(x: torch.Tensor, logits: torch.Tensor, decoder: nn.Module,
                   generator: torch.Generator | None = None) -> NelboTerms:
    """The protocol's NELBO: one code sample for the reconstruction, the KL analytic.

    NELBO(x) = E_q[-log p(x|z)] + KL(q(z|x) || p(z)) + sum_w x_w log(x_w/|x|), per document,
    an unbiased estimate of the exact value; x are smoothed counts [B, V], logits [B, b].
    """
    rec = reconstruction(x, decoder(sample_codes(logits, generator)))  # [B]
    kl = kl_to_uniform(logits)                                         # [B]
    return NelboTerms(rec + kl, rec, kl)


# ---------------------------------------------------------------- DisARM and ARM


def antithetic_codes(logits: torch.Tensor, pairs: int, generator: torch.Generator | None = None):
    """K antithetic pairs per document from the same uniforms.

    u ~ U(0,1)^[K, B, b]; b = 1[u < sigmoid(a)] and b~ = 1[1 - u < sigmoid(a)] are both
    distributed as q(z|x). Returns (u, b, b~), each [K, B, b].
    """
    probs = torch.sigmoid(logits.detach())
    u = torch.rand((pairs, *logits.shape), generator=generator, device=logits.device, dtype=logits.dtype)
    return u, (u < probs).to(logits.dtype), ((1 - u) < probs).to(logits.dtype)


def pair_gradients(f_b: torch.Tensor, f_anti: torch.Tensor, u: torch.Tensor, logits: torch.Tensor,
                   method: str = "disarm") -> torch.Tensor:
    """One unbiased estimate of d/da E_q[f(z)] per antithetic pair: [K, B] values -> [K, B, b].

    f_b = f(b), f_anti = f(b~) with b, b~ from antithetic_codes(u).
    - ARM (Yin & Zhou, "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks",
      ICLR 2019): (f(b~) - f(b)) (u - 1/2).
    - DisARM (Dong, Mnih, Tucker, "DisARM: An Antithetic Gradient Estimator for Binary Latent
      Variables", NeurIPS 2020): 1/2 (f(b) - f(b~)) (-1)^b~_i 1[b_i != b~_i] sigmoid(|a_i|),
      the expectation of ARM given (b, b~): the same mean, never a larger variance.
    """
    logits = logits.detach()
    probs = torch.sigmoid(logits)
    if method == "arm":
        return (f_anti - f_b).unsqueeze(-1) * (u - 0.5)
    if method == "disarm":
        b, b_anti = (u < probs).to(logits.dtype), ((1 - u) < probs).to(logits.dtype)
        weight = (1 - 2 * b_anti) * (b != b_anti).to(logits.dtype) * torch.sigmoid(logits.abs())
        return 0.5 * (f_b - f_anti).unsqueeze(-1) * weight
    raise ValueError(f"unknown gradient estimator '{method}'; expected one of {ESTIMATORS}")


class SurrogateTerms(NamedTuple):
    loss: torch.Tensor   # [B] differentiate this (its mean) to train; its value is `nelbo`
    nelbo: torch.Tensor  # [B] detached NELBO estimate: mean reconstruction over the 2K codes + KL
    encoder_gradient: torch.Tensor  # [B, b] detached estimate of d E_q[reconstruction] / d logits


def surrogate_loss(x: torch.Tensor, logits: torch.Tensor, decoder: nn.Module, method: str = "disarm",
                   pairs: int = 1, generator: torch.Generator | None = None) -> SurrogateTerms:
    """A per-document loss whose gradients are the training gradients of the NELBO.

    - w.r.t. the encoder logits: the DisARM (or ARM) estimate of d E_q[-log p(x|z)] / d a,
      averaged over `pairs` antithetic pairs, plus the exact gradient of the analytic KL;
    - w.r.t. the decoder: the ordinary gradient of -log p(x|z) averaged over the 2K codes.
    All 2K codes go through the decoder in one batched pass ([2K, B, b] -> [2K, B, V]). The
    estimator enters as (g * (a - a.detach())).sum(), which is zero in value, so the loss's
    value is the 2K-sample NELBO estimate, usable for logging and non-finite checks.
    x: smoothed counts [B, V]; logits: encoder output [B, b], attached to the encoder's graph.
    """
    if method not in ESTIMATORS:
        raise ValueError(f"unknown gradient estimator '{method}'; expected one of {ESTIMATORS}")
    if int(pairs) != pairs or pairs < 1:
        raise ValueError(f"pairs must be a positive integer, got {pairs!r}")
    u, b, b_anti = antithetic_codes(logits, int(pairs), generator)     # [K, B, b] each
    rec = reconstruction(x, decoder(torch.cat([b, b_anti])))           # [2K, B], decoder's graph
    f = rec.detach()
    grad = pair_gradients(f[:pairs], f[pairs:], u, logits, method).mean(dim=0)  # [B, b]
    kl = kl_to_uniform(logits)                                          # [B], exact gradient
    loss = rec.mean(dim=0) + kl + (grad * (logits - logits.detach())).sum(dim=-1)
    return SurrogateTerms(loss, (f.mean(dim=0) + kl).detach(), grad)


@torch.no_grad()
def evaluate_nelbo(encoder: Encoder, decoder: Decoder, counts: SparseCounts, smoothing: torch.Tensor,
                   batch_size: int = 1024, generator: torch.Generator | None = None,
                   representation: str | None = None) -> NelboTerms:
    """nelbo_estimate of every document of `counts`, batch by batch; each term [N] on the device.

    The encoder sees its own input representation unless `representation` overrides it (the
    reference code evaluated frequency encoders on counts; see DESIGN.md).
    """
    parts = []
    for start in range(0, len(counts), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(counts)), device=counts.device)
        x = counts.smoothed(rows, smoothing)
        parts.append(nelbo_estimate(x, encoder(x, representation), decoder, generator))
    return NelboTerms(*(torch.cat(terms) for terms in zip(*parts)))
