"""Bernoulli VAE for semantic hashing: its encoders, its decoder and its losses.

Shekhovtsov, Schlesinger, Flach, "VAE Approximation Error: ELBO and Exponential Families",
ICLR 2022, and its reproduction (Kyrylov, Bedi, Zang, ReScience C 9(2) 2023): a document's
bag of words x is encoded into b independent bits, q(z|x) = prod_i Bernoulli(z_i;
sigmoid(a_i(x))), the prior is uniform, p(z) = 2^-b, and the decoder is a multinomial over
the vocabulary, p(x|z) proportional to prod_w softmax_w(h(z))^x_w. The paper's claim: an
encoder linear in the word counts (e1) reaches a lower NELBO than encoders on word frequencies
(e2, e3), because the exact posterior's natural parameters are linear in the counts. The
encoder's gradients (DisARM, ARM) are in estimators.py.

Conventions
- x is always the *smoothed* count vector of the protocol: the raw counts plus the smoothing
  vector of data.prepare (which sums to 1), so every word has a positive count and
  |x| = (number of words) + 1. It is formed batch by batch (data.SparseCounts), never for the
  whole corpus.
- Codes z are in {0, 1}^b, the natural space of Bernoulli variables and of the estimators'
  indicator formulas. The decoder's first layer reads them as bits z, as the reproduction's
  code does, or as spins 2z - 1 in {-1, +1} (settings.ALLOWED["code_values"]). The two are the
  same family of functions (a linear layer absorbs the affine map) but do not train alike under
  Adam and the default initialisation: at the paper's shape ours with spins trails the
  reproduction's own script, with bits, by 18.8 to 23.7 nats at epochs 2-11 (docs/semhash.md).
- Every loss is per document, shape [B] (or [samples, B]); callers average.
- Random draws take an optional torch.Generator, which must live on the tensors' device.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import SparseBatch
from .settings import ALLOWED, REPRESENTATIONS

_LOG2E = 1 / math.log(2)  # scores times log2(e) turn exp into the faster exp2
# The reproduction's encoders, settings.ALLOWED["encoders"]: name -> (input representation, hidden layers).
ENCODER_SPECS = dict(zip(ALLOWED["encoders"], (("counts", 0), ("frequencies", 1), ("frequencies", 0))))


def encoder_spec(name: str, width: int) -> tuple[str, tuple[int, ...]]:
    """(representation, hidden widths) of encoder e1, e2 or e3 of the protocol; `width` the units of a hidden layer."""
    if name not in ENCODER_SPECS:
        raise ValueError(f"unknown semantic-hashing encoder '{name}'; expected one of {list(ENCODER_SPECS)}")
    representation, depth = ENCODER_SPECS[name]
    return representation, (int(width),) * depth


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


class WordLinear(nn.Module):
    """nn.Linear over the vocabulary with its weight stored word-major, [V, H] (nn.Linear: [H, V]).

    A sparse batch then reads whole contiguous rows of the weight per word (embedding_bag),
    and the weight gradient is a scatter of rows; the transposed layout would copy the
    10,000 x H weight and its gradient at every step. Initialised as nn.Linear.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))  # [V, H]
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))                # [H]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight) if x.dim() == 2 else x @ self.weight + self.bias


