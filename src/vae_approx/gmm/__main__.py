"""Stages of the Gaussian-mixture experiment, each a file-to-file step called by a rule.

    python -m vae_approx.gmm sample   --settings S --run '{"seed": 0}' --out data.npz
    python -m vae_approx.gmm fit-ml   --run '{"seed": 0}' --data data.npz --out ml_fit.csv
    python -m vae_approx.gmm train    --phase pretrain|joint --settings S --run '{"encoder": "factorized", "seed": 0}'
                                      --data data.npz [--init pretrained.pt] --threads 1 --device auto
                                      --out model.pt --metrics metrics.csv
    python -m vae_approx.gmm regions  --run '{"encoder": ..., "seed": 0}' --data data.npz --pretrained a.pt
                                      --joint b.pt --out regions.png
    python -m vae_approx.gmm curves   --run '{"encoder": ...}' --pretrain P.csv ... --joint J.csv ... --out curves.png
    python -m vae_approx.gmm tabulate --run '{"encoder": ...}' --pretrain P.csv ... --joint J.csv ... --ml M.csv ...
                                      --published ref.csv --per-seed ... --csv ... --md ... --claims ...

--settings: the keys of the config's `gmm` section the stage reads (settings.STAGE_KEYS, as JSON);
--run: the run's identity (the rule's wildcards, as JSON), written as the first columns of every
CSV the stage writes. The stages over seeds keep the order their files are given in.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..common import (InputError, Progress, load_torch, resume_path, run_stage, save_csv, save_torch, seed_everything,
                      select_device, set_threads, with_run)
from ..config import run_identity, stage_section
from ..provenance import log_environment
from ..tables import load_published, read_records, write_claims, write_table
from . import results
from . import settings as S
from .data import load_data, sample_mixture, save_data
from .evaluate import ml_control
from .model import TRUE_CENTRES, MixtureDecoder, make_encoder, restore
from .train import train


def settings_of(args, stage: str) -> dict:
    return stage_section(args.settings, S.STAGE_KEYS[stage], f"gmm {stage}")


def run_of(args, allowed: dict) -> dict:
    return run_identity(args.run, allowed, f"gmm {args.command}")


def load_model(path, what: str) -> dict:
    model = load_torch(path, what)
    if not isinstance(model, dict) or {"encoder_name", "hidden", "variance", "encoder", "decoder"} - set(model):
        raise InputError(f"{what} {path}: not a GMM model file")
    return model


# ---------------------------------------------------------------- stages


def cmd_sample(args) -> None:
    section, run = settings_of(args, "sample"), run_of(args, S.SEED_RUN)
    n, variance = int(section["n_per_component"]), float(section["variance"])
    x, component = sample_mixture(n, variance, run["seed"])
    save_data(args.out, x, component, variance)
    print(f"[gmm sample] {len(x)} points, variance {variance}, seed {run['seed']} -> {args.out}", file=sys.stderr)


def cmd_train(args) -> None:
    section, run = settings_of(args, args.phase), run_of(args, S.TRAINING_RUN)
    settings = S.TrainSettings.from_section(args.phase, section, run["seed"])
    hidden, encoder_name = int(section["hidden"]), run["encoder"]
    set_threads(args.threads)
    seed_everything(settings.seed)
    x, variance = load_data(args.data)
    if args.phase == "pretrain":
        if args.init:
            raise InputError("gmm train: --init is for the joint phase; pretraining starts from the ground truth")
        encoder, decoder = make_encoder(encoder_name, hidden), MixtureDecoder(TRUE_CENTRES, variance)
    else:
        if not args.init:
            raise InputError("gmm train: the joint phase needs --init (the pretrained model)")
        init = load_model(args.init, "pretrained GMM model")
        if (init["encoder_name"], init["hidden"]) != (encoder_name, hidden):
            raise InputError(f"pretrained GMM model {args.init} has encoder '{init['encoder_name']}' of width "
                             f"{init['hidden']}, not '{encoder_name}' of width {hidden}")
        encoder, decoder = restore(init)
    device = select_device(args.device)
    encoder, decoder, x = encoder.to(device), decoder.to(device), x.to(device)
    progress = Progress(f"gmm {args.phase} {encoder_name}", settings.steps, settings.eval_every)
    progress.message(f"{len(x)} points, {settings.steps} steps, lr {settings.lr}, on {device}, "
                     f"{torch.get_num_threads()} threads")
    environment = log_environment(f"gmm {args.phase} {encoder_name}", device)
    resume = resume_path(args.out)
    rows = train(x, encoder, decoder, torch.tensor(TRUE_CENTRES, device=device), variance, settings, resume, progress)
    encoder, decoder = encoder.cpu(), decoder.cpu()
    save_csv(with_run(run, rows), args.metrics)
    save_torch({"encoder_name": encoder_name, "hidden": hidden, "variance": variance, "phase": args.phase,
                "encoder": encoder.state_dict(), "decoder": decoder.state_dict(), "steps": settings.steps,
                "environment": environment}, args.out)
    resume.unlink(missing_ok=True)
    progress.message(f"done: ELBO {rows[-1]['elbo']:.4f}, log-likelihood {rows[-1]['log_likelihood']:.4f}")


def cmd_fit_ml(args) -> None:
    """The control: maximum-likelihood centres on the seed's sample, no encoder (EM from the truth)."""
    run = run_of(args, S.SEED_RUN)
    x, variance = load_data(args.data)
    row = ml_control(x, variance)
    save_csv(with_run(run, [row]), args.out)
    print(f"[gmm fit-ml] {len(x)} points: EM converged in {row['iterations']} iterations, mean centre distance "
          f"{row['mean_centre_distance']:.4f}, log-likelihood {row['log_likelihood']:.5f} "
          f"(ground truth {row['ground_truth_log_likelihood']:.5f}) -> {args.out}", file=sys.stderr)


