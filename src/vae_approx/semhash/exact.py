"""The approximation error of a semantic-hashing model, exactly, by enumerating every code.

With b bits there are 2^b codes; at b <= 16 every quantity below is a finite sum over them, with
no sampling (settings.ALLOWED and config.yaml's semhash.exact say up to which b):
- log p(x) = logsumexp_z [log p(z) + log p(x|z)], p(z) = 2^-b;
- the ELBO of a factorized q(z|x) = prod_i Bernoulli(z_i; sigmoid(a_i)), exactly:
  E_q[log p(x|z)] + log 2^-b + H(q), the expectation summed over all codes, the entropy analytic;
- the best factorized posterior q* of each document: the b logits that maximise its ELBO, by
  coordinate-wise mean-field updates (best_factorized), and so the split of the inference gap
  log p(x) - ELBO(q) into the approximation gap log p(x) - ELBO(q*) and the amortization gap
  ELBO(q*) - ELBO(q) (Cremer, Li, Duvenaud, "Inference Suboptimality in Variational
  Autoencoders", ICML 2018);
- the IWAE bound (Burda, Grosse, Salakhutdinov, ICLR 2016) with the encoder as proposal, which is
  all there is above the enumerable sizes, and which the exact value calibrates below them.

Why it is cheap: log p(x|z) = sum_w x_w log softmax_w(h(z)) with h(z) = W a(z) + c, a(z) the
decoder's last hidden layer (the code itself at depth 0), so

    log p(x|z) = <x W1, a1(z)> - |x| lse(z),   W1 = [W | c], a1 = [a | 1], lse(z) = logsumexp_w h_w(z).

The [2^b, V] scores are needed once, for lse(z) (code_table, chunked over codes); each document
then costs one product of rank k + 1 with every code (log_likelihoods), instead of a product
with the count matrix over the whole vocabulary (V / (k + 1) times more arithmetic: 118 times
at the quick preset's V = 2,000 and 16 bits).

Codes are numbered by their bits: code n has bit i = (n >> i) & 1 (all_codes).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .data import SparseBatch
from .model import Decoder, bernoulli_entropy

LOG2 = math.log(2.0)
# Scores [codes, V] held at once while the table is built (16 MB in float32, in cache on a CPU).
TABLE_ELEMENTS = 4 * 2**20
# Document x code log-likelihoods held at once, with the mean-field state of the same size
# (64 MB each in float32): the documents of one chunk (DOCUMENT_ELEMENTS / 2^b, 256 at 16 bits).
DOCUMENT_ELEMENTS = 16 * 2**20
# Importance samples drawn at once per document chunk (documents x samples x bits uniforms).
SAMPLE_ELEMENTS = 2 * 2**20


def all_codes(bits: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Every code of `bits` bits, [2^b, b] in {0, 1}; row n has bit i = (n >> i) & 1."""
    n = torch.arange(2**bits, device=device)
    return ((n[:, None] >> torch.arange(bits, device=device)) & 1).to(dtype)


def code_index(codes: torch.Tensor) -> torch.Tensor:
    """The row of all_codes of each code [..., b] in {0, 1} -> [...] int64."""
    weights = 2 ** torch.arange(codes.shape[-1], device=codes.device)
    return (codes.long() * weights).sum(dim=-1)


class CodeTable(NamedTuple):
    features: torch.Tensor  # [C, k+1] a1(z): the decoder's last hidden layer of each code, and a 1 for the bias
    log_norm: torch.Tensor  # [C] lse(z) = logsumexp_w h_w(z), the softmax's normaliser


def _last_layer(decoder: Decoder) -> torch.Tensor:
    """W1 = [W | c], the last layer's weight and bias: [V, k+1]."""
    layer = decoder.net[-1]
    return torch.cat([layer.weight, layer.bias[:, None]], dim=1)


