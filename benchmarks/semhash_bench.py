"""Semantic hashing: our trainer against the reference formulation, taking turns epoch by epoch.

Both train the same Bernoulli VAE (encoder e1, decoder depth 0, 64 bits, DisARM, Adam 1e-3,
batch 256) on the same corpus with the same seed, at the paper's shape: 11,269 training and
7,505 test documents over 10,000 words (a synthetic corpus written and parsed in the real
archive's format, since the real one cannot be fetched here). Each side runs a few epochs of
each phase of the protocol, with the test NELBO evaluated after every epoch as the protocol
does, and the whole schedule (1,000 epochs with one pair + 500 with ten) is extrapolated
from the measured epoch times.

The reference formulation follows the reproduction's scripts (Kyrylov et al., ReScience C
9(2) 2023: its semantic-hashing model module, training script and 20 Newsgroups loader), in
our own code, with our layers and initial weights:
- the training set as one dense smoothed [N, V] float tensor in a TensorDataset, batches
  drawn by a shuffling DataLoader (batch 256, no workers);
- every ELBO evaluation recomputes the document normalisation sum_w x_w log(x_w / |x|) over
  the dense batch, and the code's log q(z|x) - log p(z) (the reference's "entropy" term,
  detached, so the KL's gradient also goes through the estimator);
- the two codes of a pair in separate decoder passes, each a full log-softmax [B, V];
- every pair a separate DisARM surrogate and backward pass with retain_graph=True (one per
  batch in the one-pair phase, ten in the ten-pair phase), gradients averaged by scaling;
- an extra decoder pass on a fresh code, with the analytic entropy, for the logged NELBO;
- the test NELBO of each epoch from the same estimate, test batches of 256.
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing as mp
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from vae_approx.common import Progress, set_threads
from vae_approx.semhash.data import prepare, synthetic_corpus
from vae_approx.semhash.train import TrainSettings, build_models, train

PROTOCOL_EPOCHS = (1000, 500)  # one-pair, ten-pair


def corpus_at_paper_shape(seed: int):
    raw = synthetic_corpus(11269, 7505, 61188, 20, 40, 150.0, seed)
    return prepare(raw.train_counts, raw.test_counts, 10000, train_labels=raw.train_labels,
                   test_labels=raw.test_labels)


def reference_epochs(corpus, settings: TrainSettings, kl_gradient: str = "estimator"):
    """The reference formulation of TrainSettings' schedule, one history row per epoch as it
    ends; same initialisation as ours. kl_gradient="analytic" is a diagnostic: the KL's exact
    gradient added and only the reconstruction through the estimator, as our trainer does."""
    torch.manual_seed(settings.seed)
    enc, dec = build_models(settings, corpus.n_words)  # same layers and initial weights as ours
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=settings.lr)
    s = torch.as_tensor(corpus.smoothing, dtype=torch.float32)
    gen = torch.Generator().manual_seed(settings.seed)
    train_loader = DataLoader(TensorDataset(torch.as_tensor(corpus.train.toarray(), dtype=torch.float32) + s),
                              batch_size=settings.batch_size, shuffle=True, generator=gen)   # dense [N, V]
    test_loader = DataLoader(TensorDataset(torch.as_tensor(corpus.test.toarray(), dtype=torch.float32) + s),
                             batch_size=settings.batch_size)

    def reconstruction(x, z):  # -log p(x|z) relative to the document's own distribution, [B]
        log_probs = F.log_softmax(dec.net(2 * z - 1), dim=-1)                # a decoder pass
        return (x * torch.log(x / x.sum(1, keepdim=True))).sum(1) - (x * log_probs).sum(1)

    def log_q_over_prior(z, a):  # log q(z|x) - log p(z) of a code, [B]
        return (z * F.logsigmoid(a) + (1 - z) * F.logsigmoid(-a)).sum(1) + a.shape[1] * math.log(2)

    def analytic_kl(a):
        p = torch.sigmoid(a)
        return (p * F.logsigmoid(a) + (1 - p) * F.logsigmoid(-a)).sum(1) + a.shape[1] * math.log(2)

    def single_sample_nelbo(x, z, a):
        if kl_gradient == "analytic":
            return reconstruction(x, z) + analytic_kl(a)
        return reconstruction(x, z) + log_q_over_prior(z, a.detach())

    def analytic_nelbo(x, a):  # the logged estimate: a fresh code, analytic KL
        z = (torch.rand(a.shape, generator=gen) < torch.sigmoid(a)).float()
        return reconstruction(x, z) + analytic_kl(a)

    def disarm_surrogate(x, a):
        u = torch.rand(a.shape, generator=gen)
        left, right = (u > torch.sigmoid(-a)).float(), (u < torch.sigmoid(a)).float()
        f_left, f_right = single_sample_nelbo(x, left, a), single_sample_nelbo(x, right, a)  # two passes
        weight = (1 - 2 * right) * (left != right).float() * torch.sigmoid(a.abs())
        estimator = 0.5 * (f_left - f_right).detach() * (weight * a).sum(1)
        return 0.5 * (f_left + f_right) + (estimator - estimator.detach())

    for epoch in range(1, settings.epochs + 1):
        pairs, tic = settings.pairs(epoch), time.perf_counter()
        total, n = 0.0, 0
        for (x,) in train_loader:
            a = enc(x)
            for _ in range(pairs):                                            # one backward per pair
                (disarm_surrogate(x, a).mean() / pairs).backward(retain_graph=True)
            with torch.no_grad():                                             # extra pass for the log
                total += analytic_nelbo(x, a).sum().item()
            n += len(x)
            opt.step()
            opt.zero_grad(set_to_none=True)
        with torch.inference_mode():
            test = torch.cat([analytic_nelbo(x, enc(x)) for (x,) in test_loader])
        yield {"epoch": epoch, "pairs": pairs, "train_nelbo": total / n, "test_nelbo": test.mean().item(),
               "seconds": time.perf_counter() - tic}


class _EpochHandoff:
    """A Progress stand-in for our trainer that hands each finished epoch to the parent and
    waits for its turn before the next one starts (the epoch's time is measured before)."""

    def __init__(self, conn):
        self.conn = conn

    def log(self, epoch, force=False, **values):
        self.conn.send({"epoch": epoch, "pairs": values["pairs"], "test_nelbo": values["test_nelbo"],
                        "seconds": values["epoch_seconds"]})
        self.conn.recv()

    def message(self, text):
        pass


def _worker(name: str, conn, settings: TrainSettings, threads: int) -> None:
    """One side of the benchmark in its own process: waits for a turn, runs one epoch, reports it."""
    corpus = corpus_at_paper_shape(0)
    conn.recv()
    if name == "reference":
        torch.set_num_threads(threads)  # torch's defaults otherwise
        for row in reference_epochs(corpus, settings):
            conn.send(row)
            conn.recv()
    else:
        set_threads(threads)            # what our stages do: threads, allocator thresholds, denormals
        train(corpus, settings, torch.device("cpu"), None, _EpochHandoff(conn))
        conn.send(None)
    conn.close()


def interleaved(settings: TrainSettings, threads: int) -> dict[str, list[dict]]:
    """Both sides in two processes that take turns epoch by epoch (which goes first alternates),
    so that slow and fast phases of a shared machine fall on both alike."""
    ctx = mp.get_context("spawn")
    sides = {}
    for name in ("reference", "ours"):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(name, child, settings, threads), daemon=True)
        proc.start()
        sides[name] = (proc, parent)
    results = {name: [] for name in sides}
    for epoch in range(1, settings.epochs + 1):
        for name in (("reference", "ours") if epoch % 2 else ("ours", "reference")):
            _, conn = sides[name]
            conn.send("go")
            row = conn.recv()
            results[name].append(row)
            print(f"  {name:9s} epoch {epoch} ({row['pairs']} pairs): {row['seconds']:.2f} s, "
                  f"test NELBO {row['test_nelbo']:.2f}", flush=True)
    for proc, conn in sides.values():
        conn.send("go")
        proc.join(timeout=60)
    return results


