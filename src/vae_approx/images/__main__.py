"""Stages of the faces experiment, each a file-to-file step called by a rule.

    python -m vae_approx.images prepare-digits    --size 32 --out images.npy --labels labels.npy
    python -m vae_approx.images synth-celeba-zip  --n 300 --out img_align_celeba.zip
    python -m vae_approx.images fetch-celeba      --out resources/celeba/img_align_celeba.zip
    python -m vae_approx.images prepare-celeba    --zip img_align_celeba.zip --size 64 --out images.npy
    python -m vae_approx.images fetch-inception   --torch-home resources/torch [--sha256 HEX]
    python -m vae_approx.images train-classifier  --images images.npy --labels labels.npy --out classifier.pt ...
    python -m vae_approx.images train-gan         --images images.npy --out-dir generators/ --losses gan.csv ...
    python -m vae_approx.images choose-generator  --generators generators/ --images images.npy --epoch auto ...
    python -m vae_approx.images pretrain          --generator generator.pt --out encoder.pt --metrics curve.csv ...
    python -m vae_approx.images joint             --generator generator.pt --encoder encoder.pt --out joint.pt ...
    python -m vae_approx.images evaluate          --generator G --pretrained E --joint J --out metrics.csv ...
    python -m vae_approx.images curves            --pretrain P.csv ... --joint J.csv ... --out curves.png
    python -m vae_approx.images tabulate          --metrics M.csv ... --published ref.csv --per-seed --csv --md --claims
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..common import (InputError, Progress, load_torch, parse_bool, resume_path, run_stage, save_csv, save_torch,
                      seed_everything, seed_of, select_device, set_threads, stage_seed)
from ..tables import (load_published, mean_std, one_value, read_tidy, seeds_claim, with_published, with_spread,
                      write_claims, write_table)
from . import data as D
from .evaluate import Models, evaluate
from .metrics import (FEATURES, GaussianStats, classifier_file, frechet_distance, make_extractor,
                      train_classifier)
from .model import (GaussianDecoder, build_encoder, build_generator, encoder_spec, generator_spec, Encoder)
from .train import PHASES, GanSettings, VaeSettings, ground_truth, train_gan, train_vae

EXPERIMENT = "images"


# ---------------------------------------------------------------- model files


def load_generator(path) -> tuple[dict, torch.nn.Module]:
    saved = load_torch(path, "generator")
    if not isinstance(saved, dict) or saved.get("kind") != "dcgan generator":
        raise InputError(f"generator {path}: not a generator file (written by train-gan or choose-generator)")
    return saved, build_generator(saved["spec"], saved["state"]).eval()


def load_pretrained(path) -> tuple[dict, Encoder]:
    saved = load_torch(path, "pretrained encoder")
    if not isinstance(saved, dict) or saved.get("kind") != "pretrained encoder":
        raise InputError(f"pretrained encoder {path}: not an encoder file (written by pretrain)")
    return saved, build_encoder(saved["encoder_spec"], saved["encoder"]).eval()


def load_joint(path) -> tuple[dict, Encoder, GaussianDecoder]:
    saved = load_torch(path, "jointly trained VAE")
    if not isinstance(saved, dict) or saved.get("kind") != "joint vae":
        raise InputError(f"jointly trained VAE {path}: not a joint model file (written by joint)")
    encoder = build_encoder(saved["encoder_spec"], saved["encoder"]).eval()
    decoder = GaussianDecoder(build_generator(saved["generator_spec"]), 1.0, saved["learn_sigma"])
    decoder.load_state_dict(saved["decoder"])
    return saved, encoder, decoder.eval()


def check_same(spec_a: dict, spec_b: dict, what: str, keys=("nz", "channels", "image_size")) -> None:
    for key in keys:
        if spec_a[key] != spec_b[key]:
            raise InputError(f"{what}: {key} {spec_a[key]} does not match {spec_b[key]}")


# ---------------------------------------------------------------- data stages


def cmd_prepare_digits(args) -> None:
    images, labels = D.digits_images(args.size)
    D.save_array(labels, args.labels)
    D.save_array(images, args.out)
    print(f"[images prepare-digits] {images.shape} uint8 -> {args.out}, labels -> {args.labels}", file=sys.stderr)


def cmd_synth_celeba_zip(args) -> None:
    D.write_synthetic_celeba_zip(args.out, args.n, args.seed)
    print(f"[images synth-celeba-zip] {args.n} JPEGs in CelebA's layout -> {args.out}", file=sys.stderr)


def cmd_fetch_celeba(args) -> None:
    D.fetch_celeba(args.out)


def cmd_prepare_celeba(args) -> None:
    progress = Progress("images prepare-celeba", 0, 1)
    n = D.prepare_celeba(args.zip, args.out, args.size, args.expected_count, progress)
    progress.message(f"{n} images of {args.size}x{args.size}x3 -> {args.out}")


def cmd_fetch_inception(args) -> None:
    path = D.fetch_inception(args.torch_home, args.sha256, args.url or None,
                             None if args.url else D.INCEPTION_SHA256_PREFIX)
    print(f"[images fetch-inception] {path}", file=sys.stderr)


# ---------------------------------------------------------------- training stages


def cmd_train_classifier(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    images = D.load_images(args.images)
    labels = D.load_labels(args.labels, len(images))
    progress = Progress("images train-classifier", args.epochs, 1)
    model, rows = train_classifier(images, labels, args.width, args.epochs, args.batch_size, args.lr, args.seed,
                                   args.val_fraction, device, progress)
    save_csv(pd.DataFrame(rows), args.metrics)
    save_torch(classifier_file(model), args.out)


def cmd_train_gan(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    images = D.load_images(args.images)
    settings = GanSettings(args.epochs, args.batch_size, args.lr, args.beta1, args.nz, args.ngf, args.ndf,
                           args.seed, args.checkpoint_every, args.log_every)
    out_dir = Path(args.out_dir)
    staging = out_dir.parent / f".{out_dir.name}.partial"  # beside the output, as the resume file
    steps = settings.epochs * -(-len(images) // settings.batch_size)
    progress = Progress("images train-gan", steps, args.log_every)
    progress.message(f"{images.shape[0]} images {images.shape[1:]}, {settings.epochs} epochs, on {device}, "
                     f"{torch.get_num_threads()} threads")
    resume = resume_path(out_dir)
    rows = train_gan(images, settings, staging, device, resume, progress)
    save_csv(pd.DataFrame(rows), args.losses)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    resume.unlink(missing_ok=True)


def epoch_files(directory) -> dict[int, Path]:
    directory = Path(directory)
    files = {int(p.stem.split("_")[1]): p for p in directory.glob("epoch_*.pt")} if directory.is_dir() else {}
    if not files:
        raise InputError(f"{directory}: no generator files epoch_NNN.pt (written by train-gan)")
    return dict(sorted(files.items()))


@torch.no_grad()
def cmd_choose_generator(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    files = epoch_files(args.generators)
    if args.epoch != "auto":
        try:
            chosen = int(args.epoch)
        except ValueError:
            raise InputError(f"--epoch must be 'auto' or an epoch number, got {args.epoch!r}") from None
        if chosen not in files:
            raise InputError(f"{args.generators}: no generator of epoch {chosen}; epochs {min(files)}..{max(files)}")
        scored = [chosen]
    else:
        scored = list(files)
    images = D.load_images(args.images)
    extractor = make_extractor(args.features, device, args.classifier, args.torch_home, images.shape[1],
                               args.inception_sha256, args.inception_unverified_ok)
    progress = Progress("images choose-generator", len(scored), 1)
    progress.message(f"distance: {extractor.label}")
    n = min(args.n_samples, len(images))
    subset = np.sort(np.random.default_rng(args.seed).choice(len(images), n, replace=False))
    data_stats = GaussianStats(extractor.dim)
    for start in range(0, n, args.batch_size):
        data_stats.update(extractor(D.to_float(images[subset[start:start + args.batch_size]])))
    rows = []
    for epoch in scored:
        _, g = load_generator(files[epoch])
        g = g.to(device).eval()
        gen = torch.Generator().manual_seed(args.seed)
        stats = GaussianStats(extractor.dim)
        for start in range(0, args.n_samples, args.batch_size):
            b = min(args.batch_size, args.n_samples - start)
            stats.update(extractor(g(torch.randn(b, g.nz, generator=gen).to(device))))
        rows.append({"epoch": epoch, extractor.metric: frechet_distance(stats, data_stats, extractor.frechet)})
        progress.log(len(rows), force=True, **{extractor.metric: rows[-1][extractor.metric]})
    frame = pd.DataFrame(rows)
    if args.epoch == "auto":
        chosen = int(frame.loc[frame[extractor.metric].idxmin(), "epoch"])
    frame["chosen"] = frame.epoch == chosen
    frame["rule"] = "lowest distance to the data" if args.epoch == "auto" else "fixed by the config"
    if extractor.kind == "inception":  # True: weights that failed their SHA-256 check (tests only), not FID
        frame["inception_unverified"] = not extractor.verified
    saved, _ = load_generator(files[chosen])
    save_csv(frame, args.distances)
    save_torch(saved, args.out)
    progress.message(f"chose epoch {chosen} ({'auto' if args.epoch == 'auto' else 'fixed'})")


def vae_settings(args, phase: str) -> VaeSettings:
    """The stage's settings; its seed is the replicate's (--seed) stream for this stage."""
    return VaeSettings(phase, args.iterations, args.batch_size, args.lr, args.beta1, args.sigma,
                       stage_seed(args.seed, phase),
                       args.log_every, args.checkpoint_every, getattr(args, "ndf", 64),
                       getattr(args, "learn_sigma", False), args.channels_last, args.bf16, args.bn_batches)


def cmd_pretrain(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    gsaved, g = load_generator(args.generator)
    settings = vae_settings(args, "pretrain")
    seed_everything(settings.seed)
    encoder = Encoder(g.nz, settings.ndf, g.channels, g.image_size)
    progress = Progress("images pretrain", settings.iterations, settings.log_every)
    progress.message(f"generator of epoch {gsaved['epoch']}, sigma {settings.sigma}, {settings.iterations} "
                     f"iterations of {settings.batch_size}, on {device}, {torch.get_num_threads()} threads")
    resume = resume_path(args.out)
    rows, encoder, _ = train_vae(ground_truth(g, settings.sigma), encoder, settings, device, resume, progress)
    save_csv(pd.DataFrame(rows), args.metrics)
    save_torch({"kind": "pretrained encoder", "encoder_spec": encoder_spec(encoder),
                "encoder": encoder.cpu().state_dict(), "generator_spec": generator_spec(g),
                "generator_epoch": gsaved["epoch"], "sigma": settings.sigma, "settings": asdict(settings)}, args.out)
    resume.unlink(missing_ok=True)


def cmd_joint(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    gsaved, g = load_generator(args.generator)
    esaved, encoder = load_pretrained(args.encoder)
    check_same(esaved["generator_spec"], generator_spec(g), f"pretrained encoder {args.encoder} vs generator {args.generator}",
               ("nz", "ngf", "channels", "image_size"))
    args.sigma = esaved["sigma"]
    settings = vae_settings(args, "joint")
    seed_everything(settings.seed)
    progress = Progress("images joint", settings.iterations, settings.log_every)
    progress.message(f"sigma {settings.sigma} ({'learned' if settings.learn_sigma else 'fixed'}), "
                     f"{settings.iterations} iterations of {settings.batch_size}, on {device}, "
                     f"{torch.get_num_threads()} threads")
    resume = resume_path(args.out)
    rows, encoder, decoder = train_vae(ground_truth(g, settings.sigma), encoder, settings, device, resume, progress)
    save_csv(pd.DataFrame(rows), args.metrics)
    save_torch({"kind": "joint vae", "encoder_spec": encoder_spec(encoder), "encoder": encoder.cpu().state_dict(),
                "generator_spec": generator_spec(g), "decoder": decoder.cpu().state_dict(),
                "learn_sigma": settings.learn_sigma, "sigma_truth": settings.sigma, "settings": asdict(settings)},
               args.out)
    resume.unlink(missing_ok=True)


# ---------------------------------------------------------------- evaluation and tables


def cmd_evaluate(args) -> None:
    set_threads(args.threads)
    device = select_device(args.device)
    _, g = load_generator(args.generator)
    esaved, pretrained = load_pretrained(args.pretrained)
    jsaved, joint_encoder, joint_decoder = load_joint(args.joint)
    check_same(esaved["generator_spec"], generator_spec(g), f"{args.pretrained} vs {args.generator}")
    check_same(jsaved["generator_spec"], generator_spec(g), f"{args.joint} vs {args.generator}")
    models = Models(ground_truth(g, esaved["sigma"]), pretrained, joint_encoder, joint_decoder)
    extractor = make_extractor(args.features, device, args.classifier, args.torch_home, g.channels,
                               args.inception_sha256, args.inception_unverified_ok)
    progress = Progress("images evaluate", args.n_samples, args.batch_size)
    progress.message(f"{args.n_samples} images per set, distance: {extractor.label}, on {device}")
    rows = evaluate(models, extractor, args.n_samples, args.batch_size, stage_seed(args.seed, "evaluate"),
                    args.n_eval, args.grid_size,
                    Path(args.grids), device, progress, args.reference_protocol, args.channels_last)
    save_csv(pd.DataFrame(rows), args.out)


METRIC_COLUMNS = ["stage", "metric", "image_set", "value"]


def cmd_curves(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..common import plot_seeds, save_figure
    if len(args.pretrain) != len(args.joint) or [seed_of(p) for p in args.pretrain] != [seed_of(p) for p in args.joint]:
        raise InputError("images curves: --pretrain and --joint need one file per seed each, in the same seed order")
    pretrain = [read_tidy(p, "pretraining curve", ["step", "loss"]) for p in args.pretrain]
    joint = [read_tidy(p, "joint-training curve", ["step", "elbo", "reconstruction", "kl"]) for p in args.joint]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    plot_seeds(axes[0], [(c.step, c.loss) for c in pretrain], "tab:blue", "-log q(z|x)")
    axes[0].set_title("encoder pretraining")
    axes[0].set_ylabel("nats per image (training batches)")
    plot_seeds(axes[1], [(c.step, c.elbo) for c in joint], "tab:green", "ELBO")
    axes[1].set_title("joint training")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8)
    fig.suptitle(f"Faces experiment, {args.setting}")
    fig.tight_layout()
    save_figure(fig, args.out, dpi=110)
    plt.close(fig)


def seed_values(path) -> tuple[str, dict, bool, bool]:
    """One seed's metrics file: (distance name, {stage: {column: value}}, unverified, reference protocol)."""
    what = f"images metrics {path}"
    df = read_tidy(path, "images metrics", METRIC_COLUMNS)
    try:
        df["value"] = df["value"].astype(float)
    except ValueError as exc:
        raise InputError(f"{what}: a value is not a number ({exc})") from None
    distance = [m for m in FEATURES.values() if m in set(df.metric)]
    if len(distance) != 1:
        raise InputError(f"{what}: expected exactly one distance among {sorted(FEATURES.values())}")
    fd = distance[0]

    def value(stage, metric, image_set=None):
        where = {} if image_set is None else {"image_set": image_set}
        return one_value(df, what, stage=stage, metric=metric, **where)

    floor = value("ground truth", fd, "ground_truth_resample")
    values = {
        "pretrain": {"elbo": value("pretrain", "elbo"),
                     f"{fd} reconstructions": value("pretrain", fd, "pretrained_reconstruction"),
                     f"{fd} prior samples": floor, "decoder_drift": 0.0},
        "joint": {"elbo": value("joint", "elbo"),
                  f"{fd} reconstructions": value("joint", fd, "joint_reconstruction"),
                  f"{fd} prior samples": value("joint", fd, "joint_prior"),
                  "decoder_drift": value("joint", "decoder_drift")},
    }
    flag = lambda metric: bool(((df.metric == metric) & (df.value == 1)).any())  # noqa: E731
    return fd, values, flag("inception_unverified"), flag("reference_protocol")


