"""Metrics of the Gaussian-mixture experiment, all exact: those of a trained model, and the
maximum-likelihood control's."""

from __future__ import annotations

import torch

from .model import (TRUE_CENTRES, FactorizedEncoder, MixtureDecoder, best_factorized_posterior, exact_elbo,
                    fit_centres_ml, kl_divergence, log_likelihood, log_posterior)


def centre_distances(distances: torch.Tensor) -> dict[str, float]:
    """Each centre's Euclidean distance from its ground-truth position [K], and their mean."""
    row = {f"centre_{k}_distance": dist for k, dist in enumerate(distances.tolist())}
    row["mean_centre_distance"] = distances.mean().item()
    return row


def best_factorized_elbo(x: torch.Tensor, encoder, log_joint: torch.Tensor) -> float:
    """Mean over the points x [N, 2] of ELBO(q*), q* each point's best factorized posterior
    (model.best_factorized_posterior, in float64), started from the encoder's own q where it is factorized."""
    start = encoder.bit_logits(x) if isinstance(encoder, FactorizedEncoder) else None
    log_q_star, _ = best_factorized_posterior(log_joint, start)  # [N, K]
    return exact_elbo(log_q_star, log_joint.double()).mean().item()


def gap_split(row: dict[str, float]) -> dict[str, float]:
    """log p(x) - ELBO split (Cremer et al. 2018) from a row's means: approximation_gap = log p(x) -
    ELBO(q*), what no factorized q closes; amortization_gap = ELBO(q*) - ELBO(q), negative where the
    encoder is better than any factorized q (a consistent encoder). The two add up to log p(x) - ELBO."""
    best = row["best_factorized_elbo"]
    return {"approximation_gap": row["log_likelihood"] - best, "amortization_gap": best - row["elbo"]}


@torch.no_grad()
def evaluate(x, encoder, decoder, true_log_posterior, true_centres) -> dict[str, float]:
    """Every quantity of the metrics table, exactly, averaged over the data."""
    encoder.eval()
    log_q = encoder.log_q(x)
    log_joint = decoder.log_joint(x)
    row = {
        "elbo": exact_elbo(log_q, log_joint).mean().item(),
        "log_likelihood": log_likelihood(log_joint).mean().item(),
        "kl_to_posterior": kl_divergence(log_q, log_posterior(log_joint)).mean().item(),
        "kl_to_true_posterior": kl_divergence(log_q, true_log_posterior).mean().item(),
        "best_factorized_elbo": best_factorized_elbo(x, encoder, log_joint),
    }
    row.update(gap_split(row))
    row.update(centre_distances((decoder.centres - true_centres).norm(dim=1)))
    encoder.train()
    return row


def ml_control(x: torch.Tensor, variance: float) -> dict[str, float]:
    """The control's row: maximum-likelihood centres on the sample x [N, 2], no encoder (EM from
    the truth; model.fit_centres_ml), their mean log-likelihood beside the ground truth's, EM's
    iterations and each centre's distance from the truth. In float64."""
    true = torch.tensor(TRUE_CENTRES, dtype=torch.float64)
    centres, iterations = fit_centres_ml(x, variance)
    decoder = MixtureDecoder(TRUE_CENTRES, variance).double()
    with torch.no_grad():
        truth_ll = log_likelihood(decoder.log_joint(x.double())).mean().item()
        decoder.centres.copy_(centres)
        row = {"log_likelihood": log_likelihood(decoder.log_joint(x.double())).mean().item(),
               "ground_truth_log_likelihood": truth_ll, "iterations": iterations}
    row.update(centre_distances((centres - true).norm(dim=1)))
    return row
