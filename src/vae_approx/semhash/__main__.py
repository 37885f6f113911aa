"""Stages of the semantic-hashing experiment, each a file-to-file step called by a rule.

    python -m vae_approx.semhash synthesize --out corpus.tgz ...     offline corpus, real format
    python -m vae_approx.semhash fetch      --url URL --out resources/...tgz [--sha256 HEX]
    python -m vae_approx.semhash prepare    --archive corpus.tgz --out corpus.npz ...
    python -m vae_approx.semhash train      --corpus corpus.npz --encoder e1 --depth 0 --bits 8 ...
    python -m vae_approx.semhash retrieval  --corpus corpus.npz --model model.pt --out retrieval.csv
    python -m vae_approx.semhash tabulate   --histories H.csv ... --retrievals R.csv ... --published ref.csv ...
    python -m vae_approx.semhash plot       --histories H.csv ... --out curves.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from ..common import (InputError, Progress, atomic_path, load_torch, resume_path, run_stage, sha256,
                      save_csv, save_torch, select_device, set_threads)
from ..tables import cells_claim, load_published, mean_std, published_columns, write_claims, write_table
from .data import VOCABULARY_TIES, load_prepared, prepare, read_archive, save_prepared, synthetic_corpus, write_archive, write_raw_corpus
from .model import ENCODER_SPECS, SparseCounts
from .train import TrainSettings, binary_codes, build_models, precision_at_k, train

EXPERIMENT = "semhash"


def check_sha256(path, pinned: str, what: str) -> None:
    """No-op without a pinned digest; otherwise the file must match it."""
    if pinned:
        actual = sha256(path)
        if actual != pinned.lower():
            raise InputError(f"{what}: SHA-256 {actual} does not match the pinned {pinned}")


def cmd_synthesize(args) -> None:
    corpus = synthetic_corpus(args.n_train, args.n_test, args.raw_vocab_size, args.n_classes, args.n_topics,
                              args.mean_length, args.seed, length_spread=args.length_spread,
                              topic_concentration=args.topic_concentration)
    with tempfile.TemporaryDirectory() as tmp:
        write_raw_corpus(tmp, *corpus)
        write_archive(tmp, args.out)  # atomic
    print(f"[semhash synthesize] {args.n_train} + {args.n_test} documents -> {args.out}", file=sys.stderr)


def cmd_fetch(args) -> None:
    out = Path(args.out)
    manual = (f"Download {args.url} by hand (any way you can reach it) and place it at {out}; "
              "the workflow then uses it as is.")
    try:
        with atomic_path(out) as tmp:
            print(f"[semhash fetch] {args.url} -> {out}", file=sys.stderr, flush=True)
            with urllib.request.urlopen(args.url, timeout=60) as response, open(tmp, "wb") as f:
                shutil.copyfileobj(response, f)
            check_sha256(tmp, args.sha256, args.url)
            read_archive(tmp)  # members present and parseable, before the file takes its name
    except InputError as exc:
        raise InputError(f"{exc}. {manual}") from exc
    except OSError as exc:
        raise InputError(f"cannot download {args.url} ({exc}). {manual}") from exc


def cmd_prepare(args) -> None:
    check_sha256(args.archive, args.sha256, f"{args.archive} (remove it and fetch it again)")
    raw = read_archive(args.archive)
    for split, counts, expected in (("train", raw.train_counts, args.expect_train), ("test", raw.test_counts, args.expect_test)):
        if expected and counts.shape[0] != expected:
            raise InputError(f"{args.archive}: {counts.shape[0]} {split} documents, expected {expected}")
    corpus = prepare(raw.train_counts, raw.test_counts, args.vocab_size,
                     train_labels=raw.train_labels, test_labels=raw.test_labels, ties=args.vocabulary_ties)
    save_prepared(corpus, args.out)
    print(f"[semhash prepare] {corpus.train.shape[0]} train, {corpus.test.shape[0]} test documents, "
          f"{corpus.n_words} words -> {args.out}", file=sys.stderr)


def settings_from(args) -> TrainSettings:
    """TrainSettings of the grid point (--encoder, --depth, --bits) from --settings, the training
    keys of the config's semhash section as JSON (TrainSettings.config_json)."""
    try:
        section = json.loads(args.settings)
        if not isinstance(section, dict):
            raise ValueError("not a JSON object")
        return TrainSettings.from_config(section, args.encoder, args.depth, args.bits, args.seed)
    except (ValueError, TypeError) as exc:
        raise InputError(f"semhash train --settings: {exc}") from exc


