"""Held-out evaluation of a semantic-hashing model: the test NELBO as the protocol reports it, and
the retrieval metric of its binary codes."""

from __future__ import annotations

import numpy as np
import torch

from .data import SparseCounts
from .model import Decoder, Encoder, NelboTerms, nelbo_estimate


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
