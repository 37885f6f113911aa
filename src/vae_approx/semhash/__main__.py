"""Stages of the semantic-hashing experiment, each a file-to-file step called by a rule.

    python -m vae_approx.semhash synthesize --settings JSON --out corpus.tgz       offline corpus, real format
    python -m vae_approx.semhash fetch      --settings JSON --out resources/...tgz
    python -m vae_approx.semhash prepare    --settings JSON --archive corpus.tgz --out corpus.npz
    python -m vae_approx.semhash train      --settings JSON --run JSON --corpus corpus.npz ...
    python -m vae_approx.semhash retrieval  --settings JSON --run JSON --corpus corpus.npz --model model.pt ...
    python -m vae_approx.semhash tabulate   --settings JSON --histories H.csv ... --retrievals R.csv ... ...
    python -m vae_approx.semhash plot       --histories H.csv ... --out curves.png

--settings: the keys of the config's semhash section the stage reads (settings.STAGE_KEYS), as JSON;
--run: a training job's identity (settings.RUN: seed, encoder, depth, bits), its wildcards, which
become the first columns of every CSV the job writes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import asdict
from pathlib import Path

import torch

from ..common import (InputError, Progress, atomic_path, load_torch, resume_path, run_stage, save_csv, save_torch,
                      select_device, set_threads, sha256, with_run)
from ..config import run_identity, stage_section
from ..tables import load_published, read_records, write_claims, write_table
from .settings import CLAIMS_CELLS, RUN, STAGE_KEYS, TrainSettings


def settings_of(args, stage: str) -> dict:
    """The stage's keys of the semhash section, from --settings."""
    return stage_section(args.settings, STAGE_KEYS[stage], f"semhash {stage}")


def run_of(args, stage: str) -> dict:
    """The job's identity {seed, encoder, depth, bits}, from --run."""
    return run_identity(args.run, RUN, f"semhash {stage}")


def check_sha256(path, pinned: str, what: str) -> None:
    """No-op without a pinned digest; otherwise the file must match it."""
    if pinned:
        actual = sha256(path)
        if actual != pinned.lower():
            raise InputError(f"{what}: SHA-256 {actual} does not match the pinned {pinned}")


def cmd_synthesize(args) -> None:
    from .data import synthetic_corpus, write_archive, write_raw_corpus

    s = settings_of(args, "synthesize")["synthetic"]
    corpus = synthetic_corpus(s["n_train"], s["n_test"], s["raw_vocab_size"], s["n_classes"], s["n_topics"],
                              float(s["mean_length"]), s["seed"], length_spread=float(s["length_spread"]),
                              topic_concentration=float(s["topic_concentration"]))
    with tempfile.TemporaryDirectory() as tmp:
        write_raw_corpus(tmp, *corpus)
        write_archive(tmp, args.out)  # atomic
    print(f"[semhash synthesize] {s['n_train']} + {s['n_test']} documents -> {args.out}", file=sys.stderr)


def cmd_fetch(args) -> None:
    from .data import read_archive

    s = settings_of(args, "fetch")
    url, out = s["url"], Path(args.out)
    manual = (f"Download {url} by hand (any way you can reach it) and place it at {out}; "
              "the workflow then uses it as is.")
    try:
        with atomic_path(out) as tmp:
            print(f"[semhash fetch] {url} -> {out}", file=sys.stderr, flush=True)
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                shutil.copyfileobj(response, f)
            check_sha256(tmp, s["sha256"], url)
            read_archive(tmp)  # members present and parseable, before the file takes its name
    except InputError as exc:
        raise InputError(f"{exc}. {manual}") from exc
    except OSError as exc:
        raise InputError(f"cannot download {url} ({exc}). {manual}") from exc


def cmd_prepare(args) -> None:
    from .data import prepare, read_archive, save_prepared

    s = settings_of(args, "prepare")
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


def cmd_train(args) -> None:
    from .data import load_prepared
    from .train import train

    section, run = settings_of(args, "train"), run_of(args, "train")
    cuda_graphs = section.pop("cuda_graphs")
    settings = TrainSettings(**run, **section)
    set_threads(args.threads)
    device = select_device(args.device)
    corpus = load_prepared(args.corpus)
    name = f"semhash {settings.encoder} depth {settings.depth} {settings.bits} bits seed {settings.seed}"
    progress = Progress(name, settings.epochs, 1)
    progress.message(f"{corpus.train.shape[0]} documents, {corpus.n_words} words, {settings.epochs} epochs, "
                     f"{settings.estimator} (KL gradient: {settings.kl_gradient}), decoder reads "
                     f"{settings.code_values}, on {device}, {torch.get_num_threads()} threads")
    step_mode = "cuda_graphs" if cuda_graphs and device.type == "cuda" else "eager"
    if cuda_graphs and step_mode == "eager":
        progress.message(f"semhash.cuda_graphs: CUDA only; the steps run eagerly on {device}")
    resume = resume_path(args.out)
    history, encoder, decoder = train(corpus, settings, device, resume, progress, step_mode)
    save_csv(with_run(run, history), args.history)
    save_torch({"settings": asdict(settings), "n_words": corpus.n_words,
                "encoder": encoder.cpu().state_dict(), "decoder": decoder.cpu().state_dict()}, args.out)
    resume.unlink(missing_ok=True)