class _WordBag(torch.autograd.Function):
    """The first layer's product with sparse x = counts + smoothing, without forming x: W [V, H] -> [B, H],

    h[d] = sum over document d's nonzeros of weight_dw W[w]  +  scale_d (s W),

    the first term an embedding_bag, the second one vector s W shared by every document (the
    smoothing's share; scale_d is 1 for counts, 1/|x_d| for frequencies).

    The backward pass is dW = X^T dL/dh + s (scale^T dL/dh). embedding_bag's own backward would
    sort the batch's words (2.8 ms per batch of 256 documents on 2 CPU cores at H = 64, about a
    tenth of a training step); the batch's word order is sorted once, by radix, for both this
    and the decoder's gradient (SparseBatch.transposed_product).
    """

    @staticmethod
    def forward(ctx, weight, x: "SparseBatch", per_word, scale):
        ctx.save_for_backward(per_word, scale)
        ctx.x = x
        h = F.embedding_bag(x.col, weight, x.offsets, mode="sum", per_sample_weights=per_word)  # [B, H]
        return h.addr_(scale, torch.mv(weight.T, x.smoothing))                             # + scale_d (s W)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        per_word, scale = ctx.saved_tensors
        x = ctx.x
        grad_weight = x.transposed_product(per_word, grad)                    # X^T dL/dh, [V, H]
        return grad_weight.addr_(x.smoothing, torch.mv(grad.T, scale)), None, None, None


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
        self.net[0] = WordLinear(n_words, ([*hidden, bits])[0])

    def forward(self, x, representation: str | None = None) -> torch.Tensor:
        """Logits [B, b] of smoothed counts x, dense [B, V] or a SparseBatch. `representation`
        overrides the trained one; only for reproducing the reference code's defect of
        evaluating frequency encoders on counts."""
        representation = representation or self.representation
        if not isinstance(x, SparseBatch):
            return self.net(encoder_input(x, representation))
        if representation not in REPRESENTATIONS:
            raise ValueError(f"unknown input representation '{representation}'; expected one of {REPRESENTATIONS}")
        # First layer without forming x: W x = W counts (a weighted sum of the columns of W at
        # the document's words, embedding_bag) + W smoothing (one vector for every document).
        first = self.net[0]
        if representation == "counts":
            weights, scale = x.val, torch.ones_like(x.length)
        else:
            weights, scale = x.val / x.length[x.row], 1 / x.length
        h = _WordBag.apply(first.weight, x, weights, scale)                    # [B, H]
        return self.net[1:](h + first.bias)


