"""The encoder's gradients: DisARM and ARM estimates over antithetic pairs of codes, and the
surrogate loss whose gradients are the training gradients of the NELBO.

The encoder's output is discrete (codes z in {0, 1}^b drawn from q(z|x)), so the gradient of
E_q[f(z)] with respect to its logits is estimated from pairs of codes that share their uniforms
(ARM, and DisARM, the reproduction's; see pair_gradients). The decoder's gradient is the
ordinary one, through the model's likelihood (model.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .data import SparseBatch
from .model import kl_to_uniform, reconstruction, sparse_log_likelihood
from .settings import ALLOWED


def antithetic_codes(logits: torch.Tensor, pairs: int, generator: torch.Generator | None = None,
                     uniforms: torch.Tensor | None = None):
    """K antithetic pairs per document from the same uniforms.

    u ~ U(0,1)^[K, B, b]; b = 1[u < sigmoid(a)] and b~ = 1[1 - u < sigmoid(a)] are both
    distributed as q(z|x). Returns (u, b, b~), each [K, B, b]. `uniforms` passes u drawn
    beforehand (a CUDA graph's step draws them outside the graph, with the same generator).
    """
    probs = torch.sigmoid(logits.detach())
    u = uniforms if uniforms is not None else torch.rand(
        (pairs, *logits.shape), generator=generator, device=logits.device, dtype=logits.dtype)
    return u, (u < probs).to(logits.dtype), ((1 - u) < probs).to(logits.dtype)


def pair_gradients(f_b: torch.Tensor, f_anti: torch.Tensor, u: torch.Tensor, logits: torch.Tensor,
                   method: str, codes: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One unbiased estimate of d/da E_q[f(z)] per antithetic pair: [K, B] values -> [K, B, b].

    f_b = f(b), f_anti = f(b~) with b, b~ from antithetic_codes(u) (pass them as `codes` to
    save recomputing them).
    - ARM (Yin & Zhou, "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks",
      ICLR 2019): (f(b~) - f(b)) (u - 1/2).
    - DisARM (Dong, Mnih, Tucker, "DisARM: An Antithetic Gradient Estimator for Binary Latent
      Variables", NeurIPS 2020): 1/2 (f(b) - f(b~)) (-1)^b~_i 1[b_i != b~_i] sigmoid(|a_i|),
      the expectation of ARM given (b, b~): the same mean, never a larger variance.
      (-1)^b~_i 1[b_i != b~_i] is b_i - b~_i.
    """
    logits = logits.detach()
    if method == "arm":
        return (f_anti - f_b).unsqueeze(-1) * (u - 0.5)
    if method == "disarm":
        if codes is None:
            probs = torch.sigmoid(logits)
            codes = (u < probs).to(logits.dtype), ((1 - u) < probs).to(logits.dtype)
        b, b_anti = codes
        return (0.5 * (f_b - f_anti)).unsqueeze(-1) * (b - b_anti) * torch.sigmoid(logits.abs())
    raise ValueError(f"unknown gradient estimator '{method}'; expected one of {ALLOWED['estimator']}")


class SurrogateTerms(NamedTuple):
    loss: torch.Tensor   # [B] differentiate its mean (or sum) to train; its value is `nelbo`
    nelbo: torch.Tensor  # [B] detached NELBO estimate: mean reconstruction over the 2K codes + KL
    encoder_gradient: torch.Tensor  # [B, b] detached estimate of d E_q[f] / d logits, f as kl_gradient says


def log_q_over_prior(codes: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log q(z|x) - log p(z) of codes z [..., B, b] under logits [B, b], uniform prior: -> [..., B].

    log q = sum_i z_i log sigmoid(a_i) + (1 - z_i) log sigmoid(-a_i), and log sigmoid(-a) =
    log sigmoid(a) - a; its mean over z ~ q is kl_to_uniform(logits).
    """
    return (F.logsigmoid(logits).sum(dim=-1) - ((1 - codes) * logits).sum(dim=-1)
            + logits.shape[-1] * math.log(2.0))


def surrogate_loss(x: torch.Tensor | SparseBatch, logits: torch.Tensor, decoder: nn.Module, *, method: str,
                   kl_gradient: str, pairs: int = 1, generator: torch.Generator | None = None,
                   uniforms: torch.Tensor | None = None) -> SurrogateTerms:
    """A per-document loss whose gradients are the training gradients of the NELBO.

    - w.r.t. the encoder logits, with kl_gradient="estimator" (the reproduction's code): the
      `method` estimate (DisARM or ARM) of d E_q[f(z)] / d a with f(z) = -log p(x|z) + log q(z|x) -
      log p(z), q held fixed inside f, averaged over `pairs` antithetic pairs. Since
      E_q[d log q / d a] = 0, its mean is the NELBO's gradient. With kl_gradient="analytic": the
      estimate for f(z) = -log p(x|z) plus the exact gradient of the analytic KL, the same mean
      with less variance. The two do not train alike under Adam (docs/semhash.md: after
      11 epochs at the paper's shape, 0.84 nats apart in the reference formulation);
    - w.r.t. the decoder: the ordinary gradient of -log p(x|z) averaged over the 2K codes.
    All 2K codes go through the decoder in one batched pass ([2K, B, b] -> [2K, B, V]; for a
    SparseBatch, the fused likelihood, whose decoder gradient is exact only for the mean or
    sum of the loss over documents, the two reductions training uses). The estimator enters
    as (g * (a - a.detach())).sum(), which is zero in value, so the loss's value is the
    2K-sample NELBO estimate (analytic KL), usable for logging and non-finite checks.
    x: smoothed counts [B, V] or a SparseBatch; logits: encoder output [B, b], attached to the encoder's graph;
    uniforms: antithetic_codes' u [pairs, B, b], drawn beforehand (else drawn here from `generator`).
    """
    if method not in ALLOWED["estimator"]:
        raise ValueError(f"unknown gradient estimator '{method}'; expected one of {ALLOWED['estimator']}")
    if kl_gradient not in ALLOWED["kl_gradient"]:
        raise ValueError(f"unknown KL gradient '{kl_gradient}'; expected one of {ALLOWED['kl_gradient']}")
    if int(pairs) != pairs or pairs < 1:
        raise ValueError(f"pairs must be a positive integer, got {pairs!r}")
    if uniforms is not None and uniforms.shape != (pairs, *logits.shape):
        raise ValueError(f"uniforms of shape {tuple(uniforms.shape)} for {pairs} pairs of logits {tuple(logits.shape)}")
    u, b, b_anti = antithetic_codes(logits, int(pairs), generator, uniforms)  # [K, B, b] each
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
    rec = rec.detach()
    kl = kl_to_uniform(logits)                                          # [B]
    f = rec
    if kl_gradient == "estimator":
        f = rec + log_q_over_prior(codes, logits.detach())              # [2K, B]
        kl = kl.detach()                                                # its gradient is in the estimate
    grad = pair_gradients(f[:pairs], f[pairs:], u, logits, method, (b, b_anti)).mean(dim=0)  # [B, b]
    loss = rec_mean + kl + (grad * (logits - logits.detach())).sum(dim=-1)
    return SurrogateTerms(loss, (rec.mean(dim=0) + kl).detach(), grad)
