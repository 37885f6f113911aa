"""Full-batch training of the Gaussian-mixture VAE by exact ELBO, with metrics and resume."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ..common import Progress, check_finite, checkpoint, load_resume, save_torch
from .evaluate import evaluate
from .model import MixtureDecoder, exact_elbo, log_posterior
from .settings import PHASES, TrainSettings


def train(
    x: torch.Tensor,
    encoder: torch.nn.Module,
    decoder: MixtureDecoder,
    true_centres: torch.Tensor,
    variance: float,
    settings: TrainSettings,
    resume_file: Path | None,
    progress: Progress,
    on_step: Callable[[int], None] | None = None,
) -> list[dict]:
    """Maximise the exact ELBO over the full batch; returns the metrics rows.

    In the "pretrain" phase only the encoder is optimised (the decoder is the ground truth);
    in "joint" both are. `on_step` is called after every step (tests use it to interrupt).
    """
    if settings.phase not in PHASES:
        raise ValueError(f"unknown phase '{settings.phase}'; expected one of {sorted(PHASES)}")
    params = list(encoder.parameters())
    if settings.phase == "joint":
        params += list(decoder.parameters())
    else:
        decoder.requires_grad_(False)
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    true_log_posterior = log_posterior(MixtureDecoder(true_centres, variance).to(x.device).log_joint(x)).detach()

    config = asdict(settings)
    rows: list[dict] = []
    start = 0
    models = {"encoder": encoder, "decoder": decoder}
    ckpt = load_resume(resume_file, config, models, optimizer, progress) if resume_file else None
    if ckpt is not None:
        start, rows = ckpt["step"], ckpt["rows"]

    def record(step: int) -> None:
        row = {"phase": settings.phase, "step": step}
        row.update(evaluate(x, encoder, decoder, true_log_posterior, true_centres))
        rows.append(row)
        check_finite(row["elbo"], f"gmm {settings.phase}", step, "ELBO")

    if start == 0:
        record(0)
    for step in range(start + 1, settings.steps + 1):
        loss = -exact_elbo(encoder.log_q(x), decoder.log_joint(x)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        check_finite(loss, f"gmm {settings.phase}", step)
        optimizer.step()
        if step % settings.eval_every == 0 or step == settings.steps:
            record(step)
            progress.log(step, force=True, loss=loss.item(), log_likelihood=rows[-1]["log_likelihood"])
        if resume_file and step % settings.checkpoint_every == 0 and step < settings.steps:
            save_torch(checkpoint(models, optimizer, step, config, rows=rows), resume_file)
        if on_step is not None:
            on_step(step)
    decoder.requires_grad_(True)
    return rows