class Decoder(nn.Module):
    """Codes z in {0,1}^b [..., b] -> log-probabilities over the vocabulary [..., V].

    The first layer reads `code_values` of z (settings.ALLOWED["code_values"]: bits z or spins 2z - 1); `hidden`
    are LeakyReLU widths, () for the linear (depth 0) decoder; the output is a log-softmax, so
    every row is a normalised distribution.
    """

    def __init__(self, bits: int, n_words: int, hidden: Sequence[int] = (), negative_slope: float = 0.01, *,
                 code_values: str):
        super().__init__()
        if code_values not in ALLOWED["code_values"]:
            raise ValueError(f"unknown code values '{code_values}'; expected one of {ALLOWED['code_values']}")
        self.bits = int(bits)
        self.code_values = code_values
        self.net = _mlp([bits, *hidden, n_words], negative_slope)  # [..., b] -> [..., H...] -> [..., V]

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.logits(codes), dim=-1)

    def first_input(self, codes: torch.Tensor) -> torch.Tensor:
        """What the first layer reads of codes z in {0, 1}: z, or the spins 2z - 1; [..., b]."""
        return codes if self.code_values == "bits" else 2 * codes - 1

    def hidden(self, codes: torch.Tensor) -> torch.Tensor:
        """The last layer's input [..., k]: the hidden layers' output, or first_input at depth 0."""
        return self.net[:-1](self.first_input(codes))

    def logits(self, codes: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores h(z) [..., V]; log softmax(h) is the word distribution."""
        return self.net[-1](self.hidden(codes))


class _LinearMultinomial(torch.autograd.Function):
    """The decoder's last layer and the multinomial log-likelihood of sparse x, fused, with the
    gradient of a weighted sum of the log-likelihoods computed in the same pass.

    ll[m, d] = sum_w x_dw log softmax_w(h[m, d]), h = A W^T + bias, for x = counts + smoothing:
             = <A[m, d], x_d W> + <x_d, bias> - |x_d| logsumexp(h[m, d])
    A [M, B, k] (last hidden layer, or at depth 0 the codes as Decoder.first_input, of M codes for B documents), weights g [M, B]
    -> ll [M, B] (values only) and total = sum_{m,d} g[m, d] ll[m, d] (differentiable).

    Why: the [M, B, V] scores are the only large tensors of training (10 pairs x 256
    documents x 10,000 words is 200 MB). Autograd would keep them (or their softmax) from the
    forward to the backward pass and make about ten passes over them, each from main memory.
    Training only ever needs the gradient of one weighted sum of the log-likelihoods, with
    weights known before the forward pass (the mean over the codes), so it is computed here,
    chunk by chunk, while each chunk of scores is still in cache; the backward pass only
    scales the stored gradients (the same idea as fused linear + cross-entropy losses for large
    vocabularies). With dL/dh = g x - sigma e^h, sigma = g |x| / sum_w e^h:
    - only the softmax part touches the [m, n, V] chunk: e^h feeds the weight-gradient GEMM
      e^hT (sigma A) and the bias gradient's e^hT sigma unscaled, so the scores are written twice
      (GEMM, exp2) and read three times (sum, two products), never rescaled;
    - the data part is the same sparse x for every code: the forward needs x_d W and <x_d, bias>
      once per document (an embedding_bag), and the gradient one sparse product
      X^T (sum_m g_m [A_m | 1]) per call, however many codes there are.
    One [m, n, V] buffer serves every chunk.
    """

    # float32 scores per chunk (16 MB, in L3): a training batch of 256 documents x 10,000 words
    # is one chunk per code; smaller chunks were slower here (GEMMs with fewer rows)
    CHUNK_ELEMENTS = 4 * 2**20
    # On a GPU a chunk buys no cache and costs about 12 kernel launches, which bound the step
    # there: 64M floats (256 MB) hold a ten-pair training batch (20 codes x 256 x 10,000) at once.
    DEVICE_CHUNK_ELEMENTS = 64 * 2**20
    # Range of log sum_w exp(h_w) in which exp needs no shift by the row max: below e^60 nothing
    # overflows (float32 ends near e^88); above e^-30 the row max is above -30 - log V, so the
    # scores that underflow (below -87) carry less than e^-40 of the probability.
    EXP_RANGE = (-30.0, 60.0)

    @staticmethod
    def forward(ctx, A, weight, bias, weights, x: "SparseBatch"):
        col, val, offsets, smoothing, length = x.col, x.val, x.offsets, x.smoothing, x.length
        M, B, k = A.shape
        V = weight.shape[0]
        chunk = _LinearMultinomial.CHUNK_ELEMENTS if A.device.type == "cpu" else _LinearMultinomial.DEVICE_CHUNK_ELEMENTS
        # chunks: whole codes (all B documents) while they fit, else equal blocks of documents of one code
        blocks = -(-B * V // chunk)                                          # ceil
        rows_per = -(-B // blocks)
        codes_per = max(1, chunk // (B * V)) if blocks == 1 else 1
        need_A, need_W, need_b = ctx.needs_input_grad[:3]
        need_grad = need_A or need_W or need_b
        # The bias is a (k+1)-th column of the weight, so one GEMM gives the scores without a
        # broadcast copy of the bias; and the scores come in log2 units, h log2(e) (A1 carries
        # the factor): exp2 is about twice as fast as exp on the CPU (0.7 against 1.3 ms for
        # 2.56M floats on 2 cores), and 2^(h log2 e) = e^h.
        W1 = torch.cat([weight, bias[:, None]], dim=1)                       # [V, k+1]
        A1 = torch.cat([A, A.new_ones(M, B, 1)], dim=2)                      # [M, B, k+1]
        # x_d W1 for every document: the sparse counts' rows of W1 plus the smoothing's
        xW1 = F.embedding_bag(col, W1, offsets, mode="sum", per_sample_weights=val).add_(smoothing @ W1)  # [B, k+1]
        ll = (A1 * xW1).sum(dim=-1)                                          # [M, B] <x_d, h>, then - |x| lse
        # the data part g x of dL/dh, with the same sparse x for every code: one product
        # X^T (sum_m g_m [A_m | 1]) plus the smoothing's rank-one share, for the weight and the
        # bias at once; the softmax part follows chunk by chunk
        grad_A = grad_W = grad_b = None
        if need_A:
            grad_A = weights[..., None] * xW1[:, :k]                         # g x_d W, [M, B, k]
        if need_W or need_b:
            G1 = (weights[..., None] * A1).sum(dim=0)                        # [B, k+1]
            XG1 = x.transposed_product(val, G1).addr_(smoothing, G1.sum(dim=0))  # [V, k+1]
            grad_W = XG1[:, :k].contiguous() if need_W else None             # contiguous: addmm_ below
            grad_b = XG1[:, k].contiguous() if need_b else None
        A1.mul_(_LOG2E)
        h_buf = torch.empty(min(codes_per, M) * rows_per * V, dtype=A.dtype, device=A.device)  # one chunk's scores
        # The usual subtraction of each row's max costs two passes over the scores. On the CPU it
        # is skipped while every row's sum of exp(h) stays within EXP_RANGE, checked after each
        # chunk (a host sync costs nothing there); a chunk outside it is recomputed with the
        # shift, as is the rest of the call. On other devices the check would stall the queue,
        # so the shift is always taken.
        shift = A.device.type != "cpu"
        low, high = (math.exp(e) for e in _LinearMultinomial.EXP_RANGE)
        for c0 in range(0, M, codes_per):
            for r0 in range(0, B, rows_per):
                c, r = slice(c0, min(c0 + codes_per, M)), slice(r0, min(r0 + rows_per, B))
                m, n = c.stop - c.start, r.stop - r.start
                h = h_buf[:m * n * V].view(m, n, V)
                A1c = A1[c, r].reshape(-1, k + 1)                            # [m n, k+1], times log2 e
                Ac = A[c, r].reshape(-1, k)                                  # [m n, k]
                torch.mm(A1c, W1.T, out=h.view(-1, V))                      # scores h log2 e
                log_norm = 0.0
                if not shift:
                    sums = h.exp2_().sum(dim=-1)                             # h is now exp(h)
                    extremes = sums.aminmax()
                    if not (extremes.min.item() > low and extremes.max.item() < high):  # NaN too
                        shift = True
                        torch.mm(A1c, W1.T, out=h.view(-1, V))
                if shift:
                    top = h.amax(dim=-1, keepdim=True)                       # [m, n, 1]
                    h.sub_(top)
                    log_norm = top[..., 0] * math.log(2)                     # the row max in nats
                    sums = h.exp2_().sum(dim=-1)                             # h is now exp(h - max)
                ll[c, r] -= length[r] * (log_norm + sums.log())
                if not need_grad:
                    continue
                # the softmax part of dL/dh = g x - sigma exp(h - max), read unscaled by the products
                e = h.view(-1, V)                                            # [m n, V]
                sigma = (weights[c, r] * length[r] / sums).reshape(-1)       # [m n]
                if need_A:
                    grad_A[c, r] -= (e @ weight).mul_(sigma[:, None]).view(m, n, k)
                if need_W:
                    grad_W.addmm_(e.T, Ac * sigma[:, None], alpha=-1)
                if need_b:
                    grad_b.addmv_(e.T, sigma, alpha=-1)
        total = (weights * ll).sum()
        ctx.mark_non_differentiable(ll)
        ctx.save_for_backward(grad_A, grad_W, grad_b)
        return ll, total

    @staticmethod
    def backward(ctx, _grad_ll, grad_total):
        grad_A, grad_W, grad_b = ctx.saved_tensors
        scale = lambda t: None if t is None else t * grad_total            # noqa: E731
        return scale(grad_A), scale(grad_W), scale(grad_b), None, None


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


def sparse_log_likelihood(x: "SparseBatch", decoder: "Decoder", codes: torch.Tensor,
                          weights: torch.Tensor | None = None):
    """log_likelihood(x, decoder(codes)) for a SparseBatch x, without [..., B, V] log-probabilities:
    codes [..., B, b] -> ll [..., B], values only (no gradient flows through them).

    With `weights` [..., B], returns (ll, total): total = sum(weights * ll) is a scalar whose
    gradient reaches the decoder's parameters (and whatever produced `codes`); it is computed
    in the forward pass (see _LinearMultinomial), so `weights` must be fixed beforehand.
    """
    hidden = decoder.hidden(codes)                                           # [..., B, k]
    A = hidden.reshape(-1, *hidden.shape[-2:])                               # [M, B, k]
    M, B = A.shape[:2]
    w = (weights if weights is not None else A.new_zeros(())).expand(*hidden.shape[:-1]).reshape(M, B)
    weight, bias = decoder.net[-1].weight, decoder.net[-1].bias
    if weights is None or not torch.is_grad_enabled():
        # values only: detached inputs tell the fused function to skip its gradient work
        A, weight, bias = A.detach(), weight.detach(), bias.detach()
    ll, total = _LinearMultinomial.apply(A, weight, bias, w, x)
    ll = ll.reshape(hidden.shape[:-1])
    return ll if weights is None else (ll, total)


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


def decoder_reconstruction(x, decoder: "Decoder", codes: torch.Tensor) -> torch.Tensor:
    """reconstruction(x, decoder(codes)) for x dense [B, V] or a SparseBatch; codes [..., B, b] -> [..., B]."""
    if isinstance(x, SparseBatch):
        return x.empirical - sparse_log_likelihood(x, decoder, codes)
    return reconstruction(x, decoder(codes))


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
    an unbiased estimate of the exact value; x are smoothed counts [B, V] or a SparseBatch, logits [B, b].
    """
    rec = decoder_reconstruction(x, decoder, sample_codes(logits, generator))  # [B]
    kl = kl_to_uniform(logits)                                         # [B]
    return NelboTerms(rec + kl, rec, kl)
