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
# Scores [codes, V] held at once while the table is built (2 MB in float32, in a CPU core's cache).
TABLE_ELEMENTS = 2**19
HIDDEN_ROWS = 8192  # codes whose hidden layers are computed at once for the table (16 MB at width 512)
# Document x code log-likelihoods held at once (16 MB in float32): the documents of one chunk,
# DOCUMENT_ELEMENTS / 2^b (64 at 16 bits), which the mean-field ascent takes as one group
# (ASCENT_ELEMENTS / 2^b); both stay in a CPU's last-level cache.
DOCUMENT_ELEMENTS = 2**22
ASCENT_ELEMENTS = 2**22
# Importance samples drawn at once per document chunk (documents x samples x bits uniforms, 2 MB).
SAMPLE_ELEMENTS = 2**19


# exp(t) of t below this is read as exp(EXP_FLOOR): where the largest term is exp(0) = 1, the at
# most 2^24 terms so changed shift a sum by less than 2^24 e^-80 = 3e-28, far below float32's
# resolution; and on a CPU an exp whose result is denormal or zero takes 20 to 35 times as long
# (measured: 4M floats in [-95, -85] 129 ms, in [-50, 0] 3.6 ms).
EXP_FLOOR = -80.0


def _sum_exp_shifted(t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """sum over the last axis of exp(t), for t whose largest value per row is 0: [..., n] -> [...]."""
    return torch.clamp(t, min=EXP_FLOOR, out=out).exp_().sum(dim=-1)


def logsumexp(t: torch.Tensor) -> torch.Tensor:
    """torch.logsumexp over the last axis (values only), with EXP_FLOOR."""
    top = t.amax(dim=-1, keepdim=True)
    return _sum_exp_shifted(t - top).log_() + top[..., 0]


def all_codes(bits: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Every code of `bits` bits, [2^b, b] in {0, 1}; row n has bit i = (n >> i) & 1."""
    n = torch.arange(2**bits, device=device)
    return ((n[:, None] >> torch.arange(bits, device=device)) & 1).to(dtype)


class CodeTable(NamedTuple):
    joint: torch.Tensor  # [C, k+2] [a1(z) | lse(z)]: a1 the decoder's last hidden layer of each code and a 1 for
    #                      the bias, lse(z) = logsumexp_w h_w(z) the softmax's normaliser

    @property
    def features(self) -> torch.Tensor:
        """a1(z), [C, k+1]."""
        return self.joint[:, :-1]

    @property
    def log_norm(self) -> torch.Tensor:
        """lse(z), [C]."""
        return self.joint[:, -1]


def _last_layer(decoder: Decoder) -> torch.Tensor:
    """W1 = [W | c], the last layer's weight and bias: [V, k+1]."""
    layer = decoder.net[-1]
    return torch.cat([layer.weight, layer.bias[:, None]], dim=1)


def code_table(decoder: Decoder, codes: torch.Tensor) -> CodeTable:
    """a1(z) and lse(z) of codes [C, b], the [C, V] scores a chunk of codes at a time (TABLE_ELEMENTS).
    Differentiable when gradients are on (the likelihood control trains through it); otherwise
    written in place into the one [C, k+2] result, the hidden layers HIDDEN_ROWS codes at a time,
    so that nothing of size C x width exists beside it (at the paper's shape, 65,536 codes x 512)."""
    W1 = _last_layer(decoder)                                                # [V, k+1]
    rows = max(1, TABLE_ELEMENTS // W1.shape[0])
    if torch.is_grad_enabled():
        hidden = decoder.hidden(codes)                                       # [C, k]
        features = torch.cat([hidden, hidden.new_ones(len(codes), 1)], dim=1)  # [C, k+1]
        log_norm = torch.cat([torch.logsumexp(chunk @ W1.T, dim=-1) for chunk in features.split(rows)])  # [C]
        return CodeTable(torch.cat([features, log_norm[:, None]], dim=1))
    k = W1.shape[1] - 1
    joint = torch.empty(len(codes), k + 2, dtype=W1.dtype, device=W1.device)
    joint[:, k] = 1.0
    for first in range(0, len(codes), HIDDEN_ROWS):
        joint[first:first + HIDDEN_ROWS, :k] = decoder.hidden(codes[first:first + HIDDEN_ROWS])
    scores = torch.empty(min(rows, len(codes)), W1.shape[0], dtype=W1.dtype, device=W1.device)
    for first in range(0, len(codes), rows):
        chunk = joint[first:first + rows, :k + 1]
        h = torch.mm(chunk, W1.T, out=scores[:len(chunk)])                   # [rows, V]
        top = h.amax(dim=-1, keepdim=True)
        joint[first:first + len(chunk), k + 1] = _sum_exp_shifted(h.sub_(top), out=h).log_() + top[:, 0]
    return CodeTable(joint)


def document_features(x: SparseBatch, decoder: Decoder) -> torch.Tensor:
    """x W1 of each document of the batch (counts and smoothing): [B, k+1]. Differentiable."""
    W1 = _last_layer(decoder)
    return F.embedding_bag(x.col, W1, x.offsets, mode="sum", per_sample_weights=x.val) + x.smoothing @ W1


def log_likelihoods(features: torch.Tensor, length: torch.Tensor, table, out: torch.Tensor | None = None) -> torch.Tensor:
    """log p(x|z) = <x W1, a1(z)> - |x| lse(z) of every document and code, one product: features [B, k+1],
    length [B], `table` a CodeTable or its joint [C, k+2] -> [B, C].
    `out`, a [B, C] buffer to write into (a chunk's, reused: a fresh 16 MB tensor costs its page faults)."""
    document = torch.cat([features, -length[:, None]], dim=1)               # [B, k+2]: [x W1 | -|x|]
    joint = table if isinstance(table, torch.Tensor) else table.joint        # [C, k+2]
    return torch.mm(document, joint.T, out=out)


def expectation(ll: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """E_q[ll(z)] under q = prod_i Bernoulli(probs_i): ll [B, 2^b], probs [B, b] -> [B].

    q is a product, so the sum over 2^b codes is b contractions of one bit each (the highest
    first: ll's two contiguous halves, mixed with weights 1 - p and p), 2^b multiply-adds in all
    and no exponential."""
    B, b = probs.shape
    T = ll
    for i in reversed(range(b)):
        halves = T.view(B, 2, 1 << i)
        T = torch.lerp(halves[:, 0], halves[:, 1], probs[:, i:i + 1])        # [B, 2^i]
    return T[:, 0]


def factorized_elbo(ll: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The exact ELBO of q(logits) [B, b] given log p(x|z) of every code, ll [B, 2^b]:
    E_q[log p(x|z)] - b log 2 + H(q), per document [B]."""
    return expectation(ll, torch.sigmoid(logits)) - logits.shape[1] * LOG2 + bernoulli_entropy(logits)


def log_marginal(ll: torch.Tensor, shifted: bool = False) -> torch.Tensor:
    """log p(x) = logsumexp_z [log p(x|z)] - b log 2 under the uniform prior: [B, 2^b] -> [B].
    `shifted`: each row's largest value is 0 already (one exp pass, no shift)."""
    if shifted:
        return _sum_exp_shifted(ll).log_() - math.log(ll.shape[1])
    return torch.logsumexp(ll, dim=-1) - math.log(ll.shape[1])


class BestFactorized(NamedTuple):
    logits: torch.Tensor   # [B, b] q*'s logits
    elbo: torch.Tensor     # [B] ELBO(q*)
    sweeps: torch.Tensor   # [B] sweeps over the b bits until the ELBO rose by less than the tolerance
    converged: torch.Tensor  # [B] bool: stopped by the tolerance, not by max_sweeps


def best_factorized(ll: torch.Tensor, logits: torch.Tensor, tolerance: float, max_sweeps: int) -> BestFactorized:
    """The factorized q* that maximises each document's exact ELBO, by coordinate ascent from `logits` [B, b].

    Mean-field update of bit i (the exact maximiser over its logit with the others fixed):
        a_i = E_{q_-i}[log p(x | z_i = 1, z_-i)] - E_{q_-i}[log p(x | z_i = 0, z_-i)],
    each a sum over the 2^(b-1) codes of the other bits. Every update raises the ELBO, by
        (p_new - p_old) a_new + H(p_new) - H(p_old),   p = sigmoid(a),
    so ELBO(q*) >= ELBO(q) of the starting q; a document stops when a sweep over all bits raises
    its ELBO by less than `tolerance` nats, or after `max_sweeps`. The result is a local maximum
    (coordinate ascent from the encoder's q), so ELBO(q*) is a lower bound on the best
    factorized ELBO: the approximation gap it gives is an upper bound, the amortization gap a
    lower bound. ll [B, 2^b] may be shifted by a constant per document (the ELBO is shifted alike).

    How: q_-i is a product, so both expectations are contractions of ll one bit at a time (as in
    `expectation`), with probabilities only, no exponential. A sweep takes the bits from the
    highest down: the bits above i are contracted once, with their new probabilities, and
    carried to the next bit (T below), so a sweep costs about 4 x 2^b multiply-adds per document
    instead of b x 2^b. Documents go in groups of ASCENT_ELEMENTS / 2^b (64 at 16 bits), which
    stay in cache; a group's converged documents leave it after each sweep.
    """
    group = max(1, ASCENT_ELEMENTS // ll.shape[1])
    parts = [_ascend(ll[i:i + group], logits[i:i + group], tolerance, max_sweeps) for i in range(0, len(ll), group)]
    logits, sweeps, converged = (torch.cat(values) for values in zip(*parts))
    return BestFactorized(logits, factorized_elbo(ll, logits), sweeps, converged)


def _ascend(ll, logits, tolerance: float, max_sweeps: int):
    """best_factorized's ascent of one group: (logits, sweeps, converged)."""
    B, b = logits.shape
    logits = logits.clone()
    sweeps = torch.zeros(B, dtype=torch.long, device=ll.device)
    converged = torch.zeros(B, dtype=torch.bool, device=ll.device)
    active, L, a = torch.arange(B, device=ll.device), ll, logits.clone()
    for sweep in range(1, max_sweeps + 1):
        A = len(active)
        p = torch.sigmoid(a)                                                 # [A, b]
        gain = torch.zeros(A, dtype=ll.dtype, device=ll.device)
        T = L                                                                # [A, 2^(i+1)]: bits above i contracted
        for i in reversed(range(b)):
            E = T.view(A, 2, 1 << i)                                         # [A, z_i, lower bits]
            for j in reversed(range(i)):                                     # contract the bits below i
                E = E.view(A, 2, 2, 1 << j)
                E = torch.lerp(E[:, :, 0], E[:, :, 1], p[:, None, j:j + 1])   # [A, 2, 2^j]
            new = E[:, 1, 0] - E[:, 0, 0]                                    # [A]
            gain += ((torch.sigmoid(new) - p[:, i]) * new + bernoulli_entropy(new[:, None])
                     - bernoulli_entropy(a[:, i:i + 1]))
            a[:, i], p[:, i] = new, torch.sigmoid(new)
            halves = T.view(A, 2, 1 << i)
            T = torch.lerp(halves[:, 0], halves[:, 1], p[:, i:i + 1])        # bit i contracted: [A, 2^i]
        logits[active], sweeps[active] = a, sweep
        done = gain < tolerance
        converged[active] = done
        if done.all():
            break
        if done.any():                                                       # the converged leave
            active, L, a = active[~done], L[~done], a[~done]
    return logits, sweeps, converged


def iwae_bounds(ll_of, logits: torch.Tensor, samples: list[int], bits: int,
                generator: torch.Generator | None = None) -> dict[int, torch.Tensor]:
    """IWAE lower bounds on log p(x) with the factorized q(logits) [B, b] as proposal, for each K in
    `samples`: log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q. The bounds for the different K use
    the first K of one stream of max(K) draws (nested, as a curve over K is read). `ll_of(z)`
    gives log p(x|z) of codes z [B, S, b] -> [B, S], with their rows of all_codes [B, S] (None above
    24 bits). Returns {K: [B]}."""
    B = logits.shape[0]
    top = max(samples)
    per_chunk = max(1, SAMPLE_ELEMENTS // max(1, B * bits))
    p = torch.sigmoid(logits)[:, None, :]                                    # [B, 1, b]
    # one product gives each code's row of all_codes (exact in float32 below 2^24) and <a, z>
    powers = (2.0 ** torch.arange(bits, device=logits.device, dtype=logits.dtype)).expand(B, bits)
    to_index_and_score = torch.stack([powers, logits], dim=2) if bits <= 24 else logits[:, :, None]  # [B, b, 2|1]
    log_norm = F.softplus(logits).sum(-1, keepdim=True)                     # [B, 1]
    total = torch.full((B,), -math.inf, dtype=logits.dtype, device=logits.device)  # running logsumexp
    buffer = torch.empty(B * min(per_chunk, top) * bits, dtype=logits.dtype, device=logits.device)
    out, drawn = {}, 0
    for K in sorted(samples):
        while drawn < K:
            S = min(per_chunk, K - drawn)
            u = buffer[:B * S * bits].view(B, S, bits).uniform_(generator=generator)
            z = torch.lt(u, p, out=u)                                        # [B, S, b] codes in {0., 1.}
            product = torch.bmm(z, to_index_and_score)                       # [B, S, 2|1]
            index = product[..., 0].long() if bits <= 24 else None
            log_weights = ll_of(z, index) - bits * LOG2 - (product[..., -1] - log_norm)  # [B, S]
            total = torch.logaddexp(total, logsumexp(log_weights))
            drawn += S
        out[K] = total - math.log(K)
    assert drawn == top
    return out


def table_likelihood(ll: torch.Tensor):
    """ll_of for iwae_bounds from the enumerated log p(x|z) [B, 2^b]: a lookup."""
    return lambda z, index: torch.gather(ll, 1, index)


def sampled_likelihood(features: torch.Tensor, length: torch.Tensor, decoder: Decoder):
    """ll_of for iwae_bounds without enumeration: each sampled code through the decoder (above the
    enumerable sizes): features [B, k+1] (document_features), length [B]."""
    def ll_of(z: torch.Tensor, index) -> torch.Tensor:
        B, S, b = z.shape
        table = code_table(decoder, z.reshape(-1, b))                        # [B S, k+1], [B S]
        per_code = table.features.view(B, S, -1)
        return (per_code * features[:, None, :]).sum(-1) - length[:, None] * table.log_norm.view(B, S)
    return ll_of
