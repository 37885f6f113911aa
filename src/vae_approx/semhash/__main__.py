"""Stages of the semantic-hashing experiment, each a file-to-file step called by a rule.

    python -m vae_approx.semhash synthesize --settings JSON --out corpus.tgz       offline corpus, real format
    python -m vae_approx.semhash fetch      --settings JSON --out resources/...tgz
    python -m vae_approx.semhash prepare    --settings JSON --archive corpus.tgz --out corpus.npz
    python -m vae_approx.semhash train      --settings JSON --run JSON --corpus corpus.npz ...
    python -m vae_approx.semhash retrieval  --settings JSON --run JSON --corpus corpus.npz --model model.pt ...
    python -m vae_approx.semhash tabulate   --settings JSON --histories H.csv ... --retrievals R.csv ... ...
    python -m vae_approx.semhash plot       --histories H.csv ... --out curves.png
    python -m vae_approx.semhash train_ml   --settings JSON --run JSON --corpus corpus.npz ...     the likelihood control
    python -m vae_approx.semhash exact      --settings JSON --run JSON --encoder|--no-encoder --model M.pt ...
    python -m vae_approx.semhash gaps       --settings JSON --exact E.csv ... --published P.csv --out-dir D ...
    python -m vae_approx.semhash plot_gaps  --table gaps.csv --out gaps.png

--settings: the keys of the config's semhash section the stage reads (settings.STAGE_KEYS), as JSON;
--run: a training job's identity (settings.RUN: seed, encoder, depth, bits), its wildcards, which
become the first columns of every CSV the job writes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from ..common import (InputError, Progress, StageTable, check_sha256, resume_path, save_csv, save_torch,
                      with_run)
from ..config import run_identity
from ..provenance import log_environment
from ..tables import load_published, read_records, read_tidy, write_claims, write_table
from .settings import (CLAIMS_CELLS, EXACT_SETS, GAPS_CELLS, ML_RUN, RUN, STAGE_KEYS, ExactSettings,
                       LikelihoodTrainSettings, TrainSettings, ml_identity, reported_samples)


# The command line, stage by stage (@stage beside each function): common.StageTable. The exact stage's
# identity is a VAE's (RUN) or the likelihood control's (ML_RUN), by --encoder: it reads --run itself.
TABLE = StageTable("semhash", STAGE_KEYS, {"train": RUN, "retrieval": RUN, "train_ml": ML_RUN})
STAGES, stage = TABLE.stages, TABLE.stage


@stage("synthesize", "a seeded topic-model corpus in the 20news-bydate-matlab format", "out", takes="settings")
def cmd_synthesize(args) -> None:
    from .data import synthetic_corpus, write_archive, write_raw_corpus

    s = args.section["synthetic"]
    corpus = synthetic_corpus(s["n_train"], s["n_test"], s["raw_vocab_size"], s["n_classes"], s["n_topics"],
                              float(s["mean_length"]), s["seed"], length_spread=float(s["length_spread"]),
                              topic_concentration=float(s["topic_concentration"]))
    with tempfile.TemporaryDirectory() as tmp:
        write_raw_corpus(tmp, *corpus)
        write_archive(tmp, args.out)  # atomic
    print(f"[semhash synthesize] {s['n_train']} + {s['n_test']} documents -> {args.out}", file=sys.stderr)


@stage("fetch", "download the real archive (verified before it takes its name)", "out", takes="settings")
def cmd_fetch(args) -> None:
    from .data import fetch_archive

    fetch_archive(args.section["url"], args.section["sha256"], args.out)


@stage("prepare", "parse, choose the vocabulary, smooth; one compact file", "archive out", takes="settings")
def cmd_prepare(args) -> None:
    from .data import prepare, read_archive, save_prepared

    s = args.section
    if s["source"] == "download":  # a pinned digest is the real archive's
        check_sha256(args.archive, s["sha256"], f"{args.archive} (remove it and fetch it again)")
    raw = read_archive(args.archive)
    for split, counts in (("train", raw.train_counts), ("test", raw.test_counts)):
        expected = s["expected_documents"][split]
        if expected and counts.shape[0] != expected:
            raise InputError(f"{args.archive}: {counts.shape[0]} {split} documents, expected {expected}")
    corpus = prepare(raw.train_counts, raw.test_counts, s["vocab_size"], ties=s["vocabulary_ties"],
                     train_labels=raw.train_labels, test_labels=raw.test_labels)
    save_prepared(corpus, args.out)
    print(f"[semhash prepare] {corpus.train.shape[0]} train, {corpus.test.shape[0]} test documents, "
          f"{corpus.n_words} words -> {args.out}", file=sys.stderr)


@stage("train", "train one grid point", "corpus out history", takes="settings run device")
def cmd_train(args) -> None:
    from .data import load_prepared
    from .train import train

    section, run, device = args.section, args.identity, args.on
    cuda_graphs = section.pop("cuda_graphs")
    settings = TrainSettings(**run, **section)
    corpus = load_prepared(args.corpus)
    name = f"semhash {settings.encoder} depth {settings.depth} {settings.bits} bits seed {settings.seed}"
    progress = Progress(name, settings.epochs, 1)
    progress.message(f"{corpus.train.shape[0]} documents, {corpus.n_words} words, {settings.epochs} epochs, "
                     f"{settings.estimator} (KL gradient: {settings.kl_gradient}), decoder reads "
                     f"{settings.code_values}, on {device}, {torch.get_num_threads()} threads")
    step_mode = "cuda_graphs" if cuda_graphs and device.type == "cuda" else "eager"
    if cuda_graphs and step_mode == "eager":
        progress.message(f"semhash.cuda_graphs: CUDA only; the steps run eagerly on {device}")
    environment = log_environment(name, device)
    resume = resume_path(args.out)
    history, encoder, decoder = train(corpus, settings, device, resume, progress, step_mode)
    save_csv(with_run(run, history), args.history)
    save_torch({"settings": asdict(settings), "n_words": corpus.n_words,
                "encoder": encoder.cpu().state_dict(), "decoder": decoder.cpu().state_dict(),
                "environment": environment}, args.out)
    resume.unlink(missing_ok=True)


@stage("retrieval", "precision@k of Hamming ranking", "corpus model threads:int out", takes="settings run")
def cmd_retrieval(args) -> None:
    from .data import SparseCounts, load_prepared
    from .evaluate import binary_codes, precision_at_k
    from .train import load_model

    k, run = args.section["precision_k"], args.identity
    corpus = load_prepared(args.corpus)
    if corpus.train_labels is None or corpus.test_labels is None:
        raise InputError(f"{args.corpus}: has no labels; retrieval needs them")
    if k > corpus.train.shape[0]:
        raise InputError(f"config key 'semhash.precision_k': {k} is more than the {corpus.train.shape[0]} "
                         f"training documents searched in {args.corpus}; use at most that")
    encoder, _, _, trained = load_model(args.model, corpus.n_words, run)
    smoothing = torch.as_tensor(corpus.smoothing, dtype=torch.float32)
    database = binary_codes(encoder, SparseCounts(corpus.train), smoothing, trained["eval_batch_size"])
    queries = binary_codes(encoder, SparseCounts(corpus.test), smoothing, trained["eval_batch_size"])
    precision = precision_at_k(queries, corpus.test_labels, database, corpus.train_labels, k)
    save_csv(with_run(run, [{f"precision_at_{k}": precision}]), args.out)


@stage("train_ml", "the maximum-likelihood control: the decoder alone, by the exact log-likelihood",
       "corpus out history", takes="settings run device")
def cmd_train_ml(args) -> None:
    from .data import load_prepared
    from .train import train_likelihood

    settings, device = LikelihoodTrainSettings(**args.identity, **args.section), args.on
    corpus = load_prepared(args.corpus)
    progress = Progress(f"semhash likelihood control depth {settings.depth} {settings.bits} bits seed "
                        f"{settings.seed}", settings.epochs, 1)
    progress.message(f"{corpus.train.shape[0]} documents, {corpus.n_words} words, {settings.epochs} epochs, "
                     f"exact log-likelihood over {2 ** settings.bits} codes, on {device}")
    environment = log_environment("semhash likelihood control", device)
    resume = resume_path(args.out)
    history, decoder = train_likelihood(corpus, settings, device, resume, progress)
    save_csv(with_run(ml_identity(asdict(settings)), history), args.history)
    save_torch({"settings": asdict(settings), "n_words": corpus.n_words, "decoder": decoder.cpu().state_dict(),
                "environment": environment}, args.out)
    resume.unlink(missing_ok=True)


@stage("exact", "log p(x), the exact ELBO and the best factorized posterior's, by enumerating every code; IWAE "
       "bounds", "run corpus model out", takes="settings device",
       optional=("--encoder", {"action": argparse.BooleanOptionalAction, "required": True,
                               "help": "--encoder: a VAE's model.pt; --no-encoder: the control's decoder.pt"}))
def cmd_exact(args) -> None:
    from .data import SparseCounts, load_prepared
    from .evaluate import exact_rows, train_subset
    from .train import load_model

    section, device = args.section, args.on
    exact = ExactSettings.from_section(section["exact"])
    corpus = load_prepared(args.corpus)
    identity = run_identity(args.run, RUN if args.encoder else ML_RUN, "semhash exact")
    encoder, decoder, run, _ = load_model(args.model, corpus.n_words, identity)
    encoder, decoder = (m.to(device) if m is not None else None for m in (encoder, decoder))
    smoothing = torch.as_tensor(corpus.smoothing, dtype=torch.float32, device=device)
    subsets = {"test": corpus.test, "train": corpus.train[train_subset(corpus.train.shape[0], exact.train_documents)]}

    def log(name, row):
        print(f"[semhash exact] {args.model} {name}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)), file=sys.stderr, flush=True)

    rows = exact_rows(encoder, decoder, {name: SparseCounts(subsets[name], device) for name in EXACT_SETS}, smoothing,
                      exact, section["eval_batch_size"], torch.Generator(device=device).manual_seed(run["seed"]), log)
    save_csv(with_run(run, rows), args.out)


def save_tables(args, tables, claims_of, cells_name: str) -> None:
    """Each results.Table as <name>.csv and .md under --out-dir; the claims `claims_of(cells file name)`
    gives to --claims, their per-cell rows beside it as `cells_name`."""
    out = Path(args.out_dir)
    for table in tables:
        write_table(table.table, out / f"{table.name}.csv", out / f"{table.name}.md", title=table.title,
                    note=table.note, shown=table.shown)
    cells_file = Path(args.claims).with_name(cells_name)
    claims, cells = claims_of(cells_file.name)
    write_claims(cells, cells_file)
    write_claims(claims, args.claims)


@stage("tabulate", "grid tables over seeds and the claims", "histories:+ retrievals:+ published out-dir claims",
       takes="settings")
def cmd_tabulate(args) -> None:
    from .results import HISTORY_COLUMNS, encoder_claims, grid_results, grid_tables, retrieval_columns

    k = args.section["precision_k"]
    histories = read_records(args.histories, "training history", HISTORY_COLUMNS)
    retrievals = read_records(args.retrievals, "retrieval", retrieval_columns(k))
    results = grid_results(histories, retrievals, k)
    save_csv(results, Path(args.out_dir) / "results.csv")
    save_tables(args, grid_tables(results, k, load_published(args.published)),
                lambda cells: encoder_claims(results, cells), CLAIMS_CELLS)


@stage("gaps", "the approximation error's tables and claims over seeds", "exact:+ published out-dir claims",
       takes="settings")
def cmd_gaps(args) -> None:
    from .results import exact_columns, exact_records, gap_claims, gap_tables

    s = args.section["exact"]
    curve = reported_samples(s["iwae_curve"], s["iwae_samples"])
    exact = exact_records(read_records(args.exact, "exact evaluation", exact_columns(curve)))
    save_tables(args, gap_tables(exact, s["max_bits"], s["iwae_samples"], curve, load_published(args.published)),
                lambda cells: gap_claims(exact, cells), GAPS_CELLS)


@stage("plot_gaps", "gaps.png: per cell, -log p(x) and the two gaps stacked per encoder", "table out")
def cmd_plot_gaps(args) -> None:
    from .plots import plot_gaps
    from .results import GAPS_COLUMNS

    plot_gaps(read_tidy(args.table, "gaps table", GAPS_COLUMNS), args.out)


@stage("plot", "test NELBO per epoch, one panel per (depth, bits), one thin line per seed and the mean",
       "histories:+ out")
def cmd_plot(args) -> None:
    from .plots import plot_curves

    columns = [*RUN, "epoch", "test_nelbo"]
    plot_curves(read_records(args.histories, "training history", columns), args.out)


def main(argv: list[str] | None = None) -> None:
    TABLE.main("python -m vae_approx.semhash", __doc__, argv)


if __name__ == "__main__":
    main()
