"""Held-out evaluation of a semantic-hashing model: the test NELBO as the protocol reports it, the
retrieval metric of its binary codes, and its approximation error (log p(x), the exact ELBO and
the best factorized posterior's, by enumeration; exact.py)."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .data import SparseCounts
from .exact import (DOCUMENT_ELEMENTS, all_codes, best_factorized, code_table, document_features, factorized_elbo,
                    iwae_bounds, log_likelihoods, log_marginal, sampled_likelihood, table_likelihood)
from .model import Decoder, Encoder, NelboTerms, nelbo_estimate
from .settings import ExactSettings, reported_samples


@torch.no_grad()
def evaluate_nelbo(encoder: Encoder, decoder: Decoder, counts: SparseCounts, smoothing: torch.Tensor,
                   batch_size: int, generator: torch.Generator | None = None,
                   representation: str | None = None) -> NelboTerms:
    """nelbo_estimate of every document of `counts`, `batch_size` documents at a time; each term [N] on
    the device.

    The encoder sees its own input representation unless `representation` overrides it (the
    reference code evaluated frequency encoders on counts; see DESIGN.md).
    """
    parts = []
    for x in counts.batches(torch.arange(len(counts), device=counts.device), batch_size, smoothing, by_word=False):
        parts.append(nelbo_estimate(x, encoder(x, representation), decoder, generator))
    return NelboTerms(*(torch.cat(terms) for terms in zip(*parts)))


def reported_mean(values: torch.Tensor, batch: int) -> float:
    """The test set's mean of per-document values [N]: over documents (batch 0), or as the
    reproduction's script reports it, the mean of the means of consecutive batches of `batch`
    documents in file order, which weighs the documents of a smaller last batch more (with 7,505
    test documents in batches of 256, the last 81 count three times as much as the others)."""
    if batch == 0:
        return values.mean().item()
    return torch.stack([chunk.mean() for chunk in values.split(batch)]).mean().item()


# ---------------------------------------------------------------- retrieval


@torch.no_grad()
def binary_codes(encoder: Encoder, counts: SparseCounts, smoothing: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Deterministic codes, bit = logit > 0: [N, b] bool."""
    encoder.eval()
    parts = [encoder(x) > 0 for x in counts.batches(torch.arange(len(counts), device=counts.device), batch_size,
                                                    smoothing, by_word=False)]
    return torch.cat(parts)


def precision_at_k(query_codes: torch.Tensor, query_labels: np.ndarray, database_codes: torch.Tensor,
                   database_labels: np.ndarray, k: int, chunk: int = 512) -> float:
    """Mean precision@k of Hamming ranking, relevance = same label.

    Ties in Hamming distance are broken by database index (a stable sort), so the number is
    deterministic. k may not exceed the database: a capped k would report another metric under
    the name precision@k.
    """
    if not 1 <= k <= len(database_codes):
        raise ValueError(f"precision@{k} on a database of {len(database_codes)} documents")
    db = database_codes.float()
    db_labels = torch.as_tensor(database_labels, device=db.device)
    hits = 0.0
    for first in range(0, len(query_codes), chunk):
        q = query_codes[first:first + chunk].float()
        # Hamming distance of {0,1} vectors: |q| + |d| - 2 <q, d>
        dist = q.sum(1, keepdim=True) + db.sum(1) - 2 * q @ db.T           # [Q, N]
        nearest = torch.sort(dist, dim=1, stable=True).indices[:, :k]      # [Q, k]
        labels = torch.as_tensor(query_labels[first:first + chunk], device=db.device)
        hits += (db_labels[nearest] == labels[:, None]).float().mean(1).sum().item()
    return hits / len(query_codes)


# ---------------------------------------------------------------- the approximation error (exact.py)