def cmd_tabulate(args) -> None:
    per_seed = {seed_of(path): seed_values(path) for path in args.metrics}
    if len(per_seed) != len(args.metrics):
        raise InputError(f"images tabulate: two metrics files of one seed among {args.metrics}")
    kinds = {(fd, unverified, reference) for fd, _, unverified, reference in per_seed.values()}
    if len(kinds) != 1:
        raise InputError("images tabulate: the seeds' metrics differ in distance, Inception verification or "
                         f"sampling protocol ({sorted(kinds)}); they come from different configurations")
    (fd, unverified, reference), = kinds
    seeds = sorted(per_seed)
    values = {seed: per_seed[seed][1] for seed in seeds}
    floor = {seed: values[seed]["pretrain"][f"{fd} prior samples"] for seed in seeds}
    rows = [{"seed": seed, "stage": PHASES[phase], **entry} for seed in seeds for phase, entry in values[seed].items()]
    table = pd.DataFrame(rows)
    save_csv(table, args.per_seed)
    columns = [c for c in table.columns if c not in ("seed", "stage")]
    summary = mean_std(table, ["stage"], columns)
    pub = load_published(args.published)
    summary = with_published(summary, pub, EXPERIMENT, ["elbo", "fid"])
    if fd != "fid":
        name = "Frechet distance on digits-classifier features (fd_digits, not FID)"
    elif unverified:
        name = ("Frechet distance on Inception features from UNVERIFIED weights (columns named fid, but NOT FID: "
                "the weights file failed its SHA-256 check and was accepted by images.inception_unverified_ok, "
                "for tests and wiring checks only)")
    else:
        name = "FID (Inception features)"
    floors = np.array(list(floor.values()))
    floor_text = with_spread(floors.mean(), floors.std(ddof=1) if len(floors) > 1 else float("nan"))
    spread = (f"Mean (standard deviation) over {len(seeds)} seeds ({', '.join(map(str, seeds))}; each its own encoder "
              "initialisation, pretraining and joint-training draws and evaluation draws, one shared ground-truth "
              "generator; per-seed rows in table_per_seed.csv)" if len(seeds) > 1 else f"One seed ({seeds[0]})")
    note = (f"{spread}. ELBO: nats per image on a fixed held-out set of ground-truth samples (one z sample per "
            f"image, analytic KL). {name} against ground-truth decoder samples; reconstructions go through the "
            f"stage's encoder and decoder; the pretrain row's prior samples are an independent ground-truth draw, "
            f"i.e. the distance's floor at this sample size ({floor_text}). Decoder drift: mean squared difference "
            f"per pixel between the jointly trained and the ground-truth decoder's means on the same z (0 before "
            f"joint training by construction). Published numbers are for CelebA 64x64 with sigma 0.05 (FID between "
            f"ground-truth samples and reconstructions) and are comparable only in the paper preset.")
    if reference:
        note += (" Image sets drawn with the reference code's protocol (training-mode BatchNorm, pixel noise on "
                 "the joint reconstructions only), not the corrected one.")
    write_table(summary, args.csv, args.md, title=f"Faces experiment, {args.setting}", note=note)
    if unverified:
        distance_name = "Frechet distance on unverified Inception weights (not FID)"
        print(f"[images tabulate] WARNING: {args.metrics} come from UNVERIFIED Inception weights: their 'fid' "
              "numbers are NOT FID, and the table and claims say so", file=sys.stderr, flush=True)
    else:
        distance_name = "FID" if fd == "fid" else "Frechet distance"
    # A rise must exceed the noise of the distance: each seed's own floor (two independent ground-truth
    # draws) is taken off its rise, so the interval over seeds carries the floor's spread too.
    by_floor = args.fd_tolerance == "floor"
    tolerance = 0.0 if by_floor else float(args.fd_tolerance)
    above = " beyond the floor" if by_floor else ""
    beyond = (f"; each seed's rise minus its floor (two independent ground-truth draws, {floor_text})"
              if by_floor else "")

    def rise(column, less_floor=by_floor):
        return {k: values[k]["joint"][column] - values[k]["pretrain"][column] - (floor[k] if less_floor else 0.0)
                for k in seeds}

    write_claims([
        seeds_claim(EXPERIMENT, args.setting, "joint training raises the ELBO", "elbo", rise("elbo", False),
                    "increase", "the same seed after pretraining", by_construction=True),
        seeds_claim(EXPERIMENT, args.setting, f"joint training raises the {distance_name} of the reconstructions{above}",
                    f"{fd} reconstructions", rise(f"{fd} reconstructions"), "increase",
                    f"the same seed's pretrained reconstructions{beyond}", tolerance),
        seeds_claim(EXPERIMENT, args.setting, "joint training moves the decoder away from the ground truth: "
                    f"{distance_name} of its prior samples rises{above}",
                    f"{fd} prior samples", rise(f"{fd} prior samples"), "increase",
                    f"the ground-truth decoder's samples of the same seed (the floor){beyond}", tolerance),
    ], args.claims)


