"""Training of one semantic-hashing grid point: the protocol's two-phase epoch schedule.

Kyrylov et al. (ReScience C 9(2) 2023): Adam, batch 256, 1,000 epochs with one antithetic
DisARM pair per document, then 500 epochs averaging 10 pairs; the test NELBO is tracked every
epoch and the best epoch is reported. Both epoch counts come from the config.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..common import Progress, check_finite, checkpoint, load_resume, save_torch
from .data import PreparedCorpus
from .model import Decoder, Encoder, SparseCounts, encoder_spec, evaluate_nelbo, surrogate_loss
from .settings import TrainSettings  # noqa: F401  (re-exported: the trainer's settings)


def build_models(settings: TrainSettings, n_words: int) -> tuple[Encoder, Decoder]:
    representation, hidden = encoder_spec(settings.encoder, settings.width)
    encoder = Encoder(n_words, settings.bits, hidden, representation)
    decoder = Decoder(settings.bits, n_words, (settings.width,) * settings.depth, code_values=settings.code_values)
    return encoder, decoder


def train(corpus: PreparedCorpus, settings: TrainSettings, device: torch.device,
          resume_file: Path | None, progress: Progress) -> tuple[list[dict], Encoder, Decoder]:
    """Returns the per-epoch history (train and test NELBO) and the final models."""
    torch.manual_seed(settings.seed)
    encoder, decoder = build_models(settings, corpus.n_words)
    encoder, decoder = encoder.to(device), decoder.to(device)
    # fused: one kernel for all parameters' Adam updates (the step is 1.3M parameters at the paper's shape)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=settings.lr, fused=True)
    train_set, test_set = SparseCounts(corpus.train, device), SparseCounts(corpus.test, device)
    smoothing = torch.as_tensor(corpus.smoothing, dtype=torch.float32, device=device)
    # One generator for shuffling and code sampling, on the device, saved in the checkpoint.
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    eval_representation = "counts" if settings.reference_protocol else None

    config = asdict(settings)
    history: list[dict] = []
    start = 0
    models = {"encoder": encoder, "decoder": decoder}
    ckpt = load_resume(resume_file, config, models, optimizer, progress) if resume_file else None
    if ckpt is not None:
        generator.set_state(ckpt["generator"].to(generator.get_state().device))
        start, history = ckpt["step"], ckpt["history"]

    n = len(train_set)
    for epoch in range(start + 1, settings.epochs + 1):
        pairs = settings.pairs(epoch)
        tic = time.perf_counter()
        encoder.train(), decoder.train()
        order = torch.randperm(n, generator=generator, device=device)
        total = torch.zeros((), device=device)
        for b, x in enumerate(train_set.batches(order, settings.batch_size, smoothing)):  # sparse, [B] documents
            terms = surrogate_loss(x, encoder(x), decoder, settings.estimator, pairs, generator,
                                   settings.kl_gradient)
            loss = terms.loss.mean()
            check_finite(loss, f"semhash {settings.encoder} depth {settings.depth} {settings.bits} bits",
                         epoch, f"loss (batch {b})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += terms.nelbo.sum()
        encoder.eval(), decoder.eval()
        test = evaluate_nelbo(encoder, decoder, test_set, smoothing, settings.eval_batch_size, generator,
                              eval_representation)
        mean = lambda t: reported_mean(t, settings.test_nelbo_batch)            # noqa: E731
        row = {"epoch": epoch, "pairs": pairs, "train_nelbo": (total / n).item(),
               "test_nelbo": mean(test.nelbo), "test_reconstruction": mean(test.reconstruction),
               "test_kl": mean(test.kl), "seconds": time.perf_counter() - tic}
        check_finite(row["test_nelbo"], "semhash evaluation", epoch, "test NELBO")
        history.append(row)
        progress.log(epoch, train_nelbo=row["train_nelbo"], test_nelbo=row["test_nelbo"], pairs=pairs,
                     epoch_seconds=row["seconds"])
        if resume_file and epoch % settings.checkpoint_every == 0 and epoch < settings.epochs:
            save_torch(checkpoint(models, optimizer, epoch, config, generator=generator.get_state(),
                                  history=history), resume_file)
    return history, encoder, decoder


def reported_mean(values: torch.Tensor, batch: int = 0) -> float:
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