def ours_train(corpus, settings: TrainSettings, device: str = "cpu") -> list[dict]:
    history, _, _ = train(corpus, settings, torch.device(device), None,
                          Progress("ours", settings.epochs, 1, stream=io.StringIO()))
    for row in history:
        print(f"  ours epoch {row['epoch']} ({row['pairs']} pairs): {row['seconds']:.2f} s, "
              f"test NELBO {row['test_nelbo']:.2f}", flush=True)
    return history


def phase_seconds(history: list[dict], pairs_one: bool) -> float:
    """Median epoch time of a phase, leaving out the first epoch (warm-up)."""
    rows = [r["seconds"] for r in history[1:] if (r["pairs"] == 1) == pairs_one] or \
           [r["seconds"] for r in history if (r["pairs"] == 1) == pairs_one]
    return float(np.median(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, nargs=2, default=(3, 2), metavar=("ONE_PAIR", "TEN_PAIRS"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--noise-seeds", type=int, nargs="*", default=[2, 3],
                        help="also train ours with these seeds, to show the NELBO's seed noise")
    parser.add_argument("--reference-noise-seeds", type=int, nargs="*", default=[2, 3],
                        help="also train the reference formulation with these seeds")
    parser.add_argument("--ours-only", default="", metavar="DEVICE",
                        help="time only our trainer on DEVICE (e.g. cuda), for every encoder and depth at 64 bits")
    args = parser.parse_args()
    # The two sides run in two processes (interleaved): the reference with torch's defaults but
    # for the thread count, ours with its own settings (vae_approx.common.set_threads: threads,
    # allocator thresholds, denormals), which would be process-wide.
    torch.set_num_threads(args.threads)
    tic = time.perf_counter()
    corpus = corpus_at_paper_shape(0)
    print(f"corpus: {corpus.train.shape[0]} train, {corpus.test.shape[0]} test documents, {corpus.n_words} words, "
          f"{corpus.train.nnz / corpus.train.shape[0]:.0f} distinct words per document "
          f"({time.perf_counter() - tic:.1f} s); {args.threads} threads", flush=True)
    settings = TrainSettings("e1", 0, 64, 512, "disarm", args.epochs[0], args.epochs[1], 10, 256, 1e-3,
                             args.seed, 1024, False, 10**9)
    if args.ours_only:
        set_threads(args.threads)
        print("| encoder | depth | one pair (s/epoch) | ten pairs (s/epoch) | 1,000 + 500 epochs |")
        print("|---|---|---|---|---|")
        for encoder in ("e1", "e2", "e3"):
            for depth in (0, 1, 2):
                history = ours_train(corpus, replace(settings, encoder=encoder, depth=depth), args.ours_only)
                one, ten = phase_seconds(history, True), phase_seconds(history, False)
                total = PROTOCOL_EPOCHS[0] * one + PROTOCOL_EPOCHS[1] * ten
                print(f"| {encoder} | {depth} | {one:.3f} | {ten:.3f} | {total / 60:.1f} min |", flush=True)
        return
    results = interleaved(settings, args.threads)
    set_threads(args.threads)  # for the seed-noise runs below, in this process
    print()
    print("| phase | ours (s/epoch) | reference (s/epoch) | speed-up |")
    print("|---|---|---|---|")
    totals = {}
    for label, one in (("one pair", True), ("ten pairs", False)):
        o, r = phase_seconds(results["ours"], one), phase_seconds(results["reference"], one)
        epochs = PROTOCOL_EPOCHS[0] if one else PROTOCOL_EPOCHS[1]
        totals[label] = (o * epochs, r * epochs)
        print(f"| {label} | {o:.2f} | {r:.2f} | {r / o:.2f}x |")
    o_all = sum(t[0] for t in totals.values())
    r_all = sum(t[1] for t in totals.values())
    print(f"| whole schedule (1,000 + 500 epochs, extrapolated) | {o_all / 3600:.2f} h | {r_all / 3600:.2f} h "
          f"| {r_all / o_all:.2f}x |")
    print()
    for name, history in results.items():
        print(f"{name:9s} test NELBO per epoch: " + ", ".join(f"{r['test_nelbo']:.2f}" for r in history))
    last = {"ours": {args.seed: results["ours"][-1]["test_nelbo"]},
            "reference": {args.seed: results["reference"][-1]["test_nelbo"]}}
    # seed noise: each side again with other seeds (initial weights, batch order, codes)
    for seed in args.noise_seeds:
        history = ours_train(corpus, replace(settings, seed=seed))
        last["ours"][seed] = history[-1]["test_nelbo"]
        print(f"ours      seed {seed} test NELBO per epoch: " + ", ".join(f"{r['test_nelbo']:.2f}" for r in history))
    for seed in args.reference_noise_seeds:
        history = list(reference_epochs(corpus, replace(settings, seed=seed)))
        last["reference"][seed] = history[-1]["test_nelbo"]
        print(f"reference seed {seed} test NELBO per epoch: " + ", ".join(f"{r['test_nelbo']:.2f}" for r in history))
    print()
    print(seed_noise_summary(last))


def seed_noise_summary(last: dict[str, dict[int, float]]) -> str:
    """The last epoch's test NELBO of each side over its seeds, and whether the two sides differ
    by more than their seed noise: the difference of the means against twice its standard error
    (Welch's, from the two sides' sample variances), and whether the two ranges overlap."""
    lines = ["| side | seeds | last test NELBO per seed | mean | std over seeds |", "|---|---|---|---|---|"]
    stats = {}
    for name, per_seed in last.items():
        values = np.array([per_seed[s] for s in sorted(per_seed)])
        std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        stats[name] = (values, float(values.mean()), std)
        lines.append(f"| {name} | {', '.join(map(str, sorted(per_seed)))} | "
                     f"{', '.join(f'{v:.2f}' for v in values)} | {values.mean():.2f} | {std:.2f} |")
    (r, r_mean, r_std), (o, o_mean, o_std) = stats["reference"], stats["ours"]
    diff = r_mean - o_mean
    se = math.sqrt(r_std**2 / len(r) + o_std**2 / len(o))
    overlap = max(r.min(), o.min()) <= min(r.max(), o.max())
    verdict = ("within seed noise" if math.isfinite(se) and abs(diff) <= 2 * se
               else "not shown (one seed on a side)" if not math.isfinite(se) else "beyond seed noise")
    lines.append("")
    lines.append(f"reference - ours, mean over seeds: {diff:+.2f} nats (standard error {se:.2f}); "
                 f"ranges {'overlap' if overlap else 'do not overlap'}; {verdict}")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