@torch.no_grad()
def exact_terms(encoder: Encoder | None, decoder: Decoder, counts: SparseCounts, smoothing: torch.Tensor,
                settings: ExactSettings, eval_batch_size: int, generator: torch.Generator | None = None,
                seconds: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Per document of `counts`, in nats relative to its empirical distribution (as the NELBO; the
    sign makes every value a loss): {name: [N]}.

    Up to settings.max_bits, by enumerating every code: nll = -log p(x); with an encoder also
    nelbo (its exact ELBO), nelbo_q_star (the best factorized q*'s, exact.best_factorized) with
    q_star_sweeps and q_star_converged, and nll_iwae_<K>, the IWAE bound's -log p(x) >= nll for
    each K of settings.samples. Above max_bits only the IWAE bound (an encoder is needed).
    `seconds`, if given, accumulates the time of each phase: table (the decoder over every code),
    enumeration (log p(x|z) of every document and code, log p(x), the exact ELBO), q_star, iwae.
    """
    clock = _PhaseClock(seconds, counts.device)
    decoder.eval()
    if encoder is not None:
        encoder.eval()
    bits = decoder.bits
    enumerable = bits <= settings.max_bits
    if not enumerable and encoder is None:
        raise ValueError(f"{bits} bits is above exact.max_bits ({settings.max_bits}) and there is no encoder to sample from")
    device = counts.device
    codes = all_codes(bits, device, smoothing.dtype) if enumerable else None
    table = code_table(decoder, codes).joint if enumerable else None        # [2^b, k+2]
    clock("table")
    chunk = max(1, DOCUMENT_ELEMENTS >> bits) if enumerable else eval_batch_size
    buffer = torch.empty(min(chunk, len(counts)), 2**bits, dtype=smoothing.dtype, device=device) if enumerable else None
    parts: dict[str, list[torch.Tensor]] = {}
    for x in counts.batches(torch.arange(len(counts), device=device), chunk, smoothing, by_word=False):
        features = document_features(x, decoder)                            # [n, k+1]
        logits = encoder(x) if encoder is not None else None                # [n, b]
        row = {}
        if enumerable:
            ll = log_likelihoods(features, x.length, table, out=buffer[:len(x)])  # [n, 2^b]
            top = ll.amax(dim=-1)                                            # each document's own shift
            ll -= top[:, None]
            row["nll"] = x.empirical - top - log_marginal(ll, shifted=True)
            if logits is not None:
                row["nelbo"] = x.empirical - top - factorized_elbo(ll, logits)
                clock("enumeration")
                best = best_factorized(ll, logits, settings.tolerance, settings.max_sweeps)
                clock("q_star")
                row["nelbo_q_star"] = x.empirical - top - best.elbo
                row["q_star_sweeps"], row["q_star_converged"] = best.sweeps.float(), best.converged.float()
                ll_of, shift = table_likelihood(ll), top
        elif logits is not None:
            ll_of, shift = sampled_likelihood(features, x.length, decoder), 0.0
        if logits is not None:
            for K, bound in iwae_bounds(ll_of, logits, settings.samples(bits), bits, generator).items():
                row[f"nll_iwae_{K}"] = x.empirical - shift - bound
        clock("iwae" if logits is not None else "enumeration")
        for name, values in row.items():
            parts.setdefault(name, []).append(values)
    return {name: torch.cat(values) for name, values in parts.items()}


class _PhaseClock:
    """clock(phase) adds the time since the last call to seconds[phase] (nothing without a dict);
    on a GPU it waits for the device first, so each phase gets its own kernels' time."""

    def __init__(self, seconds: dict[str, float] | None, device: torch.device):
        self.seconds, self.device, self.last = seconds, device, time.perf_counter()

    def __call__(self, phase: str) -> None:
        if self.seconds is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now


def train_subset(n_train: int, size: int) -> np.ndarray:
    """`size` evenly spaced training documents (all of them if there are fewer): a fixed subset that
    spans the file, whose documents the real archive orders by newsgroup."""
    if size >= n_train:
        return np.arange(n_train)
    return np.linspace(0, n_train - 1, size).round().astype(np.int64)


def exact_summary(terms: dict[str, torch.Tensor], samples: list[int]) -> dict[str, float]:
    """One exact.csv row's values from exact_terms: means over the documents, the gaps (inference =
    approximation + amortization), the q* ascent's worst case, and nll_iwae_<K> of every K of
    `samples` (nan where not computed: above max_bits only settings.iwae_samples, without an encoder none)."""
    mean = {name: values.double().mean().item() for name, values in terms.items()}
    row = {"documents": len(next(iter(terms.values())))}
    row.update({name: mean.get(name, math.nan) for name in ("nll", "nelbo", "nelbo_q_star")})
    row["inference_gap"] = row["nelbo"] - row["nll"]
    row["approximation_gap"] = row["nelbo_q_star"] - row["nll"]
    row["amortization_gap"] = row["nelbo"] - row["nelbo_q_star"]
    sweeps = terms.get("q_star_sweeps")
    row["q_star_max_sweeps"] = sweeps.max().item() if sweeps is not None else math.nan
    converged = terms.get("q_star_converged")
    row["q_star_unconverged"] = int((converged == 0).sum()) if converged is not None else 0
    row.update({f"nll_iwae_{K}": mean.get(f"nll_iwae_{K}", math.nan) for K in sorted(samples)})
    return row


def exact_rows(encoder: Encoder | None, decoder: Decoder, sets: dict[str, SparseCounts], smoothing: torch.Tensor,
               settings: ExactSettings, eval_batch_size: int, generator: torch.Generator | None = None,
               log=None) -> list[dict]:
    """exact.csv's rows: per set of documents {name: counts}, its exact_summary, the method and the seconds;
    `log(name, row)` is told each row as it is done."""
    method = "enumeration" if decoder.bits <= settings.max_bits else "importance sampling"
    rows = []
    for name, counts in sets.items():
        tic = time.perf_counter()
        terms = exact_terms(encoder, decoder, counts, smoothing, settings, eval_batch_size, generator)
        rows.append({"set": name, "method": method,
                     **exact_summary(terms, reported_samples(settings.iwae_curve, settings.iwae_samples)),
                     "seconds": time.perf_counter() - tic})
        if log is not None:
            log(name, rows[-1])
    return rows