def cmd_retrieval(args) -> None:
    from .data import SparseCounts, load_prepared
    from .evaluate import binary_codes, precision_at_k
    from .train import build_models

    k, run = settings_of(args, "retrieval")["precision_k"], run_of(args, "retrieval")
    set_threads(args.threads)
    corpus = load_prepared(args.corpus)
    if corpus.train_labels is None or corpus.test_labels is None:
        raise InputError(f"{args.corpus}: has no labels; retrieval needs them")
    if k > corpus.train.shape[0]:
        raise InputError(f"config key 'semhash.precision_k': {k} is more than the {corpus.train.shape[0]} "
                         f"training documents searched in {args.corpus}; use at most that")
    model = load_torch(args.model, "semantic-hashing model")
    settings = TrainSettings(**model["settings"])
    trained = {key: getattr(settings, key) for key in RUN}
    if trained != run:
        raise InputError(f"{args.model}: the model of {trained}, not of the run {run}")
    encoder, _ = build_models(settings, model["n_words"])
    encoder.load_state_dict(model["encoder"])
    smoothing = torch.as_tensor(corpus.smoothing, dtype=torch.float32)
    database = binary_codes(encoder, SparseCounts(corpus.train), smoothing, settings.eval_batch_size)
    queries = binary_codes(encoder, SparseCounts(corpus.test), smoothing, settings.eval_batch_size)
    precision = precision_at_k(queries, corpus.test_labels, database, corpus.train_labels, k)
    save_csv(with_run(run, [{f"precision_at_{k}": precision}]), args.out)


def cmd_tabulate(args) -> None:
    from .results import HISTORY_COLUMNS, encoder_claims, grid_results, grid_tables, retrieval_columns

    k = settings_of(args, "tabulate")["precision_k"]
    histories = read_records(args.histories, "training history", HISTORY_COLUMNS)
    retrievals = read_records(args.retrievals, "retrieval", retrieval_columns(k))
    results = grid_results(histories, retrievals, k)
    out = Path(args.out_dir)
    save_csv(results, out / "results.csv")
    for table in grid_tables(results, k, load_published(args.published)):
        write_table(table.table, out / f"{table.name}.csv", out / f"{table.name}.md", title=table.title,
                    note=table.note)
    cells_file = Path(args.claims).with_name(CLAIMS_CELLS)
    claims, cells = encoder_claims(results, cells_file.name)
    write_claims(cells, cells_file)
    write_claims(claims, args.claims)


def cmd_plot(args) -> None:
    from .plots import plot_curves

    columns = [*RUN, "epoch", "test_nelbo"]
    plot_curves(read_records(args.histories, "training history", columns), args.out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vae_approx.semhash", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, func, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text)
        if name in STAGE_KEYS:
            p.add_argument("--settings", required=True, help="JSON object of the semhash section's keys "
                                                             + ", ".join(STAGE_KEYS[name]))
        p.set_defaults(func=func)
        return p

    p = stage("synthesize", cmd_synthesize, "a seeded topic-model corpus in the 20news-bydate-matlab format")
    p.add_argument("--out", required=True)

    p = stage("fetch", cmd_fetch, "download the real archive (verified before it takes its name)")
    p.add_argument("--out", required=True)

    p = stage("prepare", cmd_prepare, "parse, choose the vocabulary, smooth; one compact file")
    p.add_argument("--archive", required=True)
    p.add_argument("--out", required=True)

    for name, func, text in (("train", cmd_train, "train one grid point"),
                             ("retrieval", cmd_retrieval, "precision@k of Hamming ranking")):
        p = stage(name, func, text)
        p.add_argument("--run", required=True, help="JSON object of the job's identity: " + ", ".join(RUN))
        p.add_argument("--corpus", required=True)
        p.add_argument("--threads", type=int, required=True)
        p.add_argument("--out", required=True)
    sub.choices["train"].add_argument("--device", required=True, help="auto, cpu, cuda, ...")
    sub.choices["train"].add_argument("--history", required=True)
    sub.choices["retrieval"].add_argument("--model", required=True)

    p = stage("tabulate", cmd_tabulate, "grid tables over seeds and the claims")
    p.add_argument("--histories", nargs="+", required=True, help="history.csv of every grid point")
    p.add_argument("--retrievals", nargs="+", required=True, help="retrieval.csv of every grid point")
    p.add_argument("--published", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--claims", required=True, help="the claims file; its per-cell rows go beside it, " + CLAIMS_CELLS)

    p = stage("plot", cmd_plot, "test NELBO per epoch, one panel per (depth, bits), one thin line per seed and the mean")
    p.add_argument("--histories", nargs="+", required=True)
    p.add_argument("--out", required=True)

    run_stage(parser, argv)


if __name__ == "__main__":
    main()