# ---------------------------------------------------------------- command line


def _common(p, seed: bool = True) -> None:
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the rule's threads)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    if seed:
        p.add_argument("--seed", type=int, required=True)


def _features(p) -> None:
    p.add_argument("--features", choices=sorted(FEATURES), required=True,
                   help="digits: the digits classifier's features (fd_digits); inception: pytorch-fid's (FID)")
    p.add_argument("--classifier", help="digits classifier file (--features digits)")
    p.add_argument("--torch-home", help="TORCH_HOME holding hub/checkpoints/" + D.INCEPTION_FILE + " (--features inception)")
    p.add_argument("--inception-sha256", default="",
                   help="pinned SHA-256 (hex) of the Inception weights; '' checks only that it starts with "
                        + D.INCEPTION_SHA256_PREFIX + " (--features inception)")
    p.add_argument("--inception-unverified-ok", type=parse_bool, default=False,
                   help="true: load Inception weights that fail the SHA-256 check, with a warning (tests and wiring "
                        "checks with random weights only; the distances are then NOT FID and are labelled so)")


def _vae(p) -> None:
    p.add_argument("--generator", required=True, help="the ground-truth generator (choose-generator's output)")
    p.add_argument("--iterations", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--beta1", type=float, required=True)
    p.add_argument("--log-every", type=int, required=True, help="iterations per row of the curve CSV")
    p.add_argument("--checkpoint-every", type=int, required=True, help="iterations between resume checkpoints")
    p.add_argument("--channels-last", type=parse_bool, default=False, help="speed option (true/false)")
    p.add_argument("--bf16", type=parse_bool, default=False, help="speed option: bf16 autocast (true/false)")
    p.add_argument("--bn-batches", type=int, default=50,
                   help="fresh batches that re-estimate the encoder's BatchNorm statistics at the end (0: keep)")
    _common(p)
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True, help="the training curve (tidy CSV)")