def cmd_regions(args) -> None:
    from .plots import plot_regions

    run = run_of(args, S.TRAINING_RUN)
    x, _ = load_data(args.data)
    models = []
    for path, what in ((args.pretrained, "pretrained GMM model"), (args.joint, "jointly trained GMM model")):
        model = load_model(path, what)
        if model["encoder_name"] != run["encoder"]:
            raise InputError(f"{what} {path} has encoder '{model['encoder_name']}', not '{run['encoder']}'")
        models.append(restore(model))
    plot_regions(x, *models, torch.tensor(TRUE_CENTRES), f"{run['encoder']} encoder, seed {run['seed']}", args.out)


def cmd_curves(args) -> None:
    from .plots import plot_curves

    run = run_of(args, S.FAMILY_RUN)
    pretrain = read_records(args.pretrain, "GMM pretraining metrics", results.METRIC_COLUMNS)
    joint = read_records(args.joint, "GMM joint metrics", results.METRIC_COLUMNS)
    plot_curves(pretrain, joint, run["encoder"], args.out)


def cmd_tabulate(args) -> None:
    run = run_of(args, S.FAMILY_RUN)
    pub = load_published(args.published)
    finals = results.finals(read_records(args.pretrain, "GMM pretraining metrics", results.METRIC_COLUMNS),
                            read_records(args.joint, "GMM joint metrics", results.METRIC_COLUMNS),
                            read_records(args.ml, "GMM maximum-likelihood fit", results.ML_COLUMNS), run["encoder"])
    per_seed = results.per_seed_table(finals, pub)
    save_csv(per_seed, args.per_seed)
    table, title, note = results.summary_table(per_seed, pub, run["encoder"])
    write_table(table, args.csv, args.md, title=title, note=note, shown=results.SHOWN)
    write_claims(results.claims(finals), args.claims)


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vae_approx.gmm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, func, summary: str, settings: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary)
        if settings:
            p.add_argument("--settings", required=True, help="the config keys the stage reads, as JSON")
        p.add_argument("--run", required=True, help="the run's identity (the rule's wildcards), as JSON")
        p.set_defaults(func=func)
        return p

    p = stage("sample", cmd_sample, "draw the ground-truth data set")
    p.add_argument("--out", required=True)

    p = stage("fit-ml", cmd_fit_ml, "the control: maximum-likelihood centres on the sample (EM)", settings=False)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)

    p = stage("train", cmd_train, "train by exact ELBO: encoder alone (pretrain) or jointly")
    p.add_argument("--phase", choices=sorted(S.PHASES), required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--init", help="model to start from (joint phase)")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--device", required=True, help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True)

    p = stage("regions", cmd_regions, "one run's decision regions and centres, before and after joint training",
              settings=False)
    p.add_argument("--data", required=True, help="the seed's data.npz")
    p.add_argument("--pretrained", required=True)
    p.add_argument("--joint", required=True)
    p.add_argument("--out", required=True)

    p = stage("curves", cmd_curves, "training curves of one encoder family, one thin line per seed and the mean",
              settings=False)
    p.add_argument("--pretrain", nargs="+", required=True, help="pretrain_metrics.csv of every seed")
    p.add_argument("--joint", nargs="+", required=True, help="joint_metrics.csv of every seed")
    p.add_argument("--out", required=True)

    p = stage("tabulate", cmd_tabulate, "results table and claims of one encoder family, over seeds", settings=False)
    p.add_argument("--pretrain", nargs="+", required=True, help="pretrain_metrics.csv of every seed, in table order")
    p.add_argument("--joint", nargs="+", required=True, help="joint_metrics.csv of every seed")
    p.add_argument("--ml", nargs="+", required=True, help="ml_fit.csv of every seed")
    p.add_argument("--published", required=True)
    p.add_argument("--per-seed", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--claims", required=True)

    run_stage(parser, argv)


if __name__ == "__main__":
    main()
