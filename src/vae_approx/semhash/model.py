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
        self._document_terms = None  # (smoothing, |x| [N], sum x log(x/|x|) [N]), see document_terms

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

    def batch(self, rows, smoothing: torch.Tensor) -> "SparseBatch":
        """The same documents as `smoothed`, kept sparse: x = counts + smoothing, never [B, V]."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        starts = self.crow[rows]                                             # [B]
        lengths = self.crow[rows + 1] - starts                               # [B]
        total = int(lengths.sum())
        offsets = torch.cumsum(lengths, 0) - lengths                         # [B] first nonzero of each row
        row = torch.repeat_interleave(torch.arange(len(rows), device=self.device), lengths, output_size=total)
        pos = torch.repeat_interleave(starts - offsets, lengths, output_size=total) + torch.arange(total, device=self.device)
        col, val = self.col[pos], self.val[pos]                              # [nnz_B]
        length, empirical = self.document_terms(smoothing)
        return SparseBatch(row, col, val, offsets, smoothing, length[rows], empirical[rows])

    def document_terms(self, smoothing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """|x| and sum_w x_w log(x_w / |x|) of every document, [N] each; computed once per smoothing
        vector (they are constants of the corpus, needed by every batch)."""
        cached = self._document_terms
        if cached is not None and cached[0] is smoothing:
            return cached[1], cached[2]
        row = torch.repeat_interleave(torch.arange(self.n_docs, device=self.device), self.crow.diff(),
                                      output_size=len(self.col))              # [nnz] document of each count
        # |x| = number of words + 1, since the smoothing vector sums to 1
        length = torch.zeros(self.n_docs, dtype=self.dtype, device=self.device).index_add_(0, row, self.val)
        length += smoothing.sum()
        # sum_w x_w log x_w over all V words, from the nonzeros only: the smoothing's own
        # sum_w s_w log s_w, corrected where a count is added to s_w.
        s_nz = smoothing[self.col]
        corr = torch.special.xlogy(self.val + s_nz, self.val + s_nz) - torch.special.xlogy(s_nz, s_nz)
        x_log_x = torch.zeros_like(length).index_add_(0, row, corr) + torch.special.xlogy(smoothing, smoothing).sum()
        empirical = x_log_x - length * torch.log(length)                     # sum_w x_w log(x_w / |x|)
        self._document_terms = (smoothing, length, empirical)
        return length, empirical


class SparseBatch(NamedTuple):
    """Smoothed counts x = counts + smoothing of a batch of B documents, without a [B, V] tensor."""
    row: torch.Tensor        # [nnz] document of each nonzero count, in 0..B-1, sorted
    col: torch.Tensor        # [nnz] word of each nonzero count
    val: torch.Tensor        # [nnz] the count
    offsets: torch.Tensor    # [B] index of each document's first nonzero (embedding_bag's offsets)
    smoothing: torch.Tensor  # [V] added to every document, sums to 1
    length: torch.Tensor     # [B] |x|
    empirical: torch.Tensor  # [B] sum_w x_w log(x_w / |x|), see empirical_log_likelihood

    def __len__(self) -> int:
        return len(self.length)

    def dense(self) -> torch.Tensor:
        """x as [B, V], for tests and small problems."""
        out = self.smoothing.expand(len(self), -1).clone()
        return out.index_put_((self.row, self.col), self.val, accumulate=True)


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
    """h[d] = sum over document d's nonzeros of weight_d,w * W[w]: W [V, H] -> [B, H].

    The forward is embedding_bag. Its backward would sort the batch's words to scatter rows
    of the gradient (2.8 ms per batch of 256 documents on 2 CPU cores at H = 64, about a
    tenth of a training step); here the gradient is the sparse product X^T dL/dh with the
    batch's [V, B] transposed counts, which needs no sort (1.0 ms).
    """

    @staticmethod
    def forward(ctx, weight, col, row, per_word, offsets):
        ctx.save_for_backward(col, row, per_word)
        ctx.shape = (weight.shape[0], len(offsets))
        return F.embedding_bag(col, weight, offsets, mode="sum", per_sample_weights=per_word)

    @staticmethod
    def backward(ctx, grad):
        col, row, per_word = ctx.saved_tensors
        transposed = torch.sparse_coo_tensor(torch.stack([col, row]), per_word, ctx.shape, check_invariants=False)
        return torch.sparse.mm(transposed, grad), None, None, None, None


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
        weights = x.val if representation == "counts" else x.val / x.length[x.row]
        h = _WordBag.apply(first.weight, x.col, x.row, weights, x.offsets)                           # [B, H]
        shared = x.smoothing @ first.weight                                                       # [H]
        if representation == "frequencies":
            shared = shared / x.length[:, None]                                                     # [B, H]
        h = h + shared + first.bias
        return self.net[1:](h)


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
        return F.log_softmax(self.logits(codes), dim=-1)

    def logits(self, codes: torch.Tensor) -> torch.Tensor:
        """Unnormalised scores h(z) [..., V]; log softmax(h) is the word distribution."""
        return self.net(2 * codes - 1)


class _LinearMultinomial(torch.autograd.Function):
    """The decoder's last layer and the multinomial log-likelihood of sparse x, fused, with the
    gradient of a weighted sum of the log-likelihoods computed in the same pass.

    ll[m, d] = sum_w x_dw log softmax_w(h[m, d]), h = A W^T + bias, for x = counts + smoothing:
             = sum_{nonzeros} c_dw h_w + <s, h> - |x_d| logsumexp(h)
    A [M, B, k] (last hidden layer or spins of M codes for B documents), weights g [M, B]
    -> ll [M, B] (values only) and total = sum_{m,d} g[m, d] ll[m, d] (differentiable).

    Why: the [M, B, V] scores are the only large tensors of training (10 pairs x 256
    documents x 10,000 words is 200 MB). Autograd would keep them (or their softmax) from the
    forward to the backward pass and make about ten passes over them, each from main memory.
    Training only ever needs the gradient of one weighted sum of the log-likelihoods, with
    weights known before the forward pass (the mean over the codes), so it is computed here,
    chunk by chunk, while each chunk of scores is still in cache: GEMM, logsumexp, then
    dL/dh = g (c + s - |x| softmax(h)) formed in place and fed straight to the weight-gradient
    GEMM; the backward pass only scales the stored gradients (the same idea as fused
    linear + cross-entropy losses for large vocabularies). One [m, B, V] buffer serves every
    chunk. The smoothing's share, <s, h> forward and g s backward, is the same for every
    word's row of W, so it enters as vectors and one rank-one update instead of passes over
    the scores. The nonzero counts are read and written through flat indices row * V + col,
    2-3x faster than two-tensor advanced indexing.
    """

    # float32 scores per chunk (16 MB, in L3): a training batch of 256 documents x 10,000 words
    # is one chunk per code; smaller chunks were slower here (GEMMs with fewer rows)
    CHUNK_ELEMENTS = 4 * 2**20
    # |scores| below which exp needs no shift: e^60 * 10^6 words stays far below float32's
    # largest value (e^88), and e^-60 far above its smallest normal (e^-87)
    SAFE_EXP = 60.0

    @staticmethod
    def forward(ctx, A, weight, bias, weights, row, col, val, offsets, smoothing, length):
        M, B, k = A.shape
        V = weight.shape[0]
        # chunks: whole codes (all B documents) while they fit, else equal blocks of documents of one code
        blocks = -(-B * V // _LinearMultinomial.CHUNK_ELEMENTS)             # ceil
        rows_per = -(-B // blocks)
        codes_per = max(1, _LinearMultinomial.CHUNK_ELEMENTS // (B * V)) if blocks == 1 else 1
        # nonzeros of document d: bounds[d]:bounds[d+1] (read to the host only when documents are split)
        bounds = [*offsets.tolist(), len(row)] if blocks > 1 else None
        need_A, need_W, need_b = ctx.needs_input_grad[:3]
        h_buf = torch.empty(min(codes_per, M) * rows_per * V, dtype=A.dtype, device=A.device)  # one chunk's scores
        ll = torch.empty(M, B, dtype=A.dtype, device=A.device)
        # <s, h> = A (W^T s) + <s, bias>: a [k] vector instead of a pass over the scores
        s_weight, s_bias = smoothing @ weight, smoothing @ bias                 # [k], []
        grad_A = torch.empty_like(A) if need_A else None
        grad_W = torch.zeros_like(weight) if need_W else None
        grad_b = torch.zeros_like(bias) if need_b else None
        s_grad = torch.zeros(k, dtype=A.dtype, device=A.device)              # sum over chunks of A^T g
        g_sum = torch.zeros((), dtype=A.dtype, device=A.device)             # sum over chunks of g
        # |h_w| <= |bias_w| + sum_j |W_wj| max_d |A_dj| for every document: when that bound is small,
        # exp(h) can neither overflow nor underflow (nor can its sum over V words), so the usual
        # subtraction of each row's max (two passes over the scores) is skipped.
        bound = (bias.abs() + weight.abs() @ A.abs().reshape(-1, k).amax(dim=0)).max()
        shift = bool(bound > _LinearMultinomial.SAFE_EXP)
        # each block of documents' nonzeros, shared by every chunk of codes
        doc_blocks = []
        for r0 in range(0, B, rows_per):
            r = slice(r0, min(r0 + rows_per, B))
            nz = slice(bounds[r.start], bounds[r.stop]) if bounds else slice(None)
            doc = row[nz] - r.start                                          # [nnz_r] document in the block
            doc_blocks.append((r, doc, doc * V + col[nz], val[nz]))          # + flat index into [n, V], count
        for c0 in range(0, M, codes_per):
            for r, doc, flat, cnt in doc_blocks:
                c = slice(c0, min(c0 + codes_per, M))
                m, n = c.stop - c.start, r.stop - r.start
                h = h_buf[:m * n * V].view(m, n, V)
                Ac = A[c, r].reshape(-1, k)                                  # [m n, k]
                torch.addmm(bias, Ac, weight.T, out=h.view(-1, V))
                linear = A[c, r] @ s_weight + s_bias                         # <s, h>, [m, n]
                linear.index_add_(1, doc, h.view(m, -1).index_select(1, flat) * cnt)  # + <c, h>
                log_norm = 0.0
                if shift:
                    top = h.amax(dim=-1, keepdim=True)                       # [m, n, 1]
                    h.sub_(top)
                    log_norm = top[..., 0]
                sums = h.exp_().sum(dim=-1)                                  # h is now exp(h - top)
                ll[c, r] = linear - length[r] * (log_norm + sums.log())
                if not (need_A or need_W or need_b):
                    continue
                g = weights[c, r]                                            # [m, n]
                dh = h.mul_((-(length[r] * g) / sums)[..., None])            # -|x| g softmax(h)
                dh.view(m, -1).index_add_(1, flat, g[:, doc] * cnt)          # + g c, (doc, col) unique
                dh2, g2 = dh.view(-1, V), g.reshape(-1)                      # [m n, V], [m n]
                # the + g s part of dL/dh enters as rank-one terms, without a pass over dh
                if need_A:
                    grad_A[c, r] = (dh2 @ weight + g2[:, None] * s_weight).view(m, n, k)
                if need_W:
                    grad_W.addmm_(dh2.T, Ac)
                    s_grad += Ac.T @ g2
                if need_b:
                    grad_b += dh2.sum(dim=0)
                    g_sum += g2.sum()
        if need_W:
            grad_W.addr_(smoothing, s_grad)
        if need_b:
            grad_b.add_(smoothing * g_sum)
        total = (weights * ll).sum()
        ctx.mark_non_differentiable(ll)
        ctx.save_for_backward(grad_A, grad_W, grad_b)
        return ll, total

    @staticmethod
    def backward(ctx, _grad_ll, grad_total):
        grad_A, grad_W, grad_b = ctx.saved_tensors
        scale = lambda t: None if t is None else t * grad_total            # noqa: E731
        return scale(grad_A), scale(grad_W), scale(grad_b), None, None, None, None, None, None, None


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
    hidden = decoder.net[:-1](2 * codes - 1)                                 # [..., B, k]
    A = hidden.reshape(-1, *hidden.shape[-2:])                               # [M, B, k]
    M, B = A.shape[:2]
    w = (weights if weights is not None else A.new_zeros(())).expand(*hidden.shape[:-1]).reshape(M, B)
    weight, bias = decoder.net[-1].weight, decoder.net[-1].bias
    if weights is None or not torch.is_grad_enabled():
        # values only: detached inputs tell the fused function to skip its gradient work
        A, weight, bias = A.detach(), weight.detach(), bias.detach()
    ll, total = _LinearMultinomial.apply(A, weight, bias, w, x.row, x.col, x.val, x.offsets, x.smoothing, x.length)
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
    loss: torch.Tensor   # [B] differentiate its mean (or sum) to train; its value is `nelbo`
    nelbo: torch.Tensor  # [B] detached NELBO estimate: mean reconstruction over the 2K codes + KL
    encoder_gradient: torch.Tensor  # [B, b] detached estimate of d E_q[reconstruction] / d logits


def surrogate_loss(x: torch.Tensor, logits: torch.Tensor, decoder: nn.Module, method: str = "disarm",
                   pairs: int = 1, generator: torch.Generator | None = None) -> SurrogateTerms:
    """A per-document loss whose gradients are the training gradients of the NELBO.

    - w.r.t. the encoder logits: the DisARM (or ARM) estimate of d E_q[-log p(x|z)] / d a,
      averaged over `pairs` antithetic pairs, plus the exact gradient of the analytic KL;
    - w.r.t. the decoder: the ordinary gradient of -log p(x|z) averaged over the 2K codes.
    All 2K codes go through the decoder in one batched pass ([2K, B, b] -> [2K, B, V]; for a
    SparseBatch, the fused likelihood, whose decoder gradient is exact only for the mean or
    sum of the loss over documents, the two reductions training uses). The estimator enters as (g * (a - a.detach())).sum(), which is zero in value, so the loss's
    value is the 2K-sample NELBO estimate, usable for logging and non-finite checks.
    x: smoothed counts [B, V] or a SparseBatch; logits: encoder output [B, b], attached to the encoder's graph.
    """
    if method not in ESTIMATORS:
        raise ValueError(f"unknown gradient estimator '{method}'; expected one of {ESTIMATORS}")
    if int(pairs) != pairs or pairs < 1:
        raise ValueError(f"pairs must be a positive integer, got {pairs!r}")
    u, b, b_anti = antithetic_codes(logits, int(pairs), generator)     # [K, B, b] each
    codes = torch.cat([b, b_anti])                                      # [2K, B, b]
    if isinstance(x, SparseBatch):
        # The fused likelihood returns values and one scalar carrying the decoder's gradient
        # of sum_d mean_codes reconstruction_d; it is spread evenly over the documents'
        # losses, which is exact for their sum or mean (the only ways training reduces them).
        ll, total = sparse_log_likelihood(x, decoder, codes, weights=codes.new_full(codes.shape[:2], 1 / len(codes)))
        rec = x.empirical - ll                                          # [2K, B], values
        rec_mean = rec.mean(dim=0) - (total - total.detach()) / len(x)  # [B]
    else:
        rec = reconstruction(x, decoder(codes))                        # [2K, B], decoder's graph
        rec_mean = rec.mean(dim=0)
    f = rec.detach()
    grad = pair_gradients(f[:pairs], f[pairs:], u, logits, method).mean(dim=0)  # [B, b]
    kl = kl_to_uniform(logits)                                          # [B], exact gradient
    loss = rec_mean + kl + (grad * (logits - logits.detach())).sum(dim=-1)
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
        x = counts.batch(rows, smoothing)
        parts.append(nelbo_estimate(x, encoder(x, representation), decoder, generator))
    return NelboTerms(*(torch.cat(terms) for terms in zip(*parts)))