def _tolerance(text: str) -> str:
    if text != "floor":
        try:
            float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or 'floor', got {text!r}") from None
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vae_approx.images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare-digits", help="scikit-learn's digits as a uint8 image array + labels")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--out", required=True, help="uint8 [N, 1, size, size] .npy")
    p.add_argument("--labels", required=True, help="int64 [N] .npy")
    p.set_defaults(func=cmd_prepare_digits)

    p = sub.add_parser("synth-celeba-zip", help="a small zip of JPEGs in CelebA's exact layout")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_synth_celeba_zip)

    p = sub.add_parser("fetch-celeba", help="download img_align_celeba.zip (else: say where to put it)")
    p.add_argument("--out", required=True, help="resources/celeba/img_align_celeba.zip")
    p.set_defaults(func=cmd_fetch_celeba)

    p = sub.add_parser("prepare-celeba", help="the zip's JPEGs, resized and centre-cropped, as a uint8 array")
    p.add_argument("--zip", required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--expected-count", type=int, default=0, help="images the zip must hold (202599); 0: no check")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_prepare_celeba)

    p = sub.add_parser("fetch-inception", help="pytorch-fid's Inception weights into TORCH_HOME")
    p.add_argument("--torch-home", required=True)
    p.add_argument("--sha256", default="", help="pinned SHA-256 (hex); '' skips the check")
    p.add_argument("--url", default="", help="default: pytorch_fid.inception.FID_WEIGHTS_URL (whose SHA-256 must "
                   "start with 6726825d, the hash in its file name; another URL skips that check)")
    p.set_defaults(func=cmd_fetch_inception)

    p = sub.add_parser("train-classifier", help="the digits classifier whose features give fd_digits")
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--val-fraction", type=float, default=0.2)
    _common(p)
    p.add_argument("--out", required=True)
    p.add_argument("--metrics", required=True)
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("train-gan", help="DCGAN; the generator of every epoch into --out-dir")
    p.add_argument("--images", required=True)
    p.add_argument("--nz", type=int, required=True)
    p.add_argument("--ngf", type=int, required=True)
    p.add_argument("--ndf", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--beta1", type=float, required=True)
    p.add_argument("--checkpoint-every", type=int, required=True, help="iterations between resume checkpoints")
    p.add_argument("--log-every", type=int, default=50)
    _common(p)
    p.add_argument("--out-dir", required=True, help="directory of epoch_NNN.pt")
    p.add_argument("--losses", required=True, help="per-epoch losses (tidy CSV)")
    p.set_defaults(func=cmd_train_gan)

    p = sub.add_parser("choose-generator", help="the ground-truth generator: a given epoch or the lowest distance")
    p.add_argument("--generators", required=True, help="train-gan's --out-dir")
    p.add_argument("--images", required=True)
    p.add_argument("--epoch", required=True, help="'auto' or an epoch number (the reproduction: 44)")
    _features(p)
    p.add_argument("--n-samples", type=int, required=True, help="generated images per epoch (and data images)")
    p.add_argument("--batch-size", type=int, default=500)
    _common(p)
    p.add_argument("--out", required=True, help="the chosen generator file")
    p.add_argument("--distances", required=True, help="per-epoch distances and the choice (CSV)")
    p.set_defaults(func=cmd_choose_generator)

    p = sub.add_parser("pretrain", help="encoder by log q(z|x) on samples of the ground-truth decoder")
    p.add_argument("--sigma", type=float, required=True, help="pixel noise of the ground-truth decoder (0.05)")
    p.add_argument("--ndf", type=int, required=True, help="encoder width")
    _vae(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("joint", help="encoder + a copy of the decoder by ELBO on ground-truth samples")
    p.add_argument("--encoder", required=True, help="the pretrained encoder (pretrain's output; gives sigma)")
    p.add_argument("--learn-sigma", type=parse_bool, default=False, help="learn the decoder's sigma (true/false)")
    _vae(p)
    p.set_defaults(func=cmd_joint)

    p = sub.add_parser("evaluate", help="image sets, Frechet distances, held-out ELBOs, decoder drift, grids")
    p.add_argument("--generator", required=True)
    p.add_argument("--pretrained", required=True)
    p.add_argument("--joint", required=True)
    _features(p)
    p.add_argument("--n-samples", type=int, required=True, help="images per set (the reproduction: 200000)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--n-eval", type=int, required=True, help="held-out ground-truth samples for the ELBO")
    p.add_argument("--grid-size", type=int, default=64, help="images per PNG grid")
    p.add_argument("--reference-protocol", type=parse_bool, default=False,
                   help="draw the sets as the reference code does (training mode, pixel noise on the joint "
                        "reconstructions only), for comparison; default: the corrected protocol")
    p.add_argument("--channels-last", type=parse_bool, default=False, help="speed option (true/false)")
    _common(p)
    p.add_argument("--grids", required=True, help="directory of the PNG grids, one per image set")
    p.add_argument("--out", required=True, help="metrics (tidy CSV)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("curves", help="training curves, one thin line per seed and the mean")
    p.add_argument("--pretrain", nargs="+", required=True, help="pretrain_curve.csv of every seed")
    p.add_argument("--joint", nargs="+", required=True, help="joint_curve.csv of every seed, same order")
    p.add_argument("--setting", required=True, help="the setting's name in the title")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_curves)

    p = sub.add_parser("tabulate", help="results table and claims, over seeds")
    p.add_argument("--metrics", nargs="+", required=True, help="evaluate's CSV of every seed (under seed<k>/)")
    p.add_argument("--per-seed", required=True, help="the table's per-seed rows (CSV)")
    p.add_argument("--published", required=True)
    p.add_argument("--setting", required=True, help="the setting's name in the table and claims")
    p.add_argument("--fd-tolerance", type=_tolerance, default="0",
                   help="rise of FID/FD the claims need: a number, or 'floor' for the measured distance between two "
                        "independent ground-truth draws (the distance's noise level at this sample size)")
    p.add_argument("--csv", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--claims", required=True)
    p.set_defaults(func=cmd_tabulate)

    run_stage(parser, argv)


if __name__ == "__main__":
    main()