def code_table(decoder: Decoder, codes: torch.Tensor) -> CodeTable:
    """a1(z) and lse(z) of codes [C, b], the [C, V] scores a chunk of codes at a time (TABLE_ELEMENTS).
    Differentiable (the likelihood control trains through it)."""
    W1 = _last_layer(decoder)                                                # [V, k+1]
    hidden = decoder.hidden(codes)                                           # [C, k]
    features = torch.cat([hidden, hidden.new_ones(len(codes), 1)], dim=1)    # [C, k+1]
    rows = max(1, TABLE_ELEMENTS // W1.shape[0])
    log_norm = torch.cat([torch.logsumexp(chunk @ W1.T, dim=-1) for chunk in features.split(rows)])  # [C]
    return CodeTable(features, log_norm)


def document_features(x: SparseBatch, decoder: Decoder) -> torch.Tensor:
    """x W1 of each document of the batch (counts and smoothing): [B, k+1]. Differentiable."""
    W1 = _last_layer(decoder)
    return F.embedding_bag(x.col, W1, x.offsets, mode="sum", per_sample_weights=x.val) + x.smoothing @ W1


def log_likelihoods(features: torch.Tensor, length: torch.Tensor, table: CodeTable) -> torch.Tensor:
    """log p(x|z) = <x W1, a1(z)> - |x| lse(z) of every document and code: features [B, k+1], length [B] -> [B, C]."""
    return torch.addmm(-length[:, None] * table.log_norm, features, table.features.T)


def log_q(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """log q(z|x) of the factorized Bernoulli with `logits` [B, b] at codes [C, b] -> [B, C]:
    sum_i [z_i log sigmoid(a_i) + (1 - z_i) log sigmoid(-a_i)] = <a, z> - sum_i softplus(a_i)."""
    return logits @ codes.T - F.softplus(logits).sum(dim=-1, keepdim=True)


def factorized_elbo(ll: torch.Tensor, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The exact ELBO of q(logits) [B, b] given log p(x|z) of every code, ll [B, 2^b]:
    E_q[log p(x|z)] - b log 2 + H(q), per document [B]."""
    return (log_q(logits, codes).exp_() * ll).sum(dim=-1) - codes.shape[1] * LOG2 + bernoulli_entropy(logits)


def log_marginal(ll: torch.Tensor) -> torch.Tensor:
    """log p(x) = logsumexp_z [log p(x|z)] - b log 2 under the uniform prior: [B, 2^b] -> [B]."""
    return torch.logsumexp(ll, dim=-1) - math.log(ll.shape[1])


def posterior_marginals(ll: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """p(z_i = 1 | x) of the exact posterior, [B, 2^b] -> [B, b]."""
    return torch.softmax(ll, dim=-1) @ codes


class BestFactorized(NamedTuple):
    logits: torch.Tensor   # [B, b] q*'s logits
    elbo: torch.Tensor     # [B] ELBO(q*)
    sweeps: torch.Tensor   # [B] sweeps over the b bits until the ELBO rose by less than the tolerance
    converged: torch.Tensor  # [B] bool: stopped by the tolerance, not by max_sweeps


def best_factorized(ll: torch.Tensor, logits: torch.Tensor, tolerance: float, max_sweeps: int) -> BestFactorized:
    """The factorized q* that maximises each document's exact ELBO, by coordinate ascent from `logits` [B, b].

    Mean-field update of bit i (the exact maximiser over its logit with the others fixed):
        a_i = E_{q_-i}[log p(x | z_i = 1, z_-i) - log p(x | z_i = 0, z_-i)],
    each a sum over the 2^(b-1) codes of the other bits. Every update raises the ELBO, so
    ELBO(q*) >= ELBO(q) of the starting q; a document stops when a sweep over all bits raises its
    ELBO by less than `tolerance` nats, or after `max_sweeps`. The result is a local maximum
    (coordinate ascent from the encoder's q), so ELBO(q*) is a lower bound on the best
    factorized ELBO: the approximation gap it gives is an upper bound, the amortization gap a
    lower bound.

    q_-i is read off log q (kept for all codes) on the half where bit i has its more probable
    value, minus that value's log-probability, so no saturated bit divides by an underflowed
    probability. ll [B, 2^b] may be shifted by a constant per document (the result is shifted alike).
    """
    B, C = ll.shape
    b = logits.shape[1]
    codes = all_codes(b, ll.device, ll.dtype)
    logits = logits.clone()
    elbo = factorized_elbo(ll, logits, codes)
    sweeps = torch.zeros(B, dtype=torch.long, device=ll.device)
    converged = torch.zeros(B, dtype=torch.bool, device=ll.device)
    active = torch.arange(B, device=ll.device)
    L = ll
    for sweep in range(1, max_sweeps + 1):
        a = logits[active]                                                   # [A, b]
        lq = log_q(a, codes)                                                 # [A, C]
        for i in range(b):
            Lv, qv = L.view(-1, C >> (i + 1), 2, 1 << i), lq.view(-1, C >> (i + 1), 2, 1 << i)
            one = a[:, i] >= 0                                               # the more probable value of bit i
            log_p_value = F.logsigmoid(torch.where(one, a[:, i], -a[:, i]))  # [A]
            q_rest = torch.where(one[:, None, None], qv[:, :, 1], qv[:, :, 0])  # [A, C/2^(i+1), 2^i]
            q_rest = q_rest.sub_(log_p_value[:, None, None]).exp_()        # q_-i(z_-i)
            new = (q_rest * (Lv[:, :, 1] - Lv[:, :, 0])).sum(dim=(1, 2))    # [A]
            # log q moves by log sigmoid(+-new) - log sigmoid(+-old) on the halves z_i = 1, 0
            qv[:, :, 1] += (F.logsigmoid(new) - F.logsigmoid(a[:, i]))[:, None, None]
            qv[:, :, 0] += (F.logsigmoid(-new) - F.logsigmoid(-a[:, i]))[:, None, None]
            a[:, i] = new
        new_elbo = factorized_elbo(L, a, codes)
        done = new_elbo - elbo[active] < tolerance
        logits[active], elbo[active], sweeps[active] = a, torch.maximum(new_elbo, elbo[active]), sweep
        converged[active] = done
        active, L = active[~done], L[~done]
        if len(active) == 0:
            break
    return BestFactorized(logits, elbo, sweeps, converged)


def iwae_bounds(ll_of, logits: torch.Tensor, samples: list[int], bits: int,
                generator: torch.Generator | None = None) -> dict[int, torch.Tensor]:
    """IWAE lower bounds on log p(x) with the factorized q(logits) [B, b] as proposal, for each K in
    `samples`: log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q. The bounds for the different K use
    the first K of one stream of max(K) draws (nested, as a curve over K is read). `ll_of(z)`
    gives log p(x|z) of codes z [B, S, b] -> [B, S]. Returns {K: [B]}."""
    B = logits.shape[0]
    top = max(samples)
    per_chunk = max(1, SAMPLE_ELEMENTS // max(1, B * bits))
    p = torch.sigmoid(logits)[:, None, :]                                    # [B, 1, b]
    total = torch.full((B,), -math.inf, dtype=logits.dtype, device=logits.device)  # running logsumexp
    out, drawn = {}, 0
    for K in sorted(samples):
        while drawn < K:
            S = min(per_chunk, K - drawn)
            u = torch.rand((B, S, bits), generator=generator, device=logits.device, dtype=logits.dtype)
            z = (u < p).to(logits.dtype)                                     # [B, S, b]
            log_weights = ll_of(z) - bits * LOG2 - ((z * logits[:, None, :]).sum(-1)
                                                     - F.softplus(logits).sum(-1, keepdim=True))  # [B, S]
            total = torch.logaddexp(total, torch.logsumexp(log_weights, dim=-1))
            drawn += S
        out[K] = total - math.log(K)
    assert drawn == top
    return out


def table_likelihood(ll: torch.Tensor):
    """ll_of for iwae_bounds from the enumerated log p(x|z) [B, 2^b]: a lookup."""
    return lambda z: torch.gather(ll, 1, code_index(z).view(len(ll), -1)).view(z.shape[:-1])


def sampled_likelihood(features: torch.Tensor, length: torch.Tensor, decoder: Decoder):
    """ll_of for iwae_bounds without enumeration: each sampled code through the decoder (above the
    enumerable sizes): features [B, k+1] (document_features), length [B]."""
    def ll_of(z: torch.Tensor) -> torch.Tensor:
        B, S, b = z.shape
        table = code_table(decoder, z.reshape(-1, b))                        # [B S, k+1], [B S]
        per_code = table.features.view(B, S, -1)
        return (per_code * features[:, None, :]).sum(-1) - length[:, None] * table.log_norm.view(B, S)
    return ll_of
