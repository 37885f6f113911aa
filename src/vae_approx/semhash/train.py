"""Training of one semantic-hashing grid point: the protocol's two-phase epoch schedule; and of its
maximum-likelihood control, the decoder alone by the exact log-likelihood (train_likelihood).

Kyrylov et al. (ReScience C 9(2) 2023): Adam, batch 256, 1,000 epochs with one antithetic
DisARM pair per document, then 500 epochs averaging 10 pairs; the test NELBO is tracked every
epoch and the best epoch is reported. Both epoch counts come from the config.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from ..common import InputError, Progress, check_finite, checkpoint, load_resume, load_torch, save_torch
from .data import PreparedCorpus, SparseBatch, SparseCounts
from .estimators import surrogate_loss
from .evaluate import evaluate_nelbo, reported_mean
from .exact import LOG2, all_codes, code_table, document_features, log_likelihoods
from .model import Decoder, Encoder, encoder_spec
from .settings import ALLOWED, STEP_MODES, LikelihoodTrainSettings, TrainSettings, ml_identity


def build_models(settings: TrainSettings, n_words: int) -> tuple[Encoder, Decoder]:
    representation, hidden = encoder_spec(settings.encoder, settings.width)
    encoder = Encoder(n_words, settings.bits, hidden, representation)
    decoder = Decoder(settings.bits, n_words, (settings.width,) * settings.depth, code_values=settings.code_values)
    return encoder, decoder


def train(corpus: PreparedCorpus, settings: TrainSettings, device: torch.device,
          resume_file: Path | None, progress: Progress, step_mode: str = "eager") -> tuple[list[dict], Encoder, Decoder]:
    """Returns the per-epoch history (train and test NELBO) and the final models. `step_mode`, one of
    settings.STEP_MODES, is how each step runs; the numbers are the same in every mode."""
    if step_mode not in STEP_MODES or (step_mode == "cuda_graphs" and device.type != "cuda"):
        raise ValueError(f"step mode '{step_mode}' on {device}: expected one of {STEP_MODES}, cuda_graphs on CUDA only")
    torch.manual_seed(settings.seed)
    encoder, decoder = build_models(settings, corpus.n_words)
    encoder, decoder = encoder.to(device), decoder.to(device)
    # fused: one kernel for all parameters' Adam updates (the step is 1.3M parameters at the paper's shape);
    # capturable: its step count stays on the device, so that a CUDA graph can replay it
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=settings.lr, fused=True,
                                 capturable=step_mode == "cuda_graphs")
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
    n_batches = max(1, -(-n // settings.batch_size))
    static = None  # the StaticStep of the current phase's pairs
    for epoch in range(start + 1, settings.epochs + 1):
        pairs = settings.pairs(epoch)
        tic = time.perf_counter()
        encoder.train(), decoder.train()
        order = torch.randperm(n, generator=generator, device=device)
        total = torch.zeros((), device=device)
        losses = torch.zeros(n_batches, device=device)  # checked once per epoch: a check per batch waits for the device
        for b, x in enumerate(train_set.batches(order, settings.batch_size, smoothing)):  # sparse, [B] documents
            if step_mode == "eager" or len(x) != settings.batch_size:  # a short last batch: eager
                loss, nelbo = training_step(encoder, decoder, optimizer, settings, x, pairs, generator=generator)
            else:
                same_phase = static is not None and static.pairs == pairs
                if not (same_phase and static.fits(x)):  # a new phase, or a batch larger than the buffers
                    static = StaticStep(encoder, decoder, optimizer, settings, x, pairs, step_mode == "cuda_graphs",
                                        static.capacity if same_phase else None)
                    progress.message(f"epoch {epoch}: {step_mode} step for {pairs} pair(s), "
                                     f"{static.capacity} nonzeros per batch")
                loss, nelbo = static(x, generator)
            losses[b] = loss
            total += nelbo
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            first = int(bad[0, 0])
            check_finite(losses[first], f"semhash {settings.encoder} depth {settings.depth} {settings.bits} bits",
                         epoch, f"loss (batch {first})")
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


def training_step(encoder: Encoder, decoder: Decoder, optimizer, settings: TrainSettings, x: SparseBatch,
                  pairs: int, uniforms: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """One Adam step on batch x: (mean loss, sum of the documents' NELBO estimates), both on the
    device, not synchronised. The code samples come from `uniforms` [pairs, B, b] or `generator`."""
    terms = surrogate_loss(x, encoder(x), decoder, method=settings.estimator, kl_gradient=settings.kl_gradient,
                           pairs=pairs, generator=generator, uniforms=uniforms)
    loss = terms.loss.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), terms.nelbo.sum()


# ---------------------------------------------------------------- the step on static buffers (CUDA graphs)


class StaticStep:
    """training_step on buffers of fixed shape: B documents, `capacity` nonzeros (padded with
    zero counts), `pairs` pairs; with `capture`, recorded once as a CUDA graph and replayed.

    Why: at the paper's shape a step is a few hundred small kernels, and on a GPU their
    launches, not their work, bound it (about 7 ms per step); a graph replays them in one launch.
    A graph replays fixed memory, so each batch is copied into the buffers, and the code
    samples' uniforms are drawn outside it, into a buffer, from the training's generator: the
    draws, and so the numbers, are those of the eager step. Capturing needs a few steps first
    (allocations, the optimizer's state); they run on the buffers and are then undone, so the
    training is not changed by them.
    """

    WARMUP_STEPS = 3
    GROWTH = 1.5  # capacity over the batch that needs it, so a later, larger batch rarely re-captures

    def __init__(self, encoder: Encoder, decoder: Decoder, optimizer, settings: TrainSettings, x: SparseBatch,
                 pairs: int, capture: bool, capacity: int | None = None):
        self.pairs, self.documents = pairs, len(x)
        self.capacity = max(int(len(x.col) * self.GROWTH) + 1, capacity or 0)
        # A padding entry adds 0 x (a row of some matrix): document B - 1 (rows stay sorted), word
        # V - 1 (the last word's bag is the last in word order, so padding extends it), and in
        # word order the buffer's last entry, which is always padding.
        self.fill = {"row": self.documents - 1, "col": len(x.smoothing) - 1, "val": 0.0,
                     "word_row": self.documents - 1, "word_order": self.capacity - 1}
        self.x = SparseBatch(**{
            name: torch.empty(self.capacity, dtype=value.dtype, device=value.device) if name in self.fill
            else value if name == "smoothing" else value.clone()  # the smoothing is the corpus's, constant
            for name, value in x._asdict().items()})
        self.uniforms = torch.zeros((pairs, self.documents, settings.bits), device=x.val.device)
        step = lambda: training_step(encoder, decoder, optimizer, settings, self.x, pairs, self.uniforms)  # noqa: E731
        self.load(x)
        saved = _training_state(optimizer)
        side = torch.cuda.Stream() if capture else None  # CUDA warms up on a side stream before a capture
        if side is not None:
            side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            for _ in range(self.WARMUP_STEPS):
                step()
        if side is not None:
            torch.cuda.current_stream().wait_stream(side)
        _restore_training_state(optimizer, saved)
        self.graph = None
        if capture:
            optimizer.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = step()
        self.step = step

    def fits(self, x: SparseBatch) -> bool:
        return len(x) == self.documents and len(x.col) < self.capacity  # at least one padding entry: word_order's

    def load(self, x: SparseBatch) -> None:
        """Copy batch x into the buffers; the entries past its nonzeros become padding."""
        nnz = len(x.col)
        for name, value in x._asdict().items():
            buffer = getattr(self.x, name)
            if name in self.fill:
                buffer[:nnz].copy_(value)
                buffer[nnz:].fill_(self.fill[name])
            elif buffer is not value:
                buffer.copy_(value)

    def __call__(self, x: SparseBatch, generator: torch.Generator):
        """One training step on batch x: (mean loss, sum of NELBO estimates), valid until the next call."""
        if not self.fits(x):
            raise ValueError(f"a batch of {len(x)} documents and {len(x.col)} nonzeros in a static step of "
                             f"{self.documents} documents and {self.capacity} entries")
        self.load(x)
        torch.rand(self.uniforms.shape, generator=generator, out=self.uniforms)
        if self.graph is None:
            return self.step()
        self.graph.replay()
        return self.outputs


def _parameters(optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _training_state(optimizer) -> tuple[list[torch.Tensor], dict]:
    """Copies of the parameters and the optimizer's state tensors."""
    params = _parameters(optimizer)
    state = {i: {k: v.clone() for k, v in optimizer.state[p].items()} for i, p in enumerate(params)
             if p in optimizer.state}
    return [p.detach().clone() for p in params], state


@torch.no_grad()
def _restore_training_state(optimizer, saved) -> None:
    """Undo steps in place (a captured graph holds these very tensors): the parameters and the
    state they had; state the steps created is zeroed, which is Adam's initial state (step 0,
    zero moments)."""
    params, state = saved
    for i, p in enumerate(_parameters(optimizer)):
        p.copy_(params[i])
        for key, value in optimizer.state.get(p, {}).items():
            if i in state and key in state[i]:
                value.copy_(state[i][key])
            else:
                value.zero_()


# ---------------------------------------------------------------- the maximum-likelihood control


def exact_log_likelihood(x: SparseBatch, decoder: Decoder, codes: torch.Tensor) -> torch.Tensor:
    """log p(x) = logsumexp_z log p(x|z) - b log 2 of each document, by enumerating `codes` [2^b, b]
    (exact.py): [B], differentiable in the decoder's parameters. Its gradient is the posterior's
    expectation of the gradient of log p(x|z), which an encoder only approximates."""
    ll = log_likelihoods(document_features(x, decoder), x.length, code_table(decoder, codes))  # [B, 2^b]
    return torch.logsumexp(ll, dim=-1) - codes.shape[1] * LOG2


def control_decoder(settings: LikelihoodTrainSettings, n_words: int) -> Decoder:
    """The control's decoder with the initialisation of the VAEs' of the same seed: build_models
    after torch.manual_seed(seed), with the linear encoder e1 (e3 draws the same), discarded."""
    torch.manual_seed(settings.seed)
    vae = TrainSettings(**{**{f.name: None for f in fields(TrainSettings)}, "encoder": ALLOWED["encoders"][0],
                           "bits": settings.bits, "depth": settings.depth, "width": settings.width,
                           "code_values": settings.code_values})
    return build_models(vae, n_words)[1]


def train_likelihood(corpus: PreparedCorpus, settings: LikelihoodTrainSettings, device: torch.device,
                     resume_file: Path | None, progress: Progress) -> tuple[list[dict], Decoder]:
    """The control: the decoder alone, trained by the exact log-likelihood of the training documents
    with the VAE's optimiser (Adam, its learning rate and batch size), epochs and shuffling seed.
    History rows: train_nll (the epoch's mean over batches, before each step) and test_nll (exact,
    after the epoch), in nats per document relative to its empirical distribution."""
    decoder = control_decoder(settings, corpus.n_words).to(device)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=settings.lr, fused=True)
    train_set, test_set = SparseCounts(corpus.train, device), SparseCounts(corpus.test, device)
    smoothing = torch.as_tensor(corpus.smoothing, dtype=torch.float32, device=device)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    codes = all_codes(settings.bits, device)
    config, history, start = asdict(settings), [], 0
    ckpt = load_resume(resume_file, config, {"decoder": decoder}, optimizer, progress) if resume_file else None
    if ckpt is not None:
        generator.set_state(ckpt["generator"].to(generator.get_state().device))
        start, history = ckpt["step"], ckpt["history"]
    n = len(train_set)
    for epoch in range(start + 1, settings.epochs + 1):
        tic = time.perf_counter()
        decoder.train()
        total = torch.zeros((), device=device)
        for x in train_set.batches(torch.randperm(n, generator=generator, device=device), settings.batch_size,
                                   smoothing, by_word=False):
            log_px = exact_log_likelihood(x, decoder, codes)                 # [B]
            loss = -log_px.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += (x.empirical - log_px.detach()).sum()
        decoder.eval()
        with torch.no_grad():
            test = torch.cat([x.empirical - exact_log_likelihood(x, decoder, codes) for x in test_set.batches(
                torch.arange(len(test_set), device=device), settings.eval_batch_size, smoothing, by_word=False)])
        row = {"epoch": epoch, "train_nll": (total / n).item(), "test_nll": test.mean().item(),
               "seconds": time.perf_counter() - tic}
        check_finite(row["train_nll"], f"semhash likelihood control depth {settings.depth} {settings.bits} bits",
                     epoch, "train NLL")
        history.append(row)
        progress.log(epoch, train_nll=row["train_nll"], test_nll=row["test_nll"], epoch_seconds=row["seconds"])
        if resume_file and epoch % settings.checkpoint_every == 0 and epoch < settings.epochs:
            save_torch(checkpoint({"decoder": decoder}, optimizer, epoch, config, generator=generator.get_state(),
                                  history=history), resume_file)
    return history, decoder


def restore(saved: dict) -> tuple[Encoder | None, Decoder, dict]:
    """The models of a saved model.pt (a VAE) or decoder.pt (the control; no encoder), and the run's
    identity as the tables' columns (settings.RUN; the control's encoder is settings.ML_ENCODER)."""
    if "encoder" in saved:
        settings = TrainSettings(**saved["settings"])
        encoder, decoder = build_models(settings, saved["n_words"])
        encoder.load_state_dict(saved["encoder"])
        identity = {"seed": settings.seed, "encoder": settings.encoder, "depth": settings.depth, "bits": settings.bits}
    else:
        settings = LikelihoodTrainSettings(**saved["settings"])
        encoder, decoder = None, control_decoder(settings, saved["n_words"])
        identity = ml_identity(saved["settings"])
    decoder.load_state_dict(saved["decoder"])
    return encoder, decoder, identity


def load_model(path, n_words: int, run: dict):
    """(encoder or None, decoder, identity, settings dict) of a saved VAE or control, which must be the run's
    and the corpus's."""
    saved = load_torch(path, "semantic-hashing model")
    if not isinstance(saved, dict) or not {"decoder", "settings", "n_words"} <= set(saved):
        got = (f"a file of kind '{saved['kind']}'" if isinstance(saved, dict) and "kind" in saved else
               f"a dict of {', '.join(sorted(map(str, saved)))}" if isinstance(saved, dict) else type(saved).__name__)
        raise InputError(f"{path}: not a semantic-hashing model (a VAE's model.pt or a likelihood control's "
                         f"decoder.pt, with decoder, settings and n_words); got {got}")
    encoder, decoder, identity = restore(saved)
    if {key: identity[key] for key in run} != run:
        raise InputError(f"{path}: the model of {identity}, not of the run {run}")
    if saved["n_words"] != n_words:
        raise InputError(f"{path}: a model of {saved['n_words']} words, the corpus has {n_words}")
    return encoder, decoder, identity, saved["settings"]