def cmd_train(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    corpus = load_prepared(args.corpus)
    settings = settings_from(args)
    name = f"semhash {args.encoder} depth {args.depth} {args.bits} bits seed {args.seed}"
    progress = Progress(name, settings.epochs, 1)
    progress.message(f"{corpus.train.shape[0]} documents, {corpus.n_words} words, {settings.epochs} epochs, "
                     f"{settings.estimator} (KL gradient: {settings.kl_gradient}), decoder reads "
                     f"{settings.code_values}, on {device}, {torch.get_num_threads()} threads")
    step_mode = "cuda_graphs" if args.cuda_graphs and device.type == "cuda" else "eager"
    if args.cuda_graphs and step_mode == "eager":
        progress.message(f"semhash.cuda_graphs: CUDA only; the steps run eagerly on {device}")
    resume = resume_path(args.out)
    history, encoder, decoder = train(corpus, settings, device, resume, progress, step_mode)
    save_csv(pd.DataFrame(history), args.history)
    save_torch({"settings": asdict(settings), "n_words": corpus.n_words,
                "encoder": encoder.cpu().state_dict(), "decoder": decoder.cpu().state_dict()}, args.out)
    resume.unlink(missing_ok=True)


def cmd_retrieval(args) -> None:
    set_threads(args.threads)
    corpus = load_prepared(args.corpus)
    if corpus.train_labels is None or corpus.test_labels is None:
        raise InputError(f"{args.corpus}: has no labels; retrieval needs them")
    if args.k > corpus.train.shape[0]:
        raise InputError(f"config key 'semhash.precision_k': {args.k} is more than the {corpus.train.shape[0]} "
                         f"training documents searched in {args.corpus}; use at most that")
    model = load_torch(args.model, "semantic-hashing model")
    settings = TrainSettings(**model["settings"])
    encoder, _ = build_models(settings, model["n_words"])
    encoder.load_state_dict(model["encoder"])
    smoothing = torch.as_tensor(corpus.smoothing, dtype=torch.float32)
    database = binary_codes(encoder, SparseCounts(corpus.train), smoothing, 1024)
    queries = binary_codes(encoder, SparseCounts(corpus.test), smoothing, 1024)
    precision = precision_at_k(queries, corpus.test_labels, database, corpus.train_labels, args.k)
    save_csv(pd.DataFrame([{"encoder": settings.encoder, "depth": settings.depth, "bits": settings.bits,
                            "seed": settings.seed, f"precision_at_{args.k}": precision}]), args.out)


GRID = ["encoder", "depth", "bits"]
ENCODER_NAMES = {"e1": "counts, linear", "e2": "frequencies, one hidden layer", "e3": "frequencies, linear"}
CLAIMS_CELLS = "claims_cells.csv"  # beside the claims file: the per-cell rows of the encoder claims


def grid_table(results: pd.DataFrame, value: str) -> pd.DataFrame:
    """Rows encoder x decoder depth, columns bits, as the papers lay them out: each cell's mean over
    seeds, and its standard deviation as '<b> bits std'."""
    summary = mean_std(results, GRID, [value])
    numbers = summary.pivot_table(index=["encoder", "depth"], columns="bits", values=[value, f"{value} std"],
                                  dropna=False)
    table = numbers.index.to_frame(index=False)
    for b in sorted(summary.bits.unique()):
        table[f"{b} bits"], table[f"{b} bits std"] = numbers[(value, b)].to_numpy(), numbers[(f"{value} std", b)].to_numpy()
    return table


def read_csv(path, what: str, columns: list[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise InputError(f"{what} {path}: cannot read ({type(exc).__name__}: {exc})") from exc
    missing = set(columns) - set(df.columns)
    if missing or df.empty:
        raise InputError(f"{what} {path}: expected rows with columns {columns}, missing {sorted(missing)}")
    return df


def run_of(path) -> tuple[int, str, int, int]:
    """(seed, encoder, depth, bits) of a grid file .../seed<k>/<encoder>/depth<d>/<b>bits/<name>."""
    parts = Path(path).parts
    try:
        seed, encoder, depth, bits = parts[-5], parts[-4], parts[-3], parts[-2]
        return int(seed.removeprefix("seed")), encoder, int(depth.removeprefix("depth")), int(bits.removesuffix("bits"))
    except (IndexError, ValueError):
        raise InputError(f"{path}: not a grid file (expected .../seed<k>/<encoder>/depth<d>/<b>bits/...)") from None


def grid_results(histories, retrievals, k: int) -> pd.DataFrame:
    """One row per grid point and seed: test NELBO at the best and last epoch, train NELBO, precision@k."""
    if len(histories) != len(retrievals):
        raise InputError(f"semhash tabulate: {len(histories)} histories but {len(retrievals)} retrieval files")
    rows = []
    for history_file, retrieval_file in zip(histories, retrievals):
        history = read_csv(history_file, "training history", ["epoch", "train_nelbo", "test_nelbo"])
        retrieval = read_csv(retrieval_file, "retrieval", [*GRID, "seed", f"precision_at_{k}"]).iloc[0]
        run = (int(retrieval.seed), retrieval.encoder, int(retrieval.depth), int(retrieval.bits))
        if run_of(history_file) != run:
            raise InputError(f"semhash tabulate: {history_file} and {retrieval_file} are not of the same run")
        best = history.loc[history.test_nelbo.idxmin()]
        rows.append({"encoder": run[1], "depth": run[2], "bits": run[3], "seed": run[0],
                     "test_nelbo_best": best.test_nelbo, "best_epoch": int(best.epoch),
                     "test_nelbo_last": history.test_nelbo.iloc[-1],
                     "train_nelbo_last": history.train_nelbo.iloc[-1], "epochs": int(history.epoch.iloc[-1]),
                     "precision": retrieval[f"precision_at_{k}"]})
    return pd.DataFrame(rows).sort_values([*GRID, "seed"], ignore_index=True)


def e1_claims(results: pd.DataFrame, cells_file: str) -> tuple[list[dict], list[dict]]:
    """e1 reaches a lower best test NELBO than e2, and than e3, in every (depth, bits) cell: per cell,
    the paired change e1 minus the other encoder in the same cell and seed, over seeds."""
    best = results.pivot_table(index=["depth", "bits", "seed"], columns="encoder", values="test_nelbo_best")
    claims, cells_rows = [], []
    for other in ("e2", "e3"):
        if "e1" not in best.columns or other not in best.columns:
            continue
        pairs = best[["e1", other]].dropna()
        cells = {}
        for (depth, bits), group in pairs.groupby(level=["depth", "bits"]):
            cells[f"decoder depth {depth}, {bits} bits"] = {
                int(seed): float(row["e1"] - row[other]) for (_, _, seed), row in group.iterrows()}
        claim, rows = cells_claim(
            EXPERIMENT, f"encoders e1 vs {other}, every (depth, bits) cell",
            f"a linear encoder on word counts (e1) reaches a lower test NELBO than {other} "
            f"({ENCODER_NAMES[other]})", "test_nelbo_best", cells, "decrease",
            f"{other} in the same cell and seed", cells_file)
        claims.append(claim)
        cells_rows += rows
    return claims, cells_rows


def cmd_tabulate(args) -> None:
    results = grid_results(args.histories, args.retrievals, args.k)
    out = Path(args.out_dir)
    save_csv(results, out / "results.csv")
    pub = load_published(args.published)
    seeds = sorted(results.seed.unique())
    spread = (f"Mean (standard deviation) over {len(seeds)} seeds ({', '.join(map(str, seeds))}; each its own "
              "initialisation, batch order and code samples on the same corpus; per-seed rows in results.csv)"
              if len(seeds) > 1 else f"One seed ({seeds[0]}), no spread")
    notes = {
        "test_nelbo_best": "test NELBO (nats per document, relative to the document's empirical distribution) "
                           "at the best epoch, the protocol's number",
        "test_nelbo_last": "test NELBO at the last epoch",
        "train_nelbo_last": "train NELBO in the last epoch",
        "precision": f"precision@{args.k} of Hamming ranking (codes: bit = logit > 0; the training set is the "
                     "database, the test set the queries; relevant = same label)",
    }
    for value, note in notes.items():
        table = grid_table(results, value)
        note = f"{note}. {spread}"
        if value == "test_nelbo_best":
            published = published_columns(pub, EXPERIMENT, "test_nelbo", "best epoch")
            if published:
                note += "; published (e1, decoder depth 0, 64 bits, real 20 Newsgroups): " + ", ".join(
                    f"{k.split('(')[-1].rstrip(')')}: {v:g}" for k, v in published.items())
        write_table(table, out / f"{value}.csv", out / f"{value}.md", title=f"Semantic hashing: {value}",
                    note=note + ".")
    cells_file = Path(args.claims).with_name(CLAIMS_CELLS)
    claims, cells = e1_claims(results, cells_file.name)
    write_claims(cells, cells_file)
    write_claims(claims, args.claims)


def cmd_plot(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..common import plot_seeds, save_figure
    runs = {}  # (depth, bits) -> encoder -> [history of each seed]
    for path in args.histories:
        _, encoder, depth, bits = run_of(path)
        history = read_csv(path, "training history", ["epoch", "test_nelbo"])
        runs.setdefault((depth, bits), {}).setdefault(encoder, []).append(history)
    cells = sorted(runs)
    fig, axes = plt.subplots(1, len(cells), figsize=(4 * len(cells), 3.2), squeeze=False, sharey=False)
    for ax, cell in zip(axes[0], cells):
        for i, (encoder, histories) in enumerate(sorted(runs[cell].items())):
            plot_seeds(ax, [(h.epoch, h.test_nelbo) for h in histories], f"C{i}", encoder)
        values = pd.concat([h.test_nelbo for hs in runs[cell].values() for h in hs])
        low, high = values.min(), min(h.test_nelbo.quantile(0.9) for hs in runs[cell].values() for h in hs)
        ax.set_ylim(low - 0.05 * (high - low + 1), high + 0.1 * (high - low + 1))
        ax.set_title(f"decoder depth {cell[0]}, {cell[1]} bits")
        ax.set_xlabel("epoch")
        ax.legend()
    axes[0][0].set_ylabel("test NELBO (nats per document)")
    fig.tight_layout()
    save_figure(fig, args.out, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vae_approx.semhash", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synthesize", help="a seeded topic-model corpus in the 20news-bydate-matlab format")
    for name in ("n-train", "n-test", "raw-vocab-size", "n-classes", "n-topics", "seed"):
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--mean-length", type=float, required=True, help="mean words per document")
    p.add_argument("--length-spread", type=float, default=1.0,
                   help="standard deviation of log document length (0: Poisson lengths)")
    p.add_argument("--topic-concentration", type=float, default=0.002,
                   help="Dirichlet concentration per word of the topics (smaller: more distinct topics)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("fetch", help="download the real archive (verified before it takes its name)")
    p.add_argument("--url", required=True)
    p.add_argument("--sha256", default="")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("prepare", help="parse, choose the vocabulary, smooth; one compact file")
    p.add_argument("--archive", required=True)
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--vocabulary-ties", choices=VOCABULARY_TIES, default="torch_topk")
    p.add_argument("--expect-train", type=int, default=0)
    p.add_argument("--expect-test", type=int, default=0)
    p.add_argument("--sha256", default="")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train one grid point")
    p.add_argument("--corpus", required=True)
    p.add_argument("--encoder", choices=sorted(ENCODER_SPECS), required=True)
    for name in ("depth", "bits"):
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--seed", type=int, required=True, help="replicate: initialisation, batch order, code samples")
    p.add_argument("--settings", required=True,
                   help="JSON object of the training keys of the config's semhash section: "
                        + ", ".join(TrainSettings.config_keys()))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay each training step as a CUDA graph (semhash.cuda_graphs); ignored off CUDA")
    p.add_argument("--out", required=True)
    p.add_argument("--history", required=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("retrieval", help="precision@k of Hamming ranking")
    p.add_argument("--corpus", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_retrieval)

    p = sub.add_parser("tabulate", help="grid tables over seeds and the claims")
    p.add_argument("--histories", nargs="+", required=True, help="history.csv of every grid point")
    p.add_argument("--retrievals", nargs="+", required=True, help="retrieval.csv of every grid point, same order")
    p.add_argument("--k", type=int, default=100, help="the k of precision@k in the retrieval files")
    p.add_argument("--published", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--claims", required=True, help="the claims file; its per-cell rows go beside it, " + CLAIMS_CELLS)
    p.set_defaults(func=cmd_tabulate)

    p = sub.add_parser("plot", help="test NELBO per epoch, one panel per (depth, bits), one thin line per seed and the mean")
    p.add_argument("--histories", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_plot)

    run_stage(parser, argv)


if __name__ == "__main__":
    main()
